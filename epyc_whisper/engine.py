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
"""

from __future__ import annotations

import functools
import gc
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any


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
    tmp_dir: str = ""


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
def _load(path: str, device: str, compute_type: str, threads: int, workers: int) -> Any:
    from faster_whisper import WhisperModel

    t0 = time.perf_counter()
    model = WhisperModel(
        path, device=device, compute_type=compute_type, cpu_threads=threads, num_workers=workers
    )
    _stats.loads += 1
    _stats.load_seconds += time.perf_counter() - t0
    return model


def get_model(spec: WorkerSpec) -> Any:
    """The worker's model, loaded on first use and kept for the whole run."""
    before = _load.cache_info()
    model = _load(spec.model_path, spec.device, spec.compute_type, spec.threads, spec.workers)
    after = _load.cache_info()
    if after.hits > before.hits:
        _stats.hits += 1
    else:
        _stats.misses += 1
    _stats.cached_models = after.currsize
    return model


def segment_dict(seg: Any) -> dict[str, Any]:
    """A faster-whisper Segment as openai-whisper's segment dict (plain data)."""
    d = {
        "id": seg.id,
        "seek": seg.seek,
        "start": round(seg.start, 3),
        "end": round(seg.end, 3),
        "text": seg.text,
        "tokens": list(seg.tokens),
        "temperature": seg.temperature,
        "avg_logprob": seg.avg_logprob,
        "compression_ratio": seg.compression_ratio,
        "no_speech_prob": seg.no_speech_prob,
    }
    if seg.words is not None:
        d["words"] = [
            {
                "start": round(w.start, 3),
                "end": round(w.end, 3),
                "word": w.word,
                "probability": w.probability,
            }
            for w in seg.words
        ]
    return d


def transcribe_piece(model: Any, piece: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """One piece of a split recording: its speech ranges read from the shared PCM file
    (no copy of the whole recording per worker), put back to back, transcribed, and its
    times mapped back to file time."""
    import numpy as np

    from epyc_whisper.splitting import restore_time

    t0 = time.perf_counter()
    chunks = [tuple(c) for c in piece["chunks"]]
    pcm = np.memmap(piece["pcm"], dtype=np.int16, mode="r")
    audio = np.concatenate([pcm[s:e] for s, e in chunks]).astype(np.float32) / 32768.0
    del pcm
    segments, _info = model.transcribe(audio, **(options | {"language": piece["language"]}))
    segs = []
    for seg in segments:
        d = segment_dict(seg)
        d["start"] = restore_time(d["start"], chunks)
        d["end"] = restore_time(d["end"], chunks, is_end=True)
        d["seek"] = int(d["start"] * 100)  # frames (10 ms) into the file, as unsplit
        for w in d.get("words") or []:
            w["start"] = restore_time(w["start"], chunks)
            w["end"] = restore_time(w["end"], chunks, is_end=True)
        segs.append(d)
    return {
        "piece": piece["index"],
        "segments": segs,
        "duration": round(len(audio) / 16000, 3),
        "timings": {"transcribe_s": round(time.perf_counter() - t0, 3)},
    }


def split_recording(
    model: Any, audio: Any, task: dict[str, Any], spec: WorkerSpec, options: dict[str, Any]
) -> dict[str, Any]:
    """Cut a long recording at silences (Silero VAD), detect its language once from its
    speech, and park its samples in a PCM file that every worker can read."""
    import numpy as np
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    from epyc_whisper.splitting import plan_pieces, quietest_point, widen

    sr = 16000
    speech = [
        (c["start"], c["end"])
        for c in get_speech_timestamps(
            audio, VadOptions(min_silence_duration_ms=300, speech_pad_ms=150)
        )
    ]
    speech = widen(speech, int(spec.keep_silence * sr), len(audio))
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
        voiced = np.concatenate([audio[s:e] for s, e in speech])[: 30 * sr]
        language, probability, _ = model.detect_language(audio=voiced)
    pcm = os.path.join(spec.tmp_dir, f"{os.getpid()}-{task['id']}.pcm")
    np.round(audio * 32768.0).clip(-32768, 32767).astype(np.int16).tofile(pcm)
    return {
        "pcm": pcm,
        "pieces": plan.pieces,
        "spans_s": [[round(p[0][0] / sr, 3), round(p[-1][1] / sr, 3)] for p in plan.pieces],
        "language": language or "en",
        "language_probability": round(float(probability), 4),
        "duration": round(len(audio) / sr, 3),
        "cuts_s": [round(c / sr, 3) for c in plan.cuts],
        "forced_cuts_s": [round(c / sr, 3) for c in plan.forced],
    }


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
        return transcribe_piece(model, extra["piece"], options)
    from epyc_whisper.audio import decode

    t0 = time.perf_counter()
    notes: list[str] = []
    audio = decode(path, track=int(extra.get("audio_track", 0)), notes=notes)
    t1 = time.perf_counter()
    if spec is not None and spec.split_above and len(audio) / 16000 > spec.split_above:
        plan = split_recording(model, audio, extra, spec, options)
        plan["notes"] = notes
        plan["decode_s"] = round(t1 - t0, 3)
        return {"split": plan}
    segments, info = model.transcribe(audio, **options)
    segs = [segment_dict(s) for s in segments]
    t2 = time.perf_counter()
    return {
        "text": "".join(s["text"] for s in segs),
        "segments": segs,
        "language": info.language,
        "language_probability": round(info.language_probability, 4),
        "duration": round(info.duration, 3),
        "duration_after_vad": round(info.duration_after_vad, 3),
        "timings": {"decode_s": round(t1 - t0, 3), "transcribe_s": round(t2 - t1, 3)},
        "notes": notes,
    }


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


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


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """Entry point of a worker (a spawned process, or a thread in degraded mode)."""
    if spec.pin and spec.cpus:
        # Before CTranslate2 loads: its OpenMP pool is created inside this mask.
        os.sched_setaffinity(0, spec.cpus)
    send_lock = threading.Lock()

    def send(*msg: Any) -> None:
        with send_lock:
            conn.send(msg)

    t0 = time.perf_counter()
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
            "cpus": sorted(os.sched_getaffinity(0)),
            "load_s": round(time.perf_counter() - t0, 3),
            "rss": _rss(),
            "versions": {
                "faster_whisper": faster_whisper.__version__,
                "ctranslate2": ctranslate2.__version__,
            },
        },
    )
    tasks: queue.Queue[dict[str, Any] | None] = queue.Queue()
    state = {"files": 0, "asked": False}
    retiring = threading.Event()
    lock = threading.Lock()

    def stats() -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "rss": _rss(),
            "peak_rss": _peak_rss(),
            "cache": vars(_stats).copy(),
            "files": state["files"],
        }

    def maybe_ask() -> None:
        # Ask for the next batch while this one still has a file per thread left,
        # so no thread waits on the parent, and without hoarding work at the tail.
        with lock:
            if not state["asked"] and not retiring.is_set() and tasks.qsize() <= spec.workers:
                state["asked"] = True
                send("want", spec.workers)

    def feeder() -> None:
        while True:
            task = tasks.get()
            if task is None:
                return
            maybe_ask()
            send("start", task["id"])
            msg: tuple[Any, ...]
            try:
                out = transcribe_file(get_model(spec), task["path"], spec.options, task, spec)
                if "split" in out:
                    msg = ("split", task["id"], out["split"])
                else:
                    msg = ("done", task["id"], out)
            except Exception as e:
                msg = ("failed", task["id"], _describe(e))
            # PyAV's resampler objects are only freed by the garbage collector
            # (faster-whisper issue 390); collecting per file bounds the RSS.
            gc.collect()
            with lock:
                state["files"] += 1
                recycle = not retiring.is_set() and (
                    (spec.max_files and state["files"] >= spec.max_files)
                    or (spec.max_rss and _rss() > spec.max_rss)
                )
                if recycle:
                    retiring.set()
            send(*msg, stats())
            if recycle:
                send("retire", f"recycled after {state['files']} files, rss {_rss() >> 20} MiB")

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
            for task in msg[1]:
                tasks.put(task)
            maybe_ask()
    for _ in threads:
        tasks.put(None)
    for t in threads:
        t.join()
    try:
        send("bye", stats())
    except (OSError, EOFError):
        pass


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if type(e).__name__ == "MediaError" else f"{type(e).__name__}: {text}"
