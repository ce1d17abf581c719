"""The parent side: spawn and pin workers, hand out batches, collect results, survive faults.

Scheduling sits behind one small interface, ``Backend`` (start workers, send a
batch to one, receive events, replace or stop one), so a cluster backend can be
added without touching the engine, the writers or the progress view. The policy
(batch sizes, the tail split, retries, poison files) is in ``Scheduler``, pure
logic, unit-tested with a fake backend.

Each worker has its own pipe (never a shared queue): a worker killed while it
holds a queue's lock would block every other worker; a killed worker's pipe just
reads EOF, and the parent re-queues what that worker held.

Two ways to drive a Pool: ``run()`` takes one batch of tasks to the end (the CLI);
``serve()`` keeps the workers in a background thread, ``submit()`` adds tasks at any
time and ``close()`` stops it (the Python API's long-lived Transcriber, which routes
each task's result back to the call that submitted it).
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from epyc_whisper.engine import WorkerSpec, worker_main
from epyc_whisper.errors import EnvironmentProblem


@dataclass
class Task:
    """One input file. Attributes: id; path; extra: per-file options (audio_track);
    attempts: times it was in flight when its worker died or hung."""

    id: int
    path: str
    extra: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, **self.extra}


class Scheduler:
    """Which files go where. Full batches of ``batch_size`` while there is plenty;
    at the tail, smaller batches so no worker idles while another holds a full one."""

    def __init__(
        self, tasks: Iterable[Task], batch_size: int, nworkers: int, max_attempts: int = 2
    ) -> None:
        self.pending: deque[Task] = deque(tasks)
        self.batch_size = batch_size
        self.nworkers = max(1, nworkers)
        self.max_attempts = max_attempts

    def next_batch(self, want: int) -> list[Task]:
        """A batch for a process with ``want`` free CT2 workers (threads)."""
        if not self.pending:
            return []
        # Split what is left evenly over all processes, but never less than one
        # file per asking thread: the tail is shared, not held by one worker.
        fair = math.ceil(len(self.pending) / self.nworkers)
        size = max(min(want, len(self.pending)), min(self.batch_size, fair))
        return [self.pending.popleft() for _ in range(min(size, len(self.pending)))]

    def requeue(self, tasks: Iterable[Task]) -> None:
        """Unfinished files of a lost worker go first, in their order."""
        self.pending.extendleft(reversed(list(tasks)))

    def drop(self, parent: int) -> int:
        """Forget the queued pieces of a split file that has already failed."""
        keep = [t for t in self.pending if t.extra.get("parent") != parent]
        dropped = len(self.pending) - len(keep)
        self.pending = deque(keep)
        return dropped

    def crashed(self, task: Task) -> bool:
        """Count a worker death against a file in flight; True when it is now a poison file."""
        task.attempts += 1
        return task.attempts >= self.max_attempts


class Backend(Protocol):
    """Where workers run. Events are tuples (worker index, kind, *payload).

    Besides a worker's own messages, a backend may add two of its own: ``(None,
    "notice", message)`` for the user, and ``(index, "joined")`` for a worker it made
    room for during the run (a Ray node that joined the cluster): the pool then starts
    it and feeds it from the same queue as the others."""

    def start(self, index: int) -> None: ...
    def send_batch(self, index: int, batch: list[dict[str, Any]]) -> None: ...
    def stop(self, index: int) -> None: ...
    def kill(self, index: int) -> None: ...
    def events(self, timeout: float) -> list[tuple[Any, ...]]: ...
    def alive(self) -> list[int]: ...
    def has_pipes(self) -> bool: ...
    def shutdown(self) -> None: ...


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the parent dies, so none lingers as an orphan."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    except OSError:
        pass


#: The oom_score_adj of worker processes (-1000..1000; the parent keeps its own, 0).
OOM_SCORE_ADJ = 500


def _prefer_oom_kill() -> None:
    """Linux: under memory pressure the OOM killer picks a worker (which the pool
    replaces, re-queueing its files) before the parent that holds the run's accounting.
    Raising one's own oom_score_adj needs no privilege."""
    try:
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as f:
            f.write(str(OOM_SCORE_ADJ))
    except OSError:
        pass


def _process_entry(conn: Connection, spec: WorkerSpec) -> None:
    _die_with_parent()
    _prefer_oom_kill()
    # The parent handles SIGINT/SIGTERM for the whole run (finish in-flight files first).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    worker_main(conn, spec)


def _spawned_entry(fd: int) -> None:
    """A worker started by ``ProcessBackend(env=...)``: a fresh interpreter whose
    environment already holds the thread variables, that reads its spec from its pipe."""
    conn = Connection(fd)
    _process_entry(conn, conn.recv())


class _Child:
    """A worker started as ``python -c ...`` (subprocess), with the face of a
    multiprocessing.Process that ProcessBackend uses: is_alive, join, kill, exitcode, pid."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        if self.is_alive():
            self.popen.kill()

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()


class ProcessBackend:
    """Spawned worker processes, each pinned to its CPU set, one pipe each.

    ``env``: start each worker as a fresh interpreter with this environment (the thread
    variables of the layout) instead of a multiprocessing child, which inherits the
    caller's environment and re-imports its ``__main__`` (where numpy or CTranslate2 may
    be imported before any variable could be set). The CLI has no need for it (it
    re-executed itself with the environment already set); the Python API does, since it
    must leave the caller's own environment as it was."""

    def __init__(
        self,
        specs: list[WorkerSpec],
        in_process: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.specs = specs
        self.in_process = in_process
        self.env = env
        self.ctx = mp.get_context("spawn")  # CTranslate2 is not fork-safe
        self.conns: dict[int, Connection] = {}
        self.procs: dict[int, Any] = {}
        self.pids: dict[int, int] = {}

    def start(self, index: int) -> None:
        parent, child = mp.Pipe(duplex=True)
        spec = self.specs[index]
        if self.in_process:  # degraded mode: one worker thread in this process
            spec.pin = False
            t = threading.Thread(target=worker_main, args=(child, spec), daemon=True)
            t.start()
            self.procs[index] = t
        elif self.env is not None:
            self.procs[index] = self._spawn(child)
            self.pids[index] = self.procs[index].pid
            parent.send(spec)
        else:
            p = self.ctx.Process(
                target=_process_entry,
                args=(child, spec),
                daemon=True,
                name=f"epyc-whisper-worker-{index}",
            )
            p.start()
            child.close()
            self.procs[index] = p
            self.pids[index] = p.pid or 0
        self.conns[index] = parent

    def _spawn(self, child: Connection) -> _Child:
        """``python -c`` with our environment; the child end of the pipe is its only
        inherited descriptor, and the spec is its first message."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = (
            f"import sys; sys.path.insert(0, {root!r}); "
            f"from epyc_whisper.pool import _spawned_entry; _spawned_entry({child.fileno()})"
        )
        try:
            popen = subprocess.Popen(
                [sys.executable, "-c", code],
                env=self.env,
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        return _Child(popen)

    def send_batch(self, index: int, batch: list[dict[str, Any]]) -> None:
        try:
            self.conns[index].send(("batch", batch))
        except (OSError, EOFError, KeyError):
            pass  # the death is noticed through its pipe

    def stop(self, index: int) -> None:
        try:
            self.conns[index].send(("stop",))
        except (OSError, EOFError, KeyError):
            pass

    def kill(self, index: int) -> None:
        p = self.procs.get(index)
        if p is not None and not self.in_process and p.is_alive():
            p.kill()

    def alive(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.is_alive()]

    def has_pipes(self) -> bool:
        """Some worker's pipe is still open (messages or its EOF still to be read)."""
        return bool(self.conns)

    def events(self, timeout: float) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        by_conn = {c: i for i, c in self.conns.items()}
        for conn in wait(list(by_conn), timeout):
            i = by_conn[conn]  # type: ignore[index]
            c: Connection = conn  # type: ignore[assignment]
            try:
                while c.poll():
                    out.append((i, *c.recv()))
            except (EOFError, OSError):
                self._reap(i)
                out.append((i, "exit", self._exitcode(i)))
        return out

    def _exitcode(self, i: int) -> int | None:
        p = self.procs.get(i)
        return getattr(p, "exitcode", None)

    def _reap(self, i: int) -> None:
        conn = self.conns.pop(i, None)
        if conn is not None:
            conn.close()
        p = self.procs.get(i)
        if p is not None:
            p.join(timeout=5)

    def shutdown(self) -> None:
        for i in list(self.conns):
            self.stop(i)
        deadline = time.monotonic() + 10
        for p in self.procs.values():
            p.join(timeout=max(0.1, deadline - time.monotonic()))
        for i in list(self.procs):
            self.kill(i)
        for c in self.conns.values():
            c.close()
        self.conns.clear()


@dataclass
class WorkerState:
    """What the parent knows about one worker."""

    index: int
    ready: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    held: dict[int, Task] = field(default_factory=dict)  # sent, not finished
    started: dict[int, float] = field(default_factory=dict)  # in flight since
    wanting: int = 0
    retiring: bool = False
    restarts: int = 0


class PoolEvents(Protocol):
    """What the pool tells the job (writers, progress, accounting)."""

    def ready(self, index: int, info: dict[str, Any]) -> None: ...
    def done(self, task: Task, result: dict[str, Any], stats: dict[str, Any]) -> None: ...
    def failed(self, task: Task, error: str, attempts: int) -> None: ...
    def notice(self, message: str) -> None: ...
    def split(self, task: Task, plan: dict[str, Any]) -> list[Task]: ...


class PoolError(EnvironmentProblem):
    """The pool could not run at all (no worker started, or every worker kept dying)."""


class Pool:
    """Drives a Backend with a Scheduler until every task is done or failed."""

    def __init__(
        self,
        backend: Backend,
        nworkers: int,
        scheduler: Scheduler,
        events: PoolEvents,
        file_timeout: float | None = None,
        grace: float = 30.0,
        low_memory: Callable[[], bool] | None = None,
    ) -> None:
        self.backend = backend
        self.scheduler = scheduler
        self.events = events
        self.file_timeout = file_timeout
        self.grace = grace
        self.low_memory = low_memory
        self.workers = {i: WorkerState(i) for i in range(nworkers)}
        self.stop_signal: int | None = None
        self.stop_deadline: float | None = None
        self.told_stop = False
        self.paused: set[int] = set()
        self.load_errors: list[str] = []
        # Long-lived use (serve/submit/close): the loop runs in its own thread.
        self.serving = False
        self.error: BaseException | None = None  # why the serving loop ended, if it failed
        self._inbox: queue.SimpleQueue[list[Task]] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def request_stop(self, signum: int) -> None:
        """First signal: finish in-flight files within the grace period. Second: stop now."""
        if self.stop_signal is None:
            self.stop_signal = signum
            self.stop_deadline = time.monotonic() + self.grace
        else:
            self.stop_deadline = time.monotonic()

    @property
    def in_flight(self) -> int:
        return sum(len(w.held) for w in self.workers.values())

    def run(self) -> None:
        for i in self.workers:
            self.backend.start(i)
        try:
            self._loop()
        finally:
            self.backend.shutdown()

    # --- long-lived use -------------------------------------------------------------
    def serve(self, on_exit: Callable[[BaseException | None], None] | None = None) -> None:
        """Start the workers and keep the pool running in a background thread until
        ``close()``: ``submit()`` adds work at any time. The workers are started from that
        thread, not the caller's: PR_SET_PDEATHSIG fires when the *thread* that started a
        worker ends, and a caller may create the pool in a short-lived thread. ``on_exit``
        is called from that thread when the loop ends (with the error that ended it)."""
        self.serving = True

        def main() -> None:
            error: BaseException | None = None
            try:
                for i in self.workers:
                    self.backend.start(i)
                self._serve_loop()
            except BaseException as e:  # handed to on_exit: the caller's calls fail with it
                error = self.error = e
            finally:
                try:
                    self.backend.shutdown()
                finally:
                    if on_exit is not None:
                        on_exit(error)

        self._thread = threading.Thread(target=main, name="epyc-whisper-pool", daemon=True)
        self._thread.start()

    def submit(self, tasks: Iterable[Task]) -> None:
        """Add tasks to the queue (thread-safe: the loop takes them on its next turn)."""
        self._inbox.put(list(tasks))

    def close(self, timeout: float | None = None) -> None:
        """Stop the serving loop: workers are told to stop (and killed if they do not
        within the backend's own grace), then this returns."""
        self._closing.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _serve_loop(self) -> None:
        while not self._closing.is_set():
            took = False
            while True:
                try:
                    self.scheduler.pending.extend(self._inbox.get_nowait())
                    took = True
                except queue.Empty:
                    break
            if took:
                for w in self.workers.values():
                    if w.wanting:
                        self._dispatch(w)
            self._check_all_gone()
            # A short wait: new submissions are picked up within it.
            for ev in self.backend.events(0.05):
                self._handle(ev[0], ev[1], ev[2:])
            self._check_timeouts()
            self._check_memory()

    def _check_all_gone(self) -> None:
        if not self.backend.alive() and not self.backend.has_pipes():
            # Every worker is gone and nothing is left to read: none will come back.
            if not any(w.ready for w in self.workers.values()):
                raise PoolError("; ".join(self.load_errors) or "no worker could start")

    def _loop(self) -> None:
        while True:
            if self.stop_signal is not None:
                if not self.told_stop:
                    self._tell_stop()
                if self.in_flight == 0:
                    return
                if self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
                    for w in self.workers.values():
                        if w.held:
                            self.backend.kill(w.index)
                    return
            elif not self.scheduler.pending and self.in_flight == 0:
                return
            if not self.backend.alive() and not self.backend.has_pipes():
                # Every worker is gone and nothing is left to read: none will come back.
                if not any(w.ready for w in self.workers.values()):
                    raise PoolError("; ".join(self.load_errors) or "no worker could start")
            for ev in self.backend.events(0.25):
                self._handle(ev[0], ev[1], ev[2:])
            self._check_timeouts()
            self._check_memory()

    def _dispatch(self, w: WorkerState) -> None:
        if self.stop_signal is not None or w.retiring or w.index in self.paused or not w.wanting:
            return
        batch = self.scheduler.next_batch(w.wanting)
        if batch:
            w.wanting = 0
            for t in batch:
                w.held[t.id] = t
            self.backend.send_batch(w.index, [t.wire() for t in batch])

    def _handle(self, i: int, kind: str, payload: tuple[Any, ...]) -> None:
        if kind == "notice":
            self.events.notice(payload[0])
            return
        if kind == "joined":
            self._join(i)
            return
        w = self.workers[i]
        if kind == "ready":
            w.ready, w.info = True, payload[0]
            self.events.ready(i, payload[0])
        elif kind == "load_failed":
            self.load_errors.append(payload[0])
        elif kind == "want":
            w.wanting = payload[0]
            self._dispatch(w)
        elif kind == "start":
            w.started[payload[0]] = time.monotonic()
        elif kind in ("done", "failed", "split"):
            task = w.held.pop(payload[0])
            w.started.pop(payload[0], None)
            w.stats = payload[2]
            if kind == "done":
                self.events.done(task, payload[1], payload[2])
            elif kind == "split":
                # The pieces of a long file go to the front: every worker helps with it,
                # and its PCM file is freed soon.
                self.scheduler.requeue(self.events.split(task, payload[1]))
            elif "piece" in task.extra and task.attempts == 0:
                task.attempts += 1
                self.events.notice(
                    f"piece {task.extra['piece']['index']} of {task.path} "
                    f"failed ({payload[1]}); retrying it once"
                )
                self.scheduler.requeue([task])
            else:
                self.events.failed(task, payload[1], task.attempts + 1)
            self._maybe_stop_retired(w)
        elif kind == "retire":
            w.retiring = True
            self.events.notice(f"worker {i}: {payload[0]}; starting a fresh one")
            self._maybe_stop_retired(w)
        elif kind == "exit":
            self._lost(w, payload[0])
        elif kind == "bye" and self.stop_signal is not None:
            # Interrupted: it finished its files in flight and dropped the rest of its
            # queue (never started), so it holds nothing any more.
            w.held.clear()
            w.started.clear()
        # Otherwise "bye" needs nothing: the exit follows.
        for other in self.workers.values():
            if other.wanting:
                self._dispatch(other)

    def _join(self, i: int) -> None:
        """A worker the backend added during the run: started like the first ones, and
        counted in the tail's fair share."""
        if self.stop_signal is not None or i in self.workers:
            return
        self.workers[i] = WorkerState(i)
        self.scheduler.nworkers = len(self.workers)
        self.backend.start(i)

    def _tell_stop(self) -> None:
        """Interrupted: stop taking work now. Each worker finishes its files in flight,
        drops the files queued there but not started, says bye and leaves; a worker still
        loading its model holds nothing and is ended at once. (Sent from the loop, not
        from the signal handler, which could interleave with a send on the same pipe.)"""
        self.told_stop = True
        for w in self.workers.values():
            w.retiring = True  # its exit from here on is not a crash
            if w.ready:
                self.backend.stop(w.index)
            else:
                self.backend.kill(w.index)

    def _maybe_stop_retired(self, w: WorkerState) -> None:
        if w.retiring and not w.held:
            self.backend.stop(w.index)

    def _lost(self, w: WorkerState, exitcode: int | None) -> None:
        """A worker exited: re-queue what it held, count the death against files in flight."""
        if w.held:
            requeue = []
            for tid, task in w.held.items():
                if tid in w.started and not w.retiring:
                    if self.scheduler.crashed(task):
                        self.events.failed(
                            task,
                            f"poison file: the worker died twice while "
                            f"transcribing it (exit code {exitcode})",
                            task.attempts,
                        )
                        continue
                requeue.append(task)
            self.scheduler.requeue(requeue)
            if not w.retiring:
                self.events.notice(
                    f"worker {w.index} died (exit code {exitcode}); "
                    f"{len(requeue)} file(s) re-queued"
                )
        was_ready, retiring = w.ready, w.retiring
        self.workers[w.index] = WorkerState(w.index, restarts=w.restarts + 1)
        # A long-lived pool keeps its workers with or without work queued.
        work_left = self.serving or self.scheduler.pending or self.in_flight
        if self.stop_signal is None and work_left and (was_ready or retiring) and w.restarts < 50:
            self.backend.start(w.index)

    def _check_timeouts(self) -> None:
        if not self.file_timeout:
            return
        now = time.monotonic()
        for w in list(self.workers.values()):
            late = [tid for tid, t0 in w.started.items() if now - t0 > self.file_timeout]
            if not late:
                continue
            alone: list[Task] = []
            for tid in late:
                task = w.held.pop(tid)
                w.started.pop(tid)
                if len(late) > 1 and not task.extra.get("alone"):
                    # Files late together share one clock (a pack of short clips is
                    # decoded and transcribed as one): only one of them may hang, so
                    # each is tried once more on its own before any is failed.
                    task.extra["alone"] = True
                    alone.append(task)
                    continue
                self.events.failed(
                    task,
                    f"timed out after {self.file_timeout:g} s (--file-timeout); worker replaced",
                    task.attempts + 1,
                )
            if alone:
                self.scheduler.requeue(alone)
                self.events.notice(
                    f"worker {w.index}: {len(alone)} files timed out together "
                    f"(--file-timeout {self.file_timeout:g} s); each is retried on its own"
                )
            # The other files of that worker are innocent: re-queued without an attempt.
            w.started.clear()
            self.backend.kill(w.index)

    def _check_memory(self) -> None:
        if self.low_memory is None:
            return
        ready = [w for w in self.workers.values() if w.ready and w.index not in self.paused]
        if len(ready) > 1 and self.low_memory():
            victim = ready[-1]
            self.paused.add(victim.index)
            self.events.notice(
                f"available memory is low: worker {victim.index} takes no new "
                "work for the rest of the run"
            )


def make_specs(
    layout: Any,
    model_path: str,
    options: dict[str, Any],
    *,
    max_files: int = 0,
    max_rss: int = 0,
    split_above: float = 0.0,
    tmp_dir: str = "",
    pack: bool = False,
    device_index: Sequence[int] = (0,),
) -> list[WorkerSpec]:
    """One WorkerSpec per planned process; with a GPU layout, process i gets GPU
    ``device_index[i]``."""
    return [
        WorkerSpec(
            p.index,
            list(p.cpus),
            model_path,
            layout.device,
            layout.compute_type,
            p.workers,
            p.threads,
            dict(options),
            max_files,
            max_rss,
            split_above=split_above,
            tmp_dir=tmp_dir,
            pool_workers=layout.total_workers,
            pack=pack,
            decode_batch=layout.decode_batch,
            device_index=device_index[p.index % len(device_index)],
        )
        for p in layout.processes
    ]
