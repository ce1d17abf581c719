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


def transcribe_file(
    model: Any, path: str, options: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Decode and transcribe one file; segments are materialised here, in the worker."""
    extra = extra or {}
    from epyc_whisper.audio import decode

    t0 = time.perf_counter()
    notes: list[str] = []
    audio = decode(path, track=int(extra.get("audio_track", 0)), notes=notes)
    t1 = time.perf_counter()
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
                msg = (
                    "done",
                    task["id"],
                    transcribe_file(get_model(spec), task["path"], spec.options, task),
                )
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
            os._exit(0) if spec.pin else None
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
