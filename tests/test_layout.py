"""Tests for epyc_whisper.layout: the plan on every hardware fixture, clamps, memory, quotas."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hwtrees import FIXTURES, make_tree

from epyc_whisper.config import Settings, resolve
from epyc_whisper.hardware import Hardware, detect
from epyc_whisper.layout import (
    MODEL_PARAMS,
    Layout,
    estimate_model_bytes,
    plan,
    thread_env,
)
from epyc_whisper.measured import cache_file, recall, remember

MiB = 1 << 20

#: One model process per L3 domain (CCX/CCD on EPYC); see tests/test_hardware.py for the
#: domain counts of each fixture.
EXPECTED_PROCESSES = {
    "xeon-16core-kvm": 1,
    "dev-2core": 1,
    "epyc-7543": 8,  # eight CCDs of four cores
    "epyc-7513": 4,  # four CCDs of eight cores
    "epyc-7763": 8,
    "epyc-7763-nps4": 8,
    "epyc-9754": 16,  # Zen 4c: two CCXs per CCD
    "2x-epyc-9554": 16,
}


@pytest.fixture(scope="module")
def hw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Hardware]]:
    """Every fixture detected once per module (trees on /dev/shm when it has room)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 256 * MiB:
        with tempfile.TemporaryDirectory(dir=shm, prefix="epyc-whisper-layout-") as d:
            yield {name: detect(make_tree(name, Path(d))) for name in FIXTURES}
        return
    base = tmp_path_factory.mktemp("hw")
    yield {name: detect(make_tree(name, base)) for name in FIXTURES}


def _settings(cli: dict[str, Any] | None = None, preset: str | None = None) -> Settings:
    return resolve(cli or {}, environ={}, preset=preset, use_saved=False)


def _cpus(layout: Layout) -> list[int]:
    return [c for p in layout.processes for c in p.cpus]


def _assert_sane(layout: Layout, usable: int) -> None:
    """Disjoint CPU sets, and no process (nor the whole plan) running more threads than CPUs."""
    cpus = _cpus(layout)
    assert len(cpus) == len(set(cpus))
    assert len(cpus) <= usable
    for p in layout.processes:
        assert p.cpus and p.workers >= 1 and p.threads >= 1
        assert p.workers * p.threads <= len(p.cpus)
    assert [p.index for p in layout.processes] == list(range(len(layout.processes)))


# --------------------------------------------------------------------------- fixtures


def test_every_fixture_has_an_expected_layout() -> None:
    """Each hardware fixture is checked below, and vice versa."""
    assert set(EXPECTED_PROCESSES) == set(FIXTURES)


@pytest.mark.parametrize("name", sorted(EXPECTED_PROCESSES))
def test_auto_layout_per_fixture(name: str, hw: dict[str, Hardware]) -> None:
    """One process per L3 domain, pinned to exactly that domain's CPUs, filling it."""
    machine = hw[name]
    layout = plan(machine, _settings())
    assert len(layout.processes) == EXPECTED_PROCESSES[name] == len(machine.l3_domains)
    assert [p.cpus for p in layout.processes] == [d.cpus for d in machine.l3_domains]
    assert sorted(_cpus(layout)) == sorted(machine.allowed_cpus)
    _assert_sane(layout, machine.usable_cpus)
    for p in layout.processes:
        assert p.workers * p.threads == len(p.cpus)
        if machine.smt:
            assert p.threads == 2
    assert layout.warnings == []
    assert (layout.compute_type, layout.batch_size, layout.device) == ("int8", 32, "cpu")
    assert layout.total_bytes <= layout.budget_bytes


def test_small_machines_use_one_thread_per_worker(hw: dict[str, Hardware]) -> None:
    """On 2 cores without SMT: 1 process x 2 workers x 1 thread (measured 1.5x the defaults)."""
    layout = plan(hw["dev-2core"], _settings())
    assert [(p.cpus, p.workers, p.threads) for p in layout.processes] == [([0, 1], 2, 1)]
    assert layout.summary().startswith("1 process(es) x 2 CT2 worker(s) x 1 thread(s)")


def test_eight_cpu_domains_use_two_threads(hw: dict[str, Hardware]) -> None:
    """A domain of 8+ CPUs without SMT still gets workers of 2 threads (the 8 x 2 result)."""
    layout = plan(hw["xeon-16core-kvm"], _settings())
    assert [(p.workers, p.threads) for p in layout.processes] == [(8, 2)]


def test_explicit_values_win(hw: dict[str, Hardware]) -> None:
    """Processes, workers and threads given by the user are used as given when they fit."""
    layout = plan(hw["epyc-7763"], _settings({"processes": 4, "workers": 3, "threads": 4}))
    assert [(len(p.cpus), p.workers, p.threads) for p in layout.processes] == [(32, 3, 4)] * 4
    assert layout.warnings == []
    layout = plan(hw["xeon-16core-kvm"], _settings({"threads": 4}))
    assert [(p.workers, p.threads) for p in layout.processes] == [(4, 4)]


# --------------------------------------------------------------------------- clamps


def test_preset_bigger_than_machine_is_clamped(hw: dict[str, Hardware]) -> None:
    """epyc-64 on 2 CPUs: 2 single-CPU processes, with warnings saying what was clamped."""
    layout = plan(hw["dev-2core"], _settings(preset="epyc-64"))
    assert [(p.cpus, p.workers, p.threads) for p in layout.processes] == [([0], 1, 1), ([1], 1, 1)]
    text = "\n".join(layout.warnings)
    assert "processes=8 (preset epyc-64) is more than the 2 usable CPUs: clamped to 2" in text
    assert "workers=8 x threads=2 per process is more than its 1 CPU(s): clamped" in text


def test_too_many_threads_is_clamped(hw: dict[str, Hardware]) -> None:
    """threads=8 on 2 CPUs becomes 1 worker x 2 threads, with a warning naming the request."""
    layout = plan(hw["dev-2core"], _settings({"threads": 8}))
    assert [(p.workers, p.threads) for p in layout.processes] == [(1, 2)]
    assert len(layout.warnings) == 1
    assert (
        "threads=8" in layout.warnings[0]
        and "clamped to 1 worker(s) x 2 thread(s)" in (layout.warnings[0])
    )


def test_too_many_workers_is_clamped(hw: dict[str, Hardware]) -> None:
    """workers=40 on 16 CPUs becomes 16 workers x 1 thread, with a warning."""
    layout = plan(hw["xeon-16core-kvm"], _settings({"workers": 40}))
    assert [(p.workers, p.threads) for p in layout.processes] == [(16, 1)]
    assert any("workers=40" in w and "clamped" in w for w in layout.warnings)


def test_too_many_processes_is_clamped(hw: dict[str, Hardware]) -> None:
    """processes=300 on 256 CPUs gives 256 one-CPU processes and a warning."""
    layout = plan(hw["epyc-9754"], _settings({"processes": 300, "model": "tiny"}))
    assert len(layout.processes) == 256
    assert any("processes=300 (cli)" in w and "clamped to 256" in w for w in layout.warnings)
    _assert_sane(layout, 256)


@pytest.mark.parametrize("preset", ["auto", "epyc-32", "epyc-64", "epyc-128"])
@pytest.mark.parametrize("name", sorted(EXPECTED_PROCESSES))
def test_every_preset_fits_every_fixture(name: str, preset: str, hw: dict[str, Hardware]) -> None:
    """Whatever the preset, no plan runs more threads than its CPUs or overlaps CPU sets."""
    layout = plan(hw[name], _settings(preset=preset))
    _assert_sane(layout, hw[name].usable_cpus)
    if layout.warnings:
        assert any("clamped" in w for w in layout.warnings)


def test_guide_presets_on_their_own_machines(hw: dict[str, Hardware]) -> None:
    """Each preset on the machine it was written for runs as the guide says, without clamps."""
    for name, preset, (n, per) in [
        ("epyc-7543", "epyc-32", (4, 8)),
        ("epyc-7763", "epyc-64", (8, 16)),
        ("2x-epyc-9554", "epyc-64", (8, 16)),
    ]:
        layout = plan(hw[name], _settings(preset=preset))
        assert len(layout.processes) == n, (name, preset)
        assert all(p.workers * p.threads == per for p in layout.processes), (name, preset)
        assert layout.warnings == [], (name, preset)


# --------------------------------------------------------------------------- memory


def test_tiny_memory_limit_leaves_one_process(hw: dict[str, Hardware]) -> None:
    """memory_limit 1G with large-v3 on 128 cores: one process, and warnings saying why."""
    layout = plan(hw["epyc-9754"], _settings({"memory_limit": "1G", "model": "large-v3"}))
    assert len(layout.processes) == 1
    assert layout.budget_bytes == 1 << 30
    text = "\n".join(layout.warnings)
    assert "one process per L3 domain (16) would not fit in the memory budget (1024 MiB)" in text
    assert "even one model copy needs about" in text


def test_memory_limit_reduces_process_count(hw: dict[str, Hardware]) -> None:
    """A budget between one and sixteen copies (with one window's decoder state for each
    of the 128 workers) gives fewer processes that fit in it."""
    layout = plan(hw["epyc-9754"], _settings({"memory_limit": "100G", "model": "large-v3"}))
    assert 1 < len(layout.processes) < 16
    assert layout.total_bytes <= layout.budget_bytes == 100 << 30
    assert sorted(_cpus(layout)) == list(range(256))
    assert any("would not fit in the memory budget" in w for w in layout.warnings)
    _assert_sane(layout, 256)


def test_explicit_processes_reduced_for_memory(hw: dict[str, Hardware]) -> None:
    """processes=16 that do not fit are reduced, and the warning names the request."""
    layout = plan(
        hw["epyc-9754"], _settings({"memory_limit": "100G", "processes": 16, "model": "large-v3"})
    )
    assert 1 < len(layout.processes) < 16
    assert any(w.startswith("processes=16 would not fit") for w in layout.warnings)


def test_percentage_budget_is_of_available_memory(hw: dict[str, Hardware]) -> None:
    """The default 80% budget is 80% of MemAvailable; 50% is half of it."""
    machine = hw["epyc-7763"]
    assert plan(machine, _settings()).budget_bytes == int(machine.mem_available_bytes * 0.8)
    half = plan(machine, _settings({"memory_limit": "50%"}))
    assert half.budget_bytes == machine.mem_available_bytes // 2


# --------------------------------------------------------------------------- quotas and affinity


def test_cgroup_quota_is_respected(tmp_path: Path) -> None:
    """A 16-CPU quota on a 128-CPU host plans 16 CPUs, one hardware thread per core."""
    tree = make_tree("epyc-7763", tmp_path)
    (tree / "sys/fs/cgroup").mkdir(parents=True)
    (tree / "sys/fs/cgroup/cpu.max").write_text("1600000 100000\n")
    machine = detect(tree)
    assert (machine.usable_cpus, len(machine.allowed_cpus)) == (16, 128)
    layout = plan(machine, _settings())
    cpus = _cpus(layout)
    assert len(cpus) == 16
    assert len({machine.core_of[c] for c in cpus}) == 16  # no two SMT siblings
    _assert_sane(layout, 16)
    assert sum(p.workers * p.threads for p in layout.processes) == 16


def test_one_cpu_quota(tmp_path: Path) -> None:
    """A one-CPU quota gives one process of 1 worker x 1 thread; a preset is clamped to it."""
    tree = make_tree("dev-2core", tmp_path)
    (tree / "sys/fs/cgroup").mkdir(parents=True, exist_ok=True)
    (tree / "sys/fs/cgroup/cpu.max").write_text("100000 100000\n")
    machine = detect(tree)
    assert machine.usable_cpus == 1
    layout = plan(machine, _settings())
    assert [(len(p.cpus), p.workers, p.threads) for p in layout.processes] == [(1, 1, 1)]
    layout = plan(machine, _settings(preset="epyc-32"))
    assert [(len(p.cpus), p.workers, p.threads) for p in layout.processes] == [(1, 1, 1)]
    assert any("clamped to 1" in w for w in layout.warnings)


def test_affinity_restricts_the_plan(hw: dict[str, Hardware], tmp_path: Path) -> None:
    """With affinity to one CCD's CPUs, the plan is one process on exactly those CPUs."""
    ccd0 = hw["epyc-7763"].l3_domains[0].cpus
    machine = detect(make_tree("epyc-7763", tmp_path), allowed_cpus=ccd0)
    layout = plan(machine, _settings())
    assert [p.cpus for p in layout.processes] == [ccd0]
    assert (layout.processes[0].workers, layout.processes[0].threads) == (8, 2)


# --------------------------------------------------------------------------- memory estimate


def test_estimate_for_a_local_folder(tmp_path: Path) -> None:
    """A folder's model.bin (float16 on disk) is rescaled to the compute type, plus 10%."""
    (tmp_path / "model.bin").write_bytes(b"\0" * 2_000_000)
    assert estimate_model_bytes(str(tmp_path), "int8") == int(1_000_000 * 1.0 * 1.1)
    assert estimate_model_bytes(str(tmp_path), "float32") == int(1_000_000 * 4.0 * 1.1)
    assert estimate_model_bytes(str(tmp_path), "float16") == int(1_000_000 * 2.0 * 1.1)


def test_estimate_for_a_name() -> None:
    """A known name uses its parameter count; an unknown one is assumed as big as large-v3."""
    assert estimate_model_bytes("tiny", "int8") == int(39e6 * 1.1)
    assert estimate_model_bytes("large-v3", "float32") == int(1550e6 * 4 * 1.1)
    assert estimate_model_bytes("someone/unknown-model", "int8") == int(
        MODEL_PARAMS["large-v3"] * 1.1
    )
    assert estimate_model_bytes("tiny", "int8") < estimate_model_bytes("small", "int8")


def test_plan_uses_the_folder_estimate(tmp_path: Path, hw: dict[str, Hardware]) -> None:
    """The layout's per-copy memory is the estimate of the model it was given."""
    (tmp_path / "model.bin").write_bytes(b"\0" * 4096)
    layout = plan(hw["dev-2core"], _settings({"model": str(tmp_path)}))
    assert layout.model_bytes == estimate_model_bytes(str(tmp_path), "int8")
    d = layout.to_dict()
    assert d["total_bytes"] == layout.total_bytes == layout.model_bytes + layout.working_bytes


def test_measured_model_size_replaces_the_estimate(hw: dict[str, Hardware]) -> None:
    """A model measured bigger than its estimate leaves fewer processes, and the layout
    says the figure was measured; without a measurement it is the estimate."""
    settings = _settings({"memory_limit": "20G", "model": "tiny"})
    estimated = plan(hw["epyc-9754"], settings)
    assert estimated.model_bytes_source == "estimated" and len(estimated.processes) == 16
    measured = plan(hw["epyc-9754"], settings, measured_model_bytes=2 << 30)
    assert measured.model_bytes == 2 << 30 and measured.model_bytes_source == "measured"
    assert len(measured.processes) < 16
    assert any("would not fit in the memory budget" in w for w in measured.warnings)


def test_measurements_are_remembered_per_model_and_compute_type(tmp_path: Path) -> None:
    """remember/recall round trip, keyed by model (a folder by its real path) and
    compute type; a missing or damaged file means no measurement, never an error."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    model = tmp_path / "m"
    model.mkdir()
    assert recall(str(model), "int8", env) is None
    remember(str(model), "int8", 123456, env)
    remember("large-v3", "int8", 999, env)
    assert recall(str(model / ".." / "m"), "int8", env) == 123456
    assert recall(str(model), "float32", env) is None and recall("large-v3", "int8", env) == 999
    cache_file(env).write_text("{not json")
    assert recall("large-v3", "int8", env) is None
    remember("large-v3", "int8", 5, env)
    assert recall("large-v3", "int8", env) == 5


# --------------------------------------------------------------------------- thread environment


def test_thread_env_values(hw: dict[str, Hardware]) -> None:
    """OMP/MKL get the per-worker threads; BLAS and numexpr 1; glibc arenas 4 and its
    mmap/trim thresholds at 256 MiB."""
    two = thread_env(plan(hw["epyc-7763"], _settings()))
    assert two == {
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
        "OPENBLAS_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "4",
        "MALLOC_MMAP_THRESHOLD_": "268435456",
        "MALLOC_TRIM_THRESHOLD_": "268435456",
    }
    one = thread_env(plan(hw["dev-2core"], _settings()))
    assert (one["OMP_NUM_THREADS"], one["MKL_NUM_THREADS"]) == ("1", "1")
    assert all(isinstance(v, str) for v in one.values())


def test_decode_batch_is_the_largest_that_fits(hw: dict[str, Hardware]) -> None:
    """Workers decode DECODE_BATCH windows at once where their decoder state fits the
    budget (tiny, and large-v3 with memory to spare), fewer where it does not, and one,
    with fewer workers, where even one window each would not fit."""
    from epyc_whisper.layout import DECODE_BATCH

    two = hw["dev-2core"]
    for model in ("tiny", "small", "large-v3", "turbo"):
        layout = plan(two, _settings({"model": model, "memory_limit": "16G"}))
        assert layout.decode_batch == DECODE_BATCH, model
    for limit, batch in (("5G", 2), ("3500M", 1)):
        layout = plan(two, _settings({"model": "large-v3", "memory_limit": limit}))
        assert layout.decode_batch == batch, limit
        assert layout.total_workers == 2 and layout.total_bytes <= layout.budget_bytes
        assert any(w.startswith(f"decode batch {batch} (not 4)") for w in layout.warnings)
    measured = plan(two, _settings({"model": "tiny", "memory_limit": "16G"}), 600 << 20)
    assert measured.decode_batch == DECODE_BATCH and measured.to_dict()["decode_batch"] == 4
    big = plan(hw["epyc-9754"], _settings({"model": "large-v3", "memory_limit": "20G"}))
    assert big.decode_batch == 1 and big.total_bytes <= big.budget_bytes
    assert big.total_workers < 128
    assert any("CT2 workers would not fit" in w for w in big.warnings)


def test_window_state_grows_with_decoder_layers_and_width() -> None:
    """A window's decoder state: large-v3 (32 layers) about 8 times turbo's (4 layers)."""
    from epyc_whisper.layout import window_bytes

    assert 500 << 20 < window_bytes("large-v3") < 600 << 20
    assert abs(window_bytes("large-v3") - 8 * window_bytes("turbo")) <= 8
    assert window_bytes("tiny.en") < window_bytes("base") < window_bytes("medium")


def test_copies_loading_at_once_fit_when_weights_convert_on_load(
    hw: dict[str, Hardware], tmp_path: Path
) -> None:
    """Weights stored float16 and run int8 are read whole before they are converted:
    two processes loading at once must fit that peak, not just the loaded copies, so a
    budget that holds two int8-stored copies holds only one float16-stored one."""
    from epyc_whisper.layout import PROCESS_OVERHEAD, load_peak_bytes
    from tests.make_shaped_model import build

    i8 = str(build("tiny", tmp_path / "i8", layers=1, quantization="int8"))
    f16 = str(build("tiny", tmp_path / "f16", layers=1, quantization="float16"))
    e8, e16 = estimate_model_bytes(i8, "int8"), estimate_model_bytes(f16, "int8")
    assert load_peak_bytes(i8, "int8", e8) == e8
    peak16 = load_peak_bytes(f16, "int8", e16)
    assert peak16 > (Path(f16) / "model.bin").stat().st_size + e16 / 2
    limit = f"{(2 * (peak16 + PROCESS_OVERHEAD) >> 20) - 1}M"
    s8 = plan(hw["dev-2core"], _settings({"model": i8, "processes": 2, "memory_limit": limit}))
    s16 = plan(hw["dev-2core"], _settings({"model": f16, "processes": 2, "memory_limit": limit}))
    assert len(s8.processes) == 2 and len(s16.processes) == 1
    assert s16.load_peak_bytes == peak16 and s16.to_dict()["load_peak_bytes"] == peak16
