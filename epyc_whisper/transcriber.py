"""The Python API: a long-lived ``Transcriber`` that loads its models once for many calls.

Creating one plans the layout exactly as ``epyc-whisper transcribe`` would (the same
settings, names and precedence), starts the pinned worker processes and loads each
one's model once; every later ``transcribe`` call reuses them. The workers get the
layout's thread environment in their own fresh interpreters (ProcessBackend ``env``):
the caller's process, environment, affinity and threads are left as they were, and
nothing re-executes the caller.

Calls from several threads (or asyncio tasks) share the one pool: a background thread
runs it (pool.Pool.serve), each input becomes a task, and each finished task is routed
back to the call that submitted it.

No worker outlives the caller: ``close()`` and the context manager stop them; a
Transcriber that is never closed is closed by its finalizer (at garbage collection or
interpreter exit); a caller that is killed takes its workers with it (PR_SET_PDEATHSIG,
pool._die_with_parent); a child the caller forks never owns or stops the parent's pool.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import secrets
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from epyc_whisper.config import parse_size
from epyc_whisper.errors import EnvironmentProblem, UsageError
from epyc_whisper.job import JobState, complete_result, transcribe_options
from epyc_whisper.pool import (
    Backend,
    Pool,
    PoolError,
    ProcessBackend,
    Scheduler,
    Task,
    make_specs,
)
from epyc_whisper.splitting import SplitFiles
from epyc_whisper.transcript import Transcript

log = logging.getLogger("epyc_whisper")

#: The decoding settings a call may change: none of them needs another model.
CALL_OPTIONS = (
    "language",
    "task",
    "beam_size",
    "vad",
    "word_timestamps",
    "initial_prompt",
    "temperature",
)

#: Seconds ``close()`` waits for the pool's thread (the backend gives its workers 10 s
#: to leave, then kills them): a bound, so a wedged pool cannot hang the caller's exit.
CLOSE_WAIT = 60.0


@dataclass
class _Call:
    """One call: a slot per transcript (input order), and where finished ones go.
    ``deliver(slot, transcript)`` is called from the pool's thread."""

    slots: int
    deliver: Callable[[int, Transcript], object]


@dataclass
class _Input:
    """One transcript-to-be: the call it belongs to and its slot there."""

    call: _Call
    slot: int
    source: str | int
    audio_track: int = 0


class _Sink:
    """The Transcriber's pool.PoolEvents: accounting (a job.JobState, as the CLI keeps it),
    split recordings stitched back (splitting.SplitFiles), and each result completed as
    the CLI completes it (job.complete_result) and routed to its call."""

    def __init__(self, owner: Transcriber) -> None:
        self.settings = owner.settings
        self.layout = owner.layout
        self.ids = owner._ids
        self.state = JobState()
        self.versions: dict[str, str] = {}
        self.inputs: dict[int, _Input] = {}
        self.splits = SplitFiles()
        self.scheduler: Scheduler | None = None
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.ended: str | None = None  # why the pool ended, once it has

    # --- PoolEvents -------------------------------------------------------------
    def ready(self, index: int, info: dict[str, Any]) -> None:
        with self.changed:
            self.state.worker_ready(index, info)
            self.versions = info.get("versions", self.versions)
            self.changed.notify_all()

    def done(self, task: Task, result: dict[str, Any], stats: dict[str, Any]) -> None:
        with self.lock:
            self.state.workers[self._index_of(stats.get("pid", 0))] = stats
        if "parent" in task.extra:
            self.state.audio_seconds += task.extra["share"]
            if self.splits.piece_done(task.extra, result):
                parent = task.extra["parent"]
                stitched = self.splits.result(parent)
                self._finish(self.splits.forget(parent), stitched, stats)
            return
        self.state.audio_seconds += float(result.get("duration") or 0)
        self._finish(task, result, stats)

    def failed(self, task: Task, error: str, attempts: int) -> None:
        if "parent" in task.extra:  # a piece failed for good: the whole file fails
            parent = task.extra["parent"]
            if not self.splits.fail(parent):
                return
            if self.scheduler is not None:
                self.scheduler.drop(parent)
            task, error = self.splits.forget(parent), f"piece {error}"
        inp = self.inputs.pop(task.id)
        self.state.failed += 1
        self._deliver(inp, Transcript.failure(inp.source, error))

    def notice(self, message: str) -> None:
        self.state.notices.append(message)
        log.warning("%s", message)

    def split(self, task: Task, plan: dict[str, Any]) -> list[Task]:
        pieces = [
            # The pieces keep their file's decoding options.
            Task(next(self.ids), task.path, extra | {"options": task.extra.get("options", {})})
            for extra in self.splits.pieces(task.id, task, plan)
        ]
        if not pieces:  # no speech anywhere: an empty transcript at once
            stitched = self.splits.result(task.id)
            self._finish(self.splits.forget(task.id), stitched, {})
        return pieces

    # ---------------------------------------------------------------------------
    def _finish(self, task: Task, result: dict[str, Any], stats: dict[str, Any]) -> None:
        inp = self.inputs.pop(task.id)
        complete_result(
            result,
            inp.source,
            self.settings,
            self.layout,
            self.versions,
            inp.audio_track,
            stats.get("pid"),
        )
        self.state.done += 1
        self._deliver(inp, Transcript.from_result(result))

    def _deliver(self, inp: _Input, transcript: Transcript) -> None:
        try:
            inp.call.deliver(inp.slot, transcript)
        except Exception:  # a caller's broken callback must not stop the pool's thread
            log.exception("epyc-whisper: delivering a transcript failed")

    def _index_of(self, pid: int) -> int:
        for i, info in self.state.ready.items():
            if info.get("pid") == pid:
                return i
        return -pid

    def fail_all(self, error: str) -> None:
        """The pool ended (it could not run, or it was closed): every input still
        waiting gets a failed transcript, so no call waits for ever; so does every input
        submitted later (``_run`` checks ``ended`` under the same lock)."""
        with self.lock:
            self.ended = self.ended or error
            gone = [self.inputs.pop(tid) for tid in list(self.inputs)]
        for inp in gone:
            self._deliver(inp, Transcript.failure(inp.source, self.ended))


class _Resources:
    """What a Transcriber owns, apart from the Transcriber itself, so that its
    finalizer (weakref.finalize) can close it without keeping it alive."""

    def __init__(self, tmp: str) -> None:
        self.pid = os.getpid()
        self.tmp = tmp
        self.pool: Pool | None = None
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if os.getpid() != self.pid:
            return  # a forked child: the pool is the parent's, never ours to stop
        if self.pool is not None:
            self.pool.close(CLOSE_WAIT)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _close(res: _Resources) -> None:
    res.close()


# A forked child of the caller inherits copies of every Transcriber, with their pipes to
# the parent's workers: it must neither use them nor stop them. After a fork, the child's
# copies are marked closed (their close() does nothing) and their pipe ends are closed
# (the parent's stay open; a worker sees its parent's death by PDEATHSIG and by EOF once
# every copy of its pipe is closed).
_LIVE: weakref.WeakSet[_Resources] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for res in list(_LIVE):
        res.closed = True
        backend = res.pool.backend if res.pool is not None else None
        for conn in getattr(backend, "conns", {}).values():
            try:
                conn.close()
            except OSError:
                pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Transcriber:
    """Transcribe many inputs over many calls with models loaded once.

    ``Transcriber(model=None, preset=None, config=None, *, in_process=False, **settings)``
    takes the CLI's setting names (``compute_type``, ``processes``, ``workers``,
    ``threads``, ``batch_size``, ``language``, ``beam_size``, ``vad``, ``pack``,
    ``split_above``, ... and the guide's aliases such as ``num_models``) with the CLI's
    precedence: an argument here > ``EPYC_WHISPER_*`` > the config file (``config``, or
    ``EPYC_WHISPER_CONFIG``) > the preset > the layout saved by ``bench`` > detected.
    A bad setting raises ValueError saying what is wrong and what is allowed.

    ``in_process=True`` is the traditional way: one model in the caller's own process,
    inputs one at a time, no worker processes (no packing, no splitting). The same mode
    is the fallback when worker processes cannot start; then one RuntimeWarning says so
    (``warnings.warn``: a caller can filter it or turn it into an error).

    Use it as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        preset: str | None = None,
        config: str | os.PathLike[str] | None = None,
        *,
        in_process: bool = False,
        **settings: Any,
    ) -> None:
        from epyc_whisper.models import check_language, resolve_model

        given = {k: v for k, v in settings.items() if v is not None}
        if model is not None:
            given["model"] = str(model)
        try:
            self.settings, self.layout, self._env = _plan(
                given, preset, str(config) if config is not None else None
            )
            self.model_path = resolve_model(self.settings.model, self.settings.source("model"))
            check_language(
                self.settings.language,
                self.model_path,
                self.settings.model,
                self.settings.source("language"),
            )
        except UsageError as e:
            raise ValueError(str(e)) from None
        self.in_process = in_process
        self.degraded = False
        self._ids = itertools.count()
        self._options = transcribe_options(self.settings)
        # Where split recordings park their samples: named now, made by the first split
        # (engine.split_recording), removed by close().
        tmp = os.path.join(
            tempfile.gettempdir(), f"epyc-whisper-{os.getpid()}-{secrets.token_hex(4)}"
        )
        self._res = _Resources(tmp)
        _LIVE.add(self._res)
        self._finalizer = weakref.finalize(self, _close, self._res)
        self._busy = 0  # calls in progress (for wall_s: the time some call was running)
        self._busy_since = 0.0
        self._busy_s = 0.0
        self._busy_lock = threading.Lock()
        self._created = time.monotonic()
        if in_process:
            self._start(in_process=True)
        elif self.settings.backend == "ray":
            # A cluster that cannot be reached is the caller's to know of, not a reason to
            # run one model in this process instead.
            self._start(in_process=False)
        else:
            try:
                self._start(in_process=False)
            except Exception as e:
                # The guide's degraded mode: no worker process could start (no working
                # multiprocessing, a sandbox that forbids it, ...).
                warnings.warn(
                    f"epyc-whisper: worker processes could not start ({e}); running one "
                    "model in this process instead (degraded mode)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.degraded = True
                self._start(in_process=True)
                self._sink.state.degraded = True

    @classmethod
    def from_asr_config(cls, asr_config: Mapping[str, Any]) -> Transcriber:
        """One from the guide's ``asr_config`` dict (``mode``, ``model``,
        ``use_epyc_optimization``, ``epyc_num_models``, ``epyc_batch_size``, any setting
        name); its meaning is in guide.py."""
        from epyc_whisper.guide import asr_config_settings

        settings, in_process = asr_config_settings(asr_config)
        return cls(in_process=in_process, **settings)

    # --- the pool ---------------------------------------------------------------
    def _start(self, in_process: bool) -> None:
        from epyc_whisper.packing import why_not_packed

        s = self.settings
        pack = bool(s.pack) and why_not_packed(s.as_dict()) is None and not in_process
        specs = make_specs(
            self.layout,
            str(self.model_path),
            self._options,
            max_files=s.max_files_per_worker,
            max_rss=parse_size(s.max_worker_rss) if s.max_worker_rss else 0,
            split_above=s.split_above if s.split and not in_process else 0.0,
            tmp_dir=self._res.tmp,
            pack=pack,
            device_index=[int(i) for i in s.device_index.split(",")],
        )
        if in_process:
            one = specs[0]
            # One model, one replica, inputs one at a time, the way faster-whisper is
            # used ordinarily: its own thread default (cpu_threads=0: 4) unless asked.
            one.workers, one.cpus, one.pin = 1, [], False
            one.threads = int(s.threads or 0)
            specs = [one]
            backend: Backend = ProcessBackend(specs, in_process=True)
        elif s.backend == "ray":  # actors on every node of a Ray cluster (ray_backend.py)
            from epyc_whisper import ray_backend

            cluster, specs, _nodes = ray_backend.build(
                s,
                str(self.model_path),
                self._options,
                max_files=s.max_files_per_worker,
                max_rss=parse_size(s.max_worker_rss) if s.max_worker_rss else 0,
                split_above=s.split_above if s.split else 0.0,
                pack=pack,
            )
            backend, sink_release = cluster, cluster.release
        else:
            backend = ProcessBackend(specs, env=self._env)
        self.processes = len(specs)
        self._pack = pack
        sched = Scheduler([], self.layout.batch_size, len(specs))
        # A sink of its own for each pool: one that ended (a failed start) failed its own.
        sink = self._sink = _Sink(self)
        sink.scheduler = sched
        if s.backend == "ray" and not in_process:
            sink.splits.release = sink_release
        # The run settings the CLI's Job applies apply here too: a file that hangs past
        # file_timeout is given up and its worker replaced (never in-process: nothing to
        # kill there).
        pool = Pool(backend, len(specs), sched, sink, None if in_process else s.file_timeout)
        self._res.pool = pool
        ended = threading.Event()

        # Nothing the pool's thread holds may refer to the Transcriber itself: then a
        # Transcriber the caller drops is collected, and its finalizer stops the workers.
        def on_exit(error: BaseException | None) -> None:
            ended.set()
            with sink.changed:
                sink.changed.notify_all()
            sink.fail_all(
                f"the worker pool stopped ({error})" if error else "the Transcriber was closed"
            )

        pool.serve(on_exit)
        # Wait for every worker's model (or for the pool to give up on the rest).
        with sink.changed:
            while len(sink.state.ready) < len(specs) and not ended.is_set():
                if sink.state.ready and len(pool.load_errors) + len(sink.state.ready) >= len(specs):
                    break
                sink.changed.wait(0.1)
        if not sink.state.ready:
            pool.close()
            why = pool.error or "; ".join(pool.load_errors) or "no worker became ready"
            if isinstance(why, PoolError) or pool.load_errors:
                raise EnvironmentProblem(f"the model could not be loaded: {why}")
            raise EnvironmentProblem(str(why))

    # --- calls ------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._res.closed:
            if os.getpid() != self._res.pid:
                raise RuntimeError(
                    "this Transcriber belongs to the process that created it "
                    f"(pid {self._res.pid}); create a new one in this process"
                )
            raise RuntimeError("this Transcriber is closed")
        pool = self._res.pool
        if pool is None or not pool.running:
            raise RuntimeError(f"the worker pool has stopped ({pool.error if pool else None})")

    def _call_options(self, options: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """A call's decoding options: checked as the settings are, as faster-whisper
        arguments that differ from the Transcriber's own; and whether its inputs may
        be packed."""
        from epyc_whisper.config import SPECS, canonical_key
        from epyc_whisper.models import check_language
        from epyc_whisper.packing import why_not_packed

        vals: dict[str, Any] = {}
        for k, v in options.items():
            try:
                key = canonical_key(k, "transcribe() options")
            except UsageError as e:
                raise ValueError(str(e)) from None
            if key not in CALL_OPTIONS:
                raise ValueError(
                    f"{k!r} cannot change per call (it needs other workers or another model); "
                    f"give it to Transcriber(); per call: {', '.join(CALL_OPTIONS)}"
                )
            try:
                vals[key] = SPECS[key].check(key, v) if v is not None else None
            except ValueError as e:
                raise ValueError(
                    f"invalid {key} = {v!r} (transcribe() options): expected {e}"
                ) from None
        if "language" in vals:
            try:
                check_language(vals["language"], self.model_path, self.settings.model, "call")
            except UsageError as e:
                raise ValueError(str(e)) from None
        settings = self.settings.with_values("call", **vals)
        mine = transcribe_options(settings)
        diff = {k: v for k, v in mine.items() if self._options.get(k, None) != v}
        pack = self._pack and why_not_packed(settings.as_dict()) is None
        return diff, pack

    def _tasks(
        self, inputs: Any, options: dict[str, Any], call: _Call
    ) -> tuple[list[Task], list[tuple[int, Transcript]]]:
        """The tasks of one call, and the transcripts known at once (bad inputs)."""
        from epyc_whisper.sources import collect, parse_extensions

        opts, pack = self._call_options(options)
        if isinstance(inputs, (str, bytes, bytearray, os.PathLike)) or _is_array(inputs):
            inputs = [inputs]
        extensions = parse_extensions(None)
        tasks: list[Task] = []
        now: list[tuple[int, Transcript]] = []
        track = int(self.settings.audio_track)

        def add(source: str | int, path: str, extra: dict[str, Any]) -> None:
            slot = call.slots
            call.slots += 1
            extra = {"audio_track": track, **extra}
            if opts:
                extra["options"] = opts
            if not pack:
                extra["alone"] = True  # the call's options make packing unsafe
            t = Task(next(self._ids), path, extra)
            self._sink.inputs[t.id] = _Input(call, slot, source, track)
            tasks.append(t)

        for index, item in enumerate(inputs):
            if isinstance(item, (bytes, bytearray, memoryview)):
                # In-memory inputs travel to the worker in its pipe, with the task: no
                # temporary file that a killed caller could leave behind, and no disk
                # write and read of what is already in memory. A retry (the worker died)
                # sends them again; the parent holds them until their transcript is back.
                add(index, f"<bytes {index}>", {"data": bytes(item)})
            elif _is_array(item):
                audio, why = _samples(item)
                if why:
                    now.append((call.slots, Transcript.failure(index, why)))
                    call.slots += 1
                else:
                    add(index, f"<array {index}>", {"audio": audio})
            elif isinstance(item, (str, os.PathLike)):
                arg = os.fspath(item)
                # "-" is the CLI's stdin list; here it can only be a file of that name.
                found, skipped = collect(["./-" if arg == "-" else arg], extensions)
                for s in skipped:
                    if s.named:  # an input the caller named that cannot be read
                        now.append((call.slots, Transcript.failure(s.path, s.reason)))
                        call.slots += 1
                for inp in found:
                    add(str(inp.path), str(inp.path), {})
            else:
                now.append(
                    (
                        call.slots,
                        Transcript.failure(
                            index,
                            f"unsupported input type {type(item).__name__} (expected a path, "
                            "a folder, bytes of an encoded file or a float32 numpy array)",
                        ),
                    )
                )
                call.slots += 1
        return tasks, now

    def _run(
        self, inputs: Any, options: dict[str, Any], deliver: Callable[[int, Transcript], object]
    ) -> _Call:
        self._check_open()
        call = _Call(0, deliver)
        tasks, now = self._tasks(inputs, options, call)
        self._begin()
        for slot, t in now:
            deliver(slot, t)
        if tasks:
            pool, sink = self._res.pool, self._sink
            assert pool is not None
            with sink.lock:  # not after the pool's end, or nothing would answer them
                ended = sink.ended
                if not ended:
                    pool.submit(tasks)
            if ended:
                sink.fail_all(ended)
        return call

    def _begin(self) -> None:
        with self._busy_lock:
            if self._busy == 0:
                self._busy_since = time.monotonic()
            self._busy += 1

    def _end(self) -> None:
        with self._busy_lock:
            self._busy -= 1
            if self._busy == 0:
                self._busy_s += time.monotonic() - self._busy_since

    def iter_transcribe(self, inputs: Any, **options: Any) -> Iterator[Transcript]:
        """Yield each Transcript as it finishes (not in input order). ``inputs`` and
        ``options`` as in ``transcribe``."""
        done: queue.SimpleQueue[tuple[int, Transcript]] = queue.SimpleQueue()
        call = self._run(inputs, options, lambda slot, t: done.put((slot, t)))
        try:
            for _ in range(call.slots):
                yield done.get()[1]
        finally:
            self._end()

    def transcribe(self, inputs: Any, **options: Any) -> list[Transcript]:
        """Transcribe ``inputs``, one Transcript each, in input order (a folder gives one
        per media file in it, walked as the CLI walks it).

        ``inputs``: one input or a list of them, mixed freely: file paths, folders, bytes
        of an encoded file (any format PyAV reads), or numpy float32 mono 16 kHz arrays.
        ``options``: decoding settings for this call only: language, task, beam_size,
        vad, word_timestamps, initial_prompt, temperature (a ValueError names a bad one).
        A bad input gives a failed Transcript with its reason, never an exception."""
        done: queue.SimpleQueue[tuple[int, Transcript]] = queue.SimpleQueue()
        call = self._run(inputs, options, lambda slot, t: done.put((slot, t)))
        out: list[Transcript | None] = [None] * call.slots
        try:
            for _ in range(call.slots):
                slot, t = done.get()
                out[slot] = t
        finally:
            self._end()
        return [t for t in out if t is not None]

    async def atranscribe(self, inputs: Any, **options: Any) -> list[Transcript]:
        """``transcribe`` for asyncio: awaits the results without blocking the event loop
        (they are handed to the loop with call_soon_threadsafe)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Queue[tuple[int, Transcript]] = asyncio.Queue()

        def deliver(slot: int, t: Transcript) -> None:
            loop.call_soon_threadsafe(done.put_nowait, (slot, t))

        # Walking folders and checking options touch the disk: not in the loop's thread.
        call = await asyncio.to_thread(self._run, inputs, options, deliver)
        out: list[Transcript | None] = [None] * call.slots
        try:
            for _ in range(call.slots):
                slot, t = await done.get()
                out[slot] = t
        finally:
            self._end()
        return [t for t in out if t is not None]

    async def aiter_transcribe(self, inputs: Any, **options: Any) -> AsyncIterator[Transcript]:
        """``iter_transcribe`` for asyncio."""
        loop = asyncio.get_running_loop()
        done: asyncio.Queue[Transcript] = asyncio.Queue()
        call = await asyncio.to_thread(
            self._run, inputs, options, lambda _, t: loop.call_soon_threadsafe(done.put_nowait, t)
        )
        try:
            for _ in range(call.slots):
                yield await done.get()
        finally:
            self._end()

    # --- the rest ---------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        """The CLI summary's figures, cumulative over this Transcriber's life: ``loads``,
        ``cache_hits``, ``cache_misses``, ``hit_rate`` (each worker's model cache, summed),
        ``files`` (transcripts done), ``failed``, ``audio_s``, ``wall_s`` (seconds during
        which some call was running: idle time between calls is not counted), ``rtfx``
        (audio_s / wall_s), ``load_s`` (from creation to the last model loaded),
        ``worker_cpu_s`` (CPU seconds the worker processes, or Ray actors, report for
        themselves as of their last file), ``processes``, ``in_process``, ``degraded``."""
        st = self._sink.state
        with self._sink.lock:
            cache = st.cache()
            cpu = st.worker_cpu()
        with self._busy_lock:
            wall = self._busy_s + (time.monotonic() - self._busy_since if self._busy else 0.0)
        return {
            "loads": int(cache["loads"]),
            "cache_hits": int(cache["hits"]),
            "cache_misses": int(cache["misses"]),
            "hit_rate": round(cache["hit_rate"], 4),
            "files": st.done,
            "failed": st.failed,
            "audio_s": round(st.audio_seconds, 3),
            "wall_s": round(wall, 3),
            "rtfx": round(st.audio_seconds / wall, 2) if wall > 0 else 0.0,
            "load_s": None if st.first_ready is None else round(st.first_ready - self._created, 3),
            "worker_cpu_s": round(cpu, 3),
            "processes": self.processes,
            "in_process": self.in_process,
            "degraded": self.degraded,
        }

    @property
    def worker_pids(self) -> list[int]:
        """The process ids of the worker processes (the caller's own in-process)."""
        return sorted(int(i["pid"]) for i in self._sink.state.ready.values())

    def close(self) -> None:
        """Stop the workers and remove this Transcriber's temporary files. Inputs of a
        call still waiting (in another thread) come back as failed transcripts ("the
        Transcriber was closed"); a later call raises RuntimeError. Closing twice does
        nothing."""
        self._finalizer()

    def __enter__(self) -> Transcriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plan(given: dict[str, Any], preset: str | None, config: str | None) -> tuple[Any, ...]:
    """Settings, layout and the workers' environment, planned as the CLI plans them
    (prepare.prepare) - except that the environment is for the workers only."""
    from epyc_whisper.envsetup import child_environ
    from epyc_whisper.prepare import prepare

    prepared = prepare(given, preset=preset, config=config)
    prepared.check_compute_type()
    env = child_environ(prepared.env, os.environ)
    return prepared.settings, prepared.layout, env


def _is_array(x: Any) -> bool:
    # Not isinstance(numpy.ndarray): the parent never imports numpy itself.
    return type(x).__module__ == "numpy" and hasattr(x, "dtype") and hasattr(x, "ndim")


def _samples(x: Any) -> tuple[Any, str | None]:
    """An array input as float32 mono 16 kHz samples, or why it cannot be one."""
    if x.ndim != 1:
        return None, f"expected mono samples (a 1-D array), got shape {tuple(x.shape)}"
    if x.dtype.kind != "f":
        return None, f"expected float32 samples in [-1, 1] at 16 kHz, got dtype {x.dtype}"
    return x.astype("float32", copy=False), None
