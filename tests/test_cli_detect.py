"""Tests for the command line: `detect` on this machine, usage errors and exit codes, help.

The commands re-execute themselves (envsetup.reexec), so they are run as real processes
of the installed console script, not through CliRunner; only --help, which exits before
any re-exec, uses CliRunner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from epyc_whisper import __version__
from epyc_whisper.cli import app
from epyc_whisper.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_SCRIPT = Path(sys.executable).parent / "epyc-whisper"
#: The installed console script; `python -m epyc_whisper` where it is not installed.
COMMAND = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "epyc_whisper"]


def _env(tmp_path: Path, **over: str) -> dict[str, str]:
    """No saved layout, no stray EPYC_WHISPER_* or thread variables, a wide console."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPYC_WHISPER_")}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.pop(name, None)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    # Rich wraps at 80 columns when stderr is not a terminal; the message checks below
    # are about content, test_error_is_one_line_in_a_log is about wrapping.
    env["COLUMNS"] = "1000"
    env.update(over)
    return env


def _run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [*COMMAND, *args],
        env=_env(tmp_path) if env is None else env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )


@pytest.fixture()
def dummy_model(tmp_path: Path) -> Path:
    """A folder that looks like a CTranslate2 model (made up; nothing here loads it)."""
    folder = tmp_path / "dummy-model"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"\0" * 4096)
    return folder


def _usage_error(res: Any) -> str:
    """Assert exit 2, an 'error:' line on stderr, nothing on stdout, no traceback."""
    assert res.returncode == ExitCode.USAGE == 2, (res.returncode, res.stderr)
    assert res.stdout == ""
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("epyc-whisper: error: ")
    return str(res.stderr)


def _meminfo_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


# --------------------------------------------------------------------------- detect


def test_detect_json_matches_this_machine(tmp_path: Path, dummy_model: Path) -> None:
    """detect --json reports this machine's CPUs and memory as /proc and os see them."""
    res = _run(tmp_path, "detect", "--json", "--model", str(dummy_model))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert set(doc) == {
        "version",
        "hardware",
        "preset",
        "settings",
        "layout",
        "thread_env",
        "reexecuted",
        "tuning",
    }
    hw = doc["hardware"]
    assert hw["logical_cpus"] == os.cpu_count()
    assert hw["allowed_cpus"] == sorted(os.sched_getaffinity(0))
    assert abs(hw["mem_total_bytes"] - _meminfo_total()) <= _meminfo_total() / 100
    assert 0 < hw["mem_available_bytes"] <= hw["mem_total_bytes"]
    assert hw["root"] == "/" and hw["built"] is False
    assert doc["version"] == __version__
    assert doc["preset"] == "auto"
    assert doc["settings"]["model"] == {"value": str(dummy_model), "source": "cli"}
    assert doc["settings"]["batch_size"] == {"value": 32, "source": "default"}
    cpus = [c for p in doc["layout"]["processes"] for c in p["cpus"]]
    assert len(cpus) == len(set(cpus)) == hw["usable_cpus"]
    assert set(cpus) <= set(hw["allowed_cpus"])
    assert doc["reexecuted"] is True


def test_detect_shows_sources_of_env_and_preset(tmp_path: Path, dummy_model: Path) -> None:
    """Settings from EPYC_WHISPER_* and a preset are reported with those sources."""
    env = _env(tmp_path, EPYC_WHISPER_BATCH_SIZE="3", EPYC_WHISPER_NUM_MODELS="1")
    res = _run(
        tmp_path, "detect", "--json", "--preset", "epyc-32", "--model", str(dummy_model), env=env
    )
    assert res.returncode == 0, res.stderr
    settings = json.loads(res.stdout)["settings"]
    assert settings["batch_size"] == {"value": 3, "source": "env EPYC_WHISPER_BATCH_SIZE"}
    assert settings["processes"] == {"value": 1, "source": "env EPYC_WHISPER_NUM_MODELS"}
    assert settings["threads"] == {"value": 2, "source": "preset epyc-32"}


def test_detect_human_report(tmp_path: Path, dummy_model: Path) -> None:
    """Plain detect exits 0 with the hardware, the layout and the settings' sources."""
    res = _run(tmp_path, "detect", "--model", str(dummy_model))
    assert res.returncode == 0, res.stderr
    for heading in ("Hardware", "Layout", "Settings and where they came from"):
        assert heading in res.stdout
    assert "OMP_NUM_THREADS" in res.stdout


def test_detect_warns_about_clamps(tmp_path: Path, dummy_model: Path) -> None:
    """A preset bigger than the machine still exits 0 and shows the clamp warning."""
    res = _run(tmp_path, "detect", "--preset", "epyc-128", "--model", str(dummy_model))
    assert res.returncode == 0, res.stderr
    if len(os.sched_getaffinity(0)) < 16:
        assert "warning:" in res.stdout and "clamped" in res.stdout


# --------------------------------------------------------------------------- usage errors


def test_unknown_preset(tmp_path: Path) -> None:
    """--preset nope: exit 2, 'unknown preset' and the presets there are."""
    msg = _usage_error(_run(tmp_path, "detect", "--preset", "nope"))
    assert "unknown preset 'nope' (from --preset)" in msg
    assert "epyc-32" in msg and "epyc-128" in msg and "auto" in msg


def test_invalid_config_file(tmp_path: Path) -> None:
    """--config with invalid TOML: exit 2, naming the file."""
    bad = tmp_path / "bad.toml"
    bad.write_text("batch_size = \n")
    msg = _usage_error(_run(tmp_path, "detect", "--config", str(bad)))
    assert "invalid TOML" in msg and str(bad) in msg


def test_missing_config_file(tmp_path: Path) -> None:
    """--config naming no file: exit 2, naming the path."""
    msg = _usage_error(_run(tmp_path, "detect", "--config", str(tmp_path / "nope.toml")))
    assert "not found" in msg and "nope.toml" in msg


def test_unknown_key_in_config(tmp_path: Path) -> None:
    """An unknown key in --config: exit 2 with a close-match suggestion."""
    cfg = tmp_path / "typo.toml"
    cfg.write_text("num_model = 2\n")
    msg = _usage_error(_run(tmp_path, "detect", "--config", str(cfg)))
    assert "unknown setting 'num_model'" in msg and "did you mean 'num_models'" in msg


@pytest.mark.parametrize("flag", ["--processes", "--workers", "--threads", "--batch-size"])
def test_zero_counts(tmp_path: Path, flag: str) -> None:
    """A count of 0 on the command line: exit 2 naming the setting, value, source, rule."""
    msg = _usage_error(_run(tmp_path, "detect", flag, "0"))
    name = flag.removeprefix("--").replace("-", "_")
    assert f"invalid {name} = 0 (from cli): expected a whole number >= 1" in msg


def test_bad_environment_value(tmp_path: Path) -> None:
    """EPYC_WHISPER_BATCH_SIZE=abc: exit 2 naming the variable and the value."""
    env = _env(tmp_path, EPYC_WHISPER_BATCH_SIZE="abc")
    msg = _usage_error(_run(tmp_path, "detect", env=env))
    assert "EPYC_WHISPER_BATCH_SIZE" in msg and "'abc'" in msg and "whole number" in msg


def test_empty_model(tmp_path: Path) -> None:
    """--model '' is a usage error, not a traceback."""
    msg = _usage_error(_run(tmp_path, "detect", "--model", ""))
    assert "invalid model" in msg


def test_quiet_and_verbose(tmp_path: Path) -> None:
    """--quiet with --verbose: exit 2."""
    msg = _usage_error(_run(tmp_path, "--quiet", "--verbose", "detect"))
    assert "--quiet and --verbose" in msg


def test_compute_type_the_cpu_cannot_run(tmp_path: Path, dummy_model: Path) -> None:
    """transcribe --compute-type float16 on this CPU: exit 2 naming the supported types."""
    import ctranslate2

    supported = sorted(ctranslate2.get_supported_compute_types("cpu"))
    res = _run(
        tmp_path, "transcribe", "x.wav", "--compute-type", "float16", "--model", str(dummy_model)
    )
    if "float16" in supported:
        # This CPU runs float16 in CTranslate2 (e.g. with AVX-512 FP16), so it is no error.
        pytest.skip(f"float16 is supported on this CPU: {supported}")
    msg = _usage_error(res)
    assert "compute_type 'float16'" in msg
    for t in supported:
        assert t in msg


def test_unknown_compute_type(tmp_path: Path) -> None:
    """A compute type CTranslate2 does not have at all: exit 2 listing the choices."""
    msg = _usage_error(_run(tmp_path, "detect", "--compute-type", "int4"))
    assert "compute_type = 'int4' (from cli)" in msg and "int8" in msg


def test_error_is_one_line_in_a_log(tmp_path: Path) -> None:
    """A long error written to a file (no terminal, no COLUMNS) stays on one line."""
    env = _env(tmp_path)
    env.pop("COLUMNS")
    res = _run(tmp_path, "detect", "--preset", "no-such-preset-at-all", env=env)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_unknown_option(tmp_path: Path) -> None:
    """An unknown option: exit 2 with click's message, no traceback."""
    res = _run(tmp_path, "detect", "--bogus")
    assert res.returncode == 2, res.stderr
    assert "No such option" in res.stderr and "Traceback" not in res.stderr


def test_version(tmp_path: Path) -> None:
    """--version prints the version and exits 0."""
    res = _run(tmp_path, "--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"epyc-whisper {__version__}"


def test_exit_code_table() -> None:
    """The documented exit codes: 0 ok, 1 inputs failed, 2 usage, 3 environment."""
    assert [int(c) for c in ExitCode][:4] == [0, 1, 2, 3]
    assert (ExitCode.OK, ExitCode.INPUTS_FAILED, ExitCode.USAGE, ExitCode.ENVIRONMENT) == (
        0,
        1,
        2,
        3,
    )


# --------------------------------------------------------------------------- help and docs

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_commands_exist() -> None:
    """detect and transcribe are commands of the app."""
    assert {"detect", "transcribe"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name: str) -> None:
    """Each command's --help exits 0 and shows a help text of its own."""
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    assert command.help and command.help.strip()
    res = CliRunner().invoke(app, [name, "--help"], catch_exceptions=False)
    assert res.exit_code == 0
    first_line = " ".join(command.help.strip().splitlines()[0].split())
    assert first_line in " ".join(res.output.split())  # Click re-wraps the text
    top = CliRunner().invoke(app, ["--help"], catch_exceptions=False)
    assert name in top.output


def _option_help_params() -> list[Any]:
    out = []
    for name in COMMANDS:
        marks = []
        out.append(pytest.param(name, marks=marks))
    return out


@pytest.mark.parametrize("name", _option_help_params())
def test_every_option_has_help(name: str) -> None:
    """Every option and argument of every command has a help string."""
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    missing = [p.name for p in command.params if not (getattr(p, "help", None) or "").strip()]
    assert missing == []


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_in_the_readme(name: str) -> None:
    """README.md mentions every command as `epyc-whisper NAME`."""
    assert README.is_file(), "README.md is missing"
    assert f"epyc-whisper {name}" in README.read_text(encoding="utf-8")
