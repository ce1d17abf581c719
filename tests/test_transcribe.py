"""`epyc-whisper transcribe` end to end: the real CLI, the real tiny.en model, real media."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from epyc_whisper.ledger import LEDGER_NAME
from tests.conftest import copy_samples, speech_text
from tests.conftest import run_cli as run
from tests.media import make_video

CLIPS = ["ast_en_agent-incorrect.wav", "mfa_phrase_longstop.flac", "ast_en_silence__3.wav"]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """clips/ with audio at the top, a nested folder with a video and a same-named clip."""
    root = tmp_path / "clips"
    copy_samples(root, CLIPS)
    copy_samples(root / "nested" / "deeper", ["ast_en_agent-incorrect.wav"])
    make_video(root / "ast_en_agent-incorrect.wav", root / "nested" / "talk.mp4")
    return tmp_path


def test_folder_to_all_formats(tree: Path, model_path: Path, clean_env: dict[str, str]) -> None:
    """A folder of audio and video is transcribed into every format, mirroring the tree
    below the folder argument."""
    r = run(
        ["transcribe", "clips", "--model", str(model_path), "-o", "out", "-f", "all"],
        tree,
        clean_env,
    )
    assert r.returncode == 0, r.stderr
    out = tree / "out"
    for base in [
        "ast_en_agent-incorrect",
        "mfa_phrase_longstop",
        "ast_en_silence__3",
        "nested/talk",
        "nested/deeper/ast_en_agent-incorrect",
    ]:
        for ext in ("txt", "srt", "vtt", "tsv", "json"):
            assert (out / f"{base}.{ext}").is_file(), f"{base}.{ext}"
    assert "login incorrect" in speech_text((out / "ast_en_agent-incorrect.txt").read_text())
    assert "login incorrect" in speech_text((out / "nested" / "talk.txt").read_text())
    doc = json.loads((out / "ast_en_agent-incorrect.json").read_text())
    seg = doc["segments"][0]
    for key in ("start", "end", "text", "avg_logprob", "no_speech_prob", "compression_ratio"):
        assert key in seg
    for key in (
        "language",
        "language_probability",
        "duration",
        "model",
        "compute_type",
        "layout",
        "timings",
        "versions",
    ):
        assert key in doc, key
    assert doc["versions"]["faster_whisper"] and doc["versions"]["ctranslate2"]
    assert doc["language"] == "en" and 5.0 < doc["duration"] < 5.3
    # Silence gives an empty or near-empty transcript, as faster-whisper's does.
    assert len((out / "ast_en_silence__3.txt").read_text().split()) <= 2
    # Nothing but transcripts and their records (no temporaries) in the output tree.
    stray = [
        p
        for p in (tree / "out").rglob("*")
        if p.is_file()
        and p.suffix not in (".txt", ".srt", ".vtt", ".tsv", ".json")
        and p.name != LEDGER_NAME
    ]
    assert stray == []


def test_rerun_skips_and_overwrite_redoes(
    tree: Path, model_path: Path, clean_env: dict[str, str]
) -> None:
    """A second run skips finished inputs (same cron line, no work); --overwrite redoes them."""
    args = [
        "transcribe",
        "clips",
        "--model",
        str(model_path),
        "-o",
        "out",
        "-f",
        "txt,json",
        "--jsonl",
    ]
    first = run(args, tree, clean_env)
    assert first.returncode == 0, first.stderr
    txt = tree / "out" / "mfa_phrase_longstop.txt"
    mtime = txt.stat().st_mtime_ns
    second = run(args, tree, clean_env)
    assert second.returncode == 0, second.stderr
    recs = [json.loads(line) for line in second.stdout.splitlines()]
    assert len(recs) == 5 and {r["status"] for r in recs} == {"skipped"}
    assert all("already done" in r["error"] for r in recs)
    assert txt.stat().st_mtime_ns == mtime
    third = run([*args, "--overwrite"], tree, clean_env)
    recs = [json.loads(line) for line in third.stdout.splitlines()]
    assert third.returncode == 0 and {r["status"] for r in recs} == {"done"}
    assert txt.stat().st_mtime_ns > mtime


def test_stdin_lists_newline_and_nul(
    tmp_path: Path, model_path: Path, clean_env: dict[str, str]
) -> None:
    """`-` reads paths from stdin, one per line or NUL-separated (-0), odd names included."""
    d = tmp_path / "in"
    copy_samples(d, ["mfa_phrase_longstop.flac", "ast_en_agent-incorrect.wav"])
    odd = d / "-a name with 'quotes' and ü.flac"
    (d / "mfa_phrase_longstop.flac").rename(odd)
    listing = f"{odd}\n{d / 'ast_en_agent-incorrect.wav'}\n".encode()
    r = run(
        ["transcribe", "-", "--model", str(model_path), "-o", "o1", "-f", "txt", "--jsonl"],
        tmp_path,
        clean_env,
        stdin=listing,
    )
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["status"] for x in r.stdout.splitlines()] == ["done", "done"]
    # Stdin paths are named by their absolute path, whatever the working folder.
    assert (tmp_path / "o1" / str(d).lstrip("/") / "-a name with 'quotes' and ü.txt").is_file()
    r0 = run(
        ["transcribe", "-", "-0", "--model", str(model_path), "-o", "o2", "-f", "txt"],
        tmp_path,
        clean_env,
        stdin=listing.replace(b"\n", b"\0"),
    )
    assert r0.returncode == 0, r0.stderr
    assert len(list((tmp_path / "o2").rglob("*.txt"))) == 2


def test_bad_file_reported_rest_done_and_retry(
    tmp_path: Path, model_path: Path, clean_env: dict[str, str]
) -> None:
    """A non-media file fails with its path and reason (exit 1); the rest is done;
    failures.jsonl lists it and --retry-failed redoes only it."""
    d = tmp_path / "in"
    copy_samples(d, ["ast_en_agent-incorrect.wav"])
    (d / "notes.mp3").write_text("this is not audio\n")
    r = run(
        ["transcribe", "in", "--model", str(model_path), "-o", "out", "-f", "txt"],
        tmp_path,
        clean_env,
    )
    assert r.returncode == 1
    assert "notes.mp3" in r.stderr and "not decodable media" in r.stderr
    assert (tmp_path / "out" / "ast_en_agent-incorrect.txt").is_file()
    failures = (tmp_path / "out" / "failures.jsonl").read_text().splitlines()
    assert [json.loads(x)["path"] for x in failures] == [str(d / "notes.mp3")]
    retry = run(
        [
            "transcribe",
            "--retry-failed",
            "--model",
            str(model_path),
            "-o",
            "out",
            "-f",
            "txt",
            "--jsonl",
        ],
        tmp_path,
        clean_env,
    )
    assert retry.returncode == 1
    assert [json.loads(x)["path"] for x in retry.stdout.splitlines()] == [str(d / "notes.mp3")]


def test_lock_refuses_live_run_and_takes_over_stale(
    tmp_path: Path, model_path: Path, clean_env: dict[str, str]
) -> None:
    """A live run's lock stops a second run (exit 3); a dead run's lock is taken over."""
    import socket

    copy_samples(tmp_path / "in", ["ast_en_digits__19.wav"])
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".epyc-whisper.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    r = run(["transcribe", "in", "--model", str(model_path), "-o", "out"], tmp_path, clean_env)
    assert r.returncode == 3 and "another epyc-whisper run" in r.stderr
    dead = subprocess.run(["true"])  # noqa: S603 - a pid that has exited
    lock.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    del dead
    r = run(["transcribe", "in", "--model", str(model_path), "-o", "out"], tmp_path, clean_env)
    assert r.returncode == 0, r.stderr
    assert "stale lock" in r.stderr and not lock.exists()


def test_quiet_and_verbose_after_the_command(
    tmp_path: Path, model_path: Path, clean_env: dict[str, str]
) -> None:
    """-q and -v work after ``transcribe`` too (as in `transcribe DIR -q`); -v adds the
    layout line; both together, in either place, are a usage error (exit 2)."""
    copy_samples(tmp_path / "c", ["ast_en_digits__19.wav"])
    args = ["transcribe", "c", "--model", str(model_path), "-f", "txt", "--overwrite"]
    loud = run([*args, "-v"], tmp_path, clean_env)
    quiet = run([*args, "-q"], tmp_path, clean_env)
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "layout:" in loud.stderr and "layout:" not in quiet.stderr
    assert "summary" in quiet.stderr
    assert (tmp_path / "transcripts" / "ast_en_digits__19.txt").is_file()
    both = run(["-q", *args, "-v"], tmp_path, clean_env)
    assert both.returncode == 2 and "--quiet and --verbose" in both.stderr


def test_model_memory_measured_then_used_by_the_plan(
    tmp_path: Path, model_path: Path, clean_env: dict[str, str]
) -> None:
    """A run records what loading the model cost a worker; the next plan (here
    detect's) uses that measurement for its memory check and says so."""
    copy_samples(tmp_path / "c", ["ast_en_digits__19.wav"])
    r = run(["transcribe", "c", "--model", str(model_path), "-f", "txt"], tmp_path, clean_env)
    assert r.returncode == 0, r.stderr
    cache = json.loads((tmp_path / "xdg-cache" / "epyc-whisper" / "model-memory.json").read_text())
    ((key, nbytes),) = cache.items()
    assert key == f"{model_path.resolve()}|int8" and 10 << 20 < nbytes < 2 << 30
    r = run(["detect", "--json", "--model", str(model_path)], tmp_path, clean_env)
    layout = json.loads(r.stdout)["layout"]
    assert (layout["model_bytes"], layout["model_bytes_source"]) == (nbytes, "measured")


def test_offline_model_name_fails_fast(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """A model name that is not cached, offline, fails within seconds naming the ways out."""
    copy_samples(tmp_path / "in", ["ast_en_digits__19.wav"])
    env = clean_env | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = run(["transcribe", "in", "--model", "small"], tmp_path, env, timeout=30)
    assert r.returncode == 3
    assert "not in the local cache" in r.stderr and "--model PATH" in r.stderr
