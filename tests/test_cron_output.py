"""Issue 18, cron-grade behaviour: what a run without a terminal prints (-q, the summary,
progress figures), bench's output when redirected, and usage messages that read as one
sentence. The real CLI, the real tiny.en model, real clips."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLES, copy_samples
from tests.conftest import run_cli as run

CLIP = "ast_en_digits__19.wav"  # 1.2 s, "19": the cheapest real clip


# --------------------------------------------------------------------------- messages
def test_unknown_format_is_one_sentence(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """-f docx: one sentence naming the format, the flag it came from and the choices
    (was "invalid formats = 'docx' (from cli): expected unknown output format ...")."""
    copy_samples(tmp_path, [CLIP])
    r = run(["transcribe", CLIP, "--model", "bundled", "-f", "docx"], tmp_path, clean_env)
    assert r.returncode == 2
    assert r.stderr == (
        'epyc-whisper: error: unknown output format "docx" (from --format): '
        "choose from txt, vtt, srt, tsv, json, all\n"
    )


def test_memory_limit_without_room_is_a_usage_error(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    """--memory-limit 10 (bytes) leaves no room for one model copy: exit 2 before any
    worker starts, naming the limit, what it came to in MiB and what one copy needs
    (was a warning about "a memory budget of 0 MiB", then a run, exit 0)."""
    copy_samples(tmp_path, [CLIP])
    args = ["transcribe", CLIP, "--model", "bundled", "-o", "out", "--memory-limit", "10"]
    r = run(args, tmp_path, clean_env | {"COLUMNS": "400"})
    assert r.returncode == 2, r.stderr
    assert re.fullmatch(
        r"epyc-whisper: error: --memory-limit 10 comes to 0 MiB, less than one model copy "
        r"needs: about (\d+) MiB \(\d+ MiB of weights, (estimated|measured), 180 MiB for its "
        r"process and \d+ MiB for one CT2 worker\); give at least \1M, or leave it unset "
        r"\(80% of available memory\)\n",
        r.stderr,
    ), r.stderr
    assert not (tmp_path / "out").exists()  # nothing started
    env = clean_env | {"EPYC_WHISPER_MEMORY_LIMIT": "1K"}
    r = run(["detect", "--model", "bundled"], tmp_path, env)
    assert r.returncode == 2
    assert "memory_limit = '1K' (from env EPYC_WHISPER_MEMORY_LIMIT) comes to 0 MiB" in r.stderr


# --------------------------------------------------------------------------- summary, progress
BOX = re.compile("[\u2500-\u257f]")  # Unicode box drawing


def _ct2_workers(tmp_path: Path, env: dict[str, str]) -> int:
    """The CT2 workers `detect` plans: the sum over its processes."""
    r = run(["detect", "--json", "--model", "bundled"], tmp_path, env)
    assert r.returncode == 0, r.stderr
    return sum(p["workers"] for p in json.loads(r.stdout)["layout"]["processes"])


def test_quiet_prints_one_line_and_nothing_to_do(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """-q (a cron line): stderr is the one-line summary, no box; a rerun with nothing to
    do says so in one line, with or without -q (was 12 lines of box, and a second run's
    box said RTFx 0.0, peak memory 0 MiB, hit rate 0.0%)."""
    copy_samples(tmp_path / "c", [CLIP, "ast_en_vm-tocancel.wav"])
    args = ["transcribe", "c", "--model", "bundled", "-o", "out", "-f", "txt"]
    r = run(["-q", *args], tmp_path, clean_env)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(
        r"epyc-whisper summary: 2 done, 0 skipped, 0 failed; \d+\.\d s of audio in "
        r"\d+\.\d s, RTFx \d+\.\d, peak memory \d+ MiB; transcripts in "
        + re.escape(str(tmp_path / "out"))
        + r"\n",
        r.stderr,
    ), r.stderr
    for extra in (["-q"], []):
        again = run([*extra, *args], tmp_path, clean_env)
        assert again.returncode == 0, again.stderr
        assert again.stderr == "epyc-whisper: nothing to do: 2 already done\n", extra


def test_progress_and_summary_without_a_terminal(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """Without a terminal (a log): progress lines tell the truth from the first one (CPU
    is '-' or a real figure, never psutil's meaningless first 0%; CT2 workers counted as
    `detect` counts them, not processes), and the summary is `key: value` lines with no
    box-drawing characters."""
    names = sorted(p.name for p in SAMPLES.glob("*.wav")) + sorted(
        p.name for p in SAMPLES.glob("*.flac")
    )
    for i in range(2):  # distinct copies: 4-15 s of work on 2 cores, several lines
        copy_samples(tmp_path / "c" / str(i), names)
    want = _ct2_workers(tmp_path, clean_env)
    # A line every 0.5 s, not every 5 s: a fast machine did this work in 4.4 s, and the
    # default interval then printed no line at all.
    args = ["transcribe", "c", "--model", "bundled", "-o", "out", "-f", "txt"]
    r = run([*args, "--progress-every", "0.5"], tmp_path, clean_env)
    assert r.returncode == 0, r.stderr
    assert not BOX.search(r.stderr), r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("epyc-whisper: ")]
    assert lines, r.stderr
    assert all(re.search(r", CPU (-|\d+%),", x) for x in lines), lines
    assert ", CPU 0%," not in lines[0]
    workers = {int(m.group(1)) for x in lines if (m := re.search(r"CT2 workers (\d+)", x))}
    assert workers <= {0, want} and want in workers, lines  # 0: before the model is ready
    assert "\nepyc-whisper summary\ndone: 26\nskipped: 0\nfailed: 0\n" in r.stderr
    assert re.search(r"\nRTFx: \d+\.\d \(audio seconds per wall second\)\n", r.stderr)
    bad = run([*args, "--progress-every", "0"], tmp_path, clean_env)
    assert bad.returncode == 2 and "--progress-every 0: expected" in bad.stderr, bad.stderr


def test_terminal_gets_the_live_view_and_the_box(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """On a terminal (Rich told so by TTY_COMPATIBLE/TTY_INTERACTIVE): the live view counts
    CT2 workers as `detect` does (it said 'workers 1', the number of processes, where
    detect said 2 CT2 workers), and the summary is the box-drawn table."""
    copy_samples(tmp_path / "c", [CLIP, "ast_en_vm-tocancel.wav"])
    want = _ct2_workers(tmp_path, clean_env)
    env = clean_env | {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "NO_COLOR": "1"}
    r = run(["transcribe", "c", "--model", "bundled", "-o", "out", "-f", "txt"], tmp_path, env)
    assert r.returncode == 0, r.stderr
    assert f"CT2 workers {want}, memory" in r.stderr
    assert "epyc-whisper summary" in r.stderr and BOX.search(r.stderr)


def test_eta_counts_the_pieces_of_split_files() -> None:
    """The ETA counts a split file by its pieces: 12 short files done in 20 s and a 13th
    split into 35 pieces, none done yet, is 35 units of work left at 0.6 a second, about
    a minute (it read 0:00:00: one file left at 0.6 files a second). Pure arithmetic on
    the job's counters, the CLI's own progress code."""
    import time

    from epyc_whisper.job import JobState
    from epyc_whisper.progress import plain_line, snapshot, units

    state = JobState(total=13, done=12, pieces_total=35, split_files=1)
    state.started = time.monotonic() - 20
    assert units(state) == (12, 47)
    assert 55 < snapshot(state)["eta"] < 60
    assert "13 files, pieces 0/35," in plain_line(state).replace("12/", "")
    state.pieces_done, state.done, state.split_closed = 35, 13, 1  # the split file is done
    assert units(state) == (47, 47) and snapshot(state)["eta"] == 0


# --------------------------------------------------------------------------- bench
def test_bench_redirected_has_every_column_and_time_left(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    """`bench > file`: the table keeps all 11 columns at full width (it was cut to 80
    columns, only RTFx and the ratio readable), and while a mode runs stderr says how
    many files it has finished and about how long it has left (it said only
    'run 1/1: reload' for the whole of the first mode)."""
    names = [CLIP, "ast_en_vm-tocancel.wav", "ast_en_agent-incorrect.wav"]
    names += ["ast_en_vm-savemessage.wav", "ast_en_at-tone-time-exactly.wav"]
    clips = copy_samples(tmp_path / "c", names)
    args = ["bench", *map(str, clips), "--model", "bundled", "--modes", "reload,optimized"]
    r = run(args, tmp_path, clean_env)
    assert r.returncode == 0, r.stderr
    head = next(x for x in r.stdout.splitlines() if "mode" in x and "WER" in x)
    for col in ("wall s (min)", "median", "RTFx", "files/s", "CPU", "peak RSS MiB"):
        assert col in head, head
    for col in ("loads", "load s", "x baseline", "WER %"):
        assert col in head, head
    rows = [x for x in r.stdout.splitlines() if x.startswith("│ reload")]
    assert len(rows) == 1 and len(rows[0].split("│")) == 13, r.stdout
    assert re.search(
        r"^run 1/2: reload: [1-4]/5 files, 0:00:\d\d so far, about 0:\d\d:\d\d left$",
        r.stderr,
        re.M,
    ), r.stderr
    assert "run 2/2: optimized" in r.stderr


# --------------------------------------------------------------------------- make demo
ROOT = Path(__file__).resolve().parent.parent


def _checkout_copy(dest: Path) -> Path:
    """The Makefile, pyproject.toml (its mtime kept: the install stamp stays newer), the
    package with its samples and configs/, in a folder of their own, so make writes
    nothing in the repo (the re-exec's ``python -m`` runs the copy: the same code)."""
    dest.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("epyc_whisper", "configs"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _make(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_install_is_quiet_and_shows_pip_log_on_failure(tmp_path: Path) -> None:
    """`make install` prints one line: pip's own output (index notes, the build
    backend's warnings) goes to VENV/install.log, printed only when pip fails. The
    venv's python here is made up: a shell script that prints pip-like noise, and
    fails when asked to."""
    repo = _checkout_copy(tmp_path / "repo")
    venv = tmp_path / "v"
    (venv / "bin").mkdir(parents=True)
    stub = venv / "bin" / "python"
    stub.write_text(
        '#!/bin/sh\necho "WARNING: Location ... is ignored ($*)"\n'
        'echo "BuildBackendWarning: Editable installation." >&2\n'
        f'[ -e "{tmp_path}/fail" ] && exit 1\nexit 0\n'
    )
    stub.chmod(0o755)
    r = _make(["install", f"VENV={venv}"], repo)
    assert r.returncode == 0, r.stdout + r.stderr
    said = [x for x in (r.stdout + r.stderr).splitlines() if not x.startswith("note: ffmpeg")]
    assert said == [f"installing epyc-whisper[test] into {venv} (pip's log: {venv}/install.log)"]
    assert "BuildBackendWarning" in (venv / "install.log").read_text()
    (venv / ".installed").unlink()
    (tmp_path / "fail").touch()
    r = _make(["install", f"VENV={venv}"], repo)
    assert r.returncode != 0
    assert "WARNING: Location ... is ignored (-m pip install --upgrade pip)" in r.stdout
    assert f"make install: pip failed (its log is above, and in {venv}/install.log)" in r.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_output_is_the_demo(tmp_path: Path) -> None:
    """`make demo` (installed already, as `make test` leaves it) shows the command, the
    progress and the summary: no warnings, and no box-drawing characters in a log."""
    repo = _checkout_copy(tmp_path / "repo")
    venv = Path(sys.executable).parent.parent
    # A fresh stamp of its own: make must never reinstall the running venv from the copy
    # (a stale .venv stamp would re-point its editable install at this temporary folder).
    stamp = tmp_path / "installed"
    stamp.touch()
    r = _make(["demo", f"VENV={venv}", f"STAMP={stamp}"], repo)
    assert r.returncode == 0, r.stdout + r.stderr
    text = r.stdout + r.stderr
    assert "warning" not in text.lower() and not BOX.search(text), text
    assert "\ndone: 13\n" in r.stderr
    assert r.stdout.endswith("transcripts written under ./transcripts\n")
    assert len(list((repo / "transcripts").rglob("*.txt"))) == 13
