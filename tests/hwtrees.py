"""Hardware trees (proc/..., sys/... under a directory) for epyc_whisper.hardware tests.

Three kinds, all reachable through :func:`make_tree`:

- read from a real machine and stored as a tree (``dev-2core``, captured with
  :func:`capture_tree`);
- read from a real machine and stored as a listing (``xeon-16core-kvm``), turned into a
  tree by :func:`materialise_listing`;
- built from AMD's published topology (the EPYC names), by :func:`build_epyc_tree`. A
  built tree has a ``BUILT`` file at its root saying so, with the spec.

The builder deliberately does not use epyc_whisper code, so the tests compare the
detector against an independent description of each machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypedDict

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "hw"

CPU = "sys/devices/system/cpu"
NODE = "sys/devices/system/node"


def _write(dest: Path, rel: str, text: str) -> None:
    path = os.path.join(dest, rel)
    # The 256-CPU trees are thousands of files: try the write first and make the folders only
    # when it fails, instead of a makedirs call per file.
    try:
        f = open(path, "w")
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = open(path, "w")
    with f:
        f.write(text)


def cpulist(cpus: Iterable[int]) -> str:
    """Format CPUs the way the kernel prints a *_list file ("0-7,64-71")."""
    ordered = sorted(set(cpus))
    out: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


# --------------------------------------------------------------------------- real captures


def capture_tree(dest: Path, root: Path = Path("/")) -> list[str]:
    """Copy the files epyc_whisper.hardware reads from ``root`` into ``dest``.

    Returns the paths (relative) that were looked for and not found, so the fixture's
    README can say what the machine lacked. Used once to make ``fixtures/hw/dev-2core``;
    run it on another machine to capture that one the same way.
    """
    missing: list[str] = []

    def copy(rel: str) -> None:
        try:
            text = (root / rel).read_text()
        except OSError:
            missing.append(rel)
            return
        _write(dest, rel, text)

    for rel in ("proc/cpuinfo", "proc/meminfo", f"{CPU}/online", f"{CPU}/possible"):
        copy(rel)
    for n in sorted(p.name for p in (root / CPU).glob("cpu[0-9]*")):
        for attr in ("physical_package_id", "core_id", "thread_siblings_list"):
            copy(f"{CPU}/{n}/topology/{attr}")
        for index in sorted(p.name for p in (root / CPU / n / "cache").glob("index*")):
            for attr in ("level", "type", "size", "shared_cpu_list"):
                copy(f"{CPU}/{n}/cache/{index}/{attr}")
        copy(f"{CPU}/{n}/cpufreq/scaling_governor")
    copy(f"{NODE}/online")
    for node in sorted(p.name for p in (root / NODE).glob("node[0-9]*")):
        copy(f"{NODE}/{node}/cpulist")
    copy("sys/kernel/mm/transparent_hugepage/enabled")
    for rel in (
        "sys/fs/cgroup/cpu.max",
        "sys/fs/cgroup/cpu/cpu.cfs_quota_us",
        "sys/fs/cgroup/cpu/cpu.cfs_period_us",
    ):
        copy(rel)
    return missing


# A plausible /proc/meminfo for the 16-core Xeon VM: its capture had none. MADE UP.
XEON_MEMINFO_MADE_UP = """\
MemTotal:       65838500 kB
MemFree:        61327412 kB
MemAvailable:   63470296 kB
Buffers:          104220 kB
Cached:          2310352 kB
SwapCached:            0 kB
Active:          1187604 kB
Inactive:        1902316 kB
SwapTotal:             0 kB
SwapFree:              0 kB
Dirty:               112 kB
AnonPages:        675904 kB
Mapped:           402188 kB
Shmem:             14684 kB
AnonHugePages:    206848 kB
HugePages_Total:       0
HugePages_Free:        0
HugePages_Rsvd:        0
HugePages_Surp:        0
Hugepagesize:       2048 kB
Hugetlb:               0 kB
"""


def materialise_listing(src: Path, dest: Path, meminfo: str = XEON_MEMINFO_MADE_UP) -> Path:
    """Turn a captured listing (cpuinfo, sysfs-cache-listing.txt, lscpu.json) into a tree.

    The listing holds, in this order: one line per cache index
    (``path level type size shared_cpu_list``), the names in the node folder, one line of
    core_id values and one line of physical_package_id values. Those two lines follow the
    order in which the CPUs first appear in the cache lines (cpu0, cpu10..cpu15, cpu1,
    ...: ``ls`` order), which is also what makes them agree with cpuinfo's core ids.
    """
    _write(dest, "proc/cpuinfo", (src / "cpuinfo").read_text())
    _write(dest, "proc/meminfo", meminfo)
    lscpu = {
        row["field"].rstrip(":"): row["data"]
        for row in json.loads((src / "lscpu.json").read_text())["lscpu"]
    }
    _write(dest, f"{CPU}/online", lscpu["On-line CPU(s) list"] + "\n")

    order: list[int] = []
    tail: list[str] = []
    for line in (src / "sysfs-cache-listing.txt").read_text().splitlines():
        m = re.match(
            r"^/sys/devices/system/cpu/cpu(\d+)/cache/(index\d+) (\S+) (\S+) (\S+) (\S+)$", line
        )
        if m:
            cpu = int(m.group(1))
            if cpu not in order:
                order.append(cpu)
            base = f"{CPU}/cpu{cpu}/cache/{m.group(2)}"
            for attr, value in zip(
                ("level", "type", "size", "shared_cpu_list"), m.groups()[2:], strict=True
            ):
                _write(dest, f"{base}/{attr}", value + "\n")
        elif line.strip():
            tail.append(line.strip())
    # tail: node folder names..., then core ids, then package ids (one line each).
    core_ids, package_ids = tail[-2].split(), tail[-1].split()
    assert len(core_ids) == len(package_ids) == len(order), "listing shape changed"
    for cpu, core, pkg in zip(order, core_ids, package_ids, strict=True):
        _write(dest, f"{CPU}/cpu{cpu}/topology/core_id", core + "\n")
        _write(dest, f"{CPU}/cpu{cpu}/topology/physical_package_id", pkg + "\n")
    for name in tail[:-2]:
        m = re.fullmatch(r"node(\d+)", name)
        if m:
            _write(dest, f"{NODE}/{name}/cpulist", lscpu[f"NUMA node{m.group(1)} CPU(s)"] + "\n")
    return dest


# --------------------------------------------------------------------------- built EPYC trees

_BASE_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx "
    "fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good "
    "nopl nonstop_tsc cpuid extd_apicid aperfmperf rapl pni pclmulqdq monitor ssse3 fma cx16 "
    "pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm cmp_legacy svm "
    "extapic cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw ibs skinit wdt tce topoext "
    "perfctr_core perfctr_nb bpext perfctr_llc mwaitx cpb cat_l3 cdp_l3 invpcid_single "
    "hw_pstate ssbd mba ibrs ibpb stibp vmmcall fsgsbase bmi1 avx2 smep bmi2 erms invpcid "
    "cqm rdt_a rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves "
    "cqm_llc cqm_occup_llc cqm_mbm_total cqm_mbm_local clzero irperf xsaveerptr rdpru "
    "wbnoinvd amd_ppin arat npt lbrv svm_lock nrip_save tsc_scale vmcb_clean flushbyasid "
    "decodeassists pausefilter pfthreshold v_vmsave_vmload vgif v_spec_ctrl umip pku ospke "
    "vaes vpclmulqdq rdpid overflow_recov succor smca fsrm"
)
# Zen 3 (Milan): no AVX-512.
ZEN3_FLAGS = _BASE_FLAGS
# Zen 4 (Genoa, Bergamo) adds AVX-512 with VNNI and BF16 (no AMX).
ZEN4_FLAGS = _BASE_FLAGS + (
    " avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi "
    "avx512_vbmi2 gfni avx512_vnni avx512_bitalg avx512_vpopcntdq la57"
)


@dataclass(frozen=True)
class EpycSpec:
    """A machine described from AMD's published topology.

    Attributes:
        model_name: the cpuinfo model name.
        family, model, stepping: cpuinfo values (decimal).
        sockets: packages.
        ccds_per_socket: core complex dies per package.
        ccx_per_ccd: core complexes (one L3 each) per CCD: 1 on Zen 3/4, 2 on Zen 4c.
        cores_per_ccx: active cores sharing one L3.
        l3_kib: L3 per CCX in KiB.
        l2_kib: L2 per core in KiB (also cpuinfo's "cache size" on AMD).
        smt: two threads per core.
        nps: NUMA nodes per socket (BIOS NPS setting); each gets an equal share of CCDs.
        mem_gib: installed memory.
        flags: cpuinfo flags.
        mhz: base clock for cpuinfo.
        governor: cpufreq governor to write (None: no cpufreq directory).
        thp: selected transparent_hugepage mode.
    """

    model_name: str
    family: int
    model: int
    stepping: int
    sockets: int
    ccds_per_socket: int
    ccx_per_ccd: int
    cores_per_ccx: int
    l3_kib: int
    l2_kib: int
    smt: bool
    nps: int
    mem_gib: int
    flags: str
    mhz: float
    governor: str | None = "schedutil"
    thp: str = "madvise"

    @property
    def cores_per_socket(self) -> int:
        return self.ccds_per_socket * self.ccx_per_ccd * self.cores_per_ccx


# Core counts, L3 sizes and CCD/CCX layouts from AMD's EPYC 7003 and 9004 product pages and
# platform guides. cpu family 25 = 0x19; model 1 = Milan, 17 = 0x11 Genoa, 160 = 0xa0 Bergamo.


class _Generation(TypedDict):
    family: int
    model: int
    stepping: int
    l2_kib: int
    flags: str


_MILAN = _Generation(family=25, model=1, stepping=1, l2_kib=512, flags=ZEN3_FLAGS)
_GENOA = _Generation(family=25, model=17, stepping=1, l2_kib=1024, flags=ZEN4_FLAGS)
_BERGAMO = _Generation(family=25, model=160, stepping=2, l2_kib=1024, flags=ZEN4_FLAGS)

EPYC_SPECS: dict[str, EpycSpec] = {
    # 32 cores, 256 MB L3: all eight CCDs populated, four cores each.
    "epyc-7543": EpycSpec(
        "AMD EPYC 7543 32-Core Processor", **_MILAN, sockets=1, ccds_per_socket=8,
        ccx_per_ccd=1, cores_per_ccx=4, l3_kib=32768, smt=True, nps=1, mem_gib=256, mhz=2800.0,
    ),
    # 32 cores, 128 MB L3: four CCDs of eight cores.
    "epyc-7513": EpycSpec(
        "AMD EPYC 7513 32-Core Processor", **_MILAN, sockets=1, ccds_per_socket=4,
        ccx_per_ccd=1, cores_per_ccx=8, l3_kib=32768, smt=True, nps=1, mem_gib=256, mhz=2600.0,
    ),
    # 64 cores, 256 MB L3: eight CCDs of eight cores.
    "epyc-7763": EpycSpec(
        "AMD EPYC 7763 64-Core Processor", **_MILAN, sockets=1, ccds_per_socket=8,
        ccx_per_ccd=1, cores_per_ccx=8, l3_kib=32768, smt=True, nps=1, mem_gib=512, mhz=2450.0,
    ),
    # The same part with the BIOS set to NPS4: four quadrants of two CCDs each.
    "epyc-7763-nps4": EpycSpec(
        "AMD EPYC 7763 64-Core Processor", **_MILAN, sockets=1, ccds_per_socket=8,
        ccx_per_ccd=1, cores_per_ccx=8, l3_kib=32768, smt=True, nps=4, mem_gib=512, mhz=2450.0,
    ),
    # Zen 4c, 128 cores, 256 MB L3: eight CCDs, each two CCXs of eight cores, 16 MB L3 each.
    "epyc-9754": EpycSpec(
        "AMD EPYC 9754 128-Core Processor", **_BERGAMO, sockets=1, ccds_per_socket=8,
        ccx_per_ccd=2, cores_per_ccx=8, l3_kib=16384, smt=True, nps=1, mem_gib=768, mhz=2250.0,
    ),
    # Two 64-core Genoa parts, 256 MB L3 each: eight CCDs of eight cores per socket.
    "2x-epyc-9554": EpycSpec(
        "AMD EPYC 9554 64-Core Processor", **_GENOA, sockets=2, ccds_per_socket=8,
        ccx_per_ccd=1, cores_per_ccx=8, l3_kib=32768, smt=True, nps=1, mem_gib=1536, mhz=3100.0,
    ),
}  # fmt: skip


def _meminfo_for(gib: int) -> str:
    # Firmware and the kernel keep about 2% of installed memory; the rest is MemTotal.
    total_kb = gib * 1024 * 1024 * 98 // 100
    free_kb = total_kb * 97 // 100
    return (
        f"MemTotal:       {total_kb} kB\n"
        f"MemFree:        {free_kb} kB\n"
        f"MemAvailable:   {total_kb * 98 // 100} kB\n"
        "Buffers:          212044 kB\n"
        f"Cached:         {total_kb // 100} kB\n"
        "SwapTotal:       8388604 kB\n"
        "SwapFree:        8388604 kB\n"
        "AnonHugePages:         0 kB\n"
        "HugePages_Total:       0\n"
        "HugePages_Free:        0\n"
        "HugePages_Rsvd:        0\n"
        "HugePages_Surp:        0\n"
        "Hugepagesize:       2048 kB\n"
        "Hugetlb:               0 kB\n"
    )


def build_epyc_tree(name: str, spec: EpycSpec, dest: Path) -> Path:
    """Write a proc/sys tree for ``spec`` under ``dest``, numbered the way Linux does on AMD.

    Linux numbers the first thread of every core 0..N-1 across all sockets (socket 0's
    cores first), then the SMT siblings N..2N-1 in the same order. Core ids restart at 0
    in each package and are contiguous here (on parts with disabled cores, real core_id
    values can have gaps; nothing in the detector depends on their values). To keep the
    256-CPU trees small, per CPU only the topology ids and the L3 cache entry are written.
    """
    cps = spec.cores_per_socket
    total_cores = spec.sockets * cps
    threads = 2 if spec.smt else 1

    def cpus_of(core: int) -> list[int]:
        return [core + t * total_cores for t in range(threads)]

    l3_groups: list[list[int]] = []  # global core indices per CCX
    nodes: list[list[int]] = []
    for s in range(spec.sockets):
        ccd_cores: list[list[int]] = []
        for d in range(spec.ccds_per_socket):
            ccd: list[int] = []
            for x in range(spec.ccx_per_ccd):
                first = s * cps + (d * spec.ccx_per_ccd + x) * spec.cores_per_ccx
                group = list(range(first, first + spec.cores_per_ccx))
                l3_groups.append(group)
                ccd.extend(group)
            ccd_cores.append(ccd)
        assert spec.ccds_per_socket % spec.nps == 0, "NPS must split the CCDs evenly"
        per_node = spec.ccds_per_socket // spec.nps
        for k in range(spec.nps):
            nodes.append([c for ccd in ccd_cores[k * per_node : (k + 1) * per_node] for c in ccd])

    cpuinfo: list[str] = []
    all_cpus = sorted(c for core in range(total_cores) for c in cpus_of(core))
    for cpu in all_cpus:
        core = cpu % total_cores
        thread = cpu // total_cores
        socket, local = divmod(core, cps)
        apicid = (socket * 128 + local) * threads + thread
        cpuinfo.append(
            f"processor\t: {cpu}\n"
            "vendor_id\t: AuthenticAMD\n"
            f"cpu family\t: {spec.family}\n"
            f"model\t\t: {spec.model}\n"
            f"model name\t: {spec.model_name}\n"
            f"stepping\t: {spec.stepping}\n"
            "microcode\t: 0xa0011d1\n"
            f"cpu MHz\t\t: {spec.mhz:.3f}\n"
            f"cache size\t: {spec.l2_kib} KB\n"
            f"physical id\t: {socket}\n"
            f"siblings\t: {cps * threads}\n"
            f"core id\t\t: {local}\n"
            f"cpu cores\t: {cps}\n"
            f"apicid\t\t: {apicid}\n"
            f"initial apicid\t: {apicid}\n"
            "fpu\t\t: yes\n"
            "fpu_exception\t: yes\n"
            "cpuid level\t: 16\n"
            "wp\t\t: yes\n"
            f"flags\t\t: {spec.flags}\n"
            "bugs\t\t: sysret_ss_attrs spectre_v1 spectre_v2 spec_store_bypass srso\n"
            f"bogomips\t: {spec.mhz * 2:.2f}\n"
            "TLB size\t: 2560 4K pages\n"
            "clflush size\t: 64\n"
            "cache_alignment\t: 64\n"
            "address sizes\t: 52 bits physical, 57 bits virtual\n"
            "power management: ts ttp tm hwpstate cpb eff_freq_ro [13] [14]\n"
        )
    _write(dest, "proc/cpuinfo", "\n".join(cpuinfo) + "\n")
    _write(dest, "proc/meminfo", _meminfo_for(spec.mem_gib))
    _write(dest, f"{CPU}/online", cpulist(all_cpus) + "\n")
    _write(dest, f"{CPU}/possible", cpulist(all_cpus) + "\n")

    l3_of_core = {core: group for group in l3_groups for core in group}
    for cpu in all_cpus:
        core = cpu % total_cores
        socket, local = divmod(core, cps)
        base = f"{CPU}/cpu{cpu}"
        _write(dest, f"{base}/topology/physical_package_id", f"{socket}\n")
        _write(dest, f"{base}/topology/core_id", f"{local}\n")
        # Only the level-3 entry is written (as index3, its number on these parts): the
        # L1/L2 entries would triple the file count, and the two real readings already
        # exercise skipping them.
        l3_cpus = [c for g in l3_of_core[core] for c in cpus_of(g)]
        ib = f"{base}/cache/index3"
        _write(dest, f"{ib}/level", "3\n")
        _write(dest, f"{ib}/type", "Unified\n")
        _write(dest, f"{ib}/size", f"{spec.l3_kib}K\n")
        _write(dest, f"{ib}/shared_cpu_list", cpulist(l3_cpus) + "\n")
    if spec.governor is not None:
        # Only cpu0's governor is read; the other CPUs' cpufreq folders are left out.
        _write(dest, f"{CPU}/cpu0/cpufreq/scaling_governor", spec.governor + "\n")

    _write(dest, f"{NODE}/online", cpulist(range(len(nodes))) + "\n")
    for n, cores in enumerate(nodes):
        _write(dest, f"{NODE}/node{n}/cpulist", cpulist(c for g in cores for c in cpus_of(g)))
    modes = ["always", "madvise", "never"]
    _write(
        dest,
        "sys/kernel/mm/transparent_hugepage/enabled",
        " ".join(f"[{m}]" if m == spec.thp else m for m in modes) + "\n",
    )
    _write(
        dest,
        "BUILT",
        "built from AMD's published topology, not read from a machine\n"
        f"name: {name}\n"
        "spec: " + json.dumps(asdict(spec) | {"flags": "..."}, sort_keys=True) + "\n",
    )
    return dest


# --------------------------------------------------------------------------- the catalogue

FIXTURES: tuple[str, ...] = ("xeon-16core-kvm", "dev-2core", *EPYC_SPECS)


def make_tree(name: str, tmp_path: Path) -> Path:
    """Materialise fixture ``name`` (one of FIXTURES) under ``tmp_path / name``; return it."""
    dest = tmp_path / name
    if name in EPYC_SPECS:
        return build_epyc_tree(name, EPYC_SPECS[name], dest)
    if name == "xeon-16core-kvm":
        return materialise_listing(FIXTURE_DIR / name, dest)
    if name == "dev-2core":
        shutil.copytree(FIXTURE_DIR / name, dest, ignore=shutil.ignore_patterns("README*"))
        return dest
    raise KeyError(f"unknown hardware fixture {name!r}; known: {', '.join(FIXTURES)}")
