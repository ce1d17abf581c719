"""Inside a worker: pinning, the model cache, and transcribing the files of a batch.

A worker process is started with ``spawn`` (CTranslate2 is not fork-safe), pins
itself to its CPU set *before* importing CTranslate2 (so its OpenMP threads
inherit the mask), loads its model once, and runs one Python thread per
CTranslate2 worker: ``transcribe()`` called from K threads runs on the K
replicas that share one copy of the weights. It talks to the parent over its
own pipe, only in plain data; it never writes to the terminal.

Messages, worker -> parent:
  ("ready", info)                 model loaded; info has pid, cpus, load seconds, rss
  ("start", task_id)              a file is in flight (the parent times it)
  ("done", task_id, result, stats)   result: the transcript as a dict
  ("failed", task_id, error, stats)  the file cannot be transcribed; the batch goes on
  ("want", n)                     room for n more files
  ("retire", reason)              leaving after this batch (recycling), parent replaces it
Parent -> worker: ("batch", [task, ...]) and ("stop",).
A task is {"id", "path", ...}; the Python API may add "options" (decoding options over
the spawn-time ones: task_spec), "audio" (float32 samples) or "data" (encoded bytes)
in place of a file to read.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import gc
import itertools
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from epyc_whisper.errors import MediaError
from epyc_whisper.segments import only_segment_keys, segment_dict, transcript


@dataclass
class WorkerSpec:
    """Everything a worker needs, picklable. Attributes: index; cpus: CPU set to pin
    to (empty: no pinning); model_path: a local CTranslate2 folder; device;
    compute_type; workers: CTranslate2 replicas (and feeding threads); threads:
    per replica; options: faster-whisper transcribe() keyword arguments;
    max_files: recycle after this many files (0: never); max_rss: recycle when
    RSS passes this many bytes (0: never)."""

    index: int
    cpus: list[int]
    model_path: str
    device: str
    compute_type: str
    workers: int
    threads: int
    options: dict[str, Any] = field(default_factory=dict)
    max_files: int = 0
    max_rss: int = 0
    pin: bool = True
    split_above: float = 0.0  # seconds; 0: never split a long file
    piece_target: float = 28.0  # seconds of speech per piece, at most
    piece_longest: float = 29.5  # one Whisper window: a piece is never seeked through
    pool_workers: int = 1  # CT2 workers in the whole pool (pieces per long file >= this)
    keep_silence: float = 0.5  # seconds of silence kept on each side of speech in a piece
    pack: bool = False  # pack short clips into shared windows (packing.py)
    pack_take: int = 12  # files a feeder takes at once when packing
    decode_batch: int = 1  # windows decoded as one batch, at most (layout.DECODE_BATCH)
    tmp_dir: str = ""
    device_index: int = 0  # the GPU of this process (--device cuda: one process per GPU)


@dataclass
class CacheStats:
    """The model cache of one worker (the guide's cache_hits / hit_rate / cached_models)."""

    loads: int = 0
    hits: int = 0
    misses: int = 0
    load_seconds: float = 0.0
    cached_models: int = 0


_stats = CacheStats()


@functools.lru_cache(maxsize=2)
def _load(
    path: str, device: str, compute_type: str, threads: int, workers: int, device_index: int = 0
) -> Any:
    from faster_whisper import WhisperModel

    t0 = time.perf_counter()
    model = WhisperModel(
        path,
        device=device,
        device_index=device_index,
        compute_type=compute_type,
        cpu_threads=threads,
        num_workers=workers,
    )
    _stats.loads += 1
    _stats.load_seconds += time.perf_counter() - t0
    return model


def get_model(spec: WorkerSpec) -> Any:
    """The worker's model, loaded on first use and kept for the whole run."""
    before = _load.cache_info()
    model = _load(
        spec.model_path,
        spec.device,
        spec.compute_type,
        spec.threads,
        spec.workers,
        spec.device_index,
    )
    after = _load.cache_info()
    if after.hits > before.hits:
        _stats.hits += 1
    else:
        _stats.misses += 1
    _stats.cached_models = after.currsize
    return model


def transcribe_pieces(
    model: Any, pieces: list[dict[str, Any]], options: dict[str, Any]
) -> list[dict[str, Any]]:
    """Pieces of one split recording, each one's result (``piece_passes``, then each
    piece's rest in turn)."""
    return [rest() for _, rest in piece_passes(model, pieces, options)]


def piece_passes(
    model: Any, pieces: list[dict[str, Any]], options: dict[str, Any]
) -> list[tuple[bool, Callable[[], dict[str, Any]]]]:
    """Pieces of one split recording: each one's speech ranges read from the shared PCM
    file (no copy of the whole recording per worker) and put back to back, all of them
    decoded as one batch at the first temperature (window.py), with word timestamps.

    Returns, per piece, whether it failed there and the call that does the rest and
    gives its result: a piece that failed is cut in two at its longest silence and each
    half decoded again the same way (a half that fails again is cut once more, at the
    silence nearest the middle of its speech: HALVINGS); only a part that still fails
    goes through transcribe()'s temperature schedule. A part whose only fault was the
    compression ratio is judged on its own text first, and only what fails there too is
    decoded again (``_judged``); one that looped (ran to its token limit) is cut twice
    at once. A decode that stops early is carried on in the same window, and what is
    still left of several pieces shares windows (window.py). Speech that no word covers
    is transcribed again on its own (recovery.py), and the quiet speech given with a
    piece is asked of Whisper (``_quiet_speech``). Times are mapped back to file time.
    The worker hands those calls to its free threads, failing pieces first: one piece's
    halvings no longer hold up the pieces decoded with it while another thread idles
    (measured on a 418 s recording of 6 pieces: one thread waited 12.4 s of the 15.4 s
    run)."""
    import numpy as np

    from epyc_whisper.window import Looped, Repetitive, try_windows

    t0 = time.perf_counter()
    # Words always: they are what shows skipped speech; dropped again if not asked for.
    opts = options | {"language": pieces[0]["language"], "word_timestamps": True}
    pcms = [np.memmap(p["pcm"], dtype=np.int16, mode="r") for p in pieces]
    chunks = [[(int(s), int(e)) for s, e in p["chunks"]] for p in pieces]
    bufs = [_read(m, c) for m, c in zip(pcms, chunks, strict=True)]
    first = try_windows(model, bufs, opts, keep_failed=True, share_rests=True)
    shared_s = (time.perf_counter() - t0) / len(pieces)
    return [
        (
            segs is None or isinstance(segs, (Repetitive, Looped)),
            functools.partial(_piece_rest, model, piece, pcm, c, segs, options, opts, shared_s),
        )
        for piece, pcm, c, segs in zip(pieces, pcms, chunks, first, strict=True)
    ]


def _piece_rest(
    model: Any,
    piece: dict[str, Any],
    pcm: Any,
    chunks: list[tuple[int, int]],
    first: list[dict[str, Any]] | None,
    options: dict[str, Any],
    opts: dict[str, Any],
    shared_s: float,
) -> dict[str, Any]:
    """One piece after its first decode (``piece_passes``): halvings, the guard, and its
    result."""
    from epyc_whisper.splitting import halve, quietest_point
    from epyc_whisper.window import Looped, Repetitive, try_windows

    t0 = time.perf_counter()
    # A piece that fails at the first temperature is made smaller before it is made
    # random: on telephone prompts a menu says again and again, the text itself is
    # repetitive enough to fail the compression-ratio test (2.5 for a prompt said three
    # times, 1.7 for twice), and the whole schedule (best_of sampling at each
    # temperature) then cost 3-4 pieces' time and ended in sampled text (README).
    # A part that failed only the compression ratio has its text: each half of it is
    # judged first by the words the decode timed inside it, and only the parts whose own
    # text fails too (or has no words, or a segment across a cut) are decoded again.
    quiet = functools.partial(quietest_point, pcm)
    parts: list[tuple[list[tuple[int, int]], list[dict[str, Any]]]] = []
    # Each failing part with its text (if it failed only the ratio) and its cuts so far.
    failing: list[tuple[list[tuple[int, int]], Repetitive | None, int]] = []
    if isinstance(first, Looped) and len(chunks) > 1:
        # A decode that ran to its token limit loops somewhere in the piece, and the
        # half that holds the loop loops again (measured on a hesitation: "Montreal, uh,
        # uh, uh, ..." to 224 tokens, its 20.4 s half to 186, then its quarters passed):
        # such a piece is cut twice at once, and no half of it is decoded.
        failing = [(half, None, 1) for half in halve(chunks, quiet)]
    elif first is None or isinstance(first, (Repetitive, Looped)):
        failing = [(chunks, first if isinstance(first, Repetitive) else None, 0)]
    else:
        parts.append((chunks, first))
    while failing:
        # The second cut at the silence nearest the middle: a half's longest silence can
        # leave nearly all of it on one side (measured on a hesitation the decoder loops
        # on: 20.4 s cut into 19.1 and 1.3 s, and the 19.1 s went through the schedule;
        # cut in the middle, both parts passed at temperature 0, 10.3-10.5 s for the
        # recording against 13.0-15.2 s, in process on one thread, three runs each).
        halves = []
        for c, text, depth in failing:
            cut = halve(c, quiet, balanced=depth > 0) if depth == 0 or len(c) > 1 else (c,)
            sides = text.split(_seconds(cut[0])) if text else None
            for half, side in zip(cut, sides or (None,) * len(cut), strict=True):
                # Judged on its own text (in smaller parts where it fails) before any part
                # of it is decoded again: measured on 10 minutes of telephone prompts, 7
                # encoder passes for halves became 2, with the same WER (in process).
                for part, got in _judged(half, side, quiet):
                    if got is None:
                        halves.append((part, depth + 1))
                    else:
                        parts.append((part, got))
        if not halves:
            break
        again = try_windows(model, [_read(pcm, h) for h, _ in halves], opts, keep_failed=True)
        failing = []
        for (half, depth), segs in zip(halves, again, strict=True):
            if segs is not None and not isinstance(segs, (Repetitive, Looped)):
                parts.append((half, segs))
            elif depth < HALVINGS and len(half) > 1:  # later cuts only at silences
                failing.append((half, segs if isinstance(segs, Repetitive) else None, depth))
            else:  # judged in ever smaller parts first: only what still fails is sampled
                text = segs if isinstance(segs, Repetitive) else None
                for part, got in _judged(half, text, quiet):
                    if got is None:
                        got = _schedule(model, _read(pcm, part), opts)
                    parts.append((part, got))
    parts.sort(key=lambda p: p[0][0])
    found = [d for c, segs in parts for d in _to_file_time(segs, c)]
    (recovered,) = _recover(model, [piece], [pcm], [chunks], [found], opts)
    for i, d in enumerate(found, start=1):
        d["id"] = i
        d["seek"] = int(d["start"] * 100)  # frames (10 ms) into the file, as unsplit
        if not options.get("word_timestamps"):
            d.pop("words", None)
    return {
        "piece": piece["index"],
        "segments": found,
        "duration": round(_seconds(chunks), 3),
        "timings": {"transcribe_s": round(shared_s + time.perf_counter() - t0, 3)},
        "halved": len(parts) > 1,
    } | recovered


def _judged(
    chunks: list[tuple[int, int]], text: Any | None, quiet: Callable[[int, int], int]
) -> list[tuple[list[tuple[int, int]], list[dict[str, Any]] | None]]:
    """A part whose decode failed only the compression ratio (window.Repetitive) judged on
    its own text in ever smaller parts (cut at the join nearest the middle of their
    speech, with no more decoding) before any of it is decoded again or sampled: the
    parts that pass keep their words; a part of one speech range that still fails, or
    whose text has a segment across the cut, is None (for the caller to decode again, or
    after the last halving, for the schedule). A prompt said three times in a row in one
    part (2.5) fails in every half cut by silence; its three utterances pass one by one."""
    from epyc_whisper.splitting import halve

    if text is None:  # a decode that failed otherwise: no text to judge
        return [(chunks, None)]
    if text.passes():
        return [(chunks, text.accepted())]
    if len(chunks) > 1:
        cut = halve(chunks, quiet, balanced=True)
        sides = text.split(_seconds(cut[0]))
        if sides is not None:
            return [p for c, side in zip(cut, sides, strict=True) for p in _judged(c, side, quiet)]
    return [(chunks, None)]


def _seconds(chunks: Sequence[tuple[int, int]]) -> float:
    return sum(e - s for s, e in chunks) / 16000


#: Tokens per second of audio at most, for a part that goes through the schedule: speech
#: runs at up to about 7 a second, but a decode that loops ("uh, uh, uh, ..." on a real
#: hesitation did) can run on to Whisper's 448 at every temperature, best_of times
#: over. A bound, not a measured gain: the one such part measured (4.8 s through the
#: schedule) stopped at 105 and 60 tokens by itself. Measured since: CTranslate2 stops
#: a Whisper decode at half its max_length (448 gives at most 224 tokens, 100 gives
#: 50), and faster-whisper makes max_new_tokens max_length = len(prompt) +
#: max_new_tokens, so this is in effect about 5 new tokens a second; a decode stopped
#: there goes on from its last timestamp in the next window (no words lost, a window
#: more).
TOKENS_PER_SECOND = 10


def _schedule(model: Any, audio: Any, opts: dict[str, Any]) -> list[dict[str, Any]]:
    """A part that failed at the first temperature, through transcribe()'s schedule from
    its second temperature on (the first is the decode that just failed: one window, the
    same tokens again; on a decode that loops, 224 tokens of beam search), each decode
    stopped at TOKENS_PER_SECOND (and at most 220 new tokens: with the previous text's
    224 as the prompt, still within Whisper's 448)."""
    from epyc_whisper.window import ordinary, temperatures

    cap = min(220, int(TOKENS_PER_SECOND * len(audio) / 16000) + 20)
    if opts.get("max_new_tokens"):
        cap = min(cap, int(opts["max_new_tokens"]))
    temps = temperatures(model, opts)
    rest = {"temperature": temps[1:]} if len(temps) > 1 and len(audio) <= 30 * 16000 else {}
    return ordinary(model, audio, opts | {"max_new_tokens": cap} | rest)


#: Times a failing piece is cut in two before a part of it goes through the schedule:
#: once left a prompt said three times in a half (measured), twice leaves one or two.
#: The first cut is at the longest silence, the second at the one nearest the middle.
HALVINGS = 2


def _read(pcm: Any, chunks: Sequence[tuple[int, int]]) -> Any:
    """Ranges of the shared int16 PCM file, back to back, as float32."""
    import numpy as np

    return np.concatenate([pcm[s:e] for s, e in chunks]).astype(np.float32) / 32768.0


def _to_file_time(
    segs: list[dict[str, Any]], chunks: Sequence[tuple[int, int]]
) -> list[dict[str, Any]]:
    from epyc_whisper.splitting import restore_time

    for d in segs:
        d["start"] = restore_time(d["start"], chunks)
        d["end"] = restore_time(d["end"], chunks, is_end=True)
        for w in d.get("words") or []:
            w["start"] = restore_time(w["start"], chunks)
            w["end"] = restore_time(w["end"], chunks, is_end=True)
    return segs


def _recover(
    model: Any,
    pieces: list[dict[str, Any]],
    pcms: list[Any],
    chunks: list[list[tuple[int, int]]],
    found: list[list[dict[str, Any]]],
    opts: dict[str, Any],
) -> list[dict[str, Any]]:
    """The guard: each piece's VAD speech that no word covers, transcribed again on its
    own, and the quiet speech given with the piece (``_quiet_speech``), asked of Whisper
    (all such stretches at once); their words merged into ``found`` in place. Per
    piece: {"recovered": [{"span_s", "words"}], "unrecognised": [span_s], "quiet":
    [{"span_s", "words"}]}; quiet sound that gave no words is not listed."""
    from epyc_whisper import recovery
    from epyc_whisper.window import try_windows

    sr = 16000
    pad = int(recovery.PAD * sr)
    # Per stretch: its piece, its span (s), the ranges of audio to decode, and its kind.
    todo: list[tuple[int, tuple[float, float], list[tuple[int, int]], str]] = []
    for i, piece in enumerate(pieces):
        speech = piece.get("speech") or chunks[i]
        timed = [(w["start"], w["end"]) for d in found[i] for w in d.get("words") or []]
        spans = recovery.uncovered(
            [(s / sr, e / sr) for s, e in speech], [(s / sr, e / sr) for s, e in chunks[i]], timed
        )
        for lo, hi in spans:
            a, b = int(lo * sr) - pad, int(hi * sr) + pad
            sub = [(max(s, a), min(e, b)) for s, e in chunks[i] if s < b and e > a]
            todo.append((i, (lo, hi), sub, "recovered"))
        for s, e in piece.get("quiet") or []:
            sub = [(max(0, s - pad), min(len(pcms[i]), e + pad))]
            todo.append((i, (round(s / sr, 3), round(e / sr, 3)), sub, "quiet"))
    out: list[dict[str, Any]] = [{"recovered": [], "unrecognised": [], "quiet": []} for _ in pieces]
    if not todo:
        return out
    # Its own window, without the utterances around it that made the decoder skip it, a
    # short one (window.SHORT_WINDOW: a third of the cost of 30 s, no worse WER). At
    # the first temperature only: a stretch that fails the thresholds there has no words
    # worth trusting, and sampling at higher temperatures is where text gets invented.
    bufs = [_read(pcms[i], sub) for i, _, sub, _ in todo]
    again = try_windows(model, bufs, opts, short=True)
    ns = opts.get("no_speech_threshold", 0.6)  # None: the user turned the check off
    merged: dict[int, list[Any]] = {}
    for (i, span, sub, kind), segs in zip(todo, again, strict=True):
        # Text the model itself doubts is speech (no_speech_prob over no_speech_threshold,
        # 0.6 by default, as job.py flags a file) is the usual shape of words invented on
        # noise: not taken.
        heard = segs and (ns is None or any(d["no_speech_prob"] <= ns for d in segs))
        have = [(w["start"], w["end"], w["word"]) for d in found[i] for w in d.get("words") or []]
        words = recovery.within(_to_file_time(segs, sub), span, have) if segs and heard else []
        if segs and words:
            merged.setdefault(i, []).append((span, words, segs[0]))
            out[i][kind].append({"span_s": list(span), "words": len(words)})
        elif kind == "recovered":  # music or noise the VAD took for speech: nothing invented
            out[i]["unrecognised"].append(list(span))
    encode = model.hf_tokenizer.encode
    for i, got in merged.items():
        found[i][:] = recovery.merge(
            found[i], got, lambda t: list(encode(t, add_special_tokens=False).ids)
        )
    return out


def split_recording(
    model: Any, audio: Any, task: dict[str, Any], spec: WorkerSpec, options: dict[str, Any]
) -> dict[str, Any]:
    """Cut a long recording at silences (Silero VAD), detect its language once from its
    speech, and park its samples in a PCM file that every worker can read."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from faster_whisper.vad import VadOptions, get_speech_timestamps, get_vad_model

    from epyc_whisper.splitting import join_parts, part_bounds, plan_pieces, quietest_point, widen

    sr = 16000
    vad = VadOptions(min_silence_duration_ms=300, speech_pad_ms=150)
    # The other workers wait for the pieces, so the VAD runs on this process's cores in
    # parallel, one part each (ONNX Runtime releases the GIL): measured on 600 s, 0.7 s
    # on 2 cores against 1.43 s in one pass. Parts of at most 10 minutes also bound
    # Silero's buffers: on a 2-hour file, 1.2 GB over the samples in one pass.
    cores = len(os.sched_getaffinity(0))
    bounds = part_bounds(len(audio), cores)
    get_vad_model()  # loaded once, before the threads share it
    with ThreadPoolExecutor(min(cores, len(bounds) - 1)) as ex:
        parts = list(
            ex.map(
                lambda lo_hi: [
                    (c["start"], c["end"])
                    for c in get_speech_timestamps(audio[lo_hi[0] : lo_hi[1]], vad)
                ],
                zip(bounds, bounds[1:], strict=False),
            )
        )
        speech = join_parts(parts, bounds, int(vad.min_silence_duration_ms * sr / 1000))
        voiced = speech
        speech = widen(speech, int(spec.keep_silence * sr), len(audio))
        quiet = _quiet_speech(audio, speech, ex)
    if not speech:  # no speech at Silero's threshold: its quiet speech is the pieces
        speech, quiet = quiet, []
    # Enough pieces for every CT2 worker in the pool, none over one window of speech.
    voiced_s = sum(e - s for s, e in speech) / sr
    target = min(spec.piece_target, max(8.0, voiced_s / max(1, spec.pool_workers)))
    plan = plan_pieces(
        speech,
        int(target * sr),
        int(spec.piece_longest * sr),
        lambda lo, hi: quietest_point(audio, lo, hi),
    )
    language, probability = options.get("language"), 1.0
    if language is None and not model.model.is_multilingual:
        language = "en"  # an English-only model: nothing to detect
    elif language is None and plan.pieces:
        language, probability, _ = model.detect_language(audio=_first_speech(audio, speech))
    # Each piece's own VAD speech (not widened): what the guard checks for words.
    raw = [
        [(max(s, p[0][0]), min(e, p[-1][1])) for s, e in voiced if s < p[-1][1] and e > p[0][0]]
        for p in plan.pieces
    ]
    # Each stretch of quiet speech goes with the piece before it (the first piece takes
    # those before it), so that its words, if any, land in their place in time. There
    # are pieces whenever there is quiet speech left: without speech it became them.
    near: list[list[tuple[int, int]]] = [[] for _ in plan.pieces]
    starts = [p[0][0] for p in plan.pieces]
    for s, e in quiet:
        near[max(0, bisect.bisect_right(starts, s) - 1)].append((s, e))
    # Made on first use: a Python API caller that never splits (or is killed) leaves none.
    os.makedirs(spec.tmp_dir, exist_ok=True)
    pcm = os.path.join(spec.tmp_dir, f"{os.getpid()}-{task['id']}.pcm")
    with open(pcm, "wb") as f:
        # A minute at a time: whole-recording temporaries would be several copies of
        # a long file's samples at once.
        for i in range(0, len(audio), 60 * sr):
            block = np.round(audio[i : i + 60 * sr] * 32768.0).clip(-32768, 32767)
            block.astype(np.int16).tofile(f)
    return {
        "pcm": pcm,
        "pieces": plan.pieces,
        "speech": raw,
        "quiet": near,
        "spans_s": [[round(p[0][0] / sr, 3), round(p[-1][1] / sr, 3)] for p in plan.pieces],
        "language": language or "en",
        "language_probability": round(float(probability), 4),
        "duration": round(len(audio) / sr, 3),
        "cuts_s": [round(c / sr, 3) for c in plan.cuts],
        "forced_cuts_s": [round(c / sr, 3) for c in plan.forced],
    }


#: Silero's speech probability from which sound outside the pieces is asked of Whisper
#: (its threshold for speech is 0.5). Measured: whispered and high-pitched sentences
#: after seconds of silence peak at 0.14-0.48, digital silence at 0.02, and 20 s of
#: stationary noise (white, pink or brown, -60 to -30 dBFS) at 0.03-0.14.
QUIET_THRESHOLD = 0.15
#: Longest stretch of such sound asked of Whisper (one window): longer is not speech
#: that Silero merely doubts but sound it never settles on (music, noise).
QUIET_LONGEST = 29.0


def _quiet_speech(audio: Any, speech: list[tuple[int, int]], pool: Any) -> list[tuple[int, int]]:
    """Sound outside ``speech`` (what the pieces hold) in which Silero VAD hears speech
    only at QUIET_THRESHOLD, for the guard to ask Whisper whether it is speech
    (``_recover``). A split recording that left it out lost words that sequential
    faster-whisper, which decodes every second, has: whispered and high-pitched
    sentences, 16 of 136 and 22 of 137 words on two recordings of long pauses. Digital
    silence is skipped without a VAD pass (the cost: 0.02 s on 418 s)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    from epyc_whisper.splitting import sounding

    sr, longest = 16000, int(QUIET_LONGEST * 16000)
    # Parts of one utterance less than a second apart are one stretch: one decode, and
    # the words in their context (a whispered sentence came back in two parts at 300 ms).
    low = VadOptions(threshold=QUIET_THRESHOLD, min_silence_duration_ms=1000, speech_pad_ms=150)

    def heard(lo_hi: tuple[int, int]) -> list[tuple[int, int]]:
        lo, hi = lo_hi
        found = [
            (lo + c["start"], lo + c["end"])
            for c in get_speech_timestamps(audio[lo:hi], low)
            if sr // 2 <= c["end"] - c["start"] <= longest
        ]
        # At this threshold Silero may hear only the loudest part of an utterance, so the
        # whole stretch of sound it lies in is asked of Whisper when that fits one
        # window (between digital silences, the utterance): measured on pauses1, one
        # stretch fewer and 1.1 WER points better than its spans alone (in process).
        return [(lo, hi)] if found and hi - lo <= longest else found

    # At most 10 minutes of sound to one VAD pass, as in split_recording: Silero's
    # buffers grow with its input.
    step = 600 * sr
    parts = [
        (s, min(hi, s + step))
        for lo, hi in sounding(audio, speech, sr // 2)
        for s in range(lo, hi, step)
    ]
    return [r for rs in pool.map(heard, parts) for r in rs]


def _first_speech(audio: Any, speech: list[tuple[int, int]], seconds: int = 30) -> Any:
    """The first ``seconds`` of speech, put back to back (for language detection)."""
    import numpy as np

    parts, n = [], 0
    for s, e in speech:
        parts.append(audio[s : min(e, s + seconds * 16000 - n)])
        n += len(parts[-1])
        if n >= seconds * 16000:
            break
    return np.concatenate(parts) if parts else audio[: seconds * 16000]


def decode_task(path: str, extra: dict[str, Any]) -> tuple[Any, list[str], float]:
    """The task's audio: its file decoded, or the samples (``audio``: float32 mono 16 kHz)
    or encoded bytes (``data``) that the Python API sent through the pipe."""
    from epyc_whisper.audio import MediaError, decode, decode_pyav

    t0 = time.perf_counter()
    notes: list[str] = []
    track = int(extra.get("audio_track", 0))
    if "audio" in extra:
        audio = extra["audio"]
        if not len(audio):
            raise MediaError("empty audio (0 samples)")
    elif "data" in extra:
        import io

        if not extra["data"]:
            raise MediaError("empty bytes (0 bytes)")
        try:
            audio = decode_pyav(io.BytesIO(extra["data"]), track=track, notes=notes)
        except MediaError:
            raise
        except Exception as e:  # PyAV raises many types (av.error.*, ValueError, ...)
            why = getattr(e, "strerror", None) or f"{type(e).__name__}: {e}"
            raise MediaError(f"not decodable media ({why})") from None
        if not audio.size:
            raise MediaError("not decodable media (no decodable audio)")
    else:
        audio = decode(path, track=track, notes=notes)
    return audio, notes, round(time.perf_counter() - t0, 3)


def task_spec(spec: WorkerSpec, task: dict[str, Any]) -> WorkerSpec:
    """The spec a task runs under: the worker's, with the task's own decoding ``options``
    (a call of the Python API) over its spawn-time ones. No new model is needed for any
    of them."""
    opts = task.get("options")
    return dataclasses.replace(spec, options=spec.options | opts) if opts else spec


def transcribe_audio(
    model: Any, audio: Any, options: dict[str, Any], notes: list[str], decode_s: float
) -> dict[str, Any]:
    """One whole file, the ordinary faster-whisper way."""
    t1 = time.perf_counter()
    segments, info = model.transcribe(audio, **options)
    segs = [segment_dict(s) for s in segments]
    return transcript(
        segs,
        info.language,
        info.language_probability,
        info.duration,
        info.duration_after_vad,
        notes,
        decode_s,
        round(time.perf_counter() - t1, 3),
    )


def transcribe_file(
    model: Any,
    path: str,
    options: dict[str, Any],
    extra: dict[str, Any] | None = None,
    spec: WorkerSpec | None = None,
) -> dict[str, Any]:
    """Decode and transcribe one file; segments are materialised here, in the worker.
    A file longer than ``spec.split_above`` comes back as a split plan instead."""
    extra = extra or {}
    if "piece" in extra:
        return transcribe_pieces(model, [extra["piece"]], options)[0]
    audio, notes, decode_s = decode_task(path, extra)
    return _whole_or_split(model, audio, options, notes, decode_s, extra, spec)


def _whole_or_split(
    model: Any,
    audio: Any,
    options: dict[str, Any],
    notes: list[str],
    decode_s: float,
    extra: dict[str, Any],
    spec: WorkerSpec | None,
) -> dict[str, Any]:
    if spec is not None and spec.split_above and len(audio) / 16000 > spec.split_above:
        plan = split_recording(model, audio, extra, spec, options)
        plan["notes"] = notes
        plan["decode_s"] = decode_s
        return {"split": plan}
    return transcribe_audio(model, audio, options, notes, decode_s)


def packing_language(model: Any, spec: WorkerSpec) -> str | None:
    """The language packed clips share: the given one, "en" for an English-only model,
    "detect" for a multilingual model without --language (each clip's language is then
    detected first, and only clips of one language share a window), or None when
    packing is off."""
    if not spec.pack:
        return None
    if spec.options.get("language"):
        return str(spec.options["language"])
    return "detect" if model.model.is_multilingual else "en"


#: Work a group hands back (``transcribe_group``'s ``defer``): the ids of the files it
#: answers for, and the call that returns their messages.
Deferred = tuple[list[int], Callable[[], list[tuple[Any, ...]]]]


@dataclass
class _Clip:
    """A decoded clip with speech, short enough to share a window."""

    task: dict[str, Any]
    audio: Any
    notes: list[str]
    decode_s: float
    voiced: list[tuple[float, float]]  # its VAD speech (s)

    @property
    def speech_s(self) -> float:
        return sum(end - start for start, end in self.voiced)


def transcribe_group(
    model: Any,
    group: list[dict[str, Any]],
    spec: WorkerSpec,
    language: str,
    defer: Callable[[list[Deferred]], None] | None = None,
) -> list[tuple[Any, ...]]:
    """Several files at once: short speech clips packed into shared windows, the rest
    (long files, silence, noise, doubtful clips) the ordinary way. Returns one message
    per file, in group order: ("done", id, result) | ("split", id, plan) |
    ("failed", id, error).

    With ``defer``, what comes after decoding is handed to it instead, as calls that
    return their files' messages: each file that goes the ordinary way (longest first),
    then the packed windows (which hand their doubtful clips back in turn); only files
    that could not be read are answered here. The worker shares that work out over its
    free threads, so that one thread does not take a group's long files in turn while
    another idles (measured: a call of 16 clips with three long ones, 9.8 s, 5.8 s
    shared out)."""
    from faster_whisper.vad import get_speech_timestamps

    from epyc_whisper import packing

    out: list[tuple[Any, ...]] = []
    ordinary: list[tuple[float, Deferred]] = []
    clips: list[_Clip] = []
    for task in group:
        try:
            audio, notes, decode_s = decode_task(task["path"], task)
            dur = len(audio) / 16000
            # Silence and noise never share a window: they could take a neighbour's words.
            speech = get_speech_timestamps(audio) if dur < packing.PACK_BELOW else []
            if speech:
                voiced = [(c["start"] / 16000, c["end"] / 16000) for c in speech]
                clips.append(_Clip(task, audio, notes, decode_s, voiced))
            else:
                run = functools.partial(_ordinary, model, task, audio, notes, decode_s, spec)
                ordinary.append((dur, ([task["id"]], run)))
        except Exception as e:
            out.append(("failed", task["id"], _describe(e)))
    work: list[Deferred] = [d for _, d in sorted(ordinary, key=lambda o: -o[0])]
    if clips:
        ids = [c.task["id"] for c in clips]
        work.append((ids, functools.partial(_windows, model, clips, spec, language, defer)))
    out += _hand_back(work, defer)
    order = {t["id"]: n for n, t in enumerate(group)}
    return sorted(out, key=lambda m: order[m[1]])


def _hand_back(
    work: list[Deferred], defer: Callable[[list[Deferred]], None] | None
) -> list[tuple[Any, ...]]:
    """``work`` given to ``defer`` (no messages here then), or, without one, done here:
    its messages."""
    if defer is not None:
        defer(work)
        return []
    return [msg for _, call in work for msg in call()]


def _windows(
    model: Any,
    clips: list[_Clip],
    spec: WorkerSpec,
    language: str,
    defer: Callable[[list[Deferred]], None] | None,
) -> list[tuple[Any, ...]]:
    """The clips of a group in shared windows; the doubtful ones alone (through
    ``defer`` when given)."""
    try:
        out, alone = _packed(model, clips, spec, language)
    except Exception as e:
        return [("failed", c.task["id"], _describe(e)) for c in clips]
    work: list[Deferred] = [
        ([c.task["id"]], functools.partial(_alone, model, c, spec))
        for c in sorted(alone, key=lambda c: -len(c.audio))
    ]
    return out + _hand_back(work, defer)


def _packed(
    model: Any, clips: list[_Clip], spec: WorkerSpec, language: str
) -> tuple[list[tuple[Any, ...]], list[_Clip]]:
    """Decode the windows the clips pack into: a message for each clip whose share of
    its window holds, and the clips to transcribe alone."""
    from epyc_whisper import packing
    from epyc_whisper.window import try_windows

    sr = 16000
    # Only clips of one language share a window: detect each clip's language first when
    # it is not known (one encoder pass per clip, still far less than a window each).
    langs = [language] * len(clips)
    probability = [1.0] * len(clips)
    if language == "detect":
        found = [model.detect_language(audio=c.audio)[:2] for c in clips]
        langs, probability = [str(f[0]) for f in found], [float(f[1]) for f in found]
    # Per language, its clips' windows; the shared ones are decoded as one batch.
    t0 = time.perf_counter()
    windows: list[tuple[str, packing.Window]] = []
    decoded: dict[int, list[dict[str, Any]] | None] = {}
    for lang in sorted(set(langs)):
        members = [(i, len(c.audio) / sr) for i, c in enumerate(clips) if langs[i] == lang]
        first = len(windows)
        windows += [(lang, w) for w in packing.pack(members)]
        mine = [n for n in range(first, len(windows)) if len(windows[n][1].slots) > 1]
        if not mine:
            continue
        bufs = [packing.samples(windows[n][1], lambda k: clips[k].audio) for n in mine]
        opts = spec.options | {
            "language": lang,
            "word_timestamps": True,
            "condition_on_previous_text": False,
        }
        decoded.update(zip(mine, try_windows(model, bufs, opts, spec.decode_batch), strict=True))
    shared = sum(len(windows[n][1].slots) for n in decoded)
    each = round((time.perf_counter() - t0) / max(1, shared), 3)
    out: list[tuple[Any, ...]] = []
    alone: list[_Clip] = []
    for n, (lang, win) in enumerate(windows):
        if len(win.slots) == 1:
            alone.append(clips[win.slots[0].key])
            continue
        segments = decoded[n]
        # None: the window failed faster-whisper's quality thresholds (repetition,
        # low log probability). Then each clip goes alone, with its own fallback:
        # measured on the dev clips, faster and 0.25 WER points better than the
        # window's own temperature fallback.
        per_clip: Sequence[list[dict[str, Any]] | None] = (
            [None] * len(win.slots) if segments is None else packing.attribute(segments, win)
        )
        for slot, segs in zip(win.slots, per_clip, strict=True):
            c = clips[slot.key]
            why = (
                "the window failed the quality thresholds"
                if segs is None
                else packing.doubt(segs, c.speech_s, c.voiced)
            )
            if why or segs is None:
                c.notes.append(f"packed result doubtful ({why}): transcribed alone")
                alone.append(c)
                continue
            result = _packed_result(
                model,
                segs,
                slot,
                win,
                f"{os.getpid()}-{n}",
                (lang, probability[slot.key]),
                c.notes,
                c.decode_s,
                each,
                keep_words=bool(spec.options.get("word_timestamps")),
            )
            out.append(("done", c.task["id"], result))
    return out, alone


def _ordinary(
    model: Any,
    task: dict[str, Any],
    audio: Any,
    notes: list[str],
    decode_s: float,
    spec: WorkerSpec,
) -> list[tuple[Any, ...]]:
    """A file of a group that is not packed (long, silent or noisy): whole, or split."""
    try:
        r = _whole_or_split(model, audio, spec.options, notes, decode_s, task, spec)
    except Exception as e:
        return [("failed", task["id"], _describe(e))]
    return [("split", task["id"], r["split"]) if "split" in r else ("done", task["id"], r)]


def _alone(model: Any, clip: _Clip, spec: WorkerSpec) -> list[tuple[Any, ...]]:
    """A packed clip whose share of its window was doubtful, transcribed on its own."""
    try:
        r = transcribe_audio(model, clip.audio, spec.options, clip.notes, clip.decode_s)
    except Exception as e:
        return [("failed", clip.task["id"], _describe(e))]
    return [("done", clip.task["id"], r)]


def _packed_result(
    model: Any,
    segs: list[dict[str, Any]],
    slot: Any,
    win: Any,
    window_id: str,
    language: tuple[str, float],
    notes: list[str],
    decode_s: float,
    transcribe_s: float,
    keep_words: bool,
) -> dict[str, Any]:
    """A packed clip's result, in the same shape as an unpacked one, plus provenance."""
    from epyc_whisper.packing import GAP

    for i, seg in enumerate(segs, start=1):  # faster-whisper numbers segments from 1
        seg["id"] = i
        seg["seek"] = 0
        seg["tokens"] = model.hf_tokenizer.encode(seg["text"], add_special_tokens=False).ids
        if not keep_words:
            seg["words"] = None
    # An unpacked segment's keys and order (drops packing's own "foreign_words").
    segs = [only_segment_keys(seg) for seg in segs]
    result = transcript(
        segs, *language, slot.duration, slot.duration, notes, decode_s, transcribe_s
    )
    result["packed"] = {
        "window": window_id,
        "offset_s": round(slot.offset, 3),
        "clips_in_window": len(win.slots),
        "gap_s": GAP,
    }
    return result


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _cpu_s() -> float:
    """CPU seconds (user and system) this process has used, all its threads: with the
    Ray backend a worker is no child of the command, so it reports its own."""
    t = os.times()
    return round(t.user + t.system, 3)


def _peak_rss() -> int:
    """This process's RSS high-water mark (VmHWM): the RSS after a file misses the
    transient peak of decoding and VAD, which is what can exhaust memory."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _rss()


def chunk_batch(
    batch: list[dict[str, Any]], spec: WorkerSpec, language: str | None
) -> list[list[dict[str, Any]]]:
    """Cut a batch from the parent into what one feeder thread takes at once: up to
    ``spec.pack_take`` files to pack together (when packing is on; fewer when the batch
    has not that many for every thread), up to
    ``spec.decode_batch`` pieces of one split recording to decode as one batch (never so
    many that a thread of this process is left without any), or one file alone. Cut in
    arrival order, before any thread takes them: which files share a window then never
    depends on which thread was free, so a rerun of the same input packs the same way
    (measured: with threads racing for files, a clip's neighbours and wording changed
    between runs)."""
    out: list[list[dict[str, Any]]] = []
    group: list[dict[str, Any]] = []
    threads = max(1, spec.workers)
    per_thread = -(-sum("piece" in t for t in batch) // threads)
    take = max(1, min(spec.decode_batch, per_thread))
    # Packable files likewise: a batch smaller than a pack for every thread (a call of
    # the Python API, the tail of a run) is shared out, so no thread idles while another
    # packs the lot. Measured: 5 segments of 30 s in one group went through one thread
    # one by one, the other idle (1.0 CPU busy of 2). A full batch packs as before.
    packable = sum("piece" not in t and "alone" not in t for t in batch)
    per_pack = max(1, min(spec.pack_take, -(-packable // threads)))
    for t in batch:
        if "piece" in t:
            last = out[-1] if out else []
            if last and last[0].get("parent") == t["parent"] and len(last) < take:
                last.append(t)
            else:
                out.append([t])
        elif not language or "alone" in t:  # a file retried "alone" is never packed
            out.append([t])
        else:
            group.append(t)
            if len(group) == per_pack:
                out.append(group)
                group = []
    if group:
        out.append(group)
    return out


def chunk_options(batch: list[dict[str, Any]], spec: WorkerSpec, model: Any) -> list[list[Any]]:
    """``chunk_batch`` for each set of per-task options apart (in order of first arrival):
    files decoded with other options (or in another language) never share a window or a
    decode batch. A batch of the CLI has one set, and is cut exactly as before."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in batch:
        groups.setdefault(json.dumps(t.get("options") or {}, sort_keys=True), []).append(t)
    out: list[list[Any]] = []
    for members in groups.values():
        out += chunk_batch(members, spec, packing_language(model, task_spec(spec, members[0])))
    return out


#: Files between two full garbage collections in a worker (see ``finish``).
GC_EVERY = 32


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """Entry point of a worker (a spawned process, or a thread in degraded mode)."""
    if spec.pin and spec.cpus:
        # Before CTranslate2 loads: its OpenMP pool is created inside this mask.
        os.sched_setaffinity(0, spec.cpus)
    # faster-whisper makes a tqdm bar (disabled) for every file, and tqdm's first bar
    # creates a multiprocessing RLock: a named semaphore that the resource tracker lists
    # until the process unlinks it at exit. A worker killed by a second Ctrl-C never does,
    # and the tracker then warns of a "leaked semaphore". A thread lock is all a process
    # whose bars are all disabled needs.
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    send_lock = threading.Lock()

    def send(*msg: Any) -> None:
        with send_lock:
            conn.send(msg)

    t0 = time.perf_counter()
    rss0 = _rss()
    try:
        get_model(spec)
    except Exception as e:  # the parent decides: retry, smaller layout or degraded mode
        send("load_failed", f"{type(e).__name__}: {e}")
        return
    import ctranslate2
    import faster_whisper

    send(
        "ready",
        {
            "pid": os.getpid(),
            "workers": spec.workers,  # CT2 workers sharing this process's model
            "cpus": sorted(os.sched_getaffinity(0)),
            "load_s": round(time.perf_counter() - t0, 3),
            "rss": _rss(),
            "model_rss": _rss() - rss0,  # what loading the model cost (measured.py)
            "versions": {
                "faster_whisper": faster_whisper.__version__,
                "ctranslate2": ctranslate2.__version__,
            },
        },
    )
    # What the feeder threads take, lowest rank first: files a group handed back
    # (transcribe_group's ``defer``: a free thread takes them while the thread that
    # handed them decodes its window), then chunks of the parent's batches, then the end.
    tasks: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
    order = itertools.count()  # FIFO within a rank; the items themselves never compare
    handed_back, chunk_rank, end_rank = 0, 1, 2

    def put(rank: int, item: Any) -> None:
        tasks.put((rank, next(order), item))

    state = {"files": 0, "asked": False, "queued": 0}
    retiring = threading.Event()
    lock = threading.Lock()

    def stats() -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "rss": _rss(),
            "peak_rss": _peak_rss(),
            "cpu_s": _cpu_s(),
            "cache": vars(_stats).copy(),
            "files": state["files"],
        }

    def maybe_ask() -> None:
        # Ask for the next batch while this one still has a file per thread left,
        # so no thread waits on the parent, and without hoarding work at the tail.
        with lock:
            if not state["asked"] and not retiring.is_set() and state["queued"] <= spec.workers:
                state["asked"] = True
                send("want", spec.workers)

    def finish(msg: tuple[Any, ...]) -> None:
        with lock:
            state["files"] += 1
            collect = state["files"] % GC_EVERY == 0
            recycle = not retiring.is_set() and (
                (spec.max_files and state["files"] >= spec.max_files)
                or (spec.max_rss and _rss() > spec.max_rss)
            )
            if recycle:
                retiring.set()
        if collect:
            # Older PyAV left its resamplers to the garbage collector (faster-whisper
            # issue 390). A full collection holds the GIL about 18 ms here, so it runs
            # once every GC_EVERY files, not twice a file as before (10% of a worker's
            # time on short clips); that still bounds the RSS.
            gc.collect()
        send(*msg, stats())
        if recycle:
            send("retire", f"recycled after {state['files']} files, rss {_rss() >> 20} MiB")

    def one(task: dict[str, Any]) -> tuple[Any, ...]:
        ts = task_spec(spec, task)
        try:
            out = transcribe_file(get_model(spec), task["path"], ts.options, task, ts)
        except Exception as e:
            return ("failed", task["id"], _describe(e))
        if "split" in out:
            return ("split", task["id"], out["split"])
        return ("done", task["id"], out)

    # One lookup here, as before per-task options: packing_language needs the model
    # (multilingual or not) for each batch's options, and get_model counts a cache hit.
    model = get_model(spec)

    def pieces(chunk: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        opts = task_spec(spec, chunk[0]).options
        try:
            rests = piece_passes(get_model(spec), [t["piece"] for t in chunk], opts)
        except Exception:  # each alone, so that only the piece at fault fails
            return [one(t) for t in chunk]
        # Each piece's rest goes back to the feeders, the failing (costly) ones first.
        for (_, rest), t in sorted(zip(rests, chunk, strict=True), key=lambda r: not r[0][0]):
            put(handed_back, functools.partial(piece_rest, t, rest))
        return []

    def piece_rest(task: dict[str, Any], rest: Callable[[], Any]) -> list[tuple[Any, ...]]:
        try:
            return [("done", task["id"], rest())]
        except Exception:  # alone from the start, so that only the piece at fault fails
            return [one(task)]

    def feeder() -> None:
        handed: set[int] = set()

        def defer(items: list[Deferred]) -> None:
            for ids, run in items:
                handed.update(ids)
                put(handed_back, run)

        while True:
            rank, _, chunk = tasks.get()
            if rank == end_rank:
                put(end_rank, None)  # let the other feeders see the end too
                return
            if rank == handed_back:
                for msg in chunk():
                    finish(msg)
                continue
            with lock:
                state["queued"] -= len(chunk)
            maybe_ask()
            for t in chunk:
                send("start", t["id"])
            handed.clear()
            try:
                if "piece" in chunk[0]:
                    msgs = pieces(chunk)
                elif len(chunk) > 1:
                    ts = task_spec(spec, chunk[0])  # a chunk's tasks share their options
                    lang = packing_language(get_model(spec), ts)
                    msgs = transcribe_group(get_model(spec), chunk, ts, str(lang), defer)
                else:
                    msgs = [one(chunk[0])]
            except Exception as e:
                # Whatever fails here fails the chunk's files (those handed back still
                # give their own): a feeder that died instead would leave them started
                # and never answered, and the run waiting for them for ever (seen with
                # an error raised before the pieces' own try).
                msgs = [("failed", t["id"], _describe(e)) for t in chunk if t["id"] not in handed]
            for msg in msgs:
                finish(msg)

    threads = [threading.Thread(target=feeder, daemon=True) for _ in range(spec.workers)]
    for t in threads:
        t.start()
    maybe_ask()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # parent gone: do not linger as an orphan
            if spec.pin:  # a process of its own (not the degraded in-process thread)
                os._exit(0)
            break
        if msg[0] == "stop":
            break
        if msg[0] == "batch":
            with lock:
                state["asked"] = False
                state["queued"] += len(msg[1])
            for chunk in chunk_options(msg[1], spec, model):
                put(chunk_rank, chunk)
            maybe_ask()
    # "stop" comes when the parent holds nothing here, or when the run is interrupted
    # (SIGINT/SIGTERM): then files queued but not started are dropped, not transcribed;
    # only the files in flight finish (those handed back among them).
    kept = []
    while True:
        try:
            rank, _, item = tasks.get_nowait()
        except queue.Empty:
            break
        if rank == handed_back:
            kept.append(item)
    for item in kept:
        put(handed_back, item)
    put(end_rank, None)  # each feeder puts it back for the next one
    for t in threads:
        t.join()
    try:
        send("bye", stats())
    except (OSError, EOFError):
        pass


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if isinstance(e, MediaError) else f"{type(e).__name__}: {text}"
