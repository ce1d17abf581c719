"""``bench``: faster-whisper used the ordinary way against ``transcribe``, side by side.

Every mode is a whole unit of work in a fresh process, timed from outside (wall
clock around the child, CPU time from the kernel's child accounting, RSS sampled
over the whole process tree), so model loading, imports and our re-exec all
count. Ray actors are no children of the command: with ``--backend ray`` each reports
its own CPU time with its results, and that is added (CPU_COUNTED says so in the
output). Modes are interleaved (reload, baseline, optimized, reload, ...) so
machine drift hits all sides alike. Accuracy is measured beside speed (WER with
jiwer, normalisation in ``normalise``), so a layout that is faster but worse is
visible and never chosen by ``--save``.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from epyc_whisper.config import Settings
from epyc_whisper.envsetup import MARKER
from epyc_whisper.errors import EnvironmentProblem, UsageError
from epyc_whisper.hardware import Hardware
from epyc_whisper.layout import PROCESS_OVERHEAD, Layout, estimate_model_bytes
from epyc_whisper.prepare import Prepared

SAMPLES = Path(__file__).resolve().parent / "samples"
NOISY_SPREAD = 0.10  # (max - min) / min over repeats above this: warn that the machine was noisy
WER_TOLERANCE = 0.5  # points: --save never picks a layout worse than baseline by more


@dataclass
class Mode:
    """One side of the comparison. Attributes: name; kind: reload | baseline |
    optimized | cell; flags: transcribe flags for optimized/cell; env: extra variables
    (CT2_FORCE_CPU_ISA); layout: processes, workers, threads, compute_type of a cell."""

    name: str
    kind: str
    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    layout: dict[str, Any] = field(default_factory=dict)


#: What the CPU column counts, by backend (the output says it).
CPU_COUNTED = {
    "local": "the command's process tree (the kernel's child accounting), over this "
    "machine's usable CPUs",
    "ray": "the driver's process tree (the kernel's child accounting: the driver, and "
    "the daemons of a private Ray it starts) plus the CPU time each Ray actor reports "
    "for its own process; over the CPUs the actors are pinned to; Ray's daemons on the "
    "cluster's nodes are not counted",
}


def ray_mode(mode: Mode) -> bool:
    """The mode runs transcribe on a Ray cluster (``--backend ray``)."""
    flags = mode.flags
    return any(f == "--backend" and flags[i + 1 : i + 2] == ["ray"] for i, f in enumerate(flags))


@dataclass
class Sample:
    """One timed run of one mode."""

    wall: float
    cpu_seconds: float
    peak_rss: int
    loads: int
    load_seconds: float
    audio_seconds: float
    texts: dict[Path, str]
    error: str | None = None
    cpus: int = 0  # the CPUs its workers ran on, where not this machine's (a Ray cluster)


@dataclass
class Row:
    """A mode's results over its repeats (times are the minimum; median beside it)."""

    mode: Mode
    samples: list[Sample] = field(default_factory=list)
    wer: float | None = None
    ratio: float | None = None
    note: str = ""

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.error is None]

    def to_dict(self, nfiles: int, ncpu: int) -> dict[str, Any]:
        ok = self.ok
        d: dict[str, Any] = {
            "mode": self.mode.name,
            "kind": self.mode.kind,
            "layout": self.mode.layout,
            "env": self.mode.env,
            "note": self.note,
            "error": None if ok else (self.samples[0].error if self.samples else self.note),
        }
        if not ok:
            return d
        walls = [s.wall for s in ok]
        best = min(ok, key=lambda s: s.wall)
        ncpu = best.cpus or ncpu
        d.update(
            {
                "wall_min": round(min(walls), 3),
                "wall_median": round(statistics.median(walls), 3),
                "spread": round((max(walls) - min(walls)) / min(walls), 3),
                "rtfx": round(best.audio_seconds / best.wall, 2),
                "files_per_s": round(nfiles / best.wall, 3),
                "cpu_util": round(best.cpu_seconds / (best.wall * ncpu), 3),
                "cpu_seconds": round(best.cpu_seconds, 2),
                "cpu_counted": CPU_COUNTED["ray" if ray_mode(self.mode) else "local"],
                "peak_rss_mib": best.peak_rss >> 20,
                "loads": best.loads,
                "load_seconds": round(best.load_seconds, 3),
                "ratio": self.ratio,
                "wer": None if self.wer is None else round(self.wer, 2),
                "audio_seconds": round(best.audio_seconds, 2),
                "repeats": len(ok),
            }
        )
        return d


# --------------------------------------------------------------------------- workload
def read_manifest(path: Path, subsets: set[str] | None = None) -> dict[Path, str]:
    """file -> reference text from a manifest TSV (columns file, reference_transcript;
    language 'none' means the right transcript is empty)."""
    refs: dict[Path, str] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if subsets and row.get("subset") not in subsets:
                continue
            ref = "" if row.get("language") == "none" else row["reference_transcript"]
            refs[(path.parent / row["file"]).resolve()] = ref
    return refs


def read_refs_dir(folder: Path, files: list[Path]) -> dict[Path, str]:
    """A ``.txt`` per audio stem."""
    refs = {}
    for f in files:
        txt = folder / (f.stem + ".txt")
        if txt.is_file():
            refs[f.resolve()] = txt.read_text(encoding="utf-8")
    return refs


def build_workload(
    files: list[Path], seconds: float | None, durations: dict[Path, float], dest: Path
) -> list[tuple[Path, Path]]:
    """Distinct copies (transcribe transcribes one real file once) of ``files``, repeated
    until ``seconds`` of audio when given. Returns (copy, original) pairs."""
    dest.mkdir(parents=True, exist_ok=True)
    out: list[tuple[Path, Path]] = []
    total = 0.0
    for i, src in enumerate(itertools.cycle(files)):
        if seconds is None and i >= len(files):
            break
        if seconds is not None and total >= seconds:
            break
        copy = dest / f"{i:05d}_{src.name}"
        shutil.copyfile(src, copy)
        out.append((copy, src))
        total += durations.get(src.resolve(), 0.0) or 1.0
    return out


def probe_durations(files: list[Path]) -> dict[Path, float]:
    """Durations from the container headers (PyAV, in a child: the parent stays light)."""
    code = (
        "import av, json, sys\nout = {}\nfor p in sys.argv[1:]:\n"
        "    try:\n        c = av.open(p)\n        out[p] = (c.duration or 0) / 1e6\n"
        "        c.close()\n    except Exception:\n        out[p] = 0.0\n"
        "print(json.dumps(out))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, *map(str, files)], capture_output=True, text=True, check=False
    )
    try:
        return {Path(k).resolve(): v for k, v in json.loads(res.stdout).items()}
    except ValueError:
        return {}


# --------------------------------------------------------------------------- accuracy
_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number(tok: str) -> str:
    n = int(tok)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10 - 2] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    return tok


def normalise(text: str) -> str:
    """WER normalisation: lower case; markup like <unk> and [laughter] dropped; hyphens
    to spaces; punctuation other than apostrophes dropped; whole numbers below 100 as
    words ('19' -> 'nineteen', so digit/word spelling is not counted as an error)."""
    t = text.lower()
    t = re.sub(r"<[^>]*>|\[[^\]]*\]|\([^)]*\)", " ", t)
    t = t.replace("-", " ").replace("#", " pound ")
    t = re.sub(r"[^\w\s']", " ", t)
    t = " ".join(_number(w) if w.isdigit() else w for w in t.split())
    return t


def wer(texts: dict[Path, str], refs: dict[Path, str]) -> float | None:
    """Corpus WER in percent over the files that have references; words in the output of
    a file whose reference is empty (silence) count as insertions."""
    import jiwer

    pairs = [(normalise(refs[p]), normalise(texts.get(p, ""))) for p in refs if p in texts]
    if not pairs:
        return None
    scored = [(r, h) for r, h in pairs if r]
    errors = sum(len(h.split()) for r, h in pairs if not r)
    words = sum(len(r.split()) for r, _ in scored)
    if scored:
        out = jiwer.process_words([r for r, _ in scored], [h if h else "" for _, h in scored])
        errors += out.substitutions + out.deletions + out.insertions
    return 100.0 * errors / words if words else None


# --------------------------------------------------------------------------- running
def clean_env() -> dict[str, str]:
    """The user's environment without what our own re-exec added: each side starts as
    the user would start it."""
    env = dict(os.environ)
    for name in env.get(MARKER, "").split(","):
        env.pop(name, None)
    env.pop(MARKER, None)
    return env


#: Called about every half second while a mode runs, with the seconds since it started.
Watch = Callable[[float], None]


def timed(
    cmd: list[str],
    env: dict[str, str],
    stdin: bytes | None = None,
    timeout: float | None = None,
    watch: Watch | None = None,
) -> tuple[float, float, int, subprocess.CompletedProcess[bytes]]:
    """Wall seconds, CPU seconds (the child and everything it waited for), peak RSS summed
    over the process tree (sampled every 50 ms), and the completed process. ``watch`` is
    called from the sampling thread every 10th sample (for progress)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = 0
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        n = 0
        while not done.wait(0.05):
            n += 1
            if watch is not None and n % 10 == 0:
                try:
                    watch(time.perf_counter() - t0)
                except Exception:  # progress must never stop the memory sampling
                    pass
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            peak = max(peak, total)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out, errb = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, errb = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, peak, subprocess.CompletedProcess(cmd, proc.returncode, out, errb)


def run_mode(
    mode: Mode,
    files: list[Path],
    model: Path,
    compute_type: str,
    beam: int,
    work: Path,
    timeout: float | None,
    on_files: Callable[[int, float], None] | None = None,
) -> Sample:
    """One timed run of ``mode``. ``on_files(files finished, seconds so far)`` is called
    about every half second while it runs (counted from the child's own outputs)."""
    env = clean_env() | mode.env

    def watcher(count: Callable[[], int]) -> Watch | None:
        if on_files is None:
            return None
        return lambda elapsed: on_files(count(), elapsed)

    def lines(path: Path) -> int:
        try:
            return path.stat().st_size  # one byte a file
        except OSError:
            return 0

    if mode.kind in ("reload", "baseline"):
        out = work / f"{mode.name}.json"
        cmd = [
            sys.executable,
            "-m",
            "epyc_whisper.baseline",
            mode.kind,
            str(model),
            str(out),
            compute_type,
            str(beam),
            *map(str, files),
        ]
        progress = out.with_name(out.name + ".progress")
        wall, cpu, rss, res = timed(
            cmd, env, timeout=timeout, watch=watcher(lambda: lines(progress))
        )
        if res.returncode != 0 or not out.is_file():
            return Sample(wall, cpu, rss, 0, 0, 0, {}, _tail(res.stderr))
        doc = json.loads(out.read_text())
        texts = {Path(k): v for k, v in doc["texts"].items()}
        return Sample(
            wall, cpu, rss, doc["loads"], doc["load_seconds"], doc["audio_seconds"], texts
        )
    outdir = work / f"out-{mode.name}"
    summary = work / f"summary-{mode.name}.json"
    cmd = [
        sys.executable,
        "-m",
        "epyc_whisper",
        "-q",
        "transcribe",
        "-",
        "--model",
        str(model),
        "-o",
        str(outdir),
        "-f",
        "json",
        "--overwrite",
        "--beam-size",
        str(beam),
        "--summary",
        str(summary),
        *mode.flags,
    ]
    if "--compute-type" not in mode.flags:
        cmd += ["--compute-type", compute_type]
    listing = "".join(f"{f}\n" for f in files).encode()
    wall, cpu, rss, res = timed(
        cmd,
        env,
        stdin=listing,
        timeout=timeout,
        watch=watcher(lambda: sum(1 for _ in outdir.rglob("*.json"))),
    )
    if res.returncode not in (0, 1) or not summary.is_file():
        return Sample(wall, cpu, rss, 0, 0, 0, {}, _tail(res.stderr))
    doc = json.loads(summary.read_text())
    found: dict[Path, str] = {}
    for js in outdir.rglob("*.json"):
        d = json.loads(js.read_text())
        found[Path(d["source"])] = d["text"]
    shutil.rmtree(outdir, ignore_errors=True)
    cache = doc["cache"]
    cpus = 0
    if ray_mode(mode):
        # The actors are children of their node's raylet, never of this command: the
        # kernel's accounting above has the driver only.
        cpu += doc.get("worker_cpu_seconds", 0.0)
        cpus = sum(n.get("cpus", 0) for n in doc.get("nodes", {}).values())
    return Sample(
        wall,
        cpu,
        rss,
        int(cache["loads"]),
        cache["load_seconds"],
        doc["audio_seconds"],
        found,
        cpus=cpus,
    )


def _tail(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else "failed"


# --------------------------------------------------------------------------- the sweep
def sweep_modes(
    hw: Hardware, layout: Layout, model: str, budget: int, compute_type: str
) -> tuple[list[Mode], list[str]]:
    """process count x CT2 workers x threads per worker that fill the usable CPUs, then
    compute types and the AVX-512 knob on the best shapes. Pruned: never more threads
    than usable CPUs, never more copies than fit in memory (each skip is said)."""
    n = sum(len(p.cpus) for p in layout.processes)
    skipped: list[str] = []
    shapes = []
    for procs in [p for p in (1, 2, 4, 8, 16, 32, 64, 128) if p <= n]:
        for threads in [t for t in (1, 2, 4) if procs * t <= n]:
            workers = n // (procs * threads)
            if workers < 1:
                continue
            need = procs * (estimate_model_bytes(model, compute_type) + PROCESS_OVERHEAD)
            if need > budget:
                skipped.append(
                    f"{procs}x{workers}x{threads}: needs about {need >> 20} MiB, "
                    f"more than the budget of {budget >> 20} MiB"
                )
                continue
            shapes.append((procs, workers, threads))
    modes = []
    for procs, workers, threads in shapes:
        modes.append(_cell(procs, workers, threads, compute_type))
    # Compute types and AVX-512 only on the auto shape (the grid would explode otherwise).
    p0 = layout.processes[0]
    auto = (len(layout.processes), p0.workers, p0.threads)
    for ct in ("int8", "int8_float32", "float32"):
        if ct != compute_type:
            modes.append(_cell(*auto, ct))
    if hw.isa.get("avx512f"):
        m = _cell(*auto, compute_type)
        m.name += "+avx512"
        m.env = {"CT2_FORCE_CPU_ISA": "AVX512"}
        modes.append(m)
    return modes, skipped


def _cell(procs: int, workers: int, threads: int, ct: str) -> Mode:
    return Mode(
        f"{procs}p x {workers}w x {threads}t {ct}",
        "cell",
        layout_flags(procs, workers, threads, compute_type=ct),
        layout={"processes": procs, "workers": workers, "threads": threads, "compute_type": ct},
    )


def layout_flags(
    procs: int,
    workers: int,
    threads: int,
    *,
    compute_type: str | None = None,
    batch_size: int | None = None,
) -> list[str]:
    """The transcribe flags that fix a layout, so a child run plans exactly this one."""
    flags = ["--processes", str(procs), "--workers", str(workers), "--threads", str(threads)]
    if batch_size is not None:
        flags += ["--batch-size", str(batch_size)]
    if compute_type is not None:
        flags += ["--compute-type", compute_type]
    return flags


#: The sides ``--modes`` chooses from: faster-whisper with a model per file, faster-whisper
#: the ordinary way, transcribe with packing off, transcribe as configured.
MODES = ("reload", "baseline", "unpacked", "optimized")


def parse_modes(spec: str) -> list[str]:
    """``--modes`` as a list, each one of MODES."""
    wanted = [m.strip() for m in spec.split(",") if m.strip()]
    if not wanted or any(m not in MODES for m in wanted):
        raise UsageError(f"--modes {spec!r}: choose from {', '.join(MODES)}")
    return wanted


def check_options(repeat: int, max_minutes: float, plot_file: Path | None) -> None:
    """The options that need no measurement, checked before any is made."""
    if repeat < 1:
        raise UsageError(f"--repeat {repeat}: expected 1 or more")
    if max_minutes <= 0:
        raise UsageError(f"--max-minutes {max_minutes:g}: expected more than 0")
    if plot_file is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise EnvironmentProblem("--plot needs matplotlib: pip install 'epyc-whisper[plot]'")


def compare_modes(
    layout: Layout, wanted: list[str], settings: Settings | None = None
) -> list[Mode]:
    """The modes of ``wanted`` (MODES): transcribe's two run the planned layout, told
    by flags; "unpacked" is transcribe too (kind optimized), with packing off, so the
    two sit side by side. With the Ray backend (``settings.backend``) every node plans
    its own layout: this machine's would be wrong for them, so only the batch size and
    the backend's own settings are passed."""
    p0 = layout.processes[0]
    flags = layout_flags(
        len(layout.processes), p0.workers, p0.threads, batch_size=layout.batch_size
    )
    if settings is not None and settings.backend == "ray":
        flags = ["--batch-size", str(layout.batch_size), "--backend", "ray"]
        flags += ["--address", settings.address] if settings.address else []
        flags += ["--ship-audio"] if settings.ship_audio else []
    auto = {
        "processes": len(layout.processes),
        "workers": p0.workers,
        "threads": p0.threads,
        "compute_type": layout.compute_type,
    }
    return [
        Mode(
            m,
            "optimized",
            flags + (["--no-pack"] if m == "unpacked" else []),
            layout=auto | {"pack": m == "optimized"},
        )
        if m in ("optimized", "unpacked")
        else Mode(m, m)
        for m in wanted
    ]


def choose_workload(
    paths: list[str] | None,
    manifest: Path | None = None,
    subset: str | None = None,
    refs: Path | None = None,
    seconds: float | None = None,
) -> tuple[list[Path], dict[Path, str], float | None]:
    """The files to measure on, their reference texts (may be empty), and the seconds of
    audio to repeat them to: a manifest's files, the given paths, or the bundled sample
    clips (repeated to 600 s unless ``seconds`` says otherwise)."""
    from epyc_whisper.sources import collect, parse_extensions

    ref_map: dict[Path, str] = {}
    if manifest is not None:
        if not manifest.is_file():
            raise UsageError(f"--manifest {manifest}: file not found")
        ref_map = read_manifest(manifest, set(subset.split(",")) if subset else None)
        files = sorted(ref_map)
    elif paths:
        found, _skipped = collect(paths, parse_extensions(None))
        files = [Path(i.path) for i in found]
    else:
        ref_map = read_manifest(SAMPLES / "manifest.tsv")
        files = sorted(ref_map)
        seconds = 600.0 if seconds is None else seconds
    if refs is not None:
        if not refs.is_dir():
            raise UsageError(f"--refs {refs}: not a folder")
        ref_map = read_refs_dir(refs, files)
    check_usage(files, ref_map, refs is not None or manifest is not None)
    return files, ref_map, seconds


def measure(
    prepared: Prepared,
    model_path: Path,
    files: list[Path],
    refs: dict[Path, str],
    seconds: float | None,
    wanted: list[str],
    *,
    repeat: int = 1,
    sweep: bool = False,
    max_minutes: float = 30.0,
    beam_size: int = 5,
    say: Callable[[str], None] = lambda m: None,
    on_progress: Callable[[str | None], None] = lambda m: None,
    on_tick: Callable[[str], None] | None = None,
) -> Report:
    """The whole ``bench``: the workload copied to a scratch folder, the modes of
    ``wanted`` (and with ``sweep`` the layout sweep, within ``max_minutes``) run
    ``repeat`` times each. ``say`` gets the lines every user sees (what is measured,
    sweep cells skipped); ``on_progress`` a line as each run starts, None at the end."""
    settings, hw, layout = prepared.settings, prepared.hardware, prepared.layout
    if settings.backend == "ray" and sweep:
        raise UsageError("--sweep tries layouts of this machine: it cannot run with --backend ray")
    with tempfile.TemporaryDirectory(prefix="epyc-whisper-workload-") as tmp:
        pairs = build_workload(files, seconds, probe_durations(files), Path(tmp))
        copies = [c for c, _ in pairs]
        copy_refs = {c: refs[o.resolve()] for c, o in pairs if o.resolve() in refs}
        mode_list = compare_modes(layout, wanted, settings)
        cells: list[Mode] = []
        if sweep:
            cells, skipped = sweep_modes(
                hw, layout, settings.model, layout.budget_bytes, settings.compute_type
            )
            for msg in skipped:
                say(f"sweep: skipped {msg}")
            if cells and max_minutes * 60 < 10:
                raise UsageError(
                    f"--max-minutes {max_minutes:g} is too short for even one sweep cell"
                )
        meta = report_meta(hw, layout, settings.as_dict())
        say(
            f"bench: {len(copies)} files, model {model_path}, {len(mode_list)} mode(s) x "
            f"{repeat}" + (f", then up to {len(cells)} sweep cells" if cells else "")
        )
        report = run_bench(
            copies,
            copy_refs,
            model_path,
            settings.compute_type,
            beam_size,
            repeat,
            mode_list,
            max_minutes * 60 if sweep else None,
            meta,
            hw.usable_cpus,
            on_progress,
            cells,
            on_tick,
        )
        on_progress(None)
    if sweep and len(report.rows) == len(mode_list) and cells:
        say(
            f"sweep: --max-minutes {max_minutes:g} was too short for even one cell "
            "(each takes about as long as the optimized run)"
        )
    return report


# --------------------------------------------------------------------------- the report
@dataclass
class Report:
    rows: list[Row]
    nfiles: int
    ncpu: int
    audio_seconds: float
    meta: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "files": self.nfiles,
            "audio_seconds": self.audio_seconds,
            "rows": [r.to_dict(self.nfiles, self.ncpu) for r in self.rows],
            "warnings": self.warnings,
            "best": self.best(),
        }

    def best(self) -> dict[str, Any] | None:
        """Highest RTFx among optimized and sweep cells whose WER is within 0.5 points of
        baseline (when WER is known)."""
        base = next((r for r in self.rows if r.mode.kind == "baseline"), None)
        cands = []
        for r in self.rows:
            d = r.to_dict(self.nfiles, self.ncpu)
            if r.mode.kind not in ("optimized", "cell") or "rtfx" not in d:
                continue
            if (
                base is not None
                and base.wer is not None
                and r.wer is not None
                and r.wer > base.wer + WER_TOLERANCE
            ):
                continue
            cands.append(d)
        return max(cands, key=lambda d: d["rtfx"]) if cands else None


def run_bench(
    files: list[Path],
    refs: dict[Path, str],
    model: Path,
    compute_type: str,
    beam: int,
    repeat: int,
    modes: list[Mode],
    max_seconds: float | None,
    meta: dict[str, Any],
    ncpu: int,
    on_progress: Callable[[str], None],
    sweep: list[Mode] | None = None,
    on_tick: Callable[[str], None] | None = None,
) -> Report:
    """Run every mode ``repeat`` times, interleaved; then the sweep cells within time.
    ``on_progress`` gets a line as each run starts; ``on_tick`` a line about every half
    second while it runs: files finished, time so far, and time left in it."""
    work = Path(tempfile.mkdtemp(prefix="epyc-whisper-bench-"))
    rows = [Row(m) for m in modes]
    warnings: list[str] = []
    started = time.monotonic()
    nruns = repeat * len(rows)

    def ticker(label: str) -> Callable[[int, float], None] | None:
        if on_tick is None:
            return None
        tick = on_tick

        def files_done(done: int, elapsed: float) -> None:
            tick(progress_line(label, done, len(files), elapsed))

        return files_done

    try:
        for rep in range(repeat):
            for k, row in enumerate(rows):
                label = f"run {rep * len(rows) + k + 1}/{nruns}: {row.mode.name}"
                on_progress(label)
                row.samples.append(
                    run_mode(row.mode, files, model, compute_type, beam, work, None, ticker(label))
                )
        cell_time = max(
            (min(s.wall for s in r.ok) for r in rows if r.mode.kind == "optimized" and r.ok),
            default=60.0,
        )
        for m in sweep or []:
            elapsed = time.monotonic() - started
            if max_seconds is not None and elapsed + cell_time * repeat > max_seconds:
                warnings.append(f"sweep stopped at --max-minutes: {m.name} and later cells not run")
                break
            row = Row(m)
            rows.append(row)
            for rep in range(repeat):
                label = f"sweep {m.name} ({rep + 1}/{repeat})"
                on_progress(label)
                row.samples.append(
                    run_mode(
                        m, files, model, compute_type, beam, work, cell_time * 5 + 60, ticker(label)
                    )
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = next((r for r in rows if r.mode.kind == "baseline" and r.ok), None)
    audio = 0.0
    for r in rows:
        if r.ok:
            audio = max(audio, max(s.audio_seconds for s in r.ok))
            r.wer = wer(min(r.ok, key=lambda s: s.wall).texts, refs) if refs else None
            if base is not None:
                r.ratio = round(min(s.wall for s in base.ok) / min(s.wall for s in r.ok), 3)
            walls = [s.wall for s in r.ok]
            spread = (max(walls) - min(walls)) / min(walls)
            if len(walls) > 1 and spread > NOISY_SPREAD:
                warnings.append(
                    f"{r.mode.name}: runs spread {100 * spread:.0f}% apart: the "
                    "machine was noisy, trust the minimum"
                )
        else:
            r.note = (r.samples[0].error if r.samples else None) or "not run"
    return Report(rows, len(files), ncpu, audio, meta, warnings)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(label: str, done: int, total: int, elapsed: float) -> str:
    """'run 1/4: reload: 40/166 files, 0:00:27 so far, about 0:01:25 left' (the time left
    at the rate so far; none before the first file is finished)."""
    line = f"{label}: {done}/{total} files, {_hms(elapsed)} so far"
    if 0 < done < total:
        return f"{line}, about {_hms(elapsed / done * (total - done))} left"
    return line + (", the first file not finished yet" if done == 0 else "")


def report_meta(hw: Hardware, layout: Layout, settings: dict[str, Any]) -> dict[str, Any]:
    """What makes two reports comparable: hardware, versions, thread environment, settings."""
    code = (
        "import faster_whisper, ctranslate2, json; print(json.dumps({'faster_whisper': "
        "faster_whisper.__version__, 'ctranslate2': ctranslate2.__version__}))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    try:
        versions = json.loads(res.stdout)
    except ValueError:
        versions = {}
    from epyc_whisper import __version__

    return {
        "epyc_whisper": __version__,
        "python": platform.python_version(),
        **versions,
        "cpu": hw.model_name,
        "logical_cpus": hw.logical_cpus,
        "usable_cpus": hw.usable_cpus,
        "isa": hw.isa,
        "mem_total_bytes": hw.mem_total_bytes,
        "layout": layout.summary(),
        "settings": settings,
        "thread_env": {
            k: v
            for k, v in os.environ.items()
            if k.endswith("_NUM_THREADS") or k.startswith(("CT2_", "MALLOC_"))
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def save(report: Report, path: Path) -> tuple[dict[str, Any], Path]:
    """``--save``: the best layout of ``report`` (best()) written to ``path``."""
    best = report.best()
    if best is None:
        raise EnvironmentProblem("--save: no optimized or sweep run succeeded")
    return best, save_best(best, path)


def save_best(best: dict[str, Any], path: Path) -> Path:
    """Write the winning layout where later transcribe/detect runs read it (a TOML layer
    below --config and presets; detect shows it as 'saved PATH')."""
    from epyc_whisper.writers import atomic_write_text

    lay = best["layout"] or {}
    lines = [
        "# Written by `epyc-whisper bench --save` on "
        f"{time.strftime('%Y-%m-%d %H:%M')}: RTFx {best['rtfx']}, WER {best['wer']}",
        "[layout]",
    ]
    for key in ("processes", "workers", "threads", "compute_type", "pack"):
        if key in lay:
            v = lay[key]
            if isinstance(v, bool):
                lines.append(f"{key} = {str(v).lower()}")
            elif isinstance(v, str):
                lines.append(f'{key} = "{v}"')
            else:
                lines.append(f"{key} = {v}")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def plot(report: Report, path: Path) -> None:
    """RTFx against process count, one line per threads-per-worker (sweep cells)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EnvironmentProblem(
            "--plot needs matplotlib: pip install 'epyc-whisper[plot]'"
        ) from None
    series: dict[int, list[tuple[int, float]]] = {}
    for d in report.to_dict()["rows"]:
        lay = d.get("layout") or {}
        if (
            d["kind"] == "cell"
            and "rtfx" in d
            and lay.get("compute_type") == report.meta["settings"].get("compute_type")
            and not d["env"]
        ):
            series.setdefault(lay["threads"], []).append((lay["processes"], d["rtfx"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for threads, pts in sorted(series.items()):
        pts.sort()
        ax.plot(
            [p for p, _ in pts],
            [r for _, r in pts],
            marker="o",
            label=f"{threads} thread(s) per worker",
        )
    for d in report.to_dict()["rows"]:
        if d["kind"] in ("baseline", "optimized") and "rtfx" in d:
            ax.axhline(d["rtfx"], linestyle="--", linewidth=1, color="grey")
            ax.annotate(d["mode"], (1, d["rtfx"]), fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("model processes (workers fill the remaining CPUs)")
    ax.set_ylabel("RTFx (audio s per wall s)")
    ax.set_title(
        f"epyc-whisper bench: {report.meta.get('cpu', '')}, {report.meta.get('usable_cpus')} CPUs"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def check_usage(files: list[Path], refs: dict[Path, str], refs_given: bool) -> None:
    if not files:
        raise UsageError("bench: no media files found in the given paths")
    if refs_given and not refs:
        raise UsageError("bench: the references (--refs/--manifest) match none of the files")
