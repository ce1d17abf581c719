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
   default), both while every process loads its copy (a copy converted on load
   peaks at its file size) and while every worker decodes (each window holds its
   decoder state: about 540 MiB for large-v3). Otherwise fewer processes, each with
   more workers sharing weights; workers decode the largest batch of windows that
   fits (4, 2 or 1); where even one window each does not fit, fewer workers.
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
#: Per CTranslate2 worker: features, decoded audio, beams of a 30 s window (tiny.en).
WORKER_WORKING = 60 << 20
#: Windows a CTranslate2 worker decodes as one batch at most (window.py). Beam search
#: over 4 windows at once took less time per window and token than one at a time:
#: 32% less for tiny.en, and with models of the real shapes (tests/shaped_bench.py,
#: README; CPU time of one thread) 59% less for large-v3 and 47% less for turbo: the
#: decoder of a large model is bound by reading its weights, which a batch reads once
#: for all its windows. Each window in a batch holds
#: its own decoder state (DECODER_STATE), so the layout takes the largest batch of
#: DECODE_BATCHES whose memory fits the budget.
DECODE_BATCH = 4
DECODE_BATCHES = (4, 2, 1)
#: A window's decoder state over the cross-attention keys and values (decoder layers x
#: 2 x 1500 encoder positions x width, float32): measured with a large-v3-shaped model,
#: each window in a batch of 4 added 529 MiB, against 469 MiB for the keys and values.
DECODER_STATE = 1.15
#: The encoder's working buffers while it encodes a window (attention over 1500
#: positions) at width 1280: measured +346 MiB over the loaded copy for both the
#: large-v3 and the turbo shape, +317 MiB with 2 layers, +33 MiB for tiny.en (width
#: 384): it scales with the width squared, not with the layers. A worker holds these
#: or its first window's decoder state, whichever is larger, then the state of each
#: further window.
ENCODER_STATE = 346 << 20
#: What a loaded copy takes beyond its variables (tokenizer, feature extractor,
#: CTranslate2's buffers): measured 50-52 MiB for large-v3, turbo and 2-layer shapes.
LOAD_OVERHEAD = 50 << 20
#: Converting weights on load (float16 on disk, int8 in memory) reads them whole first:
#: measured peaks of the file size + 34 MiB (large-v3 shape) and + 96 MiB (tiny.en);
#: the load then leaves the copy 8% larger than one stored int8 (1668 against 1539 MiB).
LOAD_SLACK = 100 << 20
CONVERTED_EXTRA = 0.08
#: (decoder layers, width) of the models faster-whisper downloads by name.
NAMED_DECODERS = {
    "tiny": (4, 384),
    "base": (6, 512),
    "small": (12, 768),
    "medium": (24, 1024),
    "large": (32, 1280),
    "turbo": (4, 1280),
    "large-v3-turbo": (4, 1280),
    "distil-large-v2": (2, 1280),
    "distil-large-v3": (2, 1280),
    "distil-medium.en": (2, 1024),
    "distil-small.en": (2, 768),
}
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
    (clamps, memory); decode_batch: windows a CT2 worker decodes as one batch (the
    largest that fits, its decoder state in working_bytes); load_peak_bytes: one
    process's peak while its copy loads (above model_bytes when the weights are
    converted on load)."""

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
    load_peak_bytes: int = 0

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


#: CTranslate2's DataType order (include/ctranslate2/types.h) and bytes per element.
_CT2_DTYPES = (
    ("float32", 4),
    ("int8", 1),
    ("int16", 2),
    ("int32", 4),
    ("float16", 2),
    ("bfloat16", 2),
)
#: Bytes per element of the variables CTranslate2 does not quantize (biases, norms,
#: position encodings), by compute type: int8 on CPU is int8_float32.
FLOAT_BYTES = {"int8_float16": 2.0, "int8_bfloat16": 2.0, "float16": 2.0, "bfloat16": 2.0}


@dataclass
class StoredModel:
    """What a model.bin holds, read from its header. Attributes: weights: elements of
    the matrices CTranslate2 quantizes (linear, convolution and embedding weights);
    others: elements of the rest (biases, norms, position encodings, scales);
    weight_dtype: how the weights are stored (int8, float16, ...); decoder_layers and
    width: what each window's decoder state grows with (0 when not found)."""

    weights: int
    others: int
    weight_dtype: str
    decoder_layers: int = 0
    width: int = 0


def read_model_bin(path: Path) -> StoredModel | None:
    """The variables of a CTranslate2 model.bin, from its header (seeking past the data:
    milliseconds for a 3 GB file). None when it is not a file of the format we know."""
    import struct

    counts = {"weights": 0, "others": 0, "width": 0}
    dtypes: dict[str, int] = {}
    layers: set[str] = set()
    try:
        with path.open("rb") as f:

            def read(fmt: str) -> Any:
                return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

            def string() -> str:
                return f.read(read("H"))[:-1].decode("utf-8")

            if read("I") < 5:  # binary versions before 5 stored other things first
                return None
            string()  # spec name
            read("I")  # revision
            for _ in range(read("I")):
                name = string()
                shape = [read("I") for _ in range(read("B"))]
                dtype, size = _CT2_DTYPES[read("B")]
                nbytes = read("I")
                f.seek(nbytes, 1)
                elements = nbytes // size
                part = name.split("/")[1] if name.startswith("decoder/layer_") else ""
                if part[len("layer_") :].isdigit():
                    layers.add(part)
                if name == "decoder/embeddings/weight" and len(shape) == 2:
                    counts["width"] = shape[1]
                if name.endswith("/weight") and len(shape) >= 2:
                    counts["weights"] += elements
                    dtypes[dtype] = dtypes.get(dtype, 0) + elements
                else:
                    counts["others"] += elements
    except (OSError, struct.error, IndexError, UnicodeDecodeError):
        return None
    if not dtypes:
        return None
    dtype = max(dtypes, key=lambda k: dtypes[k])
    return StoredModel(counts["weights"], counts["others"], dtype, len(layers), counts["width"])


def _model_dir(model: str) -> Path:
    """The folder a model setting names ('bundled': the test extra's tiny.en)."""
    if model == "bundled":
        from epyc_whisper.models import bundled_model

        found = bundled_model()
        if found is not None:
            return found
    return Path(model).expanduser()


def _stored(model: str) -> StoredModel | None:
    path = _model_dir(model) / "model.bin"
    return read_model_bin(path) if path.is_file() else None


def estimate_model_bytes(model: str, compute_type: str) -> int:
    """Memory of one loaded copy. A local folder: the variables its model.bin holds
    (read from the header, however the weights are stored: a large-v3 stored as int8 has
    half the file of one stored as float16, and takes the same memory once loaded as
    int8), at the compute type's bytes per element, plus LOAD_OVERHEAD. A name: its
    parameter count times bytes per parameter, plus 10% for the variables that stay
    float."""
    bpp = BYTES_PER_PARAM.get(compute_type, 1.0)
    path = Path(model).expanduser()
    stored = _stored(model)
    if stored is not None:
        other = FLOAT_BYTES.get(compute_type, 4.0)
        variables = stored.weights * bpp + stored.others * other
        if bpp != BYTES_PER_PARAM.get(stored.weight_dtype, 1.0):
            variables *= 1 + CONVERTED_EXTRA
        return int(variables) + LOAD_OVERHEAD
    if (path / "model.bin").is_file():
        # Not a header we can read: assume float16 (what the hub ships for Whisper).
        params = (path / "model.bin").stat().st_size / 2
    else:
        params = MODEL_PARAMS.get(model, MODEL_PARAMS["large-v3"])
    return int(params * bpp * 1.1)


def load_peak_bytes(model: str, compute_type: str, model_bytes: int) -> int:
    """The peak of one process while its copy loads: the copy itself, and, when the
    weights are stored in another type than they run in (float16 on disk, int8 in
    memory), the stored weights read whole before they are converted."""
    stored = _stored(model)
    runs_as = BYTES_PER_PARAM.get(compute_type, 1.0)
    if stored is None:
        if model not in MODEL_PARAMS or runs_as == 2.0:
            return model_bytes
        file_bytes = int(MODEL_PARAMS[model] * 2)  # the hub ships Whisper as float16
    elif runs_as == BYTES_PER_PARAM.get(stored.weight_dtype, 1.0):
        return model_bytes
    else:
        file_bytes = (_model_dir(model) / "model.bin").stat().st_size
    return max(model_bytes, file_bytes + LOAD_OVERHEAD) + LOAD_SLACK


def _decoder(model: str) -> tuple[int, int]:
    """(decoder layers, width): from the header of a folder's model.bin, else by name."""
    stored = _stored(model)
    if stored is not None and stored.decoder_layers and stored.width:
        return stored.decoder_layers, stored.width
    name = "large" if model.startswith("large-v") and "turbo" not in model else model
    name = name if name in NAMED_DECODERS else name.removesuffix(".en")
    return NAMED_DECODERS.get(name, NAMED_DECODERS["large"])


def window_bytes(model: str) -> int:
    """The decoder state one window adds to a worker's batch (DECODER_STATE)."""
    layers, width = _decoder(model)
    return int(DECODER_STATE * layers * 2 * 1500 * width * 4)


def worker_bytes(model: str, batch: int) -> int:
    """One CT2 worker's working memory when it decodes ``batch`` windows at once:
    WORKER_WORKING, the encoder's buffers or the first window's decoder state (the
    larger), and the decoder state of each further window. Measured with the shaped
    models on one thread: large-v3 599 MiB (1 window) and 2181 MiB (4), planned 599
    and 2216; turbo 346 and 480, planned 406 and 607."""
    window = window_bytes(model)
    encoder = int(ENCODER_STATE * (_decoder(model)[1] / 1280) ** 2)
    return WORKER_WORKING + max(encoder, window) + (batch - 1) * window


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

    # Memory: each process holds one copy, and each worker the decoder state of the
    # windows it decodes at once. All processes load at the same time, before any
    # decoding, and a copy whose weights are converted while loading (float16 on disk,
    # int8 in memory) passes through a higher peak: the plan must fit both moments.
    load_peak = load_peak_bytes(settings.model, settings.compute_type, model_bytes)
    per_batch = {b: worker_bytes(settings.model, b) for b in DECODE_BATCHES}

    def need(n: int, workers_total: int, batch: int = 1) -> int:
        running = n * (model_bytes + PROCESS_OVERHEAD) + workers_total * per_batch[batch]
        return max(running, n * (load_peak + PROCESS_OVERHEAD))

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
    # The largest decode batch whose decoder state fits (DECODE_BATCHES); when even one
    # window per worker does not fit (large-v3: about 600 MiB a worker), fewer workers.
    fits = [b for b in DECODE_BATCHES if need(len(plans), _workers(plans), b) <= budget]
    batch = fits[0] if fits else 1
    before = _workers(plans)
    while not fits and max(p.workers for p in plans) > 1:
        widest = max(plans, key=lambda p: p.workers)
        widest.workers -= 1
        fits = [1] if need(len(plans), _workers(plans), 1) <= budget else []
    if _workers(plans) < before:
        warnings.append(
            f"{before} CT2 workers would not fit in the memory budget ({budget >> 20} MiB) "
            f"with one window each: using {_workers(plans)}"
        )
    if settings.device == "cuda":
        batch = 1  # window.py decodes a GPU model's windows one at a time anyway
    working = sum(PROCESS_OVERHEAD + p.workers * per_batch[batch] for p in plans)
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
        batch,
        load_peak,
    )
    peak = max(layout.total_bytes, len(plans) * (load_peak + PROCESS_OVERHEAD))
    if peak > budget:
        layout.warnings.append(
            f"even one model copy needs about {peak >> 20} MiB, more than the "
            f"memory budget of {budget >> 20} MiB ({settings.memory_limit} of available)"
        )
    elif batch < DECODE_BATCH and settings.device != "cuda":
        layout.warnings.append(
            f"decode batch {batch} (not {DECODE_BATCH}): {DECODE_BATCH} windows per worker "
            f"would not fit in the memory budget ({budget >> 20} MiB)"
        )
    return layout


def _workers(plans: list[ProcessPlan]) -> int:
    return sum(p.workers for p in plans)


def check_room(layout: Layout, settings: Settings) -> None:
    """A memory limit the user set (flag, variable, file, preset) that leaves no room for
    one model copy (or its load peak), its process and one CT2 worker is a usage error
    before any worker starts: the run could only fail or ignore the limit. The built-in
    80% of available memory stays a warning (``plan``): that is the machine, not a
    mistake in a flag."""
    work = worker_bytes(settings.model, 1)
    one = max(layout.model_bytes, layout.load_peak_bytes) + PROCESS_OVERHEAD + work
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
        f"{work >> 20} MiB for one CT2 worker); give at least {mib}M, "
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
