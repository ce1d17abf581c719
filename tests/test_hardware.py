"""Tests for epyc_whisper.hardware: topology detection over captured, built and tiny trees."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hwtrees import FIXTURE_DIR, FIXTURES, make_tree

from epyc_whisper.hardware import Hardware, detect, parse_cpulist, tuning_advice

MiB = 1024 * 1024


@dataclass(frozen=True)
class Expect:
    vendor: str
    family: int
    model: int
    zen: str | None
    is_epyc: bool
    sockets: int
    cores: int
    logical: int
    smt: bool
    numa: int
    l3: int
    first_l3: list[int]
    l3_size: int | None
    isa: dict[str, bool]
    built: bool


def _isa(avx2: bool, avx512f: bool, vnni: bool, bf16: bool, amx: bool) -> dict[str, bool]:
    return {
        "avx2": avx2,
        "avx512f": avx512f,
        "avx512_vnni": vnni,
        "avx512_bf16": bf16,
        "amx": amx,
    }


ZEN3_ISA = _isa(True, False, False, False, False)
ZEN4_ISA = _isa(True, True, True, True, False)
AMD = "AuthenticAMD"

EXPECTED: dict[str, Expect] = {
    "xeon-16core-kvm": Expect(
        "GenuineIntel", 6, 207, None, False, 1, 16, 16, False, 1, 1,
        list(range(16)), 300 * 1024 * MiB // 1024, _isa(True, True, True, True, True), False,
    ),
    "dev-2core": Expect(
        AMD, 25, 17, "Zen 4", True, 1, 2, 2, False, 1, 1, [0, 1], 32 * MiB, ZEN4_ISA, False
    ),
    "epyc-7543": Expect(
        AMD, 25, 1, "Zen 3", True, 1, 32, 64, True, 1, 8,
        [0, 1, 2, 3, 32, 33, 34, 35], 32 * MiB, ZEN3_ISA, True,
    ),
    "epyc-7513": Expect(
        AMD, 25, 1, "Zen 3", True, 1, 32, 64, True, 1, 4,
        [*range(0, 8), *range(32, 40)], 32 * MiB, ZEN3_ISA, True,
    ),
    "epyc-7763": Expect(
        AMD, 25, 1, "Zen 3", True, 1, 64, 128, True, 1, 8,
        [*range(0, 8), *range(64, 72)], 32 * MiB, ZEN3_ISA, True,
    ),
    "epyc-7763-nps4": Expect(
        AMD, 25, 1, "Zen 3", True, 1, 64, 128, True, 4, 8,
        [*range(0, 8), *range(64, 72)], 32 * MiB, ZEN3_ISA, True,
    ),
    "epyc-9754": Expect(
        AMD, 25, 160, "Zen 4", True, 1, 128, 256, True, 1, 16,
        [*range(0, 8), *range(128, 136)], 16 * MiB, ZEN4_ISA, True,
    ),
    "2x-epyc-9554": Expect(
        AMD, 25, 17, "Zen 4", True, 2, 128, 256, True, 2, 16,
        [*range(0, 8), *range(128, 136)], 32 * MiB, ZEN4_ISA, True,
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Every fixture materialised once per module.

    The built trees are thousands of tiny files. On tmpfs that takes a fraction of a
    second; on some VM disks each file create costs most of a millisecond, so /dev/shm is
    used when it is there with room to spare (Docker's default is only 64 MiB).
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 256 * MiB:
        with tempfile.TemporaryDirectory(dir=shm, prefix="epyc-whisper-hw-") as d:
            yield {name: make_tree(name, Path(d)) for name in FIXTURES}
        return
    base = tmp_path_factory.mktemp("hw")
    yield {name: make_tree(name, base) for name in FIXTURES}


@pytest.fixture(scope="module")
def detected(trees: dict[str, Path]) -> dict[str, Hardware]:
    return {name: detect(path) for name, path in trees.items()}


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --------------------------------------------------------------------------- fixtures


def test_every_fixture_has_expectations() -> None:
    """Each fixture make_tree offers is checked below, and vice versa."""
    assert set(FIXTURES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_topology(name: str, detected: dict[str, Hardware]) -> None:
    """Counts, identity, ISA and L3 grouping match the machine each fixture describes."""
    hw, want = detected[name], EXPECTED[name]
    assert (hw.vendor, hw.family, hw.model) == (want.vendor, want.family, want.model)
    assert hw.zen == want.zen
    assert hw.is_epyc is want.is_epyc
    assert hw.sockets == want.sockets
    assert hw.physical_cores == want.cores
    assert hw.logical_cpus == want.logical
    assert hw.smt is want.smt
    assert len(hw.numa_nodes) == want.numa
    assert len(hw.l3_domains) == want.l3
    assert hw.l3_domains[0].cpus == want.first_l3
    assert all(d.size_bytes == want.l3_size for d in hw.l3_domains)
    assert hw.isa == want.isa
    assert hw.built is want.built
    # With no affinity or quota given, a tree's CPUs are all usable.
    assert hw.allowed_cpus == sorted(hw.core_of)
    assert hw.usable_cpus == want.logical


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_l3_domains_and_nodes_partition_the_cpus(name: str, detected: dict[str, Hardware]) -> None:
    """L3 domains and NUMA nodes each cover every online CPU exactly once."""
    hw = detected[name]
    online = sorted(hw.core_of)
    l3 = [c for d in hw.l3_domains for c in d.cpus]
    numa = [c for n in hw.numa_nodes for c in n.cpus]
    assert sorted(l3) == online and len(set(l3)) == len(l3)
    assert sorted(numa) == online and len(set(numa)) == len(numa)
    assert [d.cpus[0] for d in hw.l3_domains] == sorted(d.cpus[0] for d in hw.l3_domains)


@pytest.mark.parametrize("name", ["xeon-16core-kvm", "dev-2core"])
def test_real_readings_topology_matches_cpuinfo(name: str, trees: dict[str, Path]) -> None:
    """sysfs core ids agree with cpuinfo's (pins how the Xeon listing's id lines are ordered)."""
    hw = detect(trees[name])
    text = (trees[name] / "proc/cpuinfo").read_text()
    ids = re.findall(r"processor\s*: (\d+).*?physical id\s*: (\d+).*?core id\s*: (\d+)", text, re.S)
    assert {int(p): (int(s), int(c)) for p, s, c in ids} == hw.core_of


def test_real_readings_have_no_built_marker(detected: dict[str, Hardware]) -> None:
    """Only built trees carry BUILT; the BUILT file says it was not read from a machine."""
    for name in FIXTURES:
        assert detected[name].built == name.startswith(("epyc-", "2x-epyc-"))
    assert not (FIXTURE_DIR / "dev-2core" / "BUILT").exists()


def test_built_tree_says_it_was_built(trees: dict[str, Path]) -> None:
    """A built tree's BUILT file names AMD's published topology and the spec."""
    text = (trees["epyc-7763-nps4"] / "BUILT").read_text()
    assert "built from AMD's published topology, not read from a machine" in text
    assert '"nps": 4' in text


def test_amd_smt_numbering(detected: dict[str, Hardware]) -> None:
    """On AMD, CPU n and n + cores are the two threads of one core, across sockets."""
    hw = detected["2x-epyc-9554"]
    assert hw.core_of[0] == hw.core_of[128] == (0, 0)
    assert hw.core_of[64] == hw.core_of[192] == (1, 0)
    assert hw.core_of[127] == hw.core_of[255] == (1, 63)


def test_numa_nodes_follow_nps(detected: dict[str, Hardware]) -> None:
    """NPS4 gives four nodes of two CCDs (with SMT siblings); two sockets at NPS1 give two."""
    nps4 = detected["epyc-7763-nps4"].numa_nodes
    assert [n.id for n in nps4] == [0, 1, 2, 3]
    assert nps4[0].cpus == [*range(0, 16), *range(64, 80)]
    assert nps4[3].cpus == [*range(48, 64), *range(112, 128)]
    two = detected["2x-epyc-9554"].numa_nodes
    assert two[1].cpus == [*range(64, 128), *range(192, 256)]
    assert detected["epyc-7763"].numa_nodes[0].cpus == list(range(128))


def test_memory_and_hugepages(detected: dict[str, Hardware]) -> None:
    """meminfo kB values become bytes; HugePages_* stay counts."""
    dev = detected["dev-2core"]
    meminfo = (FIXTURE_DIR / "dev-2core/proc/meminfo").read_text()
    total_kb = int(re.search(r"MemTotal:\s+(\d+) kB", meminfo).group(1))  # type: ignore[union-attr]
    assert dev.mem_total_bytes == total_kb * 1024
    assert 0 < dev.mem_available_bytes <= dev.mem_total_bytes
    assert dev.hugepage_size_bytes == 2 * MiB
    assert (dev.hugepages_total, dev.hugepages_free) == (0, 0)
    assert dev.thp == "madvise"
    assert dev.governor is None
    assert dev.cpu_quota is None  # cfs_quota_us -1
    big = detected["2x-epyc-9554"]
    assert 1400 * 1024 * MiB < big.mem_total_bytes < 1536 * 1024 * MiB
    assert big.governor == "schedutil"


def test_to_dict_is_json_ready(detected: dict[str, Hardware]) -> None:
    """to_dict() survives json round-trip: str keys for core_of, lists for tuples."""
    d = detected["2x-epyc-9554"].to_dict()
    back = json.loads(json.dumps(d))
    assert back == d
    assert d["core_of"]["192"] == [1, 0]
    assert d["l3_domains"][0]["size_bytes"] == 32 * MiB
    assert d["numa_nodes"][1]["id"] == 1
    assert set(d) >= {"vendor", "isa", "usable_cpus", "notes", "root", "built"}


# --------------------------------------------------------------------------- live machine


def test_live_machine_matches_proc() -> None:
    """detect() on this machine counts its online CPUs and reads MemTotal within 1%."""
    hw = detect()
    assert hw.logical_cpus == os.cpu_count()
    assert hw.allowed_cpus == sorted(os.sched_getaffinity(0))
    meminfo = Path("/proc/meminfo").read_text()
    total = int(re.search(r"MemTotal:\s+(\d+) kB", meminfo).group(1)) * 1024  # type: ignore[union-attr]
    assert abs(hw.mem_total_bytes - total) <= total * 0.01
    assert hw.root == "/"
    assert not hw.built
    assert 1 <= hw.usable_cpus <= hw.logical_cpus
    json.dumps(hw.to_dict())


def test_live_machine_uses_process_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """On "/" without allowed_cpus, the allowed CPUs are os.sched_getaffinity(0)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1})
    hw = detect()
    assert hw.allowed_cpus == ([1] if hw.logical_cpus > 1 else [0])
    assert hw.usable_cpus == 1


def test_live_machine_with_affinity_argument() -> None:
    """An explicit allowed_cpus on the live root replaces the process affinity."""
    hw = detect("/", allowed_cpus=[0])
    assert hw.allowed_cpus == [0]
    assert hw.usable_cpus == 1


# --------------------------------------------------------------------------- small trees


def _cpus_tree(root: Path, n: int = 8) -> Path:
    """A minimal tree with n online CPUs, each its own core, so quota tests stay small."""
    _write(root, "sys/devices/system/cpu/online", f"0-{n - 1}\n")
    for c in range(n):
        _write(root, f"sys/devices/system/cpu/cpu{c}/topology/physical_package_id", "0\n")
        _write(root, f"sys/devices/system/cpu/cpu{c}/topology/core_id", f"{c}\n")
    return root


@pytest.mark.parametrize(
    ("files", "quota", "usable"),
    [
        ({"sys/fs/cgroup/cpu.max": "200000 100000\n"}, 2.0, 2),
        ({"sys/fs/cgroup/cpu.max": "150000 100000\n"}, 1.5, 2),
        ({"sys/fs/cgroup/cpu.max": "max 100000\n"}, None, 8),
        ({"sys/fs/cgroup/cpu.max": "5000000 100000\n"}, 50.0, 8),
        (
            {
                "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "300000\n",
                "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
            },
            3.0,
            3,
        ),
        (
            {
                "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
                "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
            },
            None,
            8,
        ),
        (
            {
                "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "50000\n",
                "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            },
            0.5,
            1,
        ),
        ({}, None, 8),
    ],
    ids=["v2-2", "v2-1.5", "v2-max", "v2-above-cpus", "v1-3", "v1-unlimited", "v1-half", "none"],
)
def test_cgroup_quota(
    tmp_path: Path, files: dict[str, str], quota: float | None, usable: int
) -> None:
    """cgroup v2 cpu.max and v1 cfs quota/period give the quota in CPUs; usable = ceil, capped."""
    _cpus_tree(tmp_path)
    for rel, text in files.items():
        _write(tmp_path, rel, text)
    hw = detect(tmp_path)
    assert hw.cpu_quota == quota
    assert hw.usable_cpus == usable
    assert not any("cgroup" in n for n in hw.notes)  # all of these are well-formed


def test_cgroup_quota_of_own_cgroup_and_parents(tmp_path: Path) -> None:
    """The process's cgroup path from proc/self/cgroup is read, and the tightest ancestor wins."""
    _cpus_tree(tmp_path)
    _write(tmp_path, "proc/self/cgroup", "0::/batch.slice/job.scope\n")
    _write(tmp_path, "sys/fs/cgroup/batch.slice/cpu.max", "300000 100000\n")
    _write(tmp_path, "sys/fs/cgroup/batch.slice/job.scope/cpu.max", "max 100000\n")
    hw = detect(tmp_path)
    assert hw.cpu_quota == 3.0
    assert hw.usable_cpus == 3
    _write(tmp_path, "sys/fs/cgroup/batch.slice/job.scope/cpu.max", "200000 100000\n")
    assert detect(tmp_path).cpu_quota == 2.0


def test_offline_cpus_are_left_out(tmp_path: Path) -> None:
    """CPUs listed by a NUMA node or an L3 but not online are not reported anywhere."""
    _cpus_tree(tmp_path, 4)
    _write(tmp_path, "sys/devices/system/node/node0/cpulist", "0-7\n")
    _write(tmp_path, "sys/devices/system/node/node1/cpulist", "\n")  # memory-only node
    for c in range(4):
        base = f"sys/devices/system/cpu/cpu{c}/cache/index3"
        _write(tmp_path, f"{base}/level", "3\n")
        _write(tmp_path, f"{base}/shared_cpu_list", "0-7\n")
        _write(tmp_path, f"{base}/size", "32768K\n")
    hw = detect(tmp_path)
    assert [(n.id, n.cpus) for n in hw.numa_nodes] == [(0, [0, 1, 2, 3])]
    assert [(d.cpus, d.size_bytes) for d in hw.l3_domains] == [([0, 1, 2, 3], 32 * MiB)]


def test_malformed_cgroup_is_a_note(tmp_path: Path) -> None:
    """A garbled cpu.max is ignored with a note, never an exception."""
    _cpus_tree(tmp_path)
    _write(tmp_path, "sys/fs/cgroup/cpu.max", "lots please\n")
    hw = detect(tmp_path)
    assert hw.cpu_quota is None
    assert any("cpu.max" in n for n in hw.notes)


def test_allowed_cpus_restrict_usable(trees: dict[str, Path], tmp_path: Path) -> None:
    """allowed_cpus is intersected with online CPUs and bounds usable_cpus; quota bounds it more."""
    hw = detect(trees["epyc-7763"], allowed_cpus=range(0, 8))
    assert hw.allowed_cpus == list(range(8))
    assert hw.usable_cpus == 8
    assert hw.logical_cpus == 128  # the machine is still described in full
    hw = detect(trees["dev-2core"], allowed_cpus=[1, 5, 99])
    assert hw.allowed_cpus == [1]
    assert hw.usable_cpus == 1
    _cpus_tree(tmp_path)
    _write(tmp_path, "sys/fs/cgroup/cpu.max", "200000 100000\n")
    hw = detect(tmp_path, allowed_cpus=[0, 1, 2, 3, 4])
    assert (len(hw.allowed_cpus), hw.usable_cpus) == (5, 2)


def test_allowed_cpus_none_online_falls_back_with_note(trees: dict[str, Path]) -> None:
    """Asking only for CPUs the tree does not have gives all online CPUs and a note."""
    hw = detect(trees["dev-2core"], allowed_cpus=[7, 8])
    assert hw.allowed_cpus == [0, 1]
    assert any("not online" in n for n in hw.notes)


def test_empty_tree_gives_notes_not_exceptions(tmp_path: Path) -> None:
    """A tree with nothing in it yields a one-CPU description, unknown identity, and notes."""
    hw = detect(tmp_path)
    assert hw.vendor == "unknown" and hw.model_name == "unknown"
    assert (hw.family, hw.model, hw.zen, hw.is_epyc) == (None, None, None, False)
    assert hw.logical_cpus == hw.physical_cores == hw.usable_cpus == 1
    assert len(hw.numa_nodes) == len(hw.l3_domains) == 1
    assert hw.mem_total_bytes == 0
    assert hw.isa == _isa(False, False, False, False, False)
    assert (hw.thp, hw.governor, hw.cpu_quota) == (None, None, None)
    joined = "\n".join(hw.notes)
    for what in ("proc/cpuinfo", "online", "node", "cache", "meminfo", "transparent_hugepage"):
        assert what in joined


def test_cpuinfo_only_tree_uses_cpuinfo_topology(tmp_path: Path) -> None:
    """With only proc/cpuinfo, CPUs, cores, sockets and (on Intel) the L3 size come from it."""
    _write(tmp_path, "proc/cpuinfo", (FIXTURE_DIR / "xeon-16core-kvm/cpuinfo").read_text())
    hw = detect(tmp_path)
    assert (hw.logical_cpus, hw.physical_cores, hw.sockets, hw.smt) == (16, 16, 1, False)
    assert hw.l3_domains[0].cpus == list(range(16))
    assert hw.l3_domains[0].size_bytes == 300 * 1024 * MiB // 1024
    assert hw.isa["amx"] and hw.vendor == "GenuineIntel"
    joined = "\n".join(hw.notes)
    assert "used physical id/core id from proc/cpuinfo" in joined
    assert "one NUMA node" in joined
    assert "one L3 domain" in joined


def test_cpuinfo_only_amd_tree_does_not_take_l2_for_l3(tmp_path: Path) -> None:
    """On AMD cpuinfo's "cache size" is the L2, so a missing L3 stays of unknown size."""
    _write(tmp_path, "proc/cpuinfo", (FIXTURE_DIR / "dev-2core/proc/cpuinfo").read_text())
    hw = detect(tmp_path)
    assert hw.l3_domains[0].cpus == [0, 1]
    assert hw.l3_domains[0].size_bytes is None


def test_cpuinfo_without_topology_counts_each_cpu_as_a_core(tmp_path: Path) -> None:
    """No physical id/core id anywhere: every CPU is its own core (never invented SMT)."""
    _write(tmp_path, "proc/cpuinfo", "processor\t: 0\n\nprocessor\t: 1\n\nprocessor\t: 2\n")
    hw = detect(tmp_path)
    assert (hw.logical_cpus, hw.physical_cores, hw.smt) == (3, 3, False)
    assert any("own core" in n for n in hw.notes)


def test_malformed_files_give_notes(trees: dict[str, Path], tmp_path: Path) -> None:
    """Garbage in sysfs and meminfo falls back with notes instead of raising."""
    _write(tmp_path, "proc/cpuinfo", (FIXTURE_DIR / "dev-2core/proc/cpuinfo").read_text())
    _write(tmp_path, "proc/meminfo", "MemTotal: lots\nnonsense\n")
    _write(tmp_path, "sys/devices/system/cpu/online", "0-zz\n")
    _write(tmp_path, "sys/devices/system/cpu/cpu0/topology/core_id", "x\n")
    _write(tmp_path, "sys/devices/system/cpu/cpu0/topology/physical_package_id", "0\n")
    _write(tmp_path, "sys/devices/system/cpu/cpu0/cache/index3/level", "3\n")
    _write(tmp_path, "sys/devices/system/cpu/cpu0/cache/index3/shared_cpu_list", "0-?\n")
    _write(tmp_path, "sys/devices/system/node/node0/cpulist", "oops\n")
    _write(tmp_path, "sys/kernel/mm/transparent_hugepage/enabled", "always madvise never\n")
    hw = detect(tmp_path)
    assert hw.logical_cpus == 2  # from cpuinfo
    assert hw.core_of == {0: (0, 0), 1: (0, 1)}  # cpuinfo fallback for both
    assert hw.thp is None
    assert hw.mem_total_bytes == 0
    assert len(hw.notes) >= 5


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize(
    ("vendor", "family", "model", "zen"),
    [
        ("AuthenticAMD", 23, 0x01, "Zen"),
        ("AuthenticAMD", 23, 0x08, "Zen"),
        ("AuthenticAMD", 23, 0x31, "Zen 2"),
        ("AuthenticAMD", 25, 0x01, "Zen 3"),
        ("AuthenticAMD", 25, 0x21, "Zen 3"),
        ("AuthenticAMD", 25, 0x50, "Zen 3"),
        ("AuthenticAMD", 25, 0x11, "Zen 4"),
        ("AuthenticAMD", 25, 0x61, "Zen 4"),
        ("AuthenticAMD", 25, 0xA0, "Zen 4"),
        ("AuthenticAMD", 26, 0x02, "Zen 5"),
        ("AuthenticAMD", 21, 0x02, None),
        ("GenuineIntel", 25, 0x01, None),
    ],
)
def test_zen_generation(
    tmp_path: Path, vendor: str, family: int, model: int, zen: str | None
) -> None:
    """AMD family/model map to the Zen generation; other vendors and families give None."""
    _write(
        tmp_path,
        "proc/cpuinfo",
        f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
        "model name\t: AMD EPYC 9654 96-Core Processor\nflags\t\t: fpu avx2\n",
    )
    hw = detect(tmp_path)
    assert hw.zen == zen
    assert hw.is_epyc


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]),
        ("0", [0]),
        ("", []),
        ("0-15\n", list(range(16))),
        (" 4 , 2,2 ", [2, 4]),
        ("0-7,64-71", [*range(8), *range(64, 72)]),
        ("0-6:2", [0, 2, 4, 6]),
    ],
)
def test_parse_cpulist(text: str, cpus: list[int]) -> None:
    """Kernel CPU lists parse to sorted distinct CPUs."""
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("text", ["a", "3-1", "1-", "-2", "0-3:0"])
def test_parse_cpulist_rejects_garbage(text: str) -> None:
    """Malformed CPU lists raise ValueError (detect turns that into a note)."""
    with pytest.raises(ValueError):
        parse_cpulist(text)


def _with(hw: Hardware, governor: str | None, thp: str | None) -> Hardware:
    hw.governor, hw.thp = governor, thp
    return hw


def test_tuning_advice(tmp_path: Path) -> None:
    """Advice names the governor and THP commands only for what is not already set."""
    hw = detect(_cpus_tree(tmp_path, 2))
    advice = tuning_advice(_with(hw, "powersave", "always"))
    assert advice == [
        "echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"
    ]
    assert tuning_advice(_with(hw, "performance", "always")) == []
    assert tuning_advice(_with(hw, None, None)) == []
    assert tuning_advice(_with(hw, "performance", "madvise")) == [
        "echo always | sudo tee /sys/kernel/mm/transparent_hugepage/enabled"
    ]


def test_tuning_advice_reads_tree(tmp_path: Path) -> None:
    """Governor and THP are read from the tree: powersave + never gives both commands."""
    _cpus_tree(tmp_path, 2)
    _write(tmp_path, "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "powersave\n")
    _write(tmp_path, "sys/kernel/mm/transparent_hugepage/enabled", "always madvise [never]\n")
    hw = detect(tmp_path)
    assert (hw.governor, hw.thp) == ("powersave", "never")
    assert len(tuning_advice(hw)) == 2


def test_live_root_fallbacks_use_py_cpuinfo_and_psutil(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On "/", fields cpuinfo lacks come from py-cpuinfo and a missing meminfo from psutil."""
    import cpuinfo
    import psutil

    from epyc_whisper import hardware

    # Treat the empty tree as the live root, and stub py-cpuinfo (the real call takes ~1 s).
    monkeypatch.setattr(hardware, "_is_system_root", lambda root: True)
    fake = {
        "vendor_id_raw": "AuthenticAMD",
        "brand_raw": "AMD EPYC 7763 64-Core Processor",
        "family": 25,
        "model": 1,
        "flags": ["avx2", "fma"],
    }
    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: fake)
    hw = detect(tmp_path, allowed_cpus=[0])
    assert (hw.vendor, hw.zen, hw.is_epyc) == ("AuthenticAMD", "Zen 3", True)
    assert hw.isa["avx2"] and not hw.isa["avx512f"]
    assert abs(hw.mem_total_bytes - psutil.virtual_memory().total) < 64 * MiB
    assert any("used py-cpuinfo" in n for n in hw.notes)
    assert any("psutil" in n for n in hw.notes)


def test_partial_cpuinfo_on_a_tree_is_noted_not_guessed(tmp_path: Path) -> None:
    """Outside "/", a cpuinfo without flags gives all-False ISA and a note (no py-cpuinfo)."""
    _write(tmp_path, "proc/cpuinfo", "processor\t: 0\nvendor_id\t: AuthenticAMD\n")
    hw = detect(tmp_path)
    assert hw.isa == _isa(False, False, False, False, False)
    assert any("lacks model name, cpu family, model, flags" in n for n in hw.notes)
