"""Finding speech that got no words, and putting the words of a second try in place.

With the silence squeezed out of a piece (splitting.py), unrelated utterances sit
about a second apart, and the decoder can jump over a whole one: its words are simply
missing (measured on spontaneous-ish speech with long pauses, README). Word timestamps
show it: a stretch of VAD speech that no word covers. Such a stretch is transcribed
again on its own (engine.py), and its words are merged here into the piece's segments
in time order. Pure logic over plain data (file times in seconds): unit-tested.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

#: Seconds of uncovered speech worth a second try: less is a word's worth of drift in
#: the word alignment, and a second try costs a decoder run.
SHORTEST = 1.5
#: A word covers at most this long from its start. The alignment stretches the word
#: before skipped speech over it (measured: "stop." timed over 11 s, across a squeezed
#: silence and the utterance after it); real words are shorter (99% under 1.3 s on ten
#: minutes of telephone prompts).
LONGEST_WORD = 1.5
#: Uncovered bits of speech shorter than this are the alignment's slack at the edges of
#: words (word times are good to a few tenths of a second), not speech without words.
SLACK = 0.3
#: Seconds of the piece's audio kept on each side of a stretch for its second try.
PAD = 0.3
#: A recovered word this close (s) to the same word in the piece is that word again.
NEAR = 0.75


def covered(
    words: Sequence[tuple[float, float]], chunks: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """What each word really covers: from its start, at most LONGEST_WORD, and never past
    the end of the stretch of audio (chunk) its start is in. A word whose end maps into a
    later chunk spans a squeezed-out silence, which no real word does."""
    out = []
    for s, e in words:
        end = min(e, s + LONGEST_WORD)
        for cs, ce in chunks:
            if cs <= s < ce:
                end = min(end, ce)
                break
        out.append((s, max(s, end)))
    return out


def uncovered(
    speech: Sequence[tuple[float, float]],
    chunks: Sequence[tuple[float, float]],
    words: Sequence[tuple[float, float]],
    shortest: float = SHORTEST,
) -> list[tuple[float, float]]:
    """Stretches of VAD speech (``speech``, in order) that no word covers, holding more
    than ``shortest`` seconds of speech. Uncovered parts of neighbouring speech ranges
    with no word between them are one stretch (the decoder skipped both)."""
    cover = sorted(covered(words, chunks))
    bits: list[tuple[float, float]] = []
    for s, e in speech:
        t = s
        for ws, we in cover:
            if we <= t or ws >= e:
                continue
            if ws - t >= SLACK:
                bits.append((t, ws))
            t = max(t, we)
        if e - t >= SLACK:
            bits.append((t, e))
    stretches: list[tuple[float, float, float]] = []  # start, end, seconds of speech
    for s, e in bits:
        last = stretches[-1] if stretches else None
        # A word between them, even one aligned to no time at all (the alignment gives
        # some words zero length, at the end of their utterance), ends the stretch.
        if last and not any(last[1] <= ws <= s for ws, _ in cover):
            stretches[-1] = (last[0], e, last[2] + e - s)
        else:
            stretches.append((s, e, e - s))
    return [(round(s, 3), round(e, 3)) for s, e, n in stretches if n > shortest]


def within(
    segments: Sequence[dict[str, Any]],
    span: tuple[float, float],
    have: Sequence[tuple[float, float, str]],
    slack: float = 0.25,
) -> list[dict[str, Any]]:
    """The words of a second try over ``span`` (its audio padded by PAD) that the piece
    lacks: those whose middle is inside the span (the padding picks up the end of the
    word before) and that are not a word the piece ``have`` (start, end, word) within
    NEAR seconds (the alignment times a piece's words late, up to the end of their
    utterance, so a stretch can end on a word the piece has)."""
    out = []
    for seg in segments:
        for w in seg.get("words") or []:
            mid = (w["start"] + w["end"]) / 2
            if not span[0] - slack <= mid <= span[1] + slack:
                continue
            same = _plain(w["word"])
            if any(_plain(t) == same and s - NEAR <= mid <= e + NEAR for s, e, t in have):
                continue
            out.append(w)
    return out


def _plain(word: str) -> str:
    return "".join(c for c in word.lower() if c.isalnum())


def merge(
    segments: Sequence[dict[str, Any]],
    found: Sequence[tuple[tuple[float, float], list[dict[str, Any]], dict[str, Any]]],
    encode: Callable[[str], list[int]],
) -> list[dict[str, Any]]:
    """A piece's segments with the recovered words put in their place in time. ``found``:
    per stretch, its span, its words and the segment they came in (for the decode's
    scores). A segment whose words lie on both sides of a recovered stretch is cut in
    two there, so words stay in time order; cut and new segments get their text from
    their words and tokens from ``encode``. Ids are left to the caller."""
    out = [dict(s) for s in segments]
    for (lo, _), words, like in sorted(found, key=lambda f: f[0]):
        if not words:
            continue
        cut: list[dict[str, Any]] = []
        for seg in out:
            ws = seg.get("words") or []
            before = [w for w in ws if w["start"] < lo]
            after = [w for w in ws if w["start"] >= lo]
            if before and after:
                cut += [_from_words(seg, before, encode), _from_words(seg, after, encode)]
            else:
                cut.append(seg)
        cut.append(_from_words(like, words, encode))
        out = sorted(cut, key=lambda s: (s["start"], s["end"]))
    return out


def _from_words(
    like: dict[str, Any], words: list[dict[str, Any]], encode: Callable[[str], list[int]]
) -> dict[str, Any]:
    text = "".join(w["word"] for w in words)
    return like | {
        "start": words[0]["start"],
        "end": words[-1]["end"],
        "text": text,
        "tokens": encode(text),
        "words": words,
    }
