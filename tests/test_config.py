"""Tests for epyc_whisper.config: precedence, aliases, presets and the usage errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from epyc_whisper.config import SPECS, list_presets, resolve, user_config_path
from epyc_whisper.errors import ExitCode, UsageError


@pytest.fixture()
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """XDG_CONFIG_HOME in tmp_path, so no real saved layout is read; returns the saved file."""
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    for name in [k for k in os.environ if k.startswith("EPYC_WHISPER_")]:
        monkeypatch.delenv(name)
    path = home / "epyc-whisper" / "config.toml"
    assert user_config_path() == path
    return path


def _env(saved: Path, **variables: str) -> dict[str, str]:
    """An environ whose XDG_CONFIG_HOME holds ``saved`` (resolve reads the environ it is given)."""
    return {"XDG_CONFIG_HOME": str(saved.parents[1]), **variables}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _error(**kw: Any) -> str:
    with pytest.raises(UsageError) as info:
        resolve(**kw)
    assert info.value.exit_code == ExitCode.USAGE
    return str(info.value)


# --------------------------------------------------------------------------- precedence


def test_precedence_each_layer_in_turn(xdg: Path, tmp_path: Path) -> None:
    """CLI > env > --config > preset > saved > detected > default, each named by source()."""
    _write(xdg, "batch_size = 5\n")
    cfg = _write(tmp_path / "mine.toml", "batch_size = 3\n")
    kw: dict[str, Any] = {
        "cli": {"batch_size": 1},
        "environ": _env(xdg, EPYC_WHISPER_BATCH_SIZE="2"),
        "config_file": str(cfg),
        "preset": "epyc-32",  # batch_size 16
        "use_saved": True,
        "detected": {"batch_size": 6},
    }
    # Highest layer first; after each check that layer is taken away.
    steps = [
        ("cli", None, 1, "cli"),
        ("environ", _env(xdg), 2, "env EPYC_WHISPER_BATCH_SIZE"),
        ("config_file", None, 3, f"config {cfg}"),
        ("preset", None, 16, "preset epyc-32"),
        ("use_saved", False, 5, f"saved {xdg}"),
        ("detected", None, 6, "detected"),
        (None, None, 32, "default"),
    ]
    for layer, removed, value, source in steps:
        s = resolve(**kw)
        assert (s.batch_size, s.source("batch_size")) == (value, source)
        if layer is not None:
            kw[layer] = removed


def test_layers_mix_per_setting(xdg: Path, tmp_path: Path) -> None:
    """Each setting takes its own highest layer: one call can draw on every layer."""
    _write(xdg, "beam_size = 3\n")
    cfg = _write(tmp_path / "c.toml", "[transcribe]\nlanguage = 'de'\n")
    s = resolve(
        {"model": "tiny"},
        environ=_env(xdg, EPYC_WHISPER_WORKERS="3"),
        config_file=str(cfg),
        preset="epyc-64",
        detected={"memory_limit": "50%"},
    )
    assert {k: s.source(k) for k in ("model", "workers", "language", "processes")} == {
        "model": "cli",
        "workers": "env EPYC_WHISPER_WORKERS",
        "language": f"config {cfg}",
        "processes": "preset epyc-64",
    }
    assert (s.beam_size, s.source("beam_size")) == (3, f"saved {xdg}")
    assert (s.memory_limit, s.source("memory_limit")) == ("50%", "detected")
    assert (s.task, s.source("task")) == ("transcribe", "default")
    assert (s.model, s.workers, s.language, s.processes) == ("tiny", 3, "de", 8)


def test_cli_none_means_not_given(xdg: Path) -> None:
    """A CLI value of None does not hide the layers below it."""
    s = resolve({"batch_size": None}, environ={"EPYC_WHISPER_BATCH_SIZE": "7"}, use_saved=False)
    assert (s.batch_size, s.source("batch_size")) == (7, "env EPYC_WHISPER_BATCH_SIZE")


def test_saved_layout_skipped_on_request(xdg: Path) -> None:
    """use_saved=False and EPYC_WHISPER_NO_SAVED both keep the saved layout out."""
    _write(xdg, "processes = 3\n")
    assert resolve(environ=_env(xdg)).source("processes") == f"saved {xdg}"
    assert resolve(environ=_env(xdg), use_saved=False).source("processes") == "default"
    no_saved = _env(xdg, EPYC_WHISPER_NO_SAVED="1")
    assert resolve(environ=no_saved).source("processes") == "default"


def test_saved_layout_follows_given_environ(tmp_path: Path, xdg: Path) -> None:
    """The saved layout is looked for under the XDG_CONFIG_HOME of the environ given."""
    _write(xdg, "threads = 2\n")
    other = _write(tmp_path / "other" / "epyc-whisper" / "config.toml", "threads = 3\n")
    s = resolve(environ={"XDG_CONFIG_HOME": str(tmp_path / "other")})
    assert (s.threads, s.source("threads")) == (3, f"saved {other}")
    s = resolve()  # os.environ, where the fixture points XDG_CONFIG_HOME
    assert (s.threads, s.source("threads")) == (2, f"saved {xdg}")


def test_preset_and_config_from_environment(tmp_path: Path, xdg: Path) -> None:
    """EPYC_WHISPER_PRESET and EPYC_WHISPER_CONFIG choose a preset and a file."""
    cfg = _write(tmp_path / "c.toml", "threads = 1\n")
    s = resolve(
        environ={"EPYC_WHISPER_PRESET": "epyc-128", "EPYC_WHISPER_CONFIG": str(cfg)},
        use_saved=False,
    )
    assert s.preset == "epyc-128"
    assert (s.processes, s.source("processes")) == (16, "preset epyc-128")
    assert (s.threads, s.source("threads")) == (1, f"config {cfg}")


def test_every_setting_has_a_value_and_source(xdg: Path) -> None:
    """Every spec resolves, and 'auto' layout values stay None (meaning: derive them)."""
    s = resolve(environ={}, use_saved=False)
    assert set(s.values) == set(SPECS)
    assert all(s.source(k) == "default" for k in SPECS)
    assert (s.processes, s.workers, s.threads) == (None, None, None)
    assert resolve(environ={"EPYC_WHISPER_THREADS": "auto"}, use_saved=False).threads is None


# --------------------------------------------------------------------------- aliases

GUIDE_ALIASES = [
    ("num_models", "processes", 3),
    ("epyc_num_models", "processes", 5),
    ("batch_size", "batch_size", 8),
    ("epyc_batch_size", "batch_size", 9),
    ("workers", "workers", 2),
    ("compute_type", "compute_type", "float32"),
]


@pytest.mark.parametrize(("alias", "name", "value"), GUIDE_ALIASES)
def test_guide_names_in_toml(alias: str, name: str, value: object, tmp_path: Path) -> None:
    """The override names pasted from the guide are accepted in a TOML file."""
    text = f"{alias} = {value!r}\n".replace("'", '"')
    cfg = _write(tmp_path / "guide.toml", text)
    s = resolve(environ={}, config_file=str(cfg), use_saved=False)
    assert (getattr(s, name), s.source(name)) == (value, f"config {cfg}")


@pytest.mark.parametrize(("alias", "name", "value"), GUIDE_ALIASES)
def test_guide_names_in_environment(alias: str, name: str, value: object) -> None:
    """EPYC_WHISPER_<GUIDE NAME> variables map to our settings too."""
    var = "EPYC_WHISPER_" + alias.upper()
    s = resolve(environ={var: str(value)}, use_saved=False)
    assert (getattr(s, name), s.source(name)) == (value, f"env {var}")


def test_alias_and_name_together_is_an_error(tmp_path: Path) -> None:
    """An alias and the setting it names, both in one layer, are refused (no silent winner)."""
    cfg = _write(tmp_path / "both.toml", "num_models = 2\nprocesses = 3\n")
    msg = _error(environ={}, config_file=str(cfg), use_saved=False)
    assert "processes" in msg and "num_models" in msg and "twice" in msg
    env = {"EPYC_WHISPER_EPYC_BATCH_SIZE": "4", "EPYC_WHISPER_BATCH_SIZE": "5"}
    msg = _error(environ=env, use_saved=False)
    assert "EPYC_WHISPER_EPYC_BATCH_SIZE" in msg and "EPYC_WHISPER_BATCH_SIZE" in msg


# --------------------------------------------------------------------------- usage errors


def test_unknown_key_in_toml_suggests(tmp_path: Path) -> None:
    """An unknown key names itself and the file, and suggests the close match."""
    cfg = _write(tmp_path / "typo.toml", "bach_size = 4\n")
    msg = _error(environ={}, config_file=str(cfg), use_saved=False)
    assert "unknown setting 'bach_size'" in msg
    assert str(cfg) in msg
    assert "did you mean 'batch_size'" in msg


def test_unknown_env_variable_suggests() -> None:
    """An unknown EPYC_WHISPER_* variable is named, with a suggestion."""
    msg = _error(environ={"EPYC_WHISPER_THREDS": "2"}, use_saved=False)
    assert "EPYC_WHISPER_THREDS" in msg
    assert "did you mean 'threads'" in msg


def test_unknown_preset_lists_presets() -> None:
    """An unknown preset names itself, its source and every preset there is."""
    msg = _error(environ={}, preset="epyc-63", use_saved=False)
    assert "unknown preset 'epyc-63' (from --preset)" in msg
    for name in ("auto", "epyc-32", "epyc-64", "epyc-128"):
        assert name in msg
    assert set(list_presets()) >= {"auto", "epyc-32", "epyc-64", "epyc-128"}


def test_unknown_preset_from_environment_says_so() -> None:
    """A preset chosen by EPYC_WHISPER_PRESET is blamed on the variable, not on --preset."""
    msg = _error(environ={"EPYC_WHISPER_PRESET": "nope"}, use_saved=False)
    assert "unknown preset 'nope' (from EPYC_WHISPER_PRESET)" in msg


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    """Invalid TOML is a usage error that names the file."""
    cfg = _write(tmp_path / "bad.toml", "batch_size = \n")
    msg = _error(environ={}, config_file=str(cfg), use_saved=False)
    assert "invalid TOML" in msg and str(cfg) in msg


def test_unreadable_config_names_the_file(tmp_path: Path) -> None:
    """A missing file, a folder and non-UTF-8 bytes are usage errors naming the path."""
    missing = tmp_path / "missing.toml"
    assert "file not found" in _error(environ={}, config_file=str(missing), use_saved=False)
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    msg = _error(environ={}, config_file=str(folder), use_saved=False)
    assert "cannot read" in msg and str(folder) in msg
    binary = tmp_path / "latin1.toml"
    binary.write_bytes(b"language = '\xe9'\n")
    msg = _error(environ={}, config_file=str(binary), use_saved=False)
    assert str(binary) in msg


def test_invalid_saved_layout_names_the_file(xdg: Path) -> None:
    """A broken saved layout is reported with its path, not ignored."""
    _write(xdg, "processes = [\n")
    msg = _error(environ=_env(xdg))
    assert "saved layout" in msg and str(xdg) in msg


@pytest.mark.parametrize("name", ["processes", "workers", "threads", "batch_size", "beam_size"])
@pytest.mark.parametrize("bad", [0, -2])
def test_counts_below_one_from_cli(name: str, bad: int) -> None:
    """Zero and negative counts name the setting, the value, 'cli' and what is allowed."""
    msg = _error(cli={name: bad}, environ={}, use_saved=False)
    assert msg == f"invalid {name} = {bad!r} (from cli): expected a whole number >= 1"


def test_counts_below_one_from_env_and_file(tmp_path: Path) -> None:
    """The source in the message is the variable or the file the bad count came from."""
    msg = _error(environ={"EPYC_WHISPER_WORKERS": "-1"}, use_saved=False)
    assert "workers = '-1' (from env EPYC_WHISPER_WORKERS)" in msg
    assert "whole number >= 1" in msg
    cfg = _write(tmp_path / "zero.toml", "num_models = 0\n")
    msg = _error(environ={}, config_file=str(cfg), use_saved=False)
    assert f"processes = 0 (from config {cfg})" in msg


@pytest.mark.parametrize("bad", ["abc", "2.5", "true", ""])
def test_non_numbers_are_refused(bad: str) -> None:
    """Text, fractions and booleans are not counts."""
    msg = _error(environ={"EPYC_WHISPER_BATCH_SIZE": bad}, use_saved=False)
    assert "EPYC_WHISPER_BATCH_SIZE" in msg and "whole number" in msg


def test_bool_in_toml_is_not_a_count(tmp_path: Path) -> None:
    """processes = true is refused, although bool is an int in Python."""
    cfg = _write(tmp_path / "b.toml", "processes = true\n")
    assert "whole number" in _error(environ={}, config_file=str(cfg), use_saved=False)


def test_bad_choices_list_what_is_allowed() -> None:
    """Compute type, memory limit and formats say what is allowed."""
    msg = _error(cli={"compute_type": "int4"}, environ={}, use_saved=False)
    assert "compute_type = 'int4'" in msg and "int8" in msg and "float32" in msg
    msg = _error(cli={"memory_limit": "0%"}, environ={}, use_saved=False)
    assert "memory_limit" in msg and "64G" in msg
    msg = _error(cli={"formats": "doc"}, environ={}, use_saved=False)
    assert (
        msg
        == 'unknown output format "doc" (from --format): choose from txt, vtt, srt, tsv, json, all'
    )
    msg = _error(environ={"EPYC_WHISPER_FORMATS": "txt,doc"}, use_saved=False)
    assert msg.startswith('unknown output format "doc" (from env EPYC_WHISPER_FORMATS): choose')


@pytest.mark.parametrize("name", ["model", "output_dir"])
def test_empty_model_or_output_is_refused(name: str) -> None:
    """An empty model or output folder is a usage error, not a later TypeError."""
    msg = _error(environ={f"EPYC_WHISPER_{name.upper()}": " "}, use_saved=False)
    assert f"invalid {name}" in msg and "non-empty" in msg


def test_values_are_normalised() -> None:
    """Memory sizes are upper-cased, formats expanded and temperatures canonical."""
    s = resolve(
        {"memory_limit": "64g", "formats": "SRT,txt", "temperature": "0, 0.50"},
        environ={},
        use_saved=False,
    )
    assert (s.memory_limit, s.formats, s.temperature) == ("64G", "srt,txt", "0,0.5")
    assert resolve({"formats": "all"}, environ={}, use_saved=False).formats == (
        "txt,vtt,srt,tsv,json"
    )


# --------------------------------------------------------------------------- presets

GUIDE_TABLE = {
    # preset: (model instances, files per batch, threads per instance)
    "epyc-32": (4, 16, 8),
    "epyc-64": (8, 32, 16),
    "epyc-128": (16, 64, 32),
}


@pytest.mark.parametrize("preset", sorted(GUIDE_TABLE))
def test_presets_reproduce_the_guide(preset: str) -> None:
    """Each EPYC preset loads with the guide's instances, batch and threads per instance."""
    instances, batch, threads = GUIDE_TABLE[preset]
    s = resolve(environ={}, preset=preset, use_saved=False)
    assert s.preset == preset
    assert (s.processes, s.batch_size) == (instances, batch)
    assert s.workers * s.threads == threads
    assert s.compute_type == "int8"
    for name in ("processes", "workers", "threads", "batch_size", "compute_type"):
        assert s.source(name) == f"preset {preset}"


def test_auto_preset_leaves_layout_to_detection() -> None:
    """The default preset 'auto' sets no layout value: detection decides."""
    s = resolve(environ={}, use_saved=False)
    assert s.preset == "auto"
    assert (s.processes, s.workers, s.threads) == (None, None, None)
    s = resolve(environ={}, use_saved=False, detected={"processes": 3})
    assert (s.processes, s.source("processes")) == (3, "detected")


def test_with_values_keeps_the_rest() -> None:
    """Settings.with_values replaces only what it is given, with the new source."""
    s = resolve({"model": "tiny"}, environ={}, use_saved=False)
    t = s.with_values("bench", threads=4)
    assert (t.threads, t.source("threads")) == (4, "bench")
    assert (t.model, t.source("model")) == ("tiny", "cli")
    assert s.threads is None
    with pytest.raises(AttributeError):
        _ = s.no_such_setting
