"""CPU and memory topology from /proc and /sys, as pure functions over a root path.

Everything here reads files under an injectable ``root`` so tests can feed captured
or built trees (``tests/fixtures/hw``). Nothing here raises on a missing or malformed
file: what could not be read goes into ``Hardware.notes`` with what was used instead,
because ``epyc-whisper detect`` must still say something useful inside a bare
container. Only stdlib, psutil and py-cpuinfo: this module is imported by the CLI
before the thread environment is set, so it must not load OpenMP/BLAS (no numpy,
no ctranslate2).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "Hardware",
    "L3Domain",
    "NumaNode",
    "detect",
    "parse_cpulist",
    "tuning_advice",
]

_CPU_DIR = "sys/devices/system/cpu"
_NODE_DIR = "sys/devices/system/node"
_THP_FILE = "sys/kernel/mm/transparent_hugepage/enabled"
_CGROUP_DIR = "sys/fs/cgroup"

# The ISA keys are fixed so that layout/bench code can index them without .get().
_ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "avx2": ("avx2",),
    "avx512f": ("avx512f",),
    "avx512_vnni": ("avx512_vnni",),
    "avx512_bf16": ("avx512_bf16",),
    # Linux reports AMX as three separate flags; any of them means the tile unit exists.
    "amx": ("amx_tile", "amx_int8", "amx_bf16"),
}


@dataclass
class L3Domain:
    """A group of logical CPUs sharing one level-3 cache (a CCX on EPYC).

    Attributes:
        cpus: logical CPUs sharing this L3 (sorted).
        size_bytes: L3 size in bytes, or None when unknown.
    """

    cpus: list[int]
    size_bytes: int | None


@dataclass
class NumaNode:
    """A NUMA node with the online logical CPUs attached to it.

    Attributes:
        id: the node number (the N of /sys/devices/system/node/nodeN).
        cpus: online logical CPUs of the node (sorted).
    """

    id: int
    cpus: list[int]


@dataclass
class Hardware:
    """What :func:`detect` found.

    Attributes:
        vendor: "AuthenticAMD", "GenuineIntel" (the cpuinfo vendor_id) or "unknown".
        model_name: the cpuinfo model name, or "unknown".
        family: CPU family (decimal), None when unknown.
        model: CPU model (decimal), None when unknown.
        is_epyc: the model name contains "EPYC".
        zen: "Zen", "Zen 2", "Zen 3", "Zen 4" or "Zen 5" for AMD families 0x17-0x1A,
            None otherwise. Zen 4c (Bergamo) reports "Zen 4".
        sockets: number of distinct physical packages among online CPUs.
        physical_cores: number of distinct (package, core) pairs among online CPUs.
        logical_cpus: online logical CPUs on the machine.
        smt: some core has more than one online logical CPU.
        core_of: logical CPU -> (package id, core id).
        numa_nodes: NUMA nodes that have online CPUs, sorted by id.
        l3_domains: distinct shared_cpu_list groups of the level-3 cache, sorted by
            first CPU.
        isa: exactly the keys avx2, avx512f, avx512_vnni, avx512_bf16, amx.
        mem_total_bytes: MemTotal.
        mem_available_bytes: MemAvailable.
        hugepages_total: HugePages_Total (static huge pages, not THP).
        hugepages_free: HugePages_Free.
        hugepage_size_bytes: Hugepagesize, None when unknown.
        thp: the selected transparent_hugepage mode ("always", "madvise", "never"),
            None when the kernel does not expose it.
        governor: cpu0's cpufreq scaling_governor, None without cpufreq (VMs).
        allowed_cpus: CPUs this process may use (affinity) intersected with online.
        cpu_quota: cgroup CPU quota in CPUs (cpu.max "200000 100000" -> 2.0), None
            when unlimited or unknown.
        usable_cpus: min(len(allowed_cpus), ceil(cpu_quota)), at least 1.
        root: the root that was read.
        built: the tree has a BUILT file at its root (a fixture built from published
            specs, not read from a machine).
        notes: one line per thing that could not be read and what was used instead.
    """

    vendor: str
    model_name: str
    family: int | None
    model: int | None
    is_epyc: bool
    zen: str | None
    sockets: int
    physical_cores: int
    logical_cpus: int
    smt: bool
    core_of: dict[int, tuple[int, int]]
    numa_nodes: list[NumaNode]
    l3_domains: list[L3Domain]
    isa: dict[str, bool]
    mem_total_bytes: int
    mem_available_bytes: int
    hugepages_total: int
    hugepages_free: int
    hugepage_size_bytes: int | None
    thp: str | None
    governor: str | None
    allowed_cpus: list[int]
    cpu_quota: float | None
    usable_cpus: int
    root: str
    built: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict: tuples become lists and dict keys become strings."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


def _jsonable(value: Any) -> Any:
    """Convert dataclasses, tuples and int-keyed dicts into plain JSON types."""
    if isinstance(value, L3Domain | NumaNode):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------- parsing helpers


def parse_cpulist(s: str) -> list[int]:
    """Parse a kernel CPU list such as "0-3,8,10-11" into a sorted list of distinct ints.

    Accepts whitespace and newlines around items and the "a-b:stride" form some kernels
    print for isolcpus. An empty string gives []. Raises ValueError on malformed input
    (callers that read files turn that into a note).
    """
    cpus: set[int] = set()
    for raw in s.replace("\n", ",").split(","):
        item = raw.strip()
        if not item:
            continue
        stride = 1
        if ":" in item:
            item, _, stride_s = item.partition(":")
            stride = int(stride_s)
            if stride < 1:
                raise ValueError(f"bad stride in CPU list item {raw!r}")
        if "-" in item:
            lo_s, _, hi_s = item.partition("-")
            lo, hi = int(lo_s), int(hi_s)
            if lo < 0 or hi < lo:
                raise ValueError(f"bad range in CPU list item {raw!r}")
            cpus.update(range(lo, hi + 1, stride))
        else:
            cpu = int(item)
            if cpu < 0:
                raise ValueError(f"negative CPU in CPU list item {raw!r}")
            cpus.add(cpu)
    return sorted(cpus)


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]?)i?B?\s*$", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def _parse_size(s: str) -> int | None:
    """Parse a sysfs cache size ("32768K") or a cpuinfo one ("1024 KB") into bytes."""
    m = _SIZE_RE.match(s)
    if not m:
        return None
    return int(m.group(1)) * _SIZE_UNIT[m.group(2).upper()]


def _parse_int(s: str | None) -> int | None:
    """int(s) (decimal, or hex with 0x), None for None or garbage."""
    if s is None:
        return None
    try:
        return int(s.strip(), 0)
    except ValueError:
        return None


def _compact(cpus: Iterable[int]) -> str:
    """Format CPUs as a kernel-style list ("0-3,8") for notes."""
    out: list[str] = []
    ordered = sorted(set(cpus))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


class _Tree:
    """Reads text files under a root; never raises for missing or unreadable files."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, rel: str) -> Path:
        return self.root / rel

    def read(self, rel: str) -> str | None:
        try:
            return self.path(rel).read_text(encoding="utf-8", errors="replace")
        except (OSError, ValueError):
            # OSError covers missing files, permission errors and EIO from sysfs
            # attributes some hypervisors do not implement.
            return None

    def read_line(self, rel: str) -> str | None:
        text = self.read(rel)
        return None if text is None else text.strip()

    def is_dir(self, rel: str) -> bool:
        try:
            return self.path(rel).is_dir()
        except OSError:
            return False

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(rel)))
        except OSError:
            return []


def _parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """Split /proc/cpuinfo into one dict per processor block."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def _parse_meminfo(text: str) -> dict[str, int]:
    """Parse /proc/meminfo into bytes ("kB" values) or plain counts (HugePages_*)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        if len(parts) > 1 and parts[1].lower() == "kb":
            value *= 1024
        out[key.strip()] = value
    return out


def _zen_generation(vendor: str, family: int | None, model: int | None) -> str | None:
    """Map AMD family/model to a Zen generation, following the kernel's and AMD's tables."""
    if vendor != "AuthenticAMD" or family is None:
        return None
    if family == 0x17:
        if model is None:
            return None
        # 0x01-0x2f are Zen and Zen+ (Naples, Summit/Pinnacle Ridge, Raven Ridge);
        # 0x30 and up (Rome 0x31, Matisse 0x71, Renoir 0x60, ...) are Zen 2.
        return "Zen 2" if model >= 0x30 else "Zen"
    if family == 0x19:
        if model is None:
            return None
        # Family 0x19 interleaves Zen 3 and Zen 4 model ranges: Milan 0x01, Vermeer 0x21,
        # Cezanne 0x50 are Zen 3; Genoa 0x11, Raphael 0x61, Phoenix 0x74, Bergamo 0xa0
        # (Zen 4c) are Zen 4.
        if 0x00 <= model <= 0x0F or 0x20 <= model <= 0x5F:
            return "Zen 3"
        if 0x10 <= model <= 0x1F or 0x60 <= model <= 0xAF:
            return "Zen 4"
        return None
    if family == 0x1A:
        return "Zen 5"
    return None


def _is_system_root(root: Path) -> bool:
    try:
        return root.resolve() == Path("/")
    except OSError:
        return False


# --------------------------------------------------------------------------- detection


def detect(
    root: str | os.PathLike[str] = "/", allowed_cpus: Iterable[int] | None = None
) -> Hardware:
    """Read CPU/memory topology under ``root`` (default: this machine).

    For root "/" and allowed_cpus None, the allowed CPUs are this process's affinity
    (os.sched_getaffinity(0)); for any other root they are all online CPUs of the tree
    unless given. Missing or malformed files never raise: each fallback adds a line to
    ``notes``. py-cpuinfo (slow: it runs cpuid in a subprocess) is consulted only when
    root is "/" and /proc/cpuinfo lacks a field.
    """
    root_path = Path(root)
    tree = _Tree(root_path)
    system = _is_system_root(root_path)
    notes: list[str] = []

    # ---- /proc/cpuinfo: identity, flags, and the topology fallback
    cpuinfo_text = tree.read("proc/cpuinfo")
    blocks: list[dict[str, str]] = []
    if cpuinfo_text is None:
        notes.append("proc/cpuinfo not readable: CPU identity and flags unknown")
    else:
        blocks = _parse_cpuinfo(cpuinfo_text)
        if not blocks:
            notes.append("proc/cpuinfo has no processor blocks: CPU identity and flags unknown")
    # The first block that names a vendor carries the identity (all are identical on x86).
    first = next((b for b in blocks if "vendor_id" in b), blocks[0] if blocks else {})
    by_processor: dict[int, dict[str, str]] = {}
    for b in blocks:
        pid = _parse_int(b.get("processor"))
        if pid is not None:
            by_processor[pid] = b

    vendor = first.get("vendor_id")
    model_name = first.get("model name")
    family = _parse_int(first.get("cpu family"))
    model = _parse_int(first.get("model"))
    flags_s = first.get("flags")
    missing_ident = [
        name
        for name, value in (
            ("vendor_id", vendor),
            ("model name", model_name),
            ("cpu family", family),
            ("model", model),
            ("flags", flags_s),
        )
        if value is None
    ]
    if missing_ident and system:
        vendor, model_name, family, model, flags_s = _py_cpuinfo_fill(
            missing_ident, vendor, model_name, family, model, flags_s, notes
        )
    elif missing_ident and cpuinfo_text is not None and blocks:
        notes.append(f"proc/cpuinfo lacks {', '.join(missing_ident)}: reported as unknown")
    vendor = vendor or "unknown"
    model_name = model_name or "unknown"
    flags = set((flags_s or "").split())
    isa = {key: any(f in flags for f in names) for key, names in _ISA_FLAGS.items()}

    # ---- online CPUs
    online = _online_cpus(tree, by_processor, system, notes)

    # ---- topology: (package, core) per CPU
    core_of = _core_map(tree, online, by_processor, notes)
    sockets = len({pkg for pkg, _ in core_of.values()})
    threads_per_core: dict[tuple[int, int], int] = {}
    for key in core_of.values():
        threads_per_core[key] = threads_per_core.get(key, 0) + 1
    physical_cores = len(threads_per_core)
    smt = any(n > 1 for n in threads_per_core.values())

    numa_nodes = _numa_nodes(tree, online, notes)
    l3_domains = _l3_domains(tree, online, vendor, first.get("cache size"), notes)

    # ---- memory
    mem = _memory(tree, system, notes)
    thp = _thp(tree, notes)
    governor = tree.read_line(f"{_CPU_DIR}/cpu0/cpufreq/scaling_governor") or None
    if governor is None:
        notes.append(
            f"{_CPU_DIR}/cpu0/cpufreq/scaling_governor not readable (no cpufreq, common in "
            "VMs and containers): governor unknown"
        )

    # ---- what this process may use
    allowed = _allowed(online, allowed_cpus, system, notes)
    quota = _cgroup_quota(tree, notes)
    usable = len(allowed)
    if quota is not None:
        # ceil: a 2.5-CPU quota can keep three threads partly busy; the small epsilon keeps
        # a float like 2.0000000001 from turning into 3.
        usable = min(usable, math.ceil(quota - 1e-9))
    usable = max(1, usable)

    return Hardware(
        vendor=vendor,
        model_name=model_name,
        family=family,
        model=model,
        is_epyc="EPYC" in model_name,
        zen=_zen_generation(vendor, family, model),
        sockets=max(1, sockets),
        physical_cores=physical_cores,
        logical_cpus=len(online),
        smt=smt,
        core_of=core_of,
        numa_nodes=numa_nodes,
        l3_domains=l3_domains,
        isa=isa,
        mem_total_bytes=mem["MemTotal"],
        mem_available_bytes=mem["MemAvailable"],
        hugepages_total=mem["HugePages_Total"],
        hugepages_free=mem["HugePages_Free"],
        hugepage_size_bytes=mem.get("Hugepagesize"),
        thp=thp,
        governor=governor,
        allowed_cpus=allowed,
        cpu_quota=quota,
        usable_cpus=usable,
        root=str(root_path),
        built=tree.path("BUILT").is_file(),
        notes=notes,
    )


def _py_cpuinfo_fill(
    missing: list[str],
    vendor: str | None,
    model_name: str | None,
    family: int | None,
    model: int | None,
    flags_s: str | None,
    notes: list[str],
) -> tuple[str | None, str | None, int | None, int | None, str | None]:
    """Fill identity fields /proc/cpuinfo lacked from py-cpuinfo (live machine only)."""
    try:
        import cpuinfo  # py-cpuinfo; imported lazily because get_cpu_info() takes ~1 s

        info: dict[str, Any] = cpuinfo.get_cpu_info()
    except Exception as exc:  # py-cpuinfo can fail in odd ways on exotic systems
        notes.append(f"proc/cpuinfo lacks {', '.join(missing)} and py-cpuinfo failed ({exc})")
        return vendor, model_name, family, model, flags_s
    vendor = vendor or info.get("vendor_id_raw") or None
    model_name = model_name or info.get("brand_raw") or None
    if family is None and isinstance(info.get("family"), int):
        family = info["family"]
    if model is None and isinstance(info.get("model"), int):
        model = info["model"]
    if flags_s is None and isinstance(info.get("flags"), list):
        flags_s = " ".join(str(f) for f in info["flags"])
    notes.append(f"proc/cpuinfo lacks {', '.join(missing)}: used py-cpuinfo")
    return vendor, model_name, family, model, flags_s


def _online_cpus(
    tree: _Tree, by_processor: dict[int, dict[str, str]], system: bool, notes: list[str]
) -> list[int]:
    rel = f"{_CPU_DIR}/online"
    text = tree.read_line(rel)
    if text is not None:
        try:
            online = parse_cpulist(text)
            if online:
                return online
        except ValueError:
            pass
        notes.append(f"{rel} malformed ({text[:40]!r})")
    else:
        notes.append(f"{rel} not readable")
    if by_processor:
        notes[-1] += ": used the processors listed in proc/cpuinfo"
        return sorted(by_processor)
    if system:
        count = os.cpu_count() or 1
        notes[-1] += f": used os.cpu_count() = {count}"
        return list(range(count))
    notes[-1] += ": assumed one CPU (0)"
    return [0]


def _core_map(
    tree: _Tree,
    online: list[int],
    by_processor: dict[int, dict[str, str]],
    notes: list[str],
) -> dict[int, tuple[int, int]]:
    """(package id, core id) per online CPU: sysfs topology, else cpuinfo, else one core each."""
    core_of: dict[int, tuple[int, int]] = {}
    from_cpuinfo: list[int] = []
    own_core: list[int] = []
    for cpu in online:
        base = f"{_CPU_DIR}/cpu{cpu}/topology"
        pkg = _parse_int(tree.read_line(f"{base}/physical_package_id"))
        core = _parse_int(tree.read_line(f"{base}/core_id"))
        # Some hypervisors report -1 for ids they do not model; treat that as unknown.
        if pkg is not None and core is not None and pkg >= 0 and core >= 0:
            core_of[cpu] = (pkg, core)
            continue
        block = by_processor.get(cpu, {})
        pkg = _parse_int(block.get("physical id"))
        core = _parse_int(block.get("core id"))
        if pkg is not None and core is not None:
            core_of[cpu] = (pkg, core)
            from_cpuinfo.append(cpu)
        else:
            # Without any topology, counting every CPU as its own core is the safe
            # guess: it never invents SMT siblings that would halve the worker count.
            core_of[cpu] = (pkg if pkg is not None else 0, cpu)
            own_core.append(cpu)
    if from_cpuinfo:
        notes.append(
            f"{_CPU_DIR}/cpuN/topology not readable for CPUs {_compact(from_cpuinfo)}: "
            "used physical id/core id from proc/cpuinfo"
        )
    if own_core:
        notes.append(
            f"no topology for CPUs {_compact(own_core)} in sysfs or proc/cpuinfo: "
            "counted each as its own core"
        )
    return core_of


def _numa_nodes(tree: _Tree, online: list[int], notes: list[str]) -> list[NumaNode]:
    online_set = set(online)
    nodes: list[NumaNode] = []
    malformed: list[str] = []
    for name in tree.listdir(_NODE_DIR):
        m = re.fullmatch(r"node(\d+)", name)
        if not m:
            continue
        text = tree.read_line(f"{_NODE_DIR}/{name}/cpulist")
        if text is None:
            malformed.append(name)
            continue
        try:
            cpus = [c for c in parse_cpulist(text) if c in online_set]
        except ValueError:
            malformed.append(name)
            continue
        # Memory-only nodes (CXL, HBM, NPS settings with no CPUs) have an empty cpulist;
        # they hold no workers, so they are left out.
        if cpus:
            nodes.append(NumaNode(id=int(m.group(1)), cpus=cpus))
    if malformed:
        notes.append(f"{_NODE_DIR}: cpulist unreadable for {', '.join(malformed)}")
    if not nodes:
        notes.append(f"{_NODE_DIR} has no node with CPUs: assumed one NUMA node with all CPUs")
        return [NumaNode(id=0, cpus=list(online))]
    nodes.sort(key=lambda n: n.id)
    covered = {c for n in nodes for c in n.cpus}
    missing = [c for c in online if c not in covered]
    if missing:
        notes.append(f"CPUs {_compact(missing)} are in no NUMA node: added to node {nodes[0].id}")
        nodes[0].cpus = sorted(nodes[0].cpus + missing)
    return nodes


def _l3_of(tree: _Tree, cpu: int) -> tuple[list[int], int | None] | None:
    """The level-3 shared_cpu_list and size of one CPU, None when sysfs lacks it."""
    cache = f"{_CPU_DIR}/cpu{cpu}/cache"
    for index in tree.listdir(cache):
        if not index.startswith("index"):
            continue
        if tree.read_line(f"{cache}/{index}/level") != "3":
            continue
        # An L3 is Unified on every x86 part; skip an Instruction-only entry if one appears.
        if tree.read_line(f"{cache}/{index}/type") == "Instruction":
            continue
        shared = tree.read_line(f"{cache}/{index}/shared_cpu_list")
        if shared is None:
            return None
        try:
            cpus = parse_cpulist(shared)
        except ValueError:
            return None
        size_s = tree.read_line(f"{cache}/{index}/size")
        return cpus, (_parse_size(size_s) if size_s else None)
    return None


def _l3_domains(
    tree: _Tree, online: list[int], vendor: str, cpuinfo_cache: str | None, notes: list[str]
) -> list[L3Domain]:
    online_set = set(online)
    domains: dict[tuple[int, ...], int | None] = {}
    covered: set[int] = set()
    uncovered: list[int] = []
    for cpu in online:
        # Every CPU of a shared_cpu_list reports the same list, so one read per domain is
        # enough; that keeps a 256-CPU machine at a few dozen file reads.
        if cpu in covered:
            continue
        found = _l3_of(tree, cpu)
        if found is None:
            uncovered.append(cpu)
            continue
        cpus = tuple(c for c in found[0] if c in online_set and c not in covered)
        if cpu not in cpus:
            cpus = tuple(sorted({*cpus, cpu}))
        domains[cpus] = found[1]
        covered.update(cpus)
    if not domains:
        size: int | None = None
        # cpuinfo "cache size" is the L3 on Intel but the per-core L2 on AMD (512 KB on
        # Milan), so it only stands in for the L3 size on Intel.
        if vendor == "GenuineIntel" and cpuinfo_cache:
            size = _parse_size(cpuinfo_cache)
        how = "cpuinfo cache size" if size is not None else "unknown size"
        notes.append(
            f"{_CPU_DIR}/cpuN/cache has no level-3 entry: assumed one L3 domain of all CPUs ({how})"
        )
        return [L3Domain(cpus=list(online), size_bytes=size)]
    if uncovered:
        notes.append(
            f"no level-3 cache entry for CPUs {_compact(uncovered)}: grouped them as one "
            "L3 domain of unknown size"
        )
        domains[tuple(uncovered)] = None
    result = [L3Domain(cpus=sorted(cpus), size_bytes=sz) for cpus, sz in domains.items()]
    result.sort(key=lambda d: d.cpus[0])
    return result


def _memory(tree: _Tree, system: bool, notes: list[str]) -> dict[str, int]:
    text = tree.read("proc/meminfo")
    info = _parse_meminfo(text) if text is not None else {}
    out: dict[str, int] = {}
    if "MemTotal" not in info:
        if system:
            import psutil  # only on this fallback path: /proc/meminfo missing on "/"

            vm = psutil.virtual_memory()
            notes.append("proc/meminfo not readable: used psutil.virtual_memory()")
            info.setdefault("MemTotal", int(vm.total))
            info.setdefault("MemAvailable", int(vm.available))
        else:
            notes.append("proc/meminfo not readable or lacks MemTotal: memory reported as 0")
            info.setdefault("MemTotal", 0)
    out["MemTotal"] = info["MemTotal"]
    if "MemAvailable" in info:
        out["MemAvailable"] = info["MemAvailable"]
    else:
        # Kernels before 3.14 lack MemAvailable; free + page cache is what it estimates.
        estimate = sum(info.get(k, 0) for k in ("MemFree", "Buffers", "Cached"))
        if estimate == 0:
            estimate = info["MemTotal"]
        notes.append("proc/meminfo lacks MemAvailable: used MemFree + Buffers + Cached")
        out["MemAvailable"] = estimate
    out["HugePages_Total"] = info.get("HugePages_Total", 0)
    out["HugePages_Free"] = info.get("HugePages_Free", 0)
    if "Hugepagesize" in info:
        out["Hugepagesize"] = info["Hugepagesize"]
    return out


def _thp(tree: _Tree, notes: list[str]) -> str | None:
    text = tree.read_line(_THP_FILE)
    if text is None:
        notes.append(f"{_THP_FILE} not readable: transparent huge page mode unknown")
        return None
    # The file lists every mode with the selected one in brackets: "always [madvise] never".
    m = re.search(r"\[(\w+)\]", text)
    if m:
        return m.group(1)
    notes.append(f"{_THP_FILE} has no bracketed mode ({text[:40]!r}): mode unknown")
    return None


def _allowed(
    online: list[int], allowed_cpus: Iterable[int] | None, system: bool, notes: list[str]
) -> list[int]:
    wanted: set[int] | None = None
    if allowed_cpus is not None:
        wanted = set(allowed_cpus)
    elif system:
        try:
            wanted = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            notes.append("os.sched_getaffinity not available: assumed all online CPUs allowed")
    if wanted is None:
        return list(online)
    allowed = [c for c in online if c in wanted]
    if not allowed:
        notes.append(
            f"allowed CPUs {_compact(wanted) or '(none)'} are not online: used all online CPUs"
        )
        return list(online)
    return allowed


def _own_cgroup_paths(tree: _Tree) -> tuple[str, str]:
    """This process's cgroup v2 path and v1 cpu-controller path from proc/self/cgroup."""
    v2 = v1 = "/"
    for line in (tree.read("proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            v2 = path.strip() or "/"
        elif "cpu" in controllers.split(","):
            v1 = path.strip() or "/"
    return v2, v1


def _ancestors(path: str) -> list[str]:
    """The cgroup and every parent up to the mount root: '/a/b' -> ['a/b', 'a', '']."""
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    return ["/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _cgroup_quota(tree: _Tree, notes: list[str]) -> float | None:
    """The tightest CPU quota on this process's cgroup or its parents, in CPUs.

    A container usually sees its own cgroup at the mount root (cgroup namespace); without
    a namespace, /proc/self/cgroup gives the path below the root. Limits are inherited,
    so the smallest quota on the way up is the one that applies.
    """
    v2_path, v1_path = _own_cgroup_paths(tree)
    quotas: list[float] = []
    for rel in _ancestors(v2_path):
        f = "/".join(p for p in (_CGROUP_DIR, rel, "cpu.max") if p)
        text = tree.read_line(f)
        if text is None:
            continue
        parts = text.split()
        if parts and parts[0] == "max":
            continue
        try:
            quota_us = int(parts[0])
            period_us = int(parts[1]) if len(parts) > 1 else 100000
            if quota_us <= 0 or period_us <= 0:
                raise ValueError
        except (ValueError, IndexError):
            notes.append(f"{f} malformed ({text[:40]!r}): ignored")
            continue
        quotas.append(quota_us / period_us)
    # cgroup v1 mounts the cpu controller as "cpu" or the combined "cpu,cpuacct".
    for mount in ("cpu", "cpu,cpuacct"):
        for rel in _ancestors(v1_path):
            base = "/".join(p for p in (_CGROUP_DIR, mount, rel) if p)
            q = tree.read_line(f"{base}/cpu.cfs_quota_us")
            if q is None:
                continue
            p = tree.read_line(f"{base}/cpu.cfs_period_us")
            try:
                quota_us = int(q)
                period_us = int(p) if p is not None else 100000
            except ValueError:
                notes.append(f"{base}/cpu.cfs_quota_us or cpu.cfs_period_us malformed: ignored")
                continue
            if quota_us < 0:  # -1 = unlimited
                continue
            if quota_us == 0 or period_us <= 0:
                notes.append(f"{base}/cpu.cfs_quota_us {quota_us} / period {period_us}: ignored")
                continue
            quotas.append(quota_us / period_us)
    return min(quotas) if quotas else None


# --------------------------------------------------------------------------- advice


def tuning_advice(hw: Hardware) -> list[str]:
    """Shell commands (never run by us) that would set what throughput wants.

    That is the performance cpufreq governor and transparent huge pages "always" ("madvise"
    gives huge pages only to memory a program asks for with madvise(), and we do not rely
    on the inference libraries asking). Only for what is not already set; nothing for what
    the machine does not expose (no cpufreq in most VMs). [] when all is fine. The commands
    need root and do not survive a reboot.
    """
    advice: list[str] = []
    if hw.governor is not None and hw.governor != "performance":
        advice.append(
            "echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"
        )
    if hw.thp is not None and hw.thp != "always":
        advice.append("echo always | sudo tee /sys/kernel/mm/transparent_hugepage/enabled")
    return advice
