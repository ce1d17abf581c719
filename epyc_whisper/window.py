"""Transcribing audio of at most one Whisper window, encoding it once.

Packed windows (packing.py) and the pieces of a split recording (splitting.py) are
never longer than one 30 s window. faster-whisper's ``transcribe()`` still encodes
such audio again from the last word whenever the decoder does not end on a single
timestamp, even when all that is left is the silence after the last word (measured on
24 packed windows: 36 encoder passes, a third of them over trailing silence). Here the
window is encoded once; it is encoded again from the last word only when at least
``MIN_REST`` seconds are left after it, that is, when the decoder stopped before the
speech did (measured: 9 such passes for 57 packed windows, 6-7 for 16 pieces). The rest
follows ``transcribe()`` step for step, with faster-whisper's own functions: the same
prompt, the same segment split at timestamp tokens, the same no-speech skip, the same
word alignment. A window that would need temperature fallback goes the ordinary way,
``transcribe()`` with the whole temperature schedule (``transcribe_window``), or is left
to the caller (``try_window``: packing then transcribes each clip alone), so no result
differs in kind from an unpacked, unsplit one. ``vad_filter`` is not applied here: a
piece is already cut by VAD, and a packed clip was checked for speech.

Several windows (the pieces a worker thread takes, the shared windows of a packing
group) are decoded as one batch, up to the layout's ``decode_batch``: beam search over 4
windows at once took 32% less time per token than one at a time, on one thread, with
the same tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from epyc_whisper.segments import segment, segment_dict, word

#: Seconds of audio after the last word below which the window counts as finished.
MIN_REST = 1.0
#: Encoder passes per window at most (each one must move forward anyway).
MAX_PASSES = 8
#: New tokens a second of audio (plus MOST_TOKENS_EXTRA) that a decode at the first
#: temperature may run to; one that reaches it fails, as a decode over the compression
#: ratio does. Speech gives 3-5 a second, 6-7 on the shortest dev clips (a word of 0.7 s
#: is 4-5 tokens with its timestamps: MOST_TOKENS_EXTRA is for them); measured on 149
#: decodes of six split recordings (read, prompts, hesitant), at most 3.7 a second in
#: any window over 15 s. A decode that loops ("uh, uh, uh, ...") runs on to the limit
#: (Whisper's 224 in any window without one), in beam search, holding up the windows
#: batched with it: 6 a second stops a loop in a 25 s piece at 174 tokens, not 224.
#: The limit matters most on short audio: the parts of a failing piece (measured on a
#: hesitation the decoder loops on: its half and its quarter each ran to 224 tokens,
#: 5.3 s of a 19 s run), the guard's stretches of a few seconds, the rest of a window
#: after an early stop.
MOST_TOKENS_PER_SECOND = 6
MOST_TOKENS_EXTRA = 24
#: Options that change the prompt or the audio, or that only transcribe() implements
#: (per-segment language detection, the hallucination skip over silences, a token cap):
#: a window with one of them set goes the ordinary way.
_ORDINARY_ONLY = (
    "initial_prompt",
    "prefix",
    "hotwords",
    "clip_timestamps",
    "multilingual",
    "hallucination_silence_threshold",
    "max_new_tokens",
)


class Repetitive(list[dict[str, Any]]):
    """The segments (with words) of a decode at the first temperature whose one fault is
    its compression ratio: over ``threshold`` for the window's whole text, with its
    log-probability within bounds, under its token limit, from a window's first pass.
    ``try_windows(..., keep_failed=True)`` gives this for such a window, where it
    otherwise gives None. Its caller judges the text again in parts (``split``, then
    ``passes``): a telephone menu that says a prompt two or three times in one window
    fails the test with the right text (2.5 for a prompt said three times, 1.7 for
    twice), and each half of it passes. ``stop``: where the decoder stopped before the
    speech did (seconds; inf when it finished): the speech after it has no words yet."""

    def __init__(
        self, segments: list[dict[str, Any]], threshold: float, stop: float = float("inf")
    ) -> None:
        super().__init__(segments)
        self.threshold, self.stop = threshold, stop

    @property
    def ratio(self) -> float:
        from faster_whisper.transcribe import get_compression_ratio

        return float(get_compression_ratio("".join(s["text"] for s in self).strip()))

    def passes(self) -> bool:
        """Whether this text holds on its own: words, the ratio within the threshold,
        and no speech left after a stop."""
        return (
            any(s.get("words") for s in self)
            and self.ratio <= self.threshold
            and (self.stop == float("inf"))
        )

    def accepted(self) -> list[dict[str, Any]]:
        """The segments, each with this text's own compression ratio."""
        ratio = self.ratio
        return [dict(s, compression_ratio=ratio) for s in self]

    def split(self, at: float) -> tuple[Repetitive, Repetitive] | None:
        """The segments before and after ``at`` seconds (copies; the later ones' times
        from ``at``, and each side's own ``stop``); None when a segment has words on both
        sides (no clean cut)."""
        sides: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
        for seg in self:
            mids = [(w["start"] + w["end"]) / 2 for w in seg.get("words") or []]
            after = {m >= at for m in mids or [(seg["start"] + seg["end"]) / 2]}
            if len(after) > 1:
                return None
            sides[after.pop()].append(dict(seg, words=[dict(w) for w in seg.get("words") or []]))
        inf = float("inf")
        return (
            Repetitive(sides[0], self.threshold, inf if self.stop >= at - MIN_REST else self.stop),
            Repetitive(_shift(sides[1], -at), self.threshold, self.stop - at),
        )


class Looped(list[dict[str, Any]]):
    """A decode at the first temperature that ran to its token limit
    (MOST_TOKENS_PER_SECOND) with its text over the compression-ratio threshold: the
    decoder looped somewhere in the window ("Montreal, uh, uh, uh, ..." on a real
    hesitation, with no timestamp after its first). No text is kept (it is empty);
    ``try_windows(..., keep_failed=True)`` gives it where it otherwise gives None, so
    that its caller can cut the window smaller at once."""


def transcribe_window(model: Any, audio: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Segments (segments.segment's form, times from the start of ``audio``) of
    16 kHz float32 ``audio`` no longer than one window, as ``model.transcribe`` would
    give them, with fewer encoder passes."""
    return transcribe_windows(model, [audio], options)[0]


def transcribe_windows(
    model: Any, audios: Sequence[Any], options: dict[str, Any], batch: int = 0
) -> list[list[dict[str, Any]]]:
    """transcribe_window for several windows at once, decoded in batches of ``batch``
    windows (0: all at once)."""
    found = try_windows(model, audios, options, batch)
    return [
        ordinary(model, a, options) if s is None else s for a, s in zip(audios, found, strict=True)
    ]


def try_window(model: Any, audio: Any, options: dict[str, Any]) -> list[dict[str, Any]] | None:
    """transcribe_window without the temperature fallback: None when the decode at the
    first temperature fails faster-whisper's thresholds (the caller decides)."""
    return try_windows(model, [audio], options)[0]


def try_windows(
    model: Any,
    audios: Sequence[Any],
    options: dict[str, Any],
    batch: int = 0,
    keep_failed: bool = False,
    share_rests: bool = False,
    short: bool = False,
) -> list[list[dict[str, Any]] | None]:
    """try_window for several windows: each is encoded on its own, and they are decoded
    in batches of ``batch`` (0: all at once); the windows that need another pass (an
    early stop) are batched again. With ``keep_failed`` (and word timestamps), a window
    that fails only the compression ratio comes back as ``Repetitive``, and one that ran
    to its token limit as ``Looped``, not None. With ``share_rests`` (and word
    timestamps), for a caller that checks the words it gets against the speech (the
    pieces' guard): a first decode that stops early is carried on in the same window
    (``_carried_on``), and what is still left of several windows shares windows
    (``_rest_passes``). With ``short``, windows are encoded over SHORT_WINDOW seconds
    (or twice their audio), not 30 (``encoded_frames``)."""
    from faster_whisper.tokenizer import Tokenizer

    defaults = _defaults(model)
    o = defaults | options
    temps = temperatures(model, options)
    plain = any(o[k] not in (None, defaults[k]) for k in _ORDINARY_ONLY)
    out: list[list[dict[str, Any]] | None] = [[] for _ in audios]
    todo = []
    for i, audio in enumerate(audios):
        if plain or not o["language"] or len(audio) > 30 * 16000:
            out[i] = ordinary(model, audio, options)
        else:
            todo.append(i)
    if not todo:
        return out
    tokenizer = Tokenizer(
        model.hf_tokenizer, model.model.is_multilingual, task=o["task"], language=o["language"]
    )
    start = dict.fromkeys(todo, 0)  # frames (10 ms) into each audio
    for n in range(MAX_PASSES):
        rest = [audios[i][start[i] * 160 :] for i in todo]
        if n and share_rests and o["word_timestamps"] and len(rest) > 1:
            passes = _rest_passes(model, rest, o, temps, tokenizer, batch or len(rest))
        else:
            size, carry_on = batch or len(rest), share_rests  # carried on: pieces only
            passes = _passes(model, rest, o, temps, tokenizer, size, keep_failed, carry_on, short)
        again = []
        for i, (segs, resume) in zip(todo, passes, strict=True):
            done = out[i]
            if isinstance(segs, (Repetitive, Looped)):  # only from a window's one pass
                out[i] = segs if start[i] == 0 else None
                continue
            if segs is None or done is None:
                out[i] = None
                continue
            done += _shift(segs, start[i] / 100)
            if resume is not None and resume > 0:
                start[i] += resume
                again.append(i)
        todo = again
        if not todo:
            break
    for segs in out:
        for n, seg in enumerate(segs or [], start=1):
            seg["id"] = n
    return out


def ordinary(model: Any, audio: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    """``audio`` through transcribe() itself, with its whole temperature schedule."""
    return [segment_dict(s) for s in model.transcribe(audio, **options)[0]]


def temperatures(model: Any, options: dict[str, Any]) -> list[float]:
    """The temperature schedule ``options`` give transcribe() (its default if none)."""
    t = (_defaults(model) | options)["temperature"]
    return [float(x) for x in t] if isinstance(t, (list, tuple)) else [float(t)]


def most_tokens(model: Any, n_samples: int) -> int:
    """The new tokens a decode of ``n_samples`` of audio may run to (MOST_TOKENS_PER_SECOND)."""
    cap = int(MOST_TOKENS_PER_SECOND * n_samples / 16000) + MOST_TOKENS_EXTRA
    return min(model.max_length // 2, cap)


#: Seconds of the window a short one (``try_windows(..., short=True)``: the guard's
#: stretches of speech no word covered and of quiet speech, engine._recover) is encoded
#: over at least, and twice its audio where that is longer (``encoded_frames``). Whisper
#: encodes 30 s whatever the audio, and that pass is most of what such a stretch of 1-4
#: s costs; CTranslate2 takes a shorter input, and its cost falls faster than its
#: length: on one core of the development machine (tiny.en int8), 0.31 s over 30 s,
#: 0.20 s over 25, 0.09 s over 20, 0.06 s over 15. Measured on the guard's 62
#: stretches of seven long recordings (read, whispered and hesitant speech, telephone
#: prompts, room tone), each decoded in its own window: 22.3 s in all over 30 s, 7.8 s
#: over 15 s (26.4 and 10.0 s in a slower run, with this rule); 56 of 62 taken or left
#: alike (3 more taken, 3 fewer: borderline speech, "Montreal? Mm-hmm."), the words
#: the same but for punctuation and one or two a stretch, as often nearer what was said
#: as not. Over whole recordings (tests/long_profile.py), WER the same or lower on all
#: eight of issue 13's. Twice the audio because the decoder leaves out what ends near
#: the end of its window: with 3 s to spare it dropped the last prompt of an 11.2 s
#: stretch ("Folder 9."). Measured with tiny.en only (the one model this machine has):
#: a larger model's short windows are not measured.
SHORT_WINDOW = 15.0


def encoded_frames(frames: int, short: bool = False) -> int:
    """Frames (10 ms) the encoder is given for audio of ``frames``: Whisper's 3000 (30
    s), or for a ``short`` window SHORT_WINDOW seconds or twice the audio, in whole
    seconds, at most 3000."""
    if not short:
        return 3000
    want = max(SHORT_WINDOW * 100, 2 * frames)
    return min(3000, -(-int(want) // 100) * 100)


def _defaults(model: Any) -> dict[str, Any]:
    """transcribe()'s own defaults, so that a window is decoded with the same settings."""
    sig = inspect.signature(type(model).transcribe)
    return {k: p.default for k, p in sig.parameters.items() if p.default is not p.empty}


def _passes(
    model: Any,
    audios: list[Any],
    o: dict[str, Any],
    temps: list[float],
    tokenizer: Any,
    batch: int,
    keep_failed: bool = False,
    carry_on: bool = False,
    short: bool = False,
) -> list[tuple[list[dict[str, Any]] | None, int | None]]:
    """One encoder pass for each audio (over ``encoded_frames``), and a decode at the
    first temperature in batches of ``batch``. Per audio: the segments and the frame to
    go on from (None: finished), or (None, None) when the result fails the fallback
    thresholds."""
    import ctranslate2
    import numpy as np
    from faster_whisper.transcribe import get_suppressed_tokens, pad_or_trim

    frames, feats = [], []
    # A limit only where a failing decode has a fallback to go to (the caller's or the
    # schedule): with one temperature, transcribe() takes what the decode gives.
    most = [most_tokens(model, len(a)) if len(temps) > 1 else model.max_length for a in audios]
    for audio in audios:
        features = model.feature_extractor(audio)
        frames.append(features.shape[-1] - 1)  # as transcribe(): the last frame is padding
        feats.append(features[:, : frames[-1]])
    length = encoded_frames(max(frames), short)  # one length: the outputs are stacked
    encoded = _encode(model, [pad_or_trim(f, length) for f in feats])
    # Encoded one by one and stacked: a batched encode was 7-10% slower on CPU. A GPU
    # model's output cannot be stacked here: it is decoded one window at a time.
    if model.model.device != "cpu" or batch == 1:
        batch = 1
        batches = encoded
    else:
        batches = [
            ctranslate2.StorageView.from_array(
                np.concatenate([np.asarray(e) for e in encoded[i : i + batch]])
            )
            for i in range(0, len(encoded), batch)
        ]
    prompt = model.get_prompt(tokenizer, [], without_timestamps=o["without_timestamps"])
    suppress = o["suppress_tokens"]
    sampling = {"beam_size": o["beam_size"], "patience": o["patience"]}
    if temps[0] > 0:
        sampling = {
            "beam_size": 1,
            "num_hypotheses": o["best_of"],
            "sampling_topk": 0,
            "sampling_temperature": temps[0],
        }
    kw = dict(
        length_penalty=o["length_penalty"],
        repetition_penalty=o["repetition_penalty"],
        no_repeat_ngram_size=o["no_repeat_ngram_size"],
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=o["suppress_blank"],
        suppress_tokens=get_suppressed_tokens(tokenizer, suppress) if suppress else suppress,
        max_initial_timestamp_index=int(round(o["max_initial_timestamp"] / model.time_precision)),
        **sampling,
    )
    results = []
    for i, stack in enumerate(batches):
        # CTranslate2 (4.8) stops a Whisper decode at half its max_length (measured: 448
        # gives at most 224 new tokens, 100 gives 50, 60 gives 30); the prompt on top.
        # Under a limit, the tokens are those the full limit gives (the same beam search,
        # cut short); each window's own limit is checked in _finish.
        length = 2 * max(most[i * batch : (i + 1) * batch]) + len(prompt)
        results += model.model.generate(
            stack,
            [prompt] * stack.shape[0],
            max_length=min(model.max_length, length),
            **kw,
        )
    if carry_on:
        results = [
            _carried_on(model, r, e, n, prompt, tokenizer, o, kw)
            for r, e, n in zip(results, encoded, frames, strict=True)
        ]
    return [
        _finish(model, r, e, n, o, temps, tokenizer, m, keep_failed)
        for r, e, n, m in zip(results, encoded, frames, most, strict=True)
    ]


def _encode(model: Any, feats: list[Any]) -> list[Any]:
    """Each window's encoder pass, as many at once as the model has CTranslate2 workers
    (on CPU; each its own call, so the outputs are those of one window at a time).
    CTranslate2 runs the calls of any thread on whichever of its workers is free, and
    a worker process's feeder threads share them: when one thread is left with the
    windows of a failing piece (its halves or quarters) or the guard's, and the other
    has finished, both cores encode them. Measured with tiny.en int8 on 2 cores: four
    30 s windows in 0.67-0.70 s against 1.30-1.34 s one after another, the same output.
    When the other worker is busy, the calls wait for it in turn, as before."""
    from concurrent.futures import ThreadPoolExecutor

    n = min(len(feats), model.model.num_workers) if model.model.device == "cpu" else 1
    if n < 2:
        return [model.encode(f) for f in feats]
    with ThreadPoolExecutor(n) as ex:
        return list(ex.map(model.encode, feats))


class _Decoded:
    """A decode's result as _finish reads it: a window's first decode and what was
    carried on from it (``_carried_on``), as one."""

    def __init__(self, tokens: list[int], score: float, no_speech_prob: float) -> None:
        self.sequences_ids, self.scores, self.no_speech_prob = [tokens], [score], no_speech_prob


#: Times one window's decode is carried on at most (``_carried_on``).
CARRY_ON = 2


def _carried_on(
    model: Any,
    result: Any,
    encoder_output: Any,
    frames: int,
    prompt: list[int],
    tokenizer: Any,
    o: dict[str, Any],
    kw: dict[str, Any],
) -> Any:
    """A decode that stopped early, carried on in the same window. The decoder often
    ends a window's text with the start timestamp of one more segment when the audio is
    shorter than the window (it takes the zero padding after it for speech going on),
    and transcribe() would go on from there in a new window: one more encoder pass for
    a few seconds of speech. Here the decoder goes on over the same encoder output,
    given its own last segment and that timestamp as the prefix (the whole text as the
    prefix gave the same words on 10 minutes of telephone prompts at three times the
    cost: CTranslate2 decodes a prefix token by token). What it adds is taken only if
    it ends at a timestamp, under its own token limit for what was left
    (MOST_TOKENS_PER_SECOND) and with a mean log probability over the threshold; a
    decode that stops early again is carried on again, CARRY_ON times at most. What is
    left after that goes to a new pass, as transcribe() would."""
    ts = tokenizer.timestamp_begin
    tokens = list(result.sequences_ids[0])
    lp, lp_threshold = o["length_penalty"], o["log_prob_threshold"]
    total = result.scores[0] * len(tokens) ** lp  # the log probability of the tokens
    for _ in range(CARRY_ON):
        if len(tokens) < 2 or tokens[-1] < ts or tokens[-2] < ts:
            break
        left = frames - round((tokens[-1] - ts) * model.time_precision * 100)
        if left < MIN_REST * 100:
            break
        start = len(tokens) - 2  # the last segment: from the timestamp before its text
        while start > 0 and not (tokens[start - 1] >= ts > tokens[start]):
            start -= 1
        prefix = prompt + tokens[max(0, start - 1) :]
        room = most_tokens(model, left * 160)
        (more,) = model.model.generate(
            encoder_output,
            [prefix],
            max_length=min(model.max_length, 2 * (room + len(prefix))),  # see _passes
            **kw,
        )
        seq = list(more.sequences_ids[0])
        new = seq[len(prefix) - len(prompt) :]
        # CTranslate2 scores what it generated, normalised over the whole sequence with
        # its prefix (measured: the same tokens decoded from a prefix of 3 of 7 score
        # the log probability of the 4 new ones, divided by 7).
        added = more.scores[0] * len(seq) ** lp
        # Nothing, a loop, text cut short (a decode that ends by itself ends at a
        # timestamp), or text the decoder itself doubts: after a new segment's start it
        # must write something, and on 1.5-3 s of silence after the speech it wrote
        # "Okay." (word probability 0.01) in 1 of 40 windows of joined dev clips. What is
        # left then goes to a new pass, as without carrying on.
        doubtful = lp_threshold is not None and new and added / len(new) < lp_threshold
        if not new or len(new) >= room or new[-1] < ts or doubtful:
            break
        tokens += new
        total += added
    if len(tokens) == len(result.sequences_ids[0]):
        return result
    return _Decoded(tokens, total / len(tokens) ** lp, result.no_speech_prob)


def _rest_passes(
    model: Any,
    rests: list[Any],
    o: dict[str, Any],
    temps: list[float],
    tokenizer: Any,
    batch: int,
) -> list[tuple[list[dict[str, Any]] | None, int | None]]:
    """``_passes`` for what is left of several windows after an early stop: the rests
    share windows as packed clips do (packing.pack: in order, a gap of silence between),
    and each takes back the words timed in it (packing.attribute). A rest goes through
    ``_passes`` on its own where its share is in doubt: its window failed the
    thresholds (a window failing only the compression ratio: its own text fails it too)
    or stopped before the rest's end, or it got no words, or words timed in a
    neighbour. Measured on 10 minutes of telephone prompts: 13 of 25 pieces stopped
    1-7 s before their end, and their rests took 13 encoder passes of 38."""
    from epyc_whisper import packing

    wins = packing.pack([(k, len(r) / 16000) for k, r in enumerate(rests)])
    shared = [w for w in wins if len(w.slots) > 1]
    bufs = [packing.samples(w, rests.__getitem__) for w in shared]
    out: dict[int, tuple[list[dict[str, Any]] | None, int | None]] = {}
    alone = [w.slots[0].key for w in wins if len(w.slots) == 1]
    decoded = _passes(model, bufs, o, temps, tokenizer, batch, keep_failed=True) if bufs else []
    for w, (segs, resume) in zip(shared, decoded, strict=True):
        stop = float("inf") if resume is None else resume / 100
        if isinstance(segs, Repetitive):
            stop = segs.stop
        per = packing.attribute(segs, w) if segs else [None] * len(w.slots)
        for slot, got in zip(w.slots, per, strict=True):
            # A window that fails only the compression ratio: each rest is judged on its
            # own text, as the halves of a failing piece are (rests of a menu's pieces
            # share its prompts: "Star. Star.", "T. T.", ...).
            text_fails = (
                isinstance(segs, Repetitive) and not Repetitive(got or [], segs.threshold).passes()
            )
            cut_short = stop < slot.offset + slot.duration - MIN_REST
            if not got or text_fails or cut_short or any(s["foreign_words"] for s in got):
                alone.append(slot.key)
            else:
                out[slot.key] = (
                    [{k: v for k, v in s.items() if k != "foreign_words"} for s in got],
                    None,
                )
    if alone:
        again = _passes(model, [rests[k] for k in alone], o, temps, tokenizer, batch)
        out.update(zip(alone, again, strict=True))
    return [out[k] for k in range(len(rests))]


def _finish(
    model: Any,
    result: Any,
    encoder_output: Any,
    frames: int,
    o: dict[str, Any],
    temps: list[float],
    tokenizer: Any,
    most: int,
    keep_failed: bool = False,
) -> tuple[list[dict[str, Any]] | None, int | None]:
    """One window's decode, checked and cut into segments as transcribe() does; one
    that ran to its limit of ``most`` tokens fails as well (MOST_TOKENS_PER_SECOND).
    With ``keep_failed``, one that fails only the compression ratio is ``Repetitive``, and
    one that ran to its limit with its text over the ratio (a loop) ``Looped``."""
    from faster_whisper.transcribe import get_compression_ratio

    tokens = result.sequences_ids[0]
    avg_logprob = result.scores[0] * len(tokens) ** o["length_penalty"] / (len(tokens) + 1)
    text = tokenizer.decode(tokens).strip()
    lp, ns, cr = o["log_prob_threshold"], o["no_speech_threshold"], o["compression_ratio_threshold"]
    silent = ns is not None and result.no_speech_prob > ns
    low = lp is not None and avg_logprob < lp
    compression = get_compression_ratio(text)
    ratio = cr is not None and compression > cr
    fallback = ratio or low or len(tokens) >= most
    rejected = fallback and not (silent and low) and len(temps) > 1
    if rejected and not (keep_failed and o["word_timestamps"] and not low and len(tokens) < most):
        looped = keep_failed and len(tokens) >= most and ratio  # dense speech is not cut twice
        return (Looped() if looped else None), None
    if silent and not (lp is not None and avg_logprob > lp):
        return [], None  # transcribe()'s no-speech skip: the window is silence
    segments, seek, single_ending = model._split_segments_by_timestamps(
        tokenizer=tokenizer,
        tokens=tokens,
        time_offset=0.0,
        segment_size=frames,
        segment_duration=frames / 100,
        seek=0,
    )
    if o["word_timestamps"]:
        model.add_word_timestamps(
            [segments],
            tokenizer,
            encoder_output,
            frames,
            o["prepend_punctuations"],
            o["append_punctuations"],
            last_speech_timestamp=0.0,
        )
        ends = [w["end"] for s in segments for w in s.get("words") or []]
        if not single_ending and ends and ends[-1] > 0:
            seek = round(ends[-1] * 100)
    resume = None if single_ending or frames - seek < MIN_REST * 100 else seek
    out = []
    for seg in segments:
        seg_text = tokenizer.decode(seg["tokens"])
        if seg["start"] == seg["end"] or not seg_text.strip():
            continue
        d = segment(
            round(float(seg["start"]), 3),
            round(float(seg["end"]), 3),
            seg_text,
            tokens=seg["tokens"],
            temperature=temps[0],
            avg_logprob=avg_logprob,
            compression_ratio=compression,
            no_speech_prob=result.no_speech_prob,
            words=[
                word(
                    round(float(w["start"]), 3),
                    round(float(w["end"]), 3),
                    w["word"],
                    float(w["probability"]),
                )
                for w in seg.get("words") or []
            ]
            if o["word_timestamps"]
            else None,
        )
        out.append(d)
    if rejected:  # only the ratio failed: the caller judges the text in parts
        return Repetitive(out, cr, float("inf") if resume is None else resume / 100), None
    return out, resume


def _shift(segs: list[dict[str, Any]], by: float) -> list[dict[str, Any]]:
    for s in segs:
        s["seek"] = round(by * 100)
        s["start"], s["end"] = round(s["start"] + by, 3), round(s["end"] + by, 3)
        for w in s.get("words") or []:
            w["start"], w["end"] = round(w["start"] + by, 3), round(w["end"] + by, 3)
    return segs
