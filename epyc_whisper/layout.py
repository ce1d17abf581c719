"""Hardware + model + settings -> Layout: processes, CTranslate2 workers, threads, CPU sets.

The rules (README "Layout rules"; numbers from ../shared/DESIGN.md, 16-core Xeon,
tiny.en int8):

1. Plan for the CPUs this process may use (affinity, cgroup quota), never the host.
2. One model process per L3 domain (the CCX/CCD on EPYC): its CTranslate2 workers
   share one copy of the weights and one cache. One process with 8 CT2 workers
   x 2 threads (205.7 RTFx) matched 16 single-thread processes (204.0) with one
   sixteenth of the weights, and beat 8 processes x 2 threads (192.0).
3. Inside a process: throughput comes from many independent transcriptions, not
   from threads on one (1 x 16 threads: 27.8 RTFx, 16 x 1: 204). A worker gets
   2 threads where a core has two hardware threads (SMT siblings) or the
   domain has 8+ CPUs (the 8 x 2 result above); otherwise 1 (on 2 cores,
   2 workers x 1 thread measured 1.5x faster-whisper's defaults).
4. compute_type int8 (1.77x float32 on AVX-512).
5. The whole plan must fit in ``memory_limit`` (80% of available memory by
   default): otherwise fewer processes, each with more workers sharing weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from epyc_whisper.config import Settings, origin, parse_size
from epyc_whisper.errors import UsageError
from epyc_whisper.hardware import Hardware

#: Parameters of the models faster-whisper downloads by name (openai/whisper, distil-whisper).
MODEL_PARAMS = {
    "tiny": 39e6,
    "tiny.en": 39e6,
    "base": 74e6,
    "base.en": 74e6,
    "small": 244e6,
    "small.en": 244e6,
    "medium": 769e6,
    "medium.en": 769e6,
    "large-v1": 1550e6,
    "large-v2": 1550e6,
    "large-v3": 1550e6,
    "large": 1550e6,
    "turbo": 809e6,
    "large-v3-turbo": 809e6,
    "distil-large-v2": 756e6,
    "distil-large-v3": 756e6,
    "distil-medium.en": 394e6,
    "distil-small.en": 166e6,
}
BYTES_PER_PARAM = {
    "int8": 1.0,
    "int8_float32": 1.0,
    "int8_float16": 1.0,
    "int8_bfloat16": 1.0,
    "int16": 2.0,
    "float16": 2.0,
    "bfloat16": 2.0,
    "float32": 4.0,
}
#: CTranslate2 runtime, tokenizer and Python per process, measured with tiny.en (README).
PROCESS_OVERHEAD = 180 << 20
#: Per CTranslate2 worker: decoder state, beams, features, decoded audio of a 30 s window.
WORKER_WORKING = 60 << 20
#: Windows a CTranslate2 worker decodes as one batch (window.py): measured with tiny.en,
#: beam search over 4 windows at once took 32% less time per token than one at a time.
#: Each further window holds its own cross-attention state (measured: +15 MB a window
#: for tiny.en; it grows with layers x width, to about 0.5 GB for large-v3), and the gain
#: is unmeasured for large models: a model above BATCH_BELOW decodes one window at a time.
DECODE_BATCH = 4
BATCH_BELOW = 512 << 20
#: glibc mmap and trim thresholds (bytes): above large-v3's encoder attention buffers.
MALLOC_THRESHOLD = 256 << 20


@dataclass
class ProcessPlan:
    """One model process. Attributes: index; cpus: its CPU set (pinned with
    sched_setaffinity); workers: CTranslate2 workers sharing its weights;
    threads: threads per worker."""

    index: int
    cpus: list[int]
    workers: int
    threads: int


@dataclass
class Layout:
    """What ``transcribe`` will run. Attributes: processes: one plan per model
    process; compute_type; batch_size: files per queue item; model_bytes: memory
    of one model copy (model_bytes_source: "measured" by an earlier run, or
    "estimated"); working_bytes: estimated working memory of all processes;
    budget_bytes: memory the plan may use; warnings: what was changed and why
    (clamps, memory); decode_batch: windows a CT2 worker decodes as one batch."""

    processes: list[ProcessPlan]
    compute_type: str
    batch_size: int
    device: str
    model_bytes: int
    working_bytes: int
    budget_bytes: int
    warnings: list[str] = field(default_factory=list)
    model_bytes_source: str = "estimated"  # or "measured" (a previous run's workers)
    decode_batch: int = 1

    @property
    def total_bytes(self) -> int:
        return self.model_bytes * len(self.processes) + self.working_bytes

    @property
    def total_workers(self) -> int:
        return sum(p.workers for p in self.processes)

    def summary(self) -> str:
        p = self.processes[0]
        return (
            f"{len(self.processes)} process(es) x {p.workers} CT2 worker(s) x "
            f"{p.threads} thread(s), {self.compute_type}, batch {self.batch_size}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_bytes"] = self.total_bytes
        return d


def estimate_model_bytes(model: str, compute_type: str) -> int:
    """Memory of one loaded copy. A local folder: its model.bin, assumed stored as
    float16 (what ct2-transformers-converter writes for Whisper), rescaled to the
    compute type. A name: its parameter count times bytes per parameter."""
    bpp = BYTES_PER_PARAM.get(compute_type, 1.0)
    path = Path(model).expanduser()
    if (path / "model.bin").is_file():
        params = (path / "model.bin").stat().st_size / 2
    else:
        params = MODEL_PARAMS.get(model, MODEL_PARAMS["large-v3"])
    # Embeddings and layer norms stay float even under int8: about 10% more.
    return int(params * bpp * 1.1)


def memory_budget(hw: Hardware, limit: str) -> int:
    if limit.endswith("%"):
        return int(hw.mem_available_bytes * float(limit[:-1]) / 100)
    return parse_size(limit)


def cpu_groups(hw: Hardware) -> list[list[int]]:
    """The usable CPUs grouped by L3 domain (else NUMA node), in order."""
    allowed = sorted(hw.allowed_cpus)[: max(1, hw.usable_cpus)]
    if hw.usable_cpus < len(hw.allowed_cpus):
        # A cgroup quota below the affinity count: one hardware thread per core first.
        by_core: dict[tuple[int, int], list[int]] = {}
        for c in sorted(hw.allowed_cpus):
            by_core.setdefault(hw.core_of.get(c, (0, c)), []).append(c)
        firsts = [cpus[0] for cpus in by_core.values()]
        rest = [c for c in sorted(hw.allowed_cpus) if c not in firsts]
        allowed = sorted((firsts + rest)[: hw.usable_cpus])
    usable = set(allowed)
    domains = [d.cpus for d in hw.l3_domains] or [n.cpus for n in hw.numa_nodes]
    groups = [sorted(usable & set(d)) for d in domains]
    groups = [g for g in groups if g]
    covered = {c for g in groups for c in g}
    rest = sorted(usable - covered)
    if rest:
        groups.append(rest)
    return groups or [sorted(usable)]


def split_cpus(groups: list[list[int]], n: int, hw: Hardware | None = None) -> list[list[int]]:
    """n CPU sets, each as contiguous in the domain order as possible. SMT siblings sit
    next to each other in that order, so a split never puts one core in two processes
    (two copies of the weights fighting over one core's L1/L2) where sizes allow."""
    core = (lambda c: hw.core_of.get(c, (0, c))) if hw else (lambda c: (0, c))
    flat = [c for g in groups for c in sorted(g, key=lambda c: (core(c), c))]
    n = max(1, min(n, len(flat)))
    if n == len(groups):
        return [list(g) for g in groups]
    size, extra = divmod(len(flat), n)
    out, i = [], 0
    for k in range(n):
        take = size + (1 if k < extra else 0)
        out.append(sorted(flat[i : i + take]))
        i += take
    return out


def default_threads(hw: Hardware, cpus: list[int]) -> int:
    cores = {hw.core_of.get(c, (0, c)) for c in cpus}
    if len(cores) < len(cpus) or len(cpus) >= 8:
        return 2
    return 1


def plan(hw: Hardware, settings: Settings, measured_model_bytes: int | None = None) -> Layout:
    """The layout ``transcribe`` will use. Explicit settings win; the rest follow
    the rules in the module docstring. Over-asking is clamped with a warning. A model
    copy's size is ``measured_model_bytes`` (measured.py) when known, else estimated."""
    warnings: list[str] = []
    groups = cpu_groups(hw)
    ncpu = sum(len(g) for g in groups)
    budget = memory_budget(hw, settings.memory_limit)
    model_bytes = measured_model_bytes or estimate_model_bytes(
        settings.model, settings.compute_type
    )

    if settings.device == "cuda":
        groups = [[c for g in groups for c in g]]
    nproc = settings.processes or len(groups)
    if settings.device == "cuda":  # one process per GPU (--device-index 0,1)
        nproc = len(str(getattr(settings, "device_index", "0")).split(","))
    if nproc > ncpu:
        warnings.append(
            f"processes={nproc} ({settings.source('processes')}) is more than the "
            f"{ncpu} usable CPUs: clamped to {ncpu}"
        )
        nproc = ncpu

    # Memory: each process holds one copy; shrink the process count until it fits.
    def need(n: int, workers_total: int) -> int:
        return n * (model_bytes + PROCESS_OVERHEAD) + workers_total * WORKER_WORKING

    while nproc > 1 and need(nproc, max(ncpu // 2, nproc)) > budget:
        nproc -= 1
    if settings.processes and nproc < settings.processes and nproc < ncpu:
        warnings.append(
            f"processes={settings.processes} would not fit in the memory budget "
            f"({budget >> 20} MiB): using {nproc}"
        )
    elif not settings.processes and nproc < len(groups):
        warnings.append(
            f"one process per L3 domain ({len(groups)}) would not fit in the memory "
            f"budget ({budget >> 20} MiB): using {nproc}"
        )

    cpusets = split_cpus(groups, nproc, hw)
    plans: list[ProcessPlan] = []
    clamped = False
    for i, cpus in enumerate(cpusets):
        threads = settings.threads
        workers = settings.workers
        if threads is None and workers is None:
            threads = default_threads(hw, cpus)
        if threads is None:
            threads = max(1, len(cpus) // (workers or 1))
        if workers is None:
            workers = max(1, len(cpus) // threads)
        if workers * threads > len(cpus):
            clamped = True
            threads = max(1, min(threads, len(cpus)))
            workers = max(1, len(cpus) // threads)
        plans.append(ProcessPlan(i, cpus, workers, threads))
    if clamped:
        p = plans[0]
        warnings.append(
            f"workers={settings.workers or 'auto'} x threads={settings.threads or 'auto'} per "
            f"process is more than its {len(p.cpus)} CPU(s): clamped to {p.workers} worker(s) x "
            f"{p.threads} thread(s) (only {ncpu} CPUs are usable)"
        )
    working = sum(PROCESS_OVERHEAD + p.workers * WORKER_WORKING for p in plans)
    layout = Layout(
        plans,
        settings.compute_type,
        settings.batch_size,
        settings.device,
        model_bytes,
        working,
        budget,
        warnings,
        "measured" if measured_model_bytes else "estimated",
        DECODE_BATCH if model_bytes < BATCH_BELOW else 1,
    )
    if layout.total_bytes > budget:
        layout.warnings.append(
            f"even one model copy needs about {layout.total_bytes >> 20} MiB, more than the "
            f"memory budget of {budget >> 20} MiB ({settings.memory_limit} of available)"
        )
    return layout


def check_room(layout: Layout, settings: Settings) -> None:
    """A memory limit the user set (flag, variable, file, preset) that leaves no room for
    one model copy, its process and one CT2 worker is a usage error before any worker
    starts: the run could only fail or ignore the limit. The built-in 80% of available
    memory stays a warning (``plan``): that is the machine, not a mistake in a flag."""
    one = layout.model_bytes + PROCESS_OVERHEAD + WORKER_WORKING
    source = settings.source("memory_limit")
    if layout.budget_bytes >= one or source == "default":
        return
    limit = settings.memory_limit
    where = origin("memory_limit", source)
    said = f"{where} {limit}" if source == "cli" else f"memory_limit = {limit!r} (from {where})"
    of = f" ({limit} of available memory)" if limit.endswith("%") else ""
    mib = -(-one >> 20)  # rounded up
    raise UsageError(
        f"{said} comes to {layout.budget_bytes >> 20} MiB{of}, less than one model copy "
        f"needs: about {mib} MiB ({layout.model_bytes >> 20} MiB of weights, "
        f"{layout.model_bytes_source}, {PROCESS_OVERHEAD >> 20} MiB for its process and "
        f"{WORKER_WORKING >> 20} MiB for one CT2 worker); give at least {mib}M, "
        "or leave it unset (80% of available memory)"
    )


def thread_env(layout: Layout) -> dict[str, str]:
    """The thread environment the layout wants, set before native libraries load.

    OpenMP/MKL get the per-worker thread count (CTranslate2 also gets it through
    cpu_threads). numpy's BLAS and numexpr get 1: feature extraction runs beside
    the model in every worker, and more threads there would oversubscribe the
    pinned cores. MALLOC_ARENA_MAX=4 keeps glibc from growing an arena per thread.
    The two glibc thresholds keep the encoder's large buffers (tens of MB a window,
    for attention) in the heap for reuse, where glibc would otherwise map them afresh
    and fault every page in for every window: measured on 60 short clips with tiny.en,
    1.59 million page faults became 0.12 million and the run 11% shorter.
    """
    threads = str(layout.processes[0].threads)
    return {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "4",
        "MALLOC_MMAP_THRESHOLD_": str(MALLOC_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(MALLOC_THRESHOLD),
    }
