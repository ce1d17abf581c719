"""The Python API: a long-lived Transcriber with real worker processes and the real model."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import epyc_whisper
from epyc_whisper import Transcriber, Transcript, write
from epyc_whisper.audio import decode_pyav
from epyc_whisper.writers import WriteJSON
from tests.conftest import PY, SAMPLES, copy_samples, run_cli, speech_text

AGENT = SAMPLES / "ast_en_agent-incorrect.wav"
SAVE = SAMPLES / "ast_en_vm-savemessage.wav"
CANCEL = SAMPLES / "ast_en_vm-tocancel.wav"
THENORM = SAMPLES / "mfa_phrase_thenorm.flac"
LONGSTOP = SAMPLES / "mfa_phrase_longstop.flac"

#: Environment variables no test Transcriber may take from the machine it runs on.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pytest.MonkeyPatch]:
    """No saved layout, no measured model size and no EPYC_WHISPER_* values of the machine:
    the Transcriber plans what a CLI run under tests.conftest.clean_env plans."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("xdg")
    mp.setenv("XDG_CONFIG_HOME", str(home / "config"))
    mp.setenv("XDG_CACHE_HOME", str(home / "cache"))
    for k in list(os.environ):
        if k.startswith("EPYC_WHISPER_"):
            mp.delenv(k)
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def tr(isolated: pytest.MonkeyPatch) -> Iterator[Transcriber]:
    """One Transcriber shared by the tests of this module (its models load once)."""
    with Transcriber("bundled") as t:
        yield t


def said(t: Transcript) -> str:
    return speech_text(t.text)


def until(cond: Any) -> None:
    """Wait for ``cond()``; the bound only keeps a broken pool from hanging the suite."""
    deadline = time.monotonic() + 60
    while not cond():
        assert time.monotonic() < deadline, "the pool never got there"
        time.sleep(0.01)


def test_import_is_light_and_lists_the_api() -> None:
    """`import epyc_whisper` loads no numpy/CTranslate2, and __all__ names the public API."""
    code = (
        "import sys, epyc_whisper; "
        "assert 'Transcriber' in epyc_whisper.__all__ and 'write' in epyc_whisper.__all__; "
        "heavy = ('numpy', 'ctranslate2', 'faster_whisper', 'av'); "
        "print([m for m in heavy if m in sys.modules])"
    )
    res = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
    assert epyc_whisper.Transcriber is Transcriber


def test_path_array_and_bytes_in_one_call(tr: Transcriber) -> None:
    """A path, an ndarray and bytes of an encoded file in one call: one Transcript each,
    in input order, each with the clip's words; an array's source is its index."""
    audio = decode_pyav(str(THENORM), 16000)
    got = tr.transcribe([str(AGENT), audio, SAVE.read_bytes()])
    assert [t.status for t in got] == ["done"] * 3
    assert got[0].source == str(AGENT) and got[1].source == 1 and got[2].source == 2
    assert "login incorrect" in said(got[0])
    assert "montreal" in said(got[1])
    assert "save this message" in said(got[2])
    assert got[1].duration == pytest.approx(len(audio) / 16000, abs=0.01)


def test_bad_inputs_fail_alone(tr: Transcriber, tmp_path: Path) -> None:
    """A missing path, undecodable bytes, a stereo array and an object among good inputs:
    each bad one is a failed Transcript with its reason; the good ones are done."""
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF not really a wave file")
    got = tr.transcribe(
        [
            str(CANCEL),
            str(tmp_path / "missing.wav"),
            b"\x00\x01 no media here",
            np.zeros((2, 16000), dtype=np.float32),
            junk,
            42,
            str(AGENT),
        ]
    )
    assert [t.status for t in got] == ["done", "failed", "failed", "failed", "failed"] + [
        "failed",
        "done",
    ]
    assert got[1].error == "not found"
    assert "not decodable media" in (got[2].error or "")
    assert "mono" in (got[3].error or "")
    assert got[4].source == str(junk) and "not decodable" in (got[4].error or "")
    assert "unsupported input type int" in (got[5].error or "")
    assert "pound to cancel" in said(got[0]) and "login incorrect" in said(got[6])


def test_a_folder_is_walked_as_the_cli_walks_it(tr: Transcriber, tmp_path: Path) -> None:
    """A folder gives one Transcript per media file, in the CLI's sorted walk order;
    other files in it are left out."""
    copy_samples(tmp_path / "clips", [SAVE.name, CANCEL.name])
    (tmp_path / "clips" / "notes.txt").write_text("not media")
    got = tr.transcribe(tmp_path / "clips")
    assert [Path(str(t.source)).name for t in got] == sorted([SAVE.name, CANCEL.name])
    assert all(t.ok for t in got)


def test_two_threads_get_exactly_their_own_results(tr: Transcriber) -> None:
    """Two threads calling at once share the pool, and each gets its own inputs back, in
    its own order."""
    a = [str(AGENT), str(SAVE), str(THENORM)]
    b = [str(CANCEL), str(LONGSTOP)]
    out: dict[str, list[Transcript]] = {}
    start = threading.Barrier(2)

    def call(name: str, inputs: list[str]) -> None:
        start.wait()
        out[name] = tr.transcribe(inputs)

    threads = [threading.Thread(target=call, args=x) for x in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [t.source for t in out["a"]] == a and [t.source for t in out["b"]] == b
    assert "pound to cancel" in said(out["b"][0]) and "long stop" in said(out["b"][1])
    assert "login incorrect" in said(out["a"][0])


def test_atranscribe_keeps_the_event_loop_running(tr: Transcriber) -> None:
    """atranscribe inside a running event loop: a ticker task keeps ticking while the
    transcripts are awaited (a blocked loop would not tick at all until they are back)."""

    async def main() -> tuple[list[Transcript], int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)  # the ticker has started
        before = ticks
        got = await tr.atranscribe([str(AGENT), str(SAVE)])
        during = ticks - before
        stop.set()
        await task
        return got, during

    got, during = asyncio.run(main())
    assert [t.status for t in got] == ["done", "done"]
    assert during >= 3


def test_iter_transcribe_yields_every_input(tr: Transcriber) -> None:
    """iter_transcribe yields one Transcript per input as each finishes."""
    got = list(tr.iter_transcribe([str(AGENT), str(CANCEL)]))
    assert sorted(str(t.source) for t in got) == sorted([str(AGENT), str(CANCEL)])


def test_per_call_options_take_effect_without_new_workers(tr: Transcriber) -> None:
    """word_timestamps=True in one call gives words, the next call without it none, with
    the same workers and no model loaded again; a setting that needs other workers is a
    ValueError naming what may change per call."""
    pids, loads = tr.worker_pids, tr.stats["loads"]
    words = tr.transcribe([str(AGENT), str(SAVE)], word_timestamps=True)
    plain = tr.transcribe([str(AGENT), str(SAVE)])
    assert all(s.words for t in words for s in t.segments)
    assert all(s.words is None for t in plain for s in t.segments)
    assert tr.worker_pids == pids and tr.stats["loads"] == loads
    with pytest.raises(ValueError, match="per call"):
        tr.transcribe([str(AGENT)], processes=3)
    with pytest.raises(ValueError, match="beam_size"):
        tr.transcribe([str(AGENT)], beam_size=0)


def test_stats_are_cumulative(tr: Transcriber) -> None:
    """stats counts every transcript of the Transcriber's life, with the CLI summary's
    cache figures: one load per worker process, then hits."""
    before = tr.stats
    tr.transcribe([str(AGENT), str(CANCEL)])
    after = tr.stats
    assert after["files"] == before["files"] + 2
    assert after["audio_s"] > before["audio_s"] and after["wall_s"] > before["wall_s"]
    assert after["loads"] == after["processes"] == len(tr.worker_pids)
    assert after["cache_hits"] > before["cache_hits"] and 0 < after["hit_rate"] < 1
    assert after["rtfx"] == pytest.approx(after["audio_s"] / after["wall_s"], rel=0.01)


def test_a_worker_killed_mid_call_is_replaced_and_its_inputs_retried(tr: Transcriber) -> None:
    """SIGKILL of a worker while a call is in flight: a new worker takes its place and the
    call still gets every transcript."""
    inputs = [str(p) for p in (AGENT, SAVE, CANCEL, THENORM, LONGSTOP)] * 2
    result: list[list[Transcript]] = []
    old = tr.worker_pids
    t = threading.Thread(target=lambda: result.append(tr.transcribe(inputs)))
    t.start()
    pool = tr._res.pool
    assert pool is not None
    until(lambda: any(w.started for w in pool.workers.values()))
    os.kill(old[0], signal.SIGKILL)
    t.join()
    assert [x.status for x in result[0]] == ["done"] * len(inputs)
    assert [x.source for x in result[0]] == inputs
    assert old[0] not in tr.worker_pids and len(tr.worker_pids) == len(old)
    assert any("died" in n for n in tr._sink.state.notices)


def test_to_dict_is_the_json_the_cli_writes(
    tr: Transcriber, tmp_path: Path, clean_env: dict[str, str]
) -> None:
    """A Transcript's to_dict() renders to the bytes of the CLI's json for the same clip
    (timings, which differ per run, set aside); write() gives the CLI's srt."""
    clip = copy_samples(tmp_path / "in", [AGENT.name])[0]
    res = run_cli(
        ["transcribe", str(clip), "--model", "bundled", "-o", "out", "-f", "json,srt"],
        tmp_path,
        clean_env,
    )
    assert res.returncode == 0, res.stderr
    (json_file,) = (tmp_path / "out").rglob("*.json")
    cli = json.loads(json_file.read_text())
    (got,) = tr.transcribe([str(clip)])
    mine = got.to_dict()
    for d in (cli, mine):
        d.pop("timings")
    assert WriteJSON().render(mine) == WriteJSON().render(cli)
    (srt_file,) = (tmp_path / "out").rglob("*.srt")
    out = tmp_path / "mine.srt"
    assert write(got, "srt", out) == srt_file.read_text()
    assert out.read_text() == srt_file.read_text()


def test_a_long_array_is_split_and_stitched(isolated: pytest.MonkeyPatch) -> None:
    """An in-memory recording longer than split_above is cut into pieces and stitched
    back, as the CLI splits a long file; the Transcriber keeps nothing of it afterwards."""
    clips = [decode_pyav(str(p), 16000) for p in (AGENT, THENORM, LONGSTOP, SAVE)]
    gap = np.zeros(16000, dtype=np.float32)
    audio = np.concatenate([x for c in clips for x in (c, gap)])
    with Transcriber("bundled", split_above=8) as t:
        assert not os.path.exists(t._res.tmp)  # made only when a recording is split
        (got,) = t.transcribe(audio)
        assert t._sink.splits.files == {} and t._sink.inputs == {}  # nothing kept after
        assert os.listdir(t._res.tmp) == []  # its PCM file is removed
    assert not os.path.exists(t._res.tmp)  # and close() removes the folder
    assert got.ok and got.to_dict()["split"]["pieces"] >= 2
    text = said(got)
    assert "login incorrect" in text and "save this message" in text


def test_environment_is_the_workers_only(isolated: pytest.MonkeyPatch) -> None:
    """Creating and closing a Transcriber leaves the caller's environment, affinity and
    threads as they were, while its workers get the layout's thread variables; close()
    answers a call in flight in another thread, and leaves no worker process."""
    env, cpus, threads = dict(os.environ), os.sched_getaffinity(0), threading.active_count()
    t = Transcriber("bundled")
    pids = t.worker_pids
    inputs = [str(p) for p in (AGENT, SAVE, CANCEL, THENORM, LONGSTOP)] * 2
    result: list[list[Transcript]] = []
    call = threading.Thread(target=lambda: result.append(t.transcribe(inputs)))
    try:
        assert dict(os.environ) == env and os.sched_getaffinity(0) == cpus
        theirs = psutil.Process(pids[0]).environ()
        assert theirs["OMP_NUM_THREADS"] == str(t.layout.processes[0].threads)
        assert all(k not in env or env[k] == theirs[k] for k in THREAD_VARS)
        call.start()
        pool = t._res.pool
        assert pool is not None
        until(lambda: any(w.started for w in pool.workers.values()))
    finally:
        t.close()  # with a call in flight in another thread
    call.join()
    # That call is answered: done before the close, or failed by it.
    assert len(result[0]) == len(inputs)
    assert all(x.ok or x.error == "the Transcriber was closed" for x in result[0])
    assert not [p for p in pids if psutil.pid_exists(p)]
    assert dict(os.environ) == env and os.sched_getaffinity(0) == cpus
    assert threading.active_count() == threads  # the pool's thread is gone too
    with pytest.raises(RuntimeError, match="closed"):
        t.transcribe([str(AGENT)])


def test_a_forked_child_does_not_own_the_pool(tr: Transcriber) -> None:
    """A child the caller forks can neither use nor stop the parent's pool: its close()
    does nothing, its transcribe() says whose it is, and the parent goes on."""
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 0
        try:
            tr.close()
            try:
                tr.transcribe([str(AGENT)])
                code = 3
            except RuntimeError as e:
                code = 0 if "belongs to the process" in str(e) else 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert all(psutil.pid_exists(p) for p in tr.worker_pids)
    (got,) = tr.transcribe([str(AGENT)])
    assert got.ok


CALLER = """
import os, sys
from epyc_whisper import Transcriber
t = Transcriber("bundled")
(got,) = t.transcribe([sys.argv[1]])
heavy = [m for m in ("numpy", "ctranslate2", "faster_whisper", "av") if m in sys.modules]
assert not heavy, heavy  # the caller imports none of them: its workers do
print(" ".join(map(str, t.worker_pids)), got.status, flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), 9)
# "exit": leaves without close()
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_no_worker_outlives_a_caller_that_never_closes(
    how: str, tmp_path: Path, clean_env: dict[str, str]
) -> None:
    """A caller script that exits without close(), or is killed, leaves no worker
    process behind (and never imported numpy or CTranslate2 itself)."""
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    res = subprocess.run(
        [PY, str(script), str(AGENT), how], capture_output=True, text=True, env=clean_env
    )
    *pids, status = res.stdout.split()
    assert status == "done" and pids, res.stderr
    assert res.returncode == (-9 if how == "kill" else 0)
    # PR_SET_PDEATHSIG is delivered by the kernel as the caller goes: wait for the reaper.
    until(lambda: not [p for p in pids if _alive(int(p))])


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_fallback_to_one_model_in_process_with_one_warning(
    isolated: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When worker processes cannot start (here: starting one fails as a sandbox would
    fail it), the Transcriber runs one model in the caller's process, says so in exactly
    one RuntimeWarning, and still transcribes; no child process is made."""
    from epyc_whisper import pool

    def refuse(self: Any, child: Any) -> Any:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(pool.ProcessBackend, "_spawn", refuse)
    children = {p.pid for p in psutil.Process().children()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = Transcriber("bundled")
    try:
        mine = [w for w in caught if "degraded mode" in str(w.message)]
        assert len(mine) == 1 and mine[0].category is RuntimeWarning
        assert "Operation not permitted" in str(mine[0].message)
        assert t.degraded and t.stats["degraded"] and t.worker_pids == [os.getpid()]
        got = t.transcribe([str(AGENT), str(CANCEL)])
        assert [x.status for x in got] == ["done", "done"]
        assert {p.pid for p in psutil.Process().children()} == children
    finally:
        t.close()


def test_in_process_is_one_model_in_the_callers_process(isolated: pytest.MonkeyPatch) -> None:
    """in_process=True: the traditional way, one model in this process and no worker
    process, without a warning; it transcribes like the pool does."""
    children = {p.pid for p in psutil.Process().children()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = Transcriber("bundled", in_process=True)
    with t:
        (got,) = t.transcribe([str(CANCEL)])
        assert "pound to cancel" in said(got)
        assert t.worker_pids == [os.getpid()] and t.stats["in_process"]
        assert t.stats["loads"] == 1 and not t.degraded
        assert {p.pid for p in psutil.Process().children()} == children


def test_made_in_a_short_lived_thread_then_dropped(isolated: pytest.MonkeyPatch) -> None:
    """A Transcriber created in a thread that then ends keeps its workers (PDEATHSIG
    follows the thread that started a worker: the pool's own thread starts them); one the
    caller drops without close() is collected, and its finalizer stops its workers."""
    import gc

    made: list[Transcriber] = []
    maker = threading.Thread(target=lambda: made.append(Transcriber("bundled")))
    maker.start()
    maker.join()
    t = made.pop()
    pids = t.worker_pids
    (got,) = t.transcribe([str(CANCEL)])
    assert got.ok and t.worker_pids == pids
    del t, got
    gc.collect()
    assert not [p for p in pids if _alive(p)]


# --------------------------------------------------------------------------- Pool.serve (unit)
class FakeBackend:
    """Workers that finish every file at once (pure pool logic; the real ones are above).
    kill() comes from the test's thread, the rest from the pool's: one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: list[tuple[Any, ...]] = []
        self.started: list[int] = []
        self.up: set[int] = set()
        self.shut = False

    def start(self, index: int) -> None:
        with self.lock:
            self.started.append(index)
            self.up.add(index)
            self.queue += [(index, "ready", {"pid": 100 + len(self.started)}), (index, "want", 1)]

    def send_batch(self, index: int, batch: list[dict[str, Any]]) -> None:
        with self.lock:
            for t in batch:
                self.queue += [(index, "start", t["id"]), (index, "done", t["id"], {}, {})]
            self.queue.append((index, "want", 1))

    def stop(self, index: int) -> None:
        with self.lock:
            self.up.discard(index)

    def kill(self, index: int) -> None:
        with self.lock:
            self.up.discard(index)
            self.queue.append((index, "exit", -9))

    def events(self, timeout: float) -> list[tuple[Any, ...]]:
        with self.lock:
            out, self.queue = self.queue, []
        if not out:
            time.sleep(timeout)
        return out

    def alive(self) -> list[int]:
        with self.lock:
            return sorted(self.up)

    def has_pipes(self) -> bool:
        return bool(self.alive())

    def shutdown(self) -> None:
        self.shut = True


def test_serving_pool_takes_work_at_any_time_and_keeps_its_workers() -> None:
    """A serving pool takes tasks submitted after it went idle, replaces a worker that
    dies with nothing queued, and shuts its backend down on close()."""
    from epyc_whisper.pool import Pool, Scheduler, Task

    done: list[int] = []
    ended: list[BaseException | None] = []

    class Events:
        def ready(self, index: int, info: dict[str, Any]) -> None:
            pass

        def done(self, task: Task, result: dict[str, Any], stats: dict[str, Any]) -> None:
            done.append(task.id)

        def failed(self, task: Task, error: str, attempts: int) -> None:
            raise AssertionError(error)

        def notice(self, message: str) -> None:
            pass

        def split(self, task: Task, plan: dict[str, Any]) -> list[Task]:
            return []

    backend = FakeBackend()
    pool = Pool(backend, 1, Scheduler([], 4, 1), Events())
    pool.serve(ended.append)
    pool.submit([Task(i, "x") for i in range(3)])
    until(lambda: len(done) == 3)
    time.sleep(0.2)  # idle: nothing queued, the loop keeps serving
    pool.submit([Task(10 + i, "x") for i in range(3)])
    until(lambda: len(done) == 6)
    assert sorted(done) == [0, 1, 2, 10, 11, 12]
    backend.kill(0)
    until(lambda: backend.started.count(0) == 2)
    pool.close()
    assert backend.shut and ended == [None] and not pool.running


# --------------------------------------------------------------------------- settings
def test_settings_and_layout_are_planned_as_the_cli_plans_them(
    isolated: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's precedence (an argument > EPYC_WHISPER_* > preset) and the CLI's layout
    for the same settings; the workers' environment is the re-executed CLI's."""
    from epyc_whisper import transcriber
    from epyc_whisper.envsetup import child_environ
    from epyc_whisper.prepare import prepare  # what the CLI's commands call

    monkeypatch.setenv("EPYC_WHISPER_BEAM_SIZE", "2")
    settings, layout, env = transcriber._plan({"model": "bundled"}, None, None)
    assert settings.beam_size == 2 and settings.source("beam_size") == "env EPYC_WHISPER_BEAM_SIZE"
    settings, layout, env = transcriber._plan({"model": "bundled", "beam_size": 3}, None, None)
    assert settings.beam_size == 3 and settings.source("beam_size") == "cli"
    cli = prepare({"model": "bundled", "beam_size": 3})
    c_settings, c_layout, c_env = cli.settings, cli.layout, cli.env
    # budget_bytes follows the memory available at that instant; the plan itself does not.
    same = dataclasses.replace(c_layout, budget_bytes=layout.budget_bytes)
    assert layout == same and settings.as_dict() == c_settings.as_dict()
    assert env == child_environ(c_env, os.environ)


def test_bad_settings_are_a_value_error_saying_what_is_allowed(
    isolated: pytest.MonkeyPatch,
) -> None:
    """An unknown setting, a bad value and a compute type this CPU cannot run are each a
    ValueError naming the setting and what is allowed, before any worker starts."""
    with pytest.raises(ValueError, match="did you mean 'beam_size'"):
        Transcriber("bundled", beam_sise=5)
    with pytest.raises(ValueError, match="batch_size"):
        Transcriber("bundled", batch_size=0)
    with pytest.raises(ValueError, match="float16 and bfloat16 are GPU types"):
        Transcriber("bundled", compute_type="float16")


def test_run_settings_reach_the_workers(isolated: pytest.MonkeyPatch) -> None:
    """The run settings the CLI takes (here max_files_per_worker) apply to a Transcriber
    too: with 1, each worker process is replaced after each file, so three files one by
    one give three model loads in three different processes, and every file is done."""
    with Transcriber("bundled", processes=1, workers=1, max_files_per_worker=1) as t:
        pids, got = set(), []
        for clip in (AGENT, SAVE, CANCEL):
            got += t.transcribe([clip])
            pids |= set(t.worker_pids)
        assert [x.status for x in got] == ["done"] * 3
        assert t.stats["loads"] >= 3 and len(pids) >= 3, (t.stats, pids)
