"""The pool: scheduling policy (unit), and real spawned, pinned workers with the real model."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from epyc_whisper.engine import WorkerSpec, chunk_batch
from epyc_whisper.pool import Pool, ProcessBackend, Scheduler, Task
from tests.conftest import SAMPLES, speech_text

OPTS = {"beam_size": 5, "language": "en"}


def tasks(n: int, name: str = "ast_en_digits__19.wav") -> list[Task]:
    return [Task(i, str(SAMPLES / name)) for i in range(n)]


# --------------------------------------------------------------------------- Scheduler (unit)
def test_full_batches_while_plenty() -> None:
    """With plenty left, each request gets a full batch of batch_size files."""
    s = Scheduler(tasks(100), batch_size=8, nworkers=2)
    assert len(s.next_batch(2)) == 8
    assert len(s.next_batch(2)) == 8


def test_tail_is_split_between_workers() -> None:
    """At the tail, no process receives more than its fair share of what is left."""
    s = Scheduler(tasks(10), batch_size=32, nworkers=4)
    sizes = [len(s.next_batch(1)) for _ in range(4)]
    assert sizes[0] == 3 and sum(sizes) <= 10 and all(x >= 1 for x in sizes)
    s2 = Scheduler(tasks(3), batch_size=32, nworkers=4)
    assert len(s2.next_batch(1)) == 1  # one each, not all three to the first asker


def test_batch_never_smaller_than_asking_threads() -> None:
    """A process with k CTranslate2 workers gets at least k files when there are k left."""
    s = Scheduler(tasks(6), batch_size=32, nworkers=8)
    assert len(s.next_batch(4)) == 4


def test_requeue_goes_first_and_poison_after_two_deaths() -> None:
    """Files of a lost worker go back to the front; a second death marks a file poison."""
    s = Scheduler(tasks(5), batch_size=2, nworkers=1)
    first = s.next_batch(1)
    s.requeue(first)
    assert [t.id for t in s.next_batch(1)] == [0, 1]
    t = Task(9, "x")
    assert s.crashed(t) is False and s.crashed(t) is True


def test_pieces_are_grouped_per_recording_without_starving_a_thread() -> None:
    """A worker decodes up to decode_batch pieces of one recording together, but never so
    many that one of its threads gets none; other files are packed (shared out over the
    threads when there are fewer than a pack for each) or go alone."""
    spec = WorkerSpec(0, [], "m", "cpu", "int8", 2, 1, decode_batch=4, pack_take=3)

    def piece(i: int, parent: int) -> dict[str, Any]:
        return {"id": i, "path": "long", "piece": {"index": i}, "parent": parent}

    def ids(batch: list[dict[str, Any]], language: str | None = "en") -> list[list[int]]:
        return [[t["id"] for t in c] for c in chunk_batch(batch, spec, language)]

    assert ids([piece(i, 1) for i in range(10)]) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert ids([piece(i, 1) for i in range(3)]) == [[0, 1], [2]]  # 2 threads, 3 pieces
    assert ids([piece(0, 1), piece(1, 1), piece(2, 2), piece(3, 2)]) == [[0, 1], [2, 3]]
    files = [{"id": i, "path": f"f{i}"} for i in range(10, 15)]
    mixed = [piece(0, 1), *files[:2], piece(1, 1), {**files[2], "alone": True}, *files[3:]]
    # 4 packable files for 2 threads: 2 each, not 3 and 1 (nor, with a larger pack_take,
    # all 4 for one thread while the other idles); 12 goes alone as it was asked to.
    assert ids(mixed) == [[0], [10, 11], [1], [12], [13, 14]]
    assert ids(files) == [[10, 11, 12], [13, 14]]  # 5 files: 3 and 2
    assert ids(files, language=None) == [[10], [11], [12], [13], [14]]  # packing off
    many = [{"id": i, "path": f"f{i}"} for i in range(8)]
    assert ids(many) == [[0, 1, 2], [3, 4, 5], [6, 7]]  # enough for all: pack_take each


# --------------------------------------------------------------------------- real workers


class Events:
    def __init__(self) -> None:
        self.ready: dict[int, dict[str, Any]] = {}
        self.done: dict[int, dict[str, Any]] = {}
        self.stats: list[dict[str, Any]] = []
        self.failed: dict[int, tuple[str, int]] = {}
        self.notices: list[str] = []

    def on_ready(self, index: int, info: dict[str, Any]) -> None:
        self.ready[index] = info

    def on_done(self, task: Task, result: dict[str, Any], stats: dict[str, Any]) -> None:
        self.done[task.id] = result
        self.stats.append(stats)

    def on_failed(self, task: Task, error: str, attempts: int) -> None:
        self.failed[task.id] = (error, attempts)

    def on_notice(self, message: str) -> None:
        self.notices.append(message)


class PoolEventsAdapter:
    """Maps the PoolEvents protocol onto Events (keeps attribute names readable)."""

    def __init__(self, ev: Events) -> None:
        self.ev = ev

    def ready(self, index: int, info: dict[str, Any]) -> None:
        self.ev.on_ready(index, info)

    def done(self, task: Task, result: dict[str, Any], stats: dict[str, Any]) -> None:
        self.ev.on_done(task, result, stats)

    def failed(self, task: Task, error: str, attempts: int) -> None:
        self.ev.on_failed(task, error, attempts)

    def notice(self, message: str) -> None:
        self.ev.on_notice(message)


def specs(model_path: Path, n: int = 2, workers: int = 1) -> list[WorkerSpec]:
    cpus = sorted(os.sched_getaffinity(0))
    return [
        WorkerSpec(i, [cpus[i % len(cpus)]], str(model_path), "cpu", "int8", workers, 1, dict(OPTS))
        for i in range(n)
    ]


def run_pool(backend: ProcessBackend, todo: list[Task], batch: int = 2, **kw: Any) -> Events:
    ev = Events()
    pool = Pool(
        backend,
        len(backend.specs),
        Scheduler(todo, batch, len(backend.specs)),
        PoolEventsAdapter(ev),
        **kw,
    )
    pool.run()
    return ev


def test_two_pinned_workers_one_load_each(model_path: Path) -> None:
    """Two spawned workers each report their own pinned CPU and load the model exactly once."""
    sp = specs(model_path, 2)
    ev = run_pool(ProcessBackend(sp), tasks(6, "ast_en_agent-incorrect.wav"))
    assert len(ev.done) == 6 and not ev.failed
    assert {i: info["cpus"] for i, info in ev.ready.items()} == {
        i: s.cpus for i, s in enumerate(sp)
    }
    assert len({info["pid"] for info in ev.ready.values()}) == 2
    assert all(info["pid"] != os.getpid() for info in ev.ready.values())
    last = {}
    for st in ev.stats:
        last[st["pid"]] = st
    assert all(st["cache"]["loads"] == 1 for st in last.values())
    assert sum(st["files"] for st in last.values()) == 6
    assert all("login incorrect" in speech_text(r["text"]) for r in ev.done.values())


def test_threads_feed_ct2_workers_sharing_one_model(model_path: Path) -> None:
    """One process with two CTranslate2 workers: both threads work, one model load."""
    sp = specs(model_path, 1, workers=2)
    sp[0].cpus = sorted(os.sched_getaffinity(0))
    ev = run_pool(ProcessBackend(sp), tasks(4), batch=4)
    assert len(ev.done) == 4
    assert ev.stats[-1]["cache"]["loads"] == 1 and ev.stats[-1]["cache"]["hits"] >= 4


class KillOnStart(ProcessBackend):
    """A backend that SIGKILLs the worker as soon as it starts chosen task ids (a real kill
    from outside, as an operator or the OOM killer would)."""

    def __init__(self, specs: list[WorkerSpec], victims: set[int], once: bool) -> None:
        super().__init__(specs)
        self.victims = victims
        self.once = once
        self.kills = 0

    def events(self, timeout: float) -> list[tuple[Any, ...]]:
        evs = super().events(timeout)
        for ev in evs:
            if ev[1] == "start" and ev[2] in self.victims:
                os.kill(self.pids[ev[0]], signal.SIGKILL)
                self.kills += 1
                if self.once:
                    self.victims.discard(ev[2])
        return evs


def test_worker_killed_mid_batch_is_replaced(model_path: Path) -> None:
    """A worker SIGKILLed mid-batch is replaced; its unfinished files are re-queued and done."""
    backend = KillOnStart(specs(model_path, 2), victims={2}, once=True)
    ev = run_pool(backend, tasks(6), batch=3)
    assert backend.kills == 1
    assert sorted(ev.done) == list(range(6)) and not ev.failed
    assert any("died" in n for n in ev.notices)


def test_poison_file_fails_after_second_death(model_path: Path) -> None:
    """A file that kills its worker twice is marked failed as poison; the rest completes."""
    backend = KillOnStart(specs(model_path, 2), victims={1}, once=False)
    ev = run_pool(backend, tasks(5), batch=2)
    assert backend.kills == 2
    assert sorted(ev.done) == [0, 2, 3, 4]
    assert "poison" in ev.failed[1][0] and ev.failed[1][1] == 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_hanging_file_times_out(model_path: Path, tmp_path: Path) -> None:
    """A file that hangs (a FIFO nobody writes: open() blocks) is ended by the file timeout,
    its worker replaced, and the other files still done."""
    fifo = tmp_path / "hang.wav"
    os.mkfifo(fifo)
    todo = tasks(3)
    todo.insert(1, Task(99, str(fifo)))
    # 8 s: a loaded 2-core machine can take over 4 s for a real clip, which then timed out too.
    ev = run_pool(ProcessBackend(specs(model_path, 1)), todo, batch=4, file_timeout=8.0)
    assert sorted(ev.done) == [0, 1, 2]
    assert "timed out" in ev.failed[99][0]
