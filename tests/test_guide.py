"""The guide's names: its dicts turned into settings, checked as the CLI checks its flags,
and the process-wide shared Transcriber of get_epyc_manager."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from hwtrees import FIXTURES, make_tree

from epyc_whisper import guide
from epyc_whisper.hardware import Hardware, detect

MiB = 1 << 20
#: The guide's own override example, as users paste it.
GUIDE_OVERRIDE = {"num_models": 12, "batch_size": 48, "workers": 96, "compute_type": "float16"}
#: The same settings as the CLI's flags (the guide's workers 96 over 12 processes: 8 each).
GUIDE_FLAGS = ["--processes", "12", "--workers", "8", "--batch-size", "48"]
GUIDE_FLAGS += ["--compute-type", "float16"]


def _cpu_types() -> list[str]:
    import ctranslate2

    return sorted(ctranslate2.get_supported_compute_types("cpu"))


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Hardware]]:
    """Every hardware fixture detected once (trees on /dev/shm when it has room)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 256 * MiB:
        with tempfile.TemporaryDirectory(dir=shm, prefix="epyc-whisper-guide-") as d:
            yield {name: detect(make_tree(name, Path(d))) for name in FIXTURES}
        return
    base = tmp_path_factory.mktemp("hw")
    yield {name: detect(make_tree(name, base)) for name in FIXTURES}


# --------------------------------------------------------------------------- pure logic
def test_guide_override_becomes_our_settings() -> None:
    """The guide's example: num_models -> processes, workers 96 over 12 processes -> 8
    CT2 workers each, batch_size and compute_type as they are."""
    assert guide.override_settings(GUIDE_OVERRIDE) == {
        "processes": 12,
        "workers": 8,
        "batch_size": 48,
        "compute_type": "float16",
    }


def test_workers_not_a_multiple_of_num_models() -> None:
    """The guide's workers must divide over num_models; the error says the two nearest
    multiples."""
    with pytest.raises(ValueError) as e:
        guide.override_settings({"num_models": 12, "workers": 100})
    msg = str(e.value)
    assert "workers = 100" in msg and "num_models = 12" in msg and "give 96 or 108" in msg


def test_workers_without_num_models_divides_over_the_planned_processes(
    trees: dict[str, Hardware],
) -> None:
    """Without num_models, the guide's workers are divided over the processes the layout
    plans on that machine (one per L3 domain: 8 on an EPYC 7763)."""
    hw = trees["epyc-7763"]
    assert guide.override_settings({"workers": 64}, hw=hw, environ={})["workers"] == 8
    with pytest.raises(ValueError, match="not a multiple of the 8 model process"):
        guide.override_settings({"workers": 60}, hw=hw, environ={})


def test_workers_and_num_workers_together_are_refused() -> None:
    """The guide's workers (all processes) and num_workers (per process) cannot both be
    given: one would silently win."""
    with pytest.raises(ValueError, match="keep one"):
        guide.override_settings({"workers": 8, "num_workers": 2})


def test_setting_named_twice_is_refused() -> None:
    """num_models and processes in one dict: an error naming both, as in a config file."""
    with pytest.raises(ValueError) as e:
        guide.override_settings({"num_models": 2, "processes": 3})
    assert "'num_models'" in str(e.value) and "'processes'" in str(e.value)


def test_unknown_key_suggests_the_near_one() -> None:
    """A misspelt key is a ValueError with a suggestion, never ignored."""
    with pytest.raises(ValueError, match="did you mean 'batch_size'"):
        guide.override_settings({"bacth_size": 4})


def test_bad_worker_count_is_a_value_error() -> None:
    """workers 0 or a word: the error says what is allowed."""
    with pytest.raises(ValueError, match="a whole number >= 1"):
        guide.override_settings({"num_models": 2, "workers": 0})


def test_asr_config_of_the_guide() -> None:
    """The guide's asr_config: mode local, the model, the pool's keys as settings."""
    settings, in_process = guide.asr_config_settings(
        {
            "mode": "local",
            "model": "large-v3",
            "use_epyc_optimization": True,
            "epyc_num_models": 16,
            "epyc_batch_size": 64,
        }
    )
    assert (settings, in_process) == (
        {"model": "large-v3", "processes": 16, "batch_size": 64},
        False,
    )


def test_asr_config_without_optimisation_is_the_traditional_way() -> None:
    """use_epyc_optimization False: one model in the caller's process, and the pool's
    keys are switched off with it (as in the guide); decoding settings stay."""
    settings, in_process = guide.asr_config_settings(
        {"model": "tiny", "use_epyc_optimization": False, "epyc_num_models": 8, "beam_size": 2}
    )
    assert in_process and settings == {"model": "tiny", "beam_size": 2}


@pytest.mark.parametrize(
    ("config", "wants"),
    [
        ({"mode": "api"}, "only 'local'"),
        ({"use_epyc_optimization": "maybe"}, "true or false"),
        ({"epyc_num_model": 4}, "did you mean 'epyc_num_models'"),
    ],
)
def test_bad_asr_config(config: dict[str, object], wants: str) -> None:
    """A mode other than local, a switch that is not a boolean, a misspelt key: a
    ValueError saying what is allowed."""
    with pytest.raises(ValueError, match=wants):
        guide.asr_config_settings(config)


# --------------------------------------------------------------------------- as the CLI checks
def test_guide_override_on_every_fixture(trees: dict[str, Hardware]) -> None:
    """The guide's override on each fixture: a plan that fits the machine (12 processes
    or the usable CPUs, 8 CT2 workers each or what fits), and then the compute type
    check: float16 is a plan where this CPU runs it, else a ValueError listing the
    types it runs."""
    supported = _cpu_types()
    for name, hw in trees.items():
        settings = guide.override_settings(GUIDE_OVERRIDE, hw=hw, environ={})
        _, layout = guide.plan_settings(settings, hw=hw, environ={}, check_types=False)
        ncpu = len(hw.allowed_cpus)
        assert len(layout.processes) == min(12, ncpu), name
        for p in layout.processes:
            assert p.workers * p.threads <= len(p.cpus) and p.workers <= 8, name
        assert layout.batch_size == 48 and layout.compute_type == "float16", name
        if "float16" in supported:
            assert guide.plan_override(GUIDE_OVERRIDE, hw=hw, environ={}).layout, name
            continue
        with pytest.raises(ValueError) as e:
            guide.plan_override(GUIDE_OVERRIDE, hw=hw, environ={})
        msg = str(e.value)
        assert "compute_type 'float16'" in msg and "GPU types" in msg, name
        assert all(t in msg for t in supported), name


def test_guide_override_says_what_the_cli_says(
    tmp_path: Path, clean_env: dict[str, str], model_path: Path
) -> None:
    """The guide's override and the same settings as CLI flags, on this machine: the API's
    ValueError is the CLI's error line word for word (or both make the same plan)."""
    flags = [*GUIDE_FLAGS, "--model", str(model_path)]
    res = run_cli(["detect", "--json", *flags], tmp_path, {**clean_env, "COLUMNS": "1000"})
    environ = {k: v for k, v in clean_env.items() if k.startswith("XDG_")}
    try:
        planned = guide.plan_override({**GUIDE_OVERRIDE, "model": str(model_path)}, environ=environ)
    except ValueError as e:
        assert res.returncode == 2, res.stderr
        assert res.stderr.strip() == f"epyc-whisper: error: {e}"
        return
    assert res.returncode == 0, res.stderr
    import json

    assert json.loads(res.stdout)["layout"] == planned.layout.to_dict()


# --------------------------------------------------------------------------- real model
SAMPLES = Path(__file__).resolve().parent.parent / "epyc_whisper" / "samples"
CLIPS = [SAMPLES / "ast_en_agent-incorrect.wav", SAMPLES / "ast_en_vm-tocancel.wav"]


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_get_epyc_manager_is_one_pool_for_two_calls(api_env: None, model_path: Path) -> None:
    """Two get_epyc_manager calls, the second without an override: one Transcriber, one
    pool, its models loaded once per worker process (loads == processes); the same
    override again is the same one, other settings close it and start a new one."""
    from epyc_whisper import get_epyc_manager

    override = {"model": str(model_path), "num_models": 1, "workers": 2, "batch_size": 4}
    first = get_epyc_manager(override)
    pids = first.worker_pids
    texts = [t.text for t in first.transcribe(CLIPS)]
    second = get_epyc_manager()
    assert second is first and get_epyc_manager(dict(override)) is first
    assert [t.text for t in second.transcribe(CLIPS)] == texts
    stats = second.stats
    assert stats["files"] == 4 and second.worker_pids == pids
    assert stats["loads"] == stats["processes"] == len(second.layout.processes) == 1
    assert second.layout.processes[0].workers == 2 and second.layout.batch_size == 4

    other = get_epyc_manager({**override, "workers": 1})
    assert other is not first and other.layout.processes[0].workers == 1
    assert get_epyc_manager() is other
    assert not any(_alive(p) for p in pids), "the old pool's workers outlived it"
    with pytest.raises(RuntimeError, match="closed"):
        first.transcribe(CLIPS)


def test_get_epyc_manager_refuses_as_the_cli_does(
    api_env: None, tmp_path: Path, clean_env: dict[str, str], model_path: Path
) -> None:
    """The guide's override through get_epyc_manager on this machine: the ValueError is
    the CLI's error line for the same flags, and no shared Transcriber is left behind."""
    if "float16" in _cpu_types():
        pytest.skip("this CPU runs float16 in CTranslate2: the guide's override is a plan")
    from epyc_whisper import get_epyc_manager

    res = run_cli(
        ["detect", *GUIDE_FLAGS, "--model", str(model_path)],
        tmp_path,
        {**clean_env, "COLUMNS": "1000"},
    )
    with pytest.raises(ValueError) as e:
        get_epyc_manager({**GUIDE_OVERRIDE, "model": str(model_path)})
    assert res.returncode == 2 and res.stderr.strip() == f"epyc-whisper: error: {e.value}"
    assert guide._shared is None


def test_from_asr_config_without_optimisation(api_env: None, model_path: Path) -> None:
    """use_epyc_optimization False: one model in the caller's process, no worker
    process, the same words as the pool gives for the same clips."""
    from epyc_whisper import Transcriber

    config = {"mode": "local", "model": str(model_path), "epyc_num_models": 4}
    with Transcriber.from_asr_config({**config, "use_epyc_optimization": False}) as alone:
        assert alone.in_process and alone.worker_pids == [os.getpid()]
        plain = [t.text for t in alone.transcribe(CLIPS)]
        assert alone.stats["loads"] == 1
    with Transcriber.from_asr_config({**config, "epyc_num_models": 1}) as pool:
        assert not pool.in_process and len(pool.layout.processes) == 1
        assert os.getpid() not in pool.worker_pids
        assert [t.text for t in pool.transcribe(CLIPS)] == plain
