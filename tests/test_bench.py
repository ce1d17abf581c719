"""`epyc-whisper bench`: both sides measured for real, side by side, with WER; --save."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from epyc_whisper import bench as b
from epyc_whisper.cli import app
from tests.conftest import copy_samples
from tests.conftest import run_cli as run


@pytest.mark.slow
def test_bench_json_side_by_side_and_save(
    tmp_path: Path, model_path: Path, clean_env: dict[str, str]
) -> None:
    """Default workload: every mode is measured (wall, RTFx, CPU, RSS, loads, WER, ratio);
    --save writes the best layout, and detect then shows it as 'saved'."""
    r = run(
        [
            "bench",
            "--model",
            str(model_path),
            "--seconds",
            "12",
            "--json",
            "--save",
            "--plot",
            str(tmp_path / "p.png"),
        ],
        tmp_path,
        clean_env,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    rows = {d["mode"]: d for d in doc["rows"]}
    assert set(rows) == {"reload", "baseline", "unpacked", "optimized"}
    for d in rows.values():
        for key in (
            "wall_min",
            "rtfx",
            "files_per_s",
            "cpu_util",
            "peak_rss_mib",
            "loads",
            "load_seconds",
            "ratio",
            "wer",
        ):
            assert d[key] is not None, (d["mode"], key)
        assert d["wer"] < 40
    assert rows["baseline"]["ratio"] == 1.0 and rows["baseline"]["loads"] == 1
    assert rows["reload"]["loads"] == doc["files"] > 1
    assert rows["optimized"]["loads"] == 1  # one process on this machine, one load
    for key in ("faster_whisper", "ctranslate2", "python", "cpu", "thread_env", "settings"):
        assert key in doc["meta"]
    assert (tmp_path / "p.png").stat().st_size > 1000
    saved = Path(clean_env["XDG_CONFIG_HOME"]) / "epyc-whisper" / "config.toml"
    assert "processes" in saved.read_text()
    d = run(["detect", "--json", "--model", str(model_path)], tmp_path, clean_env)
    settings = json.loads(d.stdout)["settings"]
    assert settings["processes"]["source"] == f"saved {saved}"


def test_bench_markdown_own_files_and_refs(
    tmp_path: Path, model_path: Path, clean_env: dict[str, str]
) -> None:
    """Own files with a --refs folder: a Markdown table with a WER column."""
    clips = copy_samples(tmp_path / "c", ["ast_en_digits__19.wav", "ast_en_vm-tocancel.wav"])
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "ast_en_digits__19.txt").write_text("nineteen")
    (refs / "ast_en_vm-tocancel.txt").write_text("or pound to cancel")
    r = run(
        [
            "bench",
            *map(str, clips),
            "--model",
            str(model_path),
            "--refs",
            str(refs),
            "--modes",
            "baseline,optimized",
            "--markdown",
        ],
        tmp_path,
        clean_env,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[2].startswith("| mode |") and "WER %" in lines[2]
    assert any(line.startswith("| optimized |") for line in lines)
    assert any(line.startswith("| baseline | ") for line in lines)


def test_bench_bad_input(tmp_path: Path, model_path: Path, clean_env: dict[str, str]) -> None:
    """No media, refs matching nothing, bad modes: exit 2 with a clear message."""
    (tmp_path / "empty").mkdir()
    r = run(["bench", str(tmp_path / "empty"), "--model", str(model_path)], tmp_path, clean_env)
    assert r.returncode == 2 and "no media files" in r.stderr
    clip = copy_samples(tmp_path / "c", ["ast_en_digits__19.wav"])[0]
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "other.txt").write_text("x")
    r = run(
        ["bench", str(clip), "--model", str(model_path), "--refs", str(tmp_path / "refs")],
        tmp_path,
        clean_env,
    )
    assert r.returncode == 2 and "match none" in r.stderr
    r = run(["bench", "--modes", "fast", "--model", str(model_path)], tmp_path, clean_env)
    assert r.returncode == 2 and "--modes" in r.stderr
    r = run(
        ["bench", str(clip), "--model", str(model_path), "--sweep", "--max-minutes", "0.1"],
        tmp_path,
        clean_env,
    )
    assert r.returncode == 2 and "too short for even one sweep cell" in r.stderr


def test_plot_without_matplotlib_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, model_path: Path
) -> None:
    """--plot with matplotlib missing stops before measuring, naming the extra to install."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    from epyc_whisper.errors import EnvironmentProblem

    with pytest.raises(EnvironmentProblem, match=r"epyc-whisper\[plot\]"):
        CliRunner().invoke(
            app, ["bench", "--model", str(model_path), "--plot", "x.png"], catch_exceptions=False
        )


def test_wer_normalisation_and_silence() -> None:
    """Numbers, case and punctuation do not count; words on silence count as insertions."""
    refs = {Path("a"): "Nineteen.", Path("b"): "or pound to cancel", Path("s"): ""}
    assert b.wer({Path("a"): " 19", Path("b"): "Or pound to cancel!", Path("s"): ""}, refs) == 0
    assert b.wer(
        {Path("a"): "19", Path("b"): "or pound to cancel", Path("s"): "you"}, refs
    ) == pytest.approx(100 * 1 / 5)


def test_best_respects_wer_tolerance() -> None:
    """--save never picks a layout whose WER is more than 0.5 points worse than baseline."""

    def row(name: str, kind: str, wall: float, w: float) -> b.Row:
        r = b.Row(b.Mode(name, kind, layout={"processes": 1}))
        r.samples.append(b.Sample(wall, wall, 1, 1, 0.1, 100.0, {}))
        r.wer = w
        return r

    rep = b.Report(
        [
            row("baseline", "baseline", 10, 5.0),
            row("fast", "cell", 2, 6.0),
            row("good", "cell", 4, 5.4),
        ],
        10,
        2,
        100.0,
        {},
    )
    assert rep.best()["mode"] == "good"
