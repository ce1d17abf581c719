"""Packing short clips into shared 30-second windows, and giving each clip back its words.

Whisper encodes a 30 s window whatever the clip's length, so a 3 s clip costs as much
encoder work as 30 s of speech. Several clips go into one window, separated by a
silence gap; the window is transcribed with word timestamps, and each word goes back
to the clip its middle falls in (a word straddling a gap goes to the clip holding
its midpoint; the gap's own middle is the boundary). A clip whose attribution is
doubtful is transcribed again alone (``doubt``). Pure logic, no model: unit-tested.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from epyc_whisper.segments import segment, word

#: Window budget: below Whisper's 30 s so the last clip's words are never cut off.
WINDOW = 28.0
#: Silence between clips in a window (seconds); chosen by measurement (README).
GAP = 2.0
#: Clips at least this long go their usual way (one clip already fills most of a window).
PACK_BELOW = 12.0

#: Settings that make packing step aside, and why: each changes the prompt or the context
#: of a window, which in a packed window several clips would share (an initial prompt or
#: a prefix would reach only the first clip, or every clip at once; hotwords go into the
#: one prompt of the window), or works over a whole window's time line (per-segment
#: language detection, the hallucination skip over silences, which would take the gaps
#: between clips for silence in speech).
PACKING_STEPS_ASIDE = {
    "initial_prompt": "--initial-prompt is set",
    "prefix": "--prefix is set",
    "hotwords": "--hotwords is set",
    "multilingual": "--multilingual is set",
    "hallucination_silence_threshold": "--hallucination-silence-threshold is set",
}


def why_not_packed(settings: Mapping[str, Any]) -> str | None:
    """Why these setting values make packing unsafe (None: it is safe): a setting of
    PACKING_STEPS_ASIDE is set, or the task is translate (not measured packed)."""
    why = next((w for k, w in PACKING_STEPS_ASIDE.items() if settings.get(k)), None)
    if why is None and settings.get("task", "transcribe") != "transcribe":
        why = "the task is translate"
    return why


@dataclass
class Slot:
    """One clip in a window. Attributes: key: the caller's id; offset: start in the
    window (s); duration (s)."""

    key: Any
    offset: float
    duration: float


@dataclass
class Window:
    """Clips that share one window, in order."""

    slots: list[Slot] = field(default_factory=list)

    @property
    def length(self) -> float:
        return self.slots[-1].offset + self.slots[-1].duration if self.slots else 0.0


def pack(
    durations: Sequence[tuple[Any, float]], window: float = WINDOW, gap: float = GAP
) -> list[Window]:
    """Greedy first-fit in order: clips keep their order inside a window."""
    windows: list[Window] = []
    cur = Window()
    for key, dur in durations:
        offset = cur.length + gap if cur.slots else 0.0
        if cur.slots and offset + dur > window:
            windows.append(cur)
            cur, offset = Window(), 0.0
        cur.slots.append(Slot(key, offset, dur))
    if cur.slots:
        windows.append(cur)
    return windows


def samples(window: Window, audio: Callable[[Any], Any]) -> Any:
    """The window's 16 kHz float32 samples: each slot's ``audio(key)`` at its offset,
    silence between."""
    import numpy as np

    buf = np.zeros(int(window.length * 16000) + 1, dtype=np.float32)
    for slot in window.slots:
        a = audio(slot.key)
        at = int(round(slot.offset * 16000))
        buf[at : at + len(a)] = a
    return buf


def owner(t: float, slots: Sequence[Slot]) -> int:
    """Index of the clip a time belongs to: boundaries are the middles of the gaps."""
    for i, s in enumerate(slots):
        nxt = slots[i + 1] if i + 1 < len(slots) else None
        boundary = (s.offset + s.duration + nxt.offset) / 2 if nxt else float("inf")
        if t < boundary:
            return i
    return len(slots) - 1


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def attribute(segments: Sequence[dict[str, Any]], window: Window) -> list[list[dict[str, Any]]]:
    """Window segments (dicts with words, window times) -> per clip, its own segments with
    times relative to the clip (from 0, within its duration) and its own words."""
    per_clip: list[list[dict[str, Any]]] = [[] for _ in window.slots]
    for seg in segments:
        groups: dict[int, list[dict[str, Any]]] = {}
        words = seg.get("words") or []
        # A segment whose decoder timestamps lie within one clip goes there whole: the
        # timestamp tokens are more reliable than word alignment, which drifts near gaps
        # (measured: a clip's words slid into the next one). Only a segment spanning a
        # gap is split, word by word.
        first, last = owner(seg["start"], window.slots), owner(seg["end"] - 0.01, window.slots)
        for w in words:
            i = first if first == last else owner((w["start"] + w["end"]) / 2, window.slots)
            groups.setdefault(i, []).append(w)
        for i, words in groups.items():
            slot = window.slots[i]

            def rel(t: float, slot: Slot = slot) -> float:
                return round(min(max(t - slot.offset, 0.0), slot.duration), 3)

            # Words timed deep inside another clip's audio (not merely in the gap): a
            # segment that ran over several clips with identical speech ("19" x 3) and
            # came back as one clip's. doubt() sends such a clip to be transcribed alone.
            foreign = sum(
                1 for w in words if _inside_other((w["start"] + w["end"]) / 2, i, window.slots)
            )
            text = "".join(w["word"] for w in words)
            per_clip[i].append(
                {"foreign_words": foreign}
                | segment(
                    rel(words[0]["start"]),
                    rel(words[-1]["end"]),
                    text,
                    temperature=seg.get("temperature"),
                    avg_logprob=seg.get("avg_logprob"),
                    compression_ratio=compression_ratio(text),
                    no_speech_prob=seg.get("no_speech_prob"),
                    words=[
                        word(rel(w["start"]), rel(w["end"]), w["word"], w["probability"])
                        for w in words
                    ],
                )
            )
    return per_clip


#: Fewer words per second of the clip's speech than this means words went missing or
#: went to a neighbour (people say 2-3 words a second).
MIN_WORDS_PER_SECOND = 1.0


def _inside_other(t: float, i: int, slots: Sequence[Slot]) -> bool:
    return any(j != i and s.offset <= t <= s.offset + s.duration for j, s in enumerate(slots))


def doubt(
    segments: Sequence[dict[str, Any]],
    speech_seconds: float,
    speech: Sequence[tuple[float, float]] = (),
) -> str | None:
    """Why a clip's packed result should not be trusted (then it is transcribed alone),
    or None. Rules: speech by VAD but no words; words timed inside a neighbour; far too
    few words for its speech (a neighbour took them); a stretch of its VAD ``speech``
    (clip times) that no word covers (recovery.py: the decoder skipped it). Low word
    probability is not a rule: measured on the 325 dev clips, the 30 clips whose mean
    word probability was under 0.6 had 24 word errors packed and 26 transcribed alone."""
    from epyc_whisper.recovery import uncovered

    words = [w for s in segments for w in s["words"]]
    if not words:
        return "no words although VAD hears speech" if speech_seconds > 0 else None
    foreign = sum(s.get("foreign_words", 0) for s in segments)
    if foreign:
        return f"{foreign} word(s) timed inside a neighbouring clip"
    if speech_seconds > 1.5 and len(words) < MIN_WORDS_PER_SECOND * speech_seconds:
        return f"{len(words)} word(s) for {speech_seconds:.1f} s of speech"
    skipped = uncovered(speech, [(0.0, float("inf"))], [(w["start"], w["end"]) for w in words])
    if skipped:
        return f"no words for its speech at {skipped[0][0]:.1f}-{skipped[0][1]:.1f} s"
    return None
