"""One ``transcribe`` run as a library call: inputs -> pool -> transcripts, with accounting.

``open_job(prepare.prepare(...), paths)`` finds the model and the inputs and takes the
run's options from the settings; ``Job.run`` runs it and returns its JobState. The CLI
adds only the rendering (progress view, summary) and the signal handlers.

Every input ends as exactly one of done, skipped (with a reason) or failed (with a
reason and attempts). Failed ones are listed in ``failures.jsonl`` in the output
folder, which ``--retry-failed`` reads back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from epyc_whisper.config import PASSED_THROUGH, VAD_PARAMETERS, Settings, parse_size
from epyc_whisper.engine import WorkerSpec
from epyc_whisper.errors import EnvironmentProblem, UsageError
from epyc_whisper.layout import Layout
from epyc_whisper.ledger import Ledger, differences, fingerprint, model_identity
from epyc_whisper.lock import OutputLock
from epyc_whisper.measured import remember
from epyc_whisper.models import check_language, resolve_model
from epyc_whisper.packing import why_not_packed
from epyc_whisper.pool import Backend, Pool, PoolError, ProcessBackend, Scheduler, Task, make_specs
from epyc_whisper.prepare import Prepared
from epyc_whisper.sources import (
    CLASH,
    MediaInput,
    Skipped,
    collect,
    is_done,
    output_base,
    parse_extensions,
)
from epyc_whisper.splitting import SplitFiles
from epyc_whisper.writers import (
    FORMATS,
    WRITER_OPTIONS,
    atomic_write_text,
    remove_stale_temps,
    write_outputs,
)

FAILURES_NAME = "failures.jsonl"
#: Where split recordings park their samples (one int16 PCM file each) while their
#: pieces are transcribed; removed at the end of a run and, after a killed run, at the
#: start of the next one.
TMP_NAME = ".epyc-whisper-tmp"
#: How audio.FALLBACK_NOTE starts (not imported from there: audio.py loads PyAV and numpy,
#: which the parent never does). A test ties the two.
FALLBACK_PREFIX = "decoded with ffmpeg"
#: Notes that are bookkeeping, shown with --verbose only; the rest (damage, the ffmpeg
#: fallback) are for everyone.
DETAIL_NOTES = ("packed result doubtful", "no speech:")
#: How make_tasks() words the skip of an input whose outputs exist (progress.py counts them).
ALREADY_DONE = "already done"


def temperatures(settings: Settings) -> list[float]:
    """The fallback schedule: ``temperature`` as listed, or with
    ``temperature_increment_on_fallback`` (whisper-ctranslate2's flag) from its first value
    up to 1 in those steps, as whisper-ctranslate2 builds it (numpy.arange(t, 1 + 1e-6, step))."""
    temps = [float(t) for t in settings.temperature.split(",")]
    step = settings.temperature_increment_on_fallback
    if step:
        n = int((1.0 + 1e-6 - temps[0]) / step) + 1
        temps = [temps[0] + i * step for i in range(max(n, 1))]
    return temps


def transcribe_options(settings: Settings) -> dict[str, Any]:
    """faster-whisper ``transcribe()`` keyword arguments from the settings: every decoding
    setting under its own name, ``vad`` as ``vad_filter``, the vad_* settings as
    ``vad_parameters`` (only those given, so VadOptions keeps its defaults), and
    ``suppress_tokens`` as a list of ids."""
    temps = temperatures(settings)
    opts: dict[str, Any] = {k: getattr(settings, k) for k in PASSED_THROUGH}
    opts["vad_filter"] = settings.vad
    opts["temperature"] = temps if len(temps) > 1 else temps[0]
    tokens = settings.suppress_tokens
    opts["suppress_tokens"] = [int(t) for t in tokens.split(",")] if tokens else []
    vad = {fw: getattr(settings, ours) for ours, fw in VAD_PARAMETERS.items()}
    vad = {k: v for k, v in vad.items() if v is not None}
    if vad:
        opts["vad_parameters"] = vad
    return opts


@dataclass
class FileRecord:
    """The outcome of one input (also the ``--jsonl`` line)."""

    path: str
    status: str  # done | skipped | failed
    outputs: list[str] = field(default_factory=list)
    duration: float | None = None
    language: str | None = None
    seconds: float | None = None
    error: str | None = None
    attempts: int = 0
    no_speech: bool | None = None  # done, with nothing said (silence, noise)
    rss: int | None = None  # the worker's RSS after this file (bytes)
    worker_pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}


@dataclass
class JobState:
    """Live numbers for the progress view and the final summary."""

    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    audio_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)
    workers: dict[int, dict[str, Any]] = field(default_factory=dict)  # index -> last stats
    # The model-cache figures of worker processes since replaced (recycled, or dead): their
    # loads were real, so the summary keeps counting them.
    retired: dict[str, float] = field(default_factory=dict)
    retired_cpu: float = 0.0  # the CPU seconds they reported (worker_cpu)
    ready: dict[int, dict[str, Any]] = field(default_factory=dict)
    records: list[FileRecord] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    degraded: bool = False
    pieces_total: int = 0
    pieces_done: int = 0
    split_files: int = 0  # files split into pieces (progress counts them by their pieces)
    split_closed: int = 0  # of those, done or failed
    first_ready: float | None = None
    peak_rss: int = 0
    fallback_decodes: int = 0  # files PyAV could not read, decoded by pydub/ffmpeg
    redone: dict[str, int] = field(default_factory=dict)  # why -> files redone for it
    moved: int = 0  # transcripts moved from the names of the old working-folder rule
    out_dir: str = ""
    node_of: dict[int, str] = field(default_factory=dict)  # worker pid -> Ray node name

    @property
    def wall(self) -> float:
        return time.monotonic() - self.started

    @property
    def rtfx(self) -> float:
        return self.audio_seconds / self.wall if self.wall > 0 else 0.0

    def worker_ready(self, index: int, info: dict[str, Any]) -> None:
        """A worker process (the first at ``index``, or its replacement) loaded its model."""
        old = self.workers.get(index, {})
        for k in ("loads", "hits", "misses", "load_seconds"):  # not cached_models: gone
            self.retired[k] = self.retired.get(k, 0) + old.get("cache", {}).get(k, 0)
        self.retired_cpu += old.get("cpu_s", 0.0)
        self.ready[index] = info
        self.workers[index] = {
            "rss": info.get("rss", 0),
            "cache": {"loads": 1, "misses": 1, "load_seconds": info.get("load_s", 0)},
        }
        if self.first_ready is None:
            self.first_ready = time.monotonic()

    def cache(self) -> dict[str, float]:
        """Model-cache statistics summed over workers (each worker loads once, then hits),
        those since replaced included."""
        tot = {"loads": 0.0, "hits": 0.0, "misses": 0.0, "load_seconds": 0.0, "cached_models": 0.0}
        for st in self.workers.values():
            for k in tot:
                tot[k] += st.get("cache", {}).get(k, 0)
        for k, v in self.retired.items():
            tot[k] += v
        lookups = tot["hits"] + tot["misses"]
        tot["hit_rate"] = tot["hits"] / lookups if lookups else 0.0
        return tot

    def rss(self) -> int:
        return sum(int(st.get("rss", 0)) for st in self.workers.values())

    def worker_cpu(self) -> float:
        """CPU seconds the worker processes reported for themselves, as of their last
        finished file (those since replaced included)."""
        return self.retired_cpu + sum(float(st.get("cpu_s", 0)) for st in self.workers.values())

    def nodes(self) -> dict[str, dict[str, int]]:
        """With the Ray backend, each node's CT2 workers ready now, the CPUs they are
        pinned to, and the files finished by any worker it has had (a replaced one's, or
        one of a node that joined during the run, included); empty with the local
        backend."""
        out = {n: {"workers": 0, "cpus": 0, "files": 0} for n in sorted(set(self.node_of.values()))}
        cpus: dict[str, set[int]] = {n: set() for n in out}
        for info in self.ready.values():
            if info.get("node") in out:
                out[info["node"]]["workers"] += int(info.get("workers", 1))
                cpus[info["node"]].update(info.get("cpus", []))
        for n, c in cpus.items():
            out[n]["cpus"] = len(c)
        for rec in self.records:
            node = self.node_of.get(rec.worker_pid or 0)
            if node is not None:
                out[node]["files"] += 1
        return out

    def summary(self) -> dict[str, Any]:
        """The final numbers as plain data (``--summary FILE``, ``bench``)."""
        return {
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "audio_seconds": round(self.audio_seconds, 3),
            "wall_seconds": round(self.wall, 3),
            "rtfx": round(self.rtfx, 2),
            "cache": self.cache(),
            "peak_rss": self.peak_rss,
            "worker_cpu_seconds": round(self.worker_cpu(), 3),
            "workers_ready_after": None
            if self.first_ready is None
            else round(self.first_ready - self.started, 3),
            "degraded": self.degraded,
            "fallback_decodes": self.fallback_decodes,
            "redone": dict(self.redone),
            "moved_from_old_names": self.moved,
            "output_dir": self.out_dir,
            "failures": [r.to_dict() for r in self.records if r.status == "failed"],
        } | ({"nodes": self.nodes()} if self.node_of else {})


@dataclass
class JobOptions:
    """Attributes: out_dir; formats; overwrite: redo finished inputs; file_timeout:
    seconds before a file is given up (None: never); grace: seconds in-flight files get
    after SIGINT/SIGTERM; max_files / max_rss: worker recycling."""

    out_dir: Path
    formats: list[str]
    overwrite: bool = False
    file_timeout: float | None = None
    grace: float = 30.0
    max_files: int = 0
    max_rss: int = 0
    audio_track: int = 0
    split_above: float = 0.0
    pack: bool = False
    #: ledger.fingerprint() of this run: a finished file made otherwise is redone.
    made_with: dict[str, Any] | None = None
    #: Skip a file whose outputs exist and are newer, whatever made them (pre-0.2 rule).
    skip_existing: bool = False
    wait: float = 0.0  # seconds to wait for another run's lock on the output folder

    @classmethod
    def from_settings(
        cls, settings: Settings, layout: Layout, model_path: Path, pack: bool
    ) -> JobOptions:
        """The options of a run with these settings (``pack``: packing_allowed's answer)."""
        return cls(
            output_dir(settings),
            settings.formats.split(","),
            settings.overwrite,
            settings.file_timeout,
            max_files=settings.max_files_per_worker,
            max_rss=parse_size(settings.max_worker_rss) if settings.max_worker_rss else 0,
            audio_track=settings.audio_track,
            split_above=settings.split_above if settings.split else 0.0,
            pack=pack,
            made_with=fingerprint(
                settings.model, model_identity(model_path), layout.compute_type, settings.as_dict()
            ),
            skip_existing=settings.skip_existing,
            wait=settings.wait,
        )


class Job:
    """A transcription run. ``on_record`` gets each finished file (for --jsonl)."""

    def __init__(
        self,
        settings: Settings,
        layout: Layout,
        model_path: Path,
        opts: JobOptions,
        on_record: Callable[[FileRecord], None] | None = None,
        on_notice: Callable[[str], None] | None = None,
        on_detail: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.layout = layout
        self.model_path = model_path
        self.opts = opts
        self.state = JobState()
        self.on_record = on_record or (lambda r: None)
        self.on_notice = on_notice or (lambda m: None)
        self.on_detail = on_detail or (lambda m: None)
        self.pool: Pool | None = None
        self.inputs: dict[int, MediaInput] = {}
        self.versions: dict[str, str] = {}
        self.splits = SplitFiles()  # the long files cut into pieces, and their pieces
        self.next_id = 0
        self.state.out_dir = str(opts.out_dir)
        self.ledger = Ledger(opts.out_dir)
        self.packing_off: str | None = None  # why packing steps aside (open_job sets it)

    # --- PoolEvents -------------------------------------------------------------
    def ready(self, index: int, info: dict[str, Any]) -> None:
        first = self.state.first_ready is None
        self.state.worker_ready(index, info)
        self.versions = info.get("versions", self.versions)
        if "node" in info:  # the Ray backend: progress shows a line per node
            self.state.node_of[int(info.get("pid", 0))] = info["node"]
        # The first worker process's own measurement (not the degraded in-process
        # thread's): the next plan's memory check uses it.
        if first and info.get("model_rss", 0) > 0 and info.get("pid") != os.getpid():
            remember(self.settings.model, self.layout.compute_type, info["model_rss"])

    def split(self, task: Task, plan: dict[str, Any]) -> list[Task]:
        """A long file came back as a plan: its pieces become tasks of their own."""
        pieces = []
        for extra in self.splits.pieces(task.id, task, plan):
            pieces.append(Task(self.next_id, task.path, extra))
            self.next_id += 1
        self.state.pieces_total += len(pieces)
        self.state.split_files += 1
        if not pieces:  # no speech anywhere: an empty transcript, written at once
            self._split_complete(task.id, {})
        return pieces

    def _piece_done(self, task: Task, result: dict[str, Any]) -> None:
        self.state.pieces_done += 1
        self.state.audio_seconds += task.extra["share"]
        if self.splits.piece_done(task.extra, result):
            self._split_complete(task.extra["parent"], {})

    def _split_complete(self, parent: int, stats: dict[str, Any]) -> None:
        """Stitch the pieces in order into one transcript, as if never split."""
        result = self.splits.result(parent)
        self.state.split_closed += 1
        self._finish(self.splits.files[parent]["task"], result, stats, count_audio=False)

    def done(self, task: Task, result: dict[str, Any], stats: dict[str, Any]) -> None:
        self.state.workers[self._index_of(stats.get("pid", 0))] = stats
        # Each worker's high-water mark, not only its RSS after the file: the transient
        # peak (decoding, VAD) is what runs a machine out of memory.
        hwm = sum(int(st.get("peak_rss", 0)) for st in self.state.workers.values())
        self.state.peak_rss = max(self.state.peak_rss, self.state.rss(), hwm)
        if "parent" in task.extra:
            self._piece_done(task, result)
        else:
            self._finish(task, result, stats)

    def _finish(
        self, task: Task, result: dict[str, Any], stats: dict[str, Any], count_audio: bool = True
    ) -> None:
        inp = self.inputs[task.id]
        complete_result(
            result,
            str(inp.path),
            self.settings,
            self.layout,
            self.versions,
            self.opts.audio_track,
            stats.get("pid"),
        )
        try:
            paths = write_outputs(
                result,
                output_base(inp, self.opts.out_dir),
                self.opts.formats,
                {k: getattr(self.settings, k) for k in WRITER_OPTIONS},
            )
        except OSError as e:
            self.failed(task, f"cannot write transcript: {e.strerror or e}", task.attempts + 1)
            full = e.errno in (28, 122)  # ENOSPC, EDQUOT: every later file would fail too
            if full and not any(n.startswith("output disk full") for n in self.state.notices):
                self.notice(
                    f"output disk full ({e.strerror or e}) under {self.opts.out_dir}: files "
                    "are failed as they finish; free space and run the same command again"
                )
            return
        if self.opts.made_with is not None:
            try:
                self.ledger.add(str(inp.rel), self.opts.made_with)
            except OSError:
                pass  # a transcript without a record is kept by the next run, not lost
        self.state.done += 1
        if count_audio:
            self.state.audio_seconds += float(result.get("duration") or 0)
        notes = result.get("notes") or []
        self.state.fallback_decodes += any(n.startswith(FALLBACK_PREFIX) for n in notes)
        for n in notes:
            say = self.on_detail if n.startswith(DETAIL_NOTES) else self.notice
            say(f"{inp.path}: {n}")
        self._record(
            FileRecord(
                str(inp.path),
                "done",
                [str(p) for p in paths],
                result.get("duration"),
                result.get("language"),
                sum(result["timings"].get(k, 0) for k in ("decode_s", "transcribe_s")),
                attempts=task.attempts + 1,
                no_speech=result["no_speech"],
                rss=stats.get("rss"),
                worker_pid=stats.get("pid"),
            )
        )

    def failed(self, task: Task, error: str, attempts: int) -> None:
        if "parent" in task.extra:  # a piece failed twice: the whole file fails
            parent = task.extra["parent"]
            self.state.pieces_done += 1
            if not self.splits.fail(parent):
                return
            self.state.split_closed += 1
            if self.pool is not None:
                self.state.pieces_done += self.pool.scheduler.drop(parent)
            task = self.splits.files[parent]["task"]
            error = f"piece {error}"
        inp = self.inputs[task.id]
        self.state.failed += 1
        self._record(FileRecord(str(inp.path), "failed", error=error, attempts=attempts))

    def notice(self, message: str) -> None:
        self.state.notices.append(message)
        self.on_notice(message)

    # ---------------------------------------------------------------------------
    def _index_of(self, pid: int) -> int:
        for i, info in self.state.ready.items():
            if info.get("pid") == pid:
                return i
        return -pid

    def _record(self, rec: FileRecord) -> None:
        self.state.records.append(rec)
        self.on_record(rec)

    def skip(self, path: str, reason: str) -> None:
        self.state.skipped += 1
        self._record(FileRecord(path, "skipped", error=reason))

    def make_tasks(self, inputs: list[MediaInput], skipped: list[Skipped]) -> list[Task]:
        """Skip what is done with these settings (unless --overwrite); the rest become
        tasks. A named path that does not exist, and an input whose output name another
        input has, are failed inputs: a cron line with a typo must not exit 0."""
        for s in skipped:
            if s.missing or s.reason.startswith(CLASH):
                hint = "; name them with --relative-to" if s.reason.startswith(CLASH) else ""
                self.state.failed += 1
                self._record(FileRecord(s.path, "failed", error=s.reason + hint))
            else:
                self.skip(s.path, s.reason)
        tasks = []
        for inp in inputs:
            if not self.opts.overwrite and self._already_done(inp):
                self.skip(str(inp.path), f"{ALREADY_DONE} (outputs newer than the input)")
                continue
            t = Task(self.next_id, str(inp.path), {"audio_track": self.opts.audio_track})
            self.next_id += 1
            self.inputs[t.id] = inp
            tasks.append(t)
        self.state.total = len(tasks) + self.state.skipped + self.state.failed
        if self.state.moved:
            self.notice(
                f"moved {self.state.moved} finished transcript(s) from the names of the "
                "old working-folder rule to this version's (see README: output names)"
            )
        return tasks

    def _already_done(self, inp: MediaInput) -> bool:
        """Its outputs exist, are newer than the input, and were made with these settings
        (or with settings never recorded: transcripts of earlier versions are kept)."""
        o = self.opts
        if is_done(inp, o.out_dir, o.formats):
            made = self.ledger.get(str(inp.rel))
            if o.skip_existing or made is None or o.made_with is None:
                return True
            why = differences(made, o.made_with)
            if why is None:
                return True
            self.state.redone[why] = self.state.redone.get(why, 0) + 1
            return False
        if inp.legacy_rel is not None:
            old = dataclasses.replace(inp, rel=inp.legacy_rel, legacy_rel=None)
            if is_done(old, o.out_dir, o.formats):
                self._move_outputs(old, inp)
                return self._already_done(dataclasses.replace(inp, legacy_rel=None))
        return False

    def _move_outputs(self, old: MediaInput, new: MediaInput) -> None:
        src, dst = output_base(old, self.opts.out_dir), output_base(new, self.opts.out_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        for fmt in FORMATS:
            a, b = f"{src}.{fmt}", f"{dst}.{fmt}"
            if os.path.exists(a) and not os.path.exists(b):
                os.replace(a, b)
        self.ledger.rename(str(old.rel), str(new.rel))
        self.state.moved += 1

    def run(self, inputs: list[MediaInput], skipped: list[Skipped]) -> JobState:
        with OutputLock(self.opts.out_dir, self.opts.wait) as lock:
            if lock.took_over is not None:
                self.notice(f"took over a stale lock left by pid {lock.took_over}")
            if lock.waited:
                self.notice(f"waited {lock.waited:.0f} s for another run on this folder")
            tmp = self.opts.out_dir / TMP_NAME
            shutil.rmtree(tmp, ignore_errors=True)  # PCM of a killed run's split files
            removed = remove_stale_temps(self.opts.out_dir)
            if removed:
                self.notice(f"removed {removed} partial file(s) left by a killed run")
            tasks = self.make_tasks(inputs, skipped)
            if tasks:
                tmp.mkdir(parents=True, exist_ok=True)
                try:
                    self._run_pool(tasks)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            self._write_failures()
            try:
                self.ledger.compact()
            except OSError:
                pass  # a full disk: the appended records are still all there
        return self.state

    def _run_pool(self, tasks: list[Task]) -> None:
        options = transcribe_options(self.settings)
        backend: Backend
        if self.settings.backend == "ray":
            backend, specs = self._ray_backend(options)
        else:
            specs = make_specs(
                self.layout,
                str(self.model_path),
                options,
                max_files=self.opts.max_files,
                max_rss=self.opts.max_rss,
                split_above=self.opts.split_above,
                tmp_dir=str(self.opts.out_dir / TMP_NAME),
                pack=self.opts.pack,
                device_index=[int(i) for i in self.settings.device_index.split(",")],
            )
            backend = ProcessBackend(specs)
        sched = Scheduler(tasks, self.layout.batch_size, len(specs))
        low = self._low_memory
        self.pool = Pool(
            backend,
            len(specs),
            sched,
            self,
            self.opts.file_timeout,
            self.opts.grace,
            low,
        )
        try:
            self.pool.run()
        except PoolError as e:
            if self.state.ready or self.settings.backend == "ray":
                raise
            # The guide's degraded mode: no worker process could start (no /dev/shm,
            # a seccomp profile, ...): run one worker inside this process instead.
            self.notice(
                f"worker processes could not start ({e}); running one in-process "
                "worker instead (degraded mode)"
            )
            self.state.degraded = True
            one = specs[0]
            one.workers, one.cpus = 1, []
            self.pool = Pool(
                ProcessBackend([one], in_process=True), 1, sched, self, None, self.opts.grace, None
            )
            try:
                self.pool.run()
            except PoolError as e2:
                raise EnvironmentProblem(f"the model could not be loaded: {e2}") from None

    def request_stop(self, signum: int) -> bool:
        """A stop asked by a signal: files queued but not started are dropped, the ones in
        flight finish. False before the pool exists (nothing is running yet)."""
        if self.pool is None:
            return False
        self.pool.request_stop(signum)
        return True

    def write_summary(self, path: Path) -> None:
        """The final numbers, the layout and the model as JSON (``--summary FILE``)."""
        doc = self.state.summary() | {
            "layout": self.layout.to_dict(),
            "model": str(self.model_path),
        }
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")

    def _ray_backend(self, options: dict[str, Any]) -> tuple[Backend, list[WorkerSpec]]:
        """Actors on every node of the Ray cluster, each node planned by itself."""
        from epyc_whisper import ray_backend

        backend, specs, nodes = ray_backend.build(
            self.settings,
            str(self.model_path),
            options,
            max_files=self.opts.max_files,
            max_rss=self.opts.max_rss,
            split_above=self.opts.split_above,
            pack=self.opts.pack,
        )
        self.splits.release = backend.release
        self.on_detail("ray: " + "; ".join(f"{n.name}: {n.layout.summary()}" for n in nodes))
        return backend, specs

    def _low_memory(self) -> bool:
        vm = psutil.virtual_memory()
        return vm.available < min(512 << 20, vm.total * 0.05)

    def _write_failures(self) -> None:
        path = self.opts.out_dir / FAILURES_NAME
        failed = [r.to_dict() for r in self.state.records if r.status == "failed"]
        if failed:
            try:
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in failed))
            except OSError as e:  # a full disk: the failures were reported one by one
                self.notice(
                    f"could not write {path} ({e.strerror or e}); the failed files are "
                    "listed above, and the same command redoes every file not done"
                )
        elif path.exists() and self.state.failed == 0:
            path.unlink()


def output_dir(settings: Settings) -> Path:
    """The output folder of these settings, absolute (the working folder may change)."""
    return Path(settings.output_dir).absolute()


def packing_off(settings: Settings) -> str | None:
    """Why packing is off although asked for (None: it is on, or asked off): see
    packing.why_not_packed, which the Python API asks too."""
    if not settings.pack:
        return None
    return why_not_packed(settings.as_dict())


def packing_allowed(settings: Settings, say: Callable[[str], None] | None = None) -> bool:
    """Packing is on unless asked off or unsafe (packing_off); ``say`` hears why it is off."""
    why = packing_off(settings)
    if why and say:
        say(f"packing off: {why}")
    return bool(settings.pack) and why is None


def find_inputs(
    paths: list[str],
    out_dir: Path,
    *,
    extensions: str | None = None,
    stdin: IO[bytes] | None = None,
    null: bool = False,
    relative_to: Path | None = None,
) -> tuple[list[MediaInput], list[Skipped]]:
    """The media under ``paths`` (files, folders, '-' for a list on ``stdin``) and what was
    left out, with why. The output folder is not walked unless it is named itself.
    UsageError when nothing is named or nothing named exists."""
    try:
        wanted = parse_extensions(extensions)
    except ValueError as e:
        raise UsageError(f"--ext {extensions!r}: {e}") from None
    if not paths:
        raise UsageError("no input files: give files, folders or '-' (paths on stdin)")
    try:
        inputs, skipped = collect(
            paths,
            wanted,
            stdin=stdin if "-" in paths else None,
            null=null,
            exclude=out_dir if not _inside_any(out_dir, paths) else None,
            relative_to=relative_to,
        )
    except ValueError as e:  # NUL bytes in a newline list
        raise UsageError(str(e)) from None
    missing = [s for s in skipped if s.missing]
    if missing and not inputs and all(s.missing for s in skipped if s.named):
        if not any(os.path.isdir(p) for p in paths if p != "-"):
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise UsageError(
                "no such file or folder: " + ", ".join(s.path for s in missing[:3]) + more
            )
    return inputs, skipped


def _inside_any(folder: Path, paths: list[str]) -> bool:
    """True when the output folder contains (or is) one of the named inputs: then it is
    not excluded from the walk, or every input would be skipped as 'inside the output'."""
    for p in paths:
        if p == "-":
            continue
        a = Path(p).absolute()
        if a == folder or folder in a.parents:
            return True
    return False


def open_job(
    prepared: Prepared,
    paths: list[str],
    *,
    extensions: str | None = None,
    stdin: IO[bytes] | None = None,
    null: bool = False,
    relative_to: Path | None = None,
    retry_failed: bool = False,
    on_record: Callable[[FileRecord], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
    on_detail: Callable[[str], None] | None = None,
) -> tuple[Job, list[MediaInput], list[Skipped]] | None:
    """A run of ``transcribe`` ready to go: the model found, its language checked, the
    inputs walked, the options taken from the settings. ``job.run(inputs, skipped)``
    runs it; ``job.packing_off`` says why packing steps aside, if it does.
    ``retry_failed``: the inputs are the files failures.jsonl lists instead of ``paths``;
    None when it lists none (nothing to retry)."""
    settings, layout = prepared.settings, prepared.layout
    model_path = resolve_model(settings.model, settings.source("model"))
    check_language(settings.language, model_path, settings.model, settings.source("language"))
    out_dir = output_dir(settings)
    try:
        parse_extensions(extensions)  # a bad --ext is said before a missing failures list
    except ValueError as e:
        raise UsageError(f"--ext {extensions!r}: {e}") from None
    if retry_failed:
        paths = read_failures(out_dir)
        if not paths:
            return None
    inputs, skipped = find_inputs(
        paths, out_dir, extensions=extensions, stdin=stdin, null=null, relative_to=relative_to
    )
    job = Job(
        settings,
        layout,
        model_path,
        JobOptions.from_settings(settings, layout, model_path, packing_allowed(settings)),
        on_record=on_record,
        on_notice=on_notice,
        on_detail=on_detail,
    )
    job.packing_off = packing_off(settings)
    return job, inputs, skipped


def complete_result(
    result: dict[str, Any],
    source: Any,
    settings: Settings,
    layout: Layout,
    versions: dict[str, str],
    audio_track: int,
    worker_pid: int | None,
) -> None:
    """A worker's result as the json writes it: where it came from and how it was made,
    cues clamped to the duration, and the no-speech flag (used by the CLI's Job and the
    Python API alike, so both give the same transcript)."""
    result.update(
        {
            "source": source,
            "model": str(settings.model),
            "compute_type": layout.compute_type,
            "layout": layout.summary(),
            "versions": versions | {"python": platform.python_version()},
            "audio_track": audio_track,
        }
    )
    result["timings"]["worker_pid"] = worker_pid
    _clamp_to_duration(result)
    # Flag silence and noise: an empty transcript is an answer, but say it was one.
    # Also flagged: text the model itself doubts is speech (no_speech_prob above
    # no_speech_threshold, 0.6 as in faster-whisper by default, on every segment) -
    # the usual shape of words invented on noise ('. . . .' over 4 s of digital
    # silence). Such text is not written as a transcript; the json's notes keep it.
    ns = settings.no_speech_threshold  # None: the user turned this check off
    result["no_speech"] = not result["text"].strip() or (
        ns is not None and all(s.get("no_speech_prob", 0.0) > ns for s in result["segments"])
    )
    if result["no_speech"] and result["segments"]:
        dropped = " ".join(s["text"].strip() for s in result["segments"])
        result.setdefault("notes", []).append(
            f"no speech: the model's own no-speech probability was above {ns:g} on every "
            f"segment; left out of the transcript: {dropped!r}"
            if ns is not None
            else f"no speech: only blank segments, left out of the transcript: {dropped!r}"
        )
        result["segments"], result["text"] = [], ""


def _clamp_to_duration(result: dict[str, Any]) -> None:
    """No cue past the end of the media: Whisper's timestamps run to the end of its 30 s
    window, so a 4 s clip can get a segment to 29 s. Segments (and words) are cut at the
    file's duration; one that starts after it has nothing under it and is dropped."""
    duration = result.get("duration")
    if not duration:
        return
    kept = []
    for seg in result["segments"]:
        if seg["start"] >= duration:
            continue
        seg["end"] = min(seg["end"], duration)
        if seg.get("words"):
            seg["words"] = [w for w in seg["words"] if w["start"] < duration]
            for w in seg["words"]:
                w["end"] = min(w["end"], duration)
        kept.append(seg)
    if len(kept) < len(result["segments"]):
        result["segments"] = kept
        result["text"] = "".join(s["text"] for s in kept)


def read_failures(out_dir: Path) -> list[str]:
    """The paths listed in ``failures.jsonl`` (for ``--retry-failed``)."""
    path = out_dir / FAILURES_NAME
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line)["path"])
        except (ValueError, KeyError):
            continue
    return out
