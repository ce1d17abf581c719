"""Tests for epyc_whisper.envsetup: the planned thread environment and the self re-exec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from epyc_whisper import envsetup
from epyc_whisper.envsetup import MARKER, EnvVar, child_environ, plan_env, reexec, reexec_needed

WANTED = {
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
    "OPENBLAS_NUM_THREADS": "1",
    "MALLOC_ARENA_MAX": "4",
}
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
)


def _by_name(plan: list[EnvVar]) -> dict[str, EnvVar]:
    return {v.name: v for v in plan}


def test_user_export_is_kept_and_the_rest_set() -> None:
    """A variable the user exported keeps its value (source 'user'); ours are 'layout'."""
    plan = _by_name(plan_env(WANTED, {"MKL_NUM_THREADS": "7", "HOME": "/root"}))
    assert list(plan) == list(WANTED)
    assert plan["MKL_NUM_THREADS"] == EnvVar("MKL_NUM_THREADS", "7", "user", "7")
    assert plan["OMP_NUM_THREADS"] == EnvVar("OMP_NUM_THREADS", "2", "layout", None)
    assert plan["MALLOC_ARENA_MAX"] == EnvVar("MALLOC_ARENA_MAX", "4", "layout", None)


def test_user_export_of_empty_value_is_kept() -> None:
    """Even an empty exported value is the user's choice, not ours to replace."""
    plan = _by_name(plan_env(WANTED, {"OMP_NUM_THREADS": ""}))
    assert (plan["OMP_NUM_THREADS"].value, plan["OMP_NUM_THREADS"].source) == ("", "user")


def test_child_environ_marks_ours() -> None:
    """The child's environment has our values, the user's, and a marker naming ours."""
    user = {"MKL_NUM_THREADS": "7", "PATH": "/usr/bin"}
    env = child_environ(plan_env(WANTED, user), user)
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["MKL_NUM_THREADS"] == "7"
    assert env["PATH"] == "/usr/bin"
    assert set(env[MARKER].split(",")) == {
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MALLOC_ARENA_MAX",
    }
    assert user == {"MKL_NUM_THREADS": "7", "PATH": "/usr/bin"}  # the input is not changed


def test_after_reexec_sources_are_still_told_apart() -> None:
    """In the re-executed process ours are 'layout' (in effect) and the user's 'user'."""
    user = {"MKL_NUM_THREADS": "7"}
    child = child_environ(plan_env(WANTED, user), user)
    plan = _by_name(plan_env(WANTED, child))
    assert plan["OMP_NUM_THREADS"] == EnvVar("OMP_NUM_THREADS", "2", "layout", "2")
    assert plan["OPENBLAS_NUM_THREADS"] == EnvVar("OPENBLAS_NUM_THREADS", "1", "layout", "1")
    assert plan["MKL_NUM_THREADS"] == EnvVar("MKL_NUM_THREADS", "7", "user", "7")
    assert not reexec_needed(child)


def test_marker_when_user_exported_everything() -> None:
    """With every variable the user's, the marker is still set, so no re-exec loops."""
    user = dict.fromkeys(WANTED, "3")
    env = child_environ(plan_env(WANTED, user), user)
    assert MARKER in env and not reexec_needed(env)
    assert all(v.source == "user" for v in plan_env(WANTED, env))


class _Exec(Exception):
    """Raised by the fake os.execve: a real one would never return."""


@pytest.fixture()
def fake_execve(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []

    def execve(path: str, args: list[str], env: dict[str, str]) -> None:
        calls.append((path, list(args), dict(env)))
        raise _Exec

    monkeypatch.setattr(os, "execve", execve)
    return calls


def test_reexec_arguments(monkeypatch: pytest.MonkeyPatch, fake_execve: list[Any]) -> None:
    """reexec runs [python, -m, epyc_whisper, *argv] under the planned environment."""
    monkeypatch.delenv(MARKER, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    plan = plan_env(WANTED, os.environ)
    with pytest.raises(_Exec):
        reexec(plan, ["detect", "--json"])
    [(path, args, env)] = fake_execve
    assert path == sys.executable
    assert args == [sys.executable, "-m", "epyc_whisper", "detect", "--json"]
    assert env == child_environ(plan, os.environ)
    assert env["OMP_NUM_THREADS"] == "2" and env["MKL_NUM_THREADS"] == "7"
    assert "OMP_NUM_THREADS" in env[MARKER].split(",")
    assert "MKL_NUM_THREADS" not in env[MARKER].split(",")


def test_reexec_defaults_to_sys_argv(
    monkeypatch: pytest.MonkeyPatch, fake_execve: list[Any]
) -> None:
    """Without argv, the process's own arguments (after the program name) are passed on."""
    monkeypatch.delenv(MARKER, raising=False)
    monkeypatch.setattr(sys, "argv", ["/usr/bin/epyc-whisper", "transcribe", "a b.wav", "-q"])
    with pytest.raises(_Exec):
        reexec(plan_env(WANTED, {}))
    assert fake_execve[0][1] == [
        sys.executable,
        "-m",
        "epyc_whisper",
        "transcribe",
        "a b.wav",
        "-q",
    ]


def test_no_second_reexec(monkeypatch: pytest.MonkeyPatch, fake_execve: list[Any]) -> None:
    """With the marker set, reexec returns without calling os.execve."""
    monkeypatch.setenv(MARKER, "OMP_NUM_THREADS")
    assert envsetup.reexec(plan_env(WANTED, os.environ), ["detect"]) is None
    assert fake_execve == []


# --------------------------------------------------------------------------- end to end


def _detect_json(tmp_path: Path, *extra: str, **env_over: str) -> dict[str, Any]:
    model = tmp_path / "dummy-model"
    model.mkdir(exist_ok=True)
    (model / "model.bin").write_bytes(b"\0" * 1024)  # made up: detect never loads it
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPYC_WHISPER_")}
    for name in THREAD_VARS:
        env.pop(name, None)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    env.update(env_over)
    res = subprocess.run(
        [sys.executable, "-m", "epyc_whisper", "detect", "--json", "--model", str(model), *extra],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def test_end_to_end_reexec_reports_values_in_effect(tmp_path: Path) -> None:
    """The re-executed process has our values in effect and the user's export untouched."""
    doc = _detect_json(tmp_path, MKL_NUM_THREADS="7")
    assert doc["reexecuted"] is True
    te = doc["thread_env"]
    assert set(te) >= set(THREAD_VARS)
    planned = str(doc["layout"]["processes"][0]["threads"])
    assert te["OMP_NUM_THREADS"] == {"value": planned, "source": "layout", "in_effect": planned}
    assert te["MKL_NUM_THREADS"] == {"value": "7", "source": "user", "in_effect": "7"}
    assert te["MALLOC_ARENA_MAX"]["in_effect"] == te["MALLOC_ARENA_MAX"]["value"] == "4"
    threshold = str(256 << 20)  # glibc keeps the encoder's buffers for reuse
    assert te["MALLOC_MMAP_THRESHOLD_"]["in_effect"] == threshold


def test_end_to_end_no_reexec(tmp_path: Path) -> None:
    """With --no-reexec nothing is re-executed and our values are planned, not in effect."""
    doc = _detect_json(tmp_path, "--no-reexec", MKL_NUM_THREADS="7")
    assert doc["reexecuted"] is False
    te = doc["thread_env"]
    assert te["OMP_NUM_THREADS"]["source"] == "layout"
    assert te["OMP_NUM_THREADS"]["in_effect"] is None
    assert te["MKL_NUM_THREADS"] == {"value": "7", "source": "user", "in_effect": "7"}
