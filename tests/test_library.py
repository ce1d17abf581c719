"""The library under the CLI: a run from Python without the CLI, the run settings that
became settings (env and config-file forms), the segments leaf module, the error family."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from epyc_whisper.config import resolve
from epyc_whisper.errors import EpycWhisperError, ExitCode, UsageError
from tests.conftest import PY, SAMPLES, copy_samples, run_cli, speech_text
from tests.media import make_video

CLIP = "ast_en_agent-incorrect.wav"


# --------------------------------------------------------------------------- run settings
def test_run_settings_from_env_and_config_file(tmp_path: Path) -> None:
    """The former flag-only run options resolve from EPYC_WHISPER_* and a config file,
    each value normalised and named by its source."""
    cfg = tmp_path / "run.toml"
    cfg.write_text('max_worker_rss = "4g"\nfile_timeout = 30\nskip_existing = true\n')
    environ = {
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "EPYC_WHISPER_AUDIO_TRACK": "1",
        "EPYC_WHISPER_MAX_FILES_PER_WORKER": "200",
        "EPYC_WHISPER_WAIT": "60",
    }
    s = resolve(environ=environ, config_file=str(cfg))
    assert (s.audio_track, s.max_files_per_worker, s.wait) == (1, 200, 60.0)
    assert s.source("audio_track") == "env EPYC_WHISPER_AUDIO_TRACK"
    assert (s.max_worker_rss, s.file_timeout, s.skip_existing) == ("4G", 30.0, True)
    assert s.source("max_worker_rss") == f"config {cfg}"
    d = resolve(environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert (d.overwrite, d.skip_existing, d.wait, d.audio_track) == (False, False, 0.0, 0)
    assert (d.file_timeout, d.max_files_per_worker, d.max_worker_rss) == (None, 0, None)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("EPYC_WHISPER_AUDIO_TRACK", "-1", "a whole number >= 0"),
        ("EPYC_WHISPER_FILE_TIMEOUT", "0", "a number > 0, or none"),
        ("EPYC_WHISPER_MAX_WORKER_RSS", "lots", "a size like 4G or 512M, or none"),
        ("EPYC_WHISPER_WAIT", "-5", "a number >= 0"),
        ("EPYC_WHISPER_OVERWRITE", "maybe", "true or false"),
    ],
)
def test_bad_run_settings_name_their_source(variable: str, value: str, expected: str) -> None:
    """A bad run setting from the environment is one usage error naming it and its source."""
    with pytest.raises(UsageError) as info:
        resolve(environ={variable: value}, use_saved=False)
    assert f"(from env {variable}): expected {expected}" in str(info.value)


def test_overwrite_and_skip_existing_conflict_says_where_each_came_from() -> None:
    """--overwrite with skip_existing from anywhere is refused, naming both sources."""
    with pytest.raises(UsageError, match="^--overwrite and --skip-existing cannot be used"):
        resolve({"overwrite": True, "skip_existing": True}, environ={}, use_saved=False)
    with pytest.raises(UsageError) as info:
        resolve({"skip_existing": True}, environ={"EPYC_WHISPER_OVERWRITE": "1"}, use_saved=False)
    assert str(info.value).startswith(
        "env EPYC_WHISPER_OVERWRITE and --skip-existing cannot be used together"
    )


def test_detect_shows_run_settings_and_their_sources(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    """detect --json lists the run settings with the variable or file each came from."""
    cfg = tmp_path / "run.toml"
    cfg.write_text("max_files_per_worker = 50\n")
    env = clean_env | {"EPYC_WHISPER_FILE_TIMEOUT": "45"}
    r = run_cli(["detect", "--json", "--no-reexec", "--config", str(cfg)], tmp_path, env)
    assert r.returncode == 0, r.stderr
    settings = json.loads(r.stdout)["settings"]
    assert settings["file_timeout"] == {"value": 45.0, "source": "env EPYC_WHISPER_FILE_TIMEOUT"}
    assert settings["max_files_per_worker"] == {"value": 50, "source": f"config {cfg}"}
    assert settings["overwrite"] == {"value": False, "source": "default"}


@pytest.mark.slow
def test_audio_track_from_config_and_overwrite_from_env_reach_the_run(
    tmp_path: Path, model_path: Path, clean_env: dict[str, str]
) -> None:
    """audio_track in a --config file picks a video's second track, as the flag does;
    EPYC_WHISPER_OVERWRITE=1 redoes a finished file, as --overwrite does."""
    d = tmp_path / "in"
    d.mkdir()
    make_video(SAMPLES / CLIP, d / "two.mp4", audio_tracks=2)
    cfg = tmp_path / "run.toml"
    cfg.write_text("audio_track = 1\n")
    args = ["transcribe", "in", "--model", str(model_path), "-o", "out", "-f", "json"]
    args += ["--jsonl", "--config", str(cfg)]
    first = run_cli(args, tmp_path, clean_env)
    assert first.returncode == 0, first.stderr
    doc = json.loads((tmp_path / "out" / "two.json").read_text())
    assert doc["audio_track"] == 1 and "login incorrect" not in speech_text(doc["text"])
    again = run_cli(args, tmp_path, clean_env)
    assert [json.loads(x)["status"] for x in again.stdout.splitlines()] == ["skipped"]
    redo = run_cli(args, tmp_path, clean_env | {"EPYC_WHISPER_OVERWRITE": "1"})
    assert redo.returncode == 0, redo.stderr
    assert [json.loads(x)["status"] for x in redo.stdout.splitlines()] == ["done"]


def test_every_setting_is_a_transcribe_flag() -> None:
    """transcribe has a parameter for every setting (it passes each parameter named like a
    setting to config.resolve), so no setting is reachable only by env or file."""
    import inspect

    from epyc_whisper import cli
    from epyc_whisper.config import SPECS

    assert set(SPECS) <= set(inspect.signature(cli.transcribe).parameters)


def test_readme_configuration_names_every_setting() -> None:
    """README's Configuration section lists every setting of config.SPECS by name."""
    from epyc_whisper.config import SPECS

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Configuration") : text.index("Precedence is resolved")]
    assert [k for k in SPECS if f"`{k}`" not in section] == []


# --------------------------------------------------------------------------- a run from Python
def test_a_run_from_python_without_the_cli(tmp_path: Path, model_path: Path) -> None:
    """prepare + open_job + Job.run transcribe files from Python as the CLI does: real
    workers, transcripts written, each input reported once, the summary written."""
    from epyc_whisper.job import FileRecord, open_job
    from epyc_whisper.prepare import prepare

    clips = copy_samples(tmp_path / "in", [CLIP, "ast_en_vm-tocancel.wav"])
    (tmp_path / "in" / "notes.mp3").write_text("not audio\n")
    given = {"model": str(model_path), "processes": 1, "workers": 1, "threads": 1}
    given |= {"output_dir": str(tmp_path / "out"), "formats": "txt"}
    prep = prepare(given, environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert prep.settings.source("processes") == "cli" and len(prep.layout.processes) == 1
    records: list[FileRecord] = []
    opened = open_job(prep, [str(tmp_path / "in")], on_record=records.append)
    assert opened is not None
    job, inputs, skipped = opened
    state = job.run(inputs, skipped)
    assert (state.done, state.failed) == (2, 1)
    assert sorted(Path(r.path).name for r in records) == sorted(
        [c.name for c in clips] + ["notes.mp3"]
    )
    text = (tmp_path / "out" / f"{Path(CLIP).stem}.txt").read_text()
    assert "login incorrect" in speech_text(text)
    job.write_summary(tmp_path / "summary.json")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["done"] == 2 and summary["model"] == str(model_path)
    assert open_job(prep, [], retry_failed=True) is not None  # notes.mp3 is listed


def test_open_job_refuses_what_the_cli_refuses(tmp_path: Path, model_path: Path) -> None:
    """No inputs, a bad --ext, or only missing paths are usage errors from the library,
    and retrying with no failures listed is None (nothing to do), not an error."""
    from epyc_whisper.job import open_job
    from epyc_whisper.prepare import prepare

    given = {"model": str(model_path), "output_dir": str(tmp_path / "out")}
    prep = prepare(given, environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    with pytest.raises(UsageError, match="no input files"):
        open_job(prep, [])
    with pytest.raises(UsageError, match="--ext"):
        open_job(prep, [str(tmp_path)], extensions="tar.gz")
    with pytest.raises(UsageError, match="no such file or folder: .*nowhere.wav"):
        open_job(prep, [str(tmp_path / "nowhere.wav")])
    assert open_job(prep, [], retry_failed=True) is None


def test_bench_modes_run_the_planned_layout() -> None:
    """bench's transcribe modes carry the planned layout as flags (unpacked adds
    --no-pack), sweep cells their own, and --modes accepts only known modes."""
    from epyc_whisper import bench
    from epyc_whisper.hardware import detect
    from epyc_whisper.layout import plan

    layout = plan(
        detect(), resolve({"processes": 1, "workers": 2, "threads": 1}, environ={}, use_saved=False)
    )
    modes = {m.name: m for m in bench.compare_modes(layout, list(bench.MODES))}
    want = ["--processes", "1", "--workers", "2", "--threads", "1"]
    assert modes["optimized"].flags == want + ["--batch-size", str(layout.batch_size)]
    assert modes["unpacked"].flags == modes["optimized"].flags + ["--no-pack"]
    assert modes["unpacked"].kind == "optimized" and modes["unpacked"].layout["pack"] is False
    assert modes["reload"].flags == [] and modes["baseline"].kind == "baseline"
    cell = bench._cell(2, 1, 1, "float32")
    assert cell.flags == ["--processes", "2", "--workers", "1", "--threads", "1"] + [
        "--compute-type",
        "float32",
    ]
    assert bench.parse_modes(" baseline,optimized ") == ["baseline", "optimized"]
    with pytest.raises(UsageError, match="choose from reload, baseline, unpacked, optimized"):
        bench.parse_modes("baseline,fast")


# --------------------------------------------------------------------------- module shape
def _imported_after(module: str) -> list[str]:
    code = (
        f"import json, sys, {module}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('epyc_whisper'))))"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout
    return list(json.loads(out))


def test_segments_is_a_leaf_and_window_does_not_import_engine() -> None:
    """segments.py imports nothing of ours, and window.py no longer imports engine.py
    (the cycle engine -> window -> engine is gone)."""
    assert _imported_after("epyc_whisper.segments") == ["epyc_whisper", "epyc_whisper.segments"]
    assert "epyc_whisper.engine" not in _imported_after("epyc_whisper.window")


def test_every_segment_builder_gives_one_shape() -> None:
    """A faster-whisper Segment, a window's segment and a packed clip's segment all have
    SEGMENT_KEYS in that order (packing adds only its own foreign_words)."""
    from faster_whisper.transcribe import Segment, Word

    from epyc_whisper import packing, segments
    from epyc_whisper.writers import SEGMENT_KEYS

    assert segments.SEGMENT_KEYS is SEGMENT_KEYS
    fw = Segment(1, 0, 0.0, 1.0, " hi", [50], -0.1, 1.0, 0.01, [Word(0.0, 1.0, " hi", 0.9)], 0.0)
    d = segments.segment_dict(fw)
    assert list(d) == list(SEGMENT_KEYS) and d["words"] == [segments.word(0.0, 1.0, " hi", 0.9)]
    assert list(segments.segment(0.0, 1.0, " hi")) == list(SEGMENT_KEYS)
    win = packing.Window([packing.Slot("a", 0.0, 3.0)])
    (clip,) = packing.attribute([d], win)
    assert list(clip[0]) == ["foreign_words", *SEGMENT_KEYS]
    assert list(segments.only_segment_keys(clip[0])) == list(SEGMENT_KEYS)


def test_media_error_is_one_of_the_family() -> None:
    """audio.MediaError is errors.MediaError (exit code 1, inputs failed), and the worker
    reports it, and any subclass, by its message alone; other errors keep their type."""
    from epyc_whisper import audio, engine, errors

    assert audio.MediaError is errors.MediaError
    assert issubclass(errors.MediaError, EpycWhisperError)
    assert errors.MediaError.exit_code == ExitCode.INPUTS_FAILED

    class Truncated(errors.MediaError):
        pass

    assert engine._describe(Truncated("empty file (0 bytes)\nmore")) == "empty file (0 bytes)"
    assert engine._describe(ValueError("bad")) == "ValueError: bad"


def test_decode_error_of_a_real_file_is_a_media_error(tmp_path: Path) -> None:
    """A file that is not media raises MediaError from audio.decode, with a one-line reason."""
    from epyc_whisper import audio

    bad = tmp_path / "x.wav"
    bad.write_bytes(b"")
    with pytest.raises(EpycWhisperError, match="empty file"):
        audio.decode(str(bad))
