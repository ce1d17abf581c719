"""Cron-grade behaviour (issue 18): mistakes caught before the run, stale transcripts
redone, the same command does the same work from any folder, overlapping runs queue.

Every test drives the real CLI (a real re-exec, real workers, the real tiny.en model and
the real multilingual base model) on real clips, as a cron line would.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from epyc_whisper.job import _clamp_to_duration
from tests.conftest import copy_samples
from tests.conftest import run_cli as run
from tests.media import write_wav

CLIP = "ast_en_digits__19.wav"
CLIPS = [CLIP, "ast_en_vm-tocancel.wav"]


def recs(stdout: str) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in map(json.loads, stdout.splitlines())}


def one_line_error(r: subprocess.CompletedProcess[str], code: int) -> str:
    """The run failed with ``code`` and a single 'epyc-whisper: error:' line, no traceback."""
    assert r.returncode == code, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("epyc-whisper: error: "), r.stderr
    return lines[0]


def test_nul_list_without_dash_0(tmp_path: Path, model_path: Path, clean_env: dict) -> None:
    """`find -print0 | transcribe -` with -0 forgotten: exit 2 before any worker starts,
    one line that says to add -0 (was a ValueError traceback, exit 1)."""
    copy_samples(tmp_path / "c", CLIPS)
    listing = b"".join(str(tmp_path / "c" / n).encode() + b"\0" for n in CLIPS)
    r = run(["transcribe", "-", "--model", str(model_path)], tmp_path, clean_env, stdin=listing)
    assert "add -0 (--null)" in one_line_error(r, 2)
    assert not (tmp_path / "transcripts").exists()


def test_missing_path_empty_folder_and_both(
    tmp_path: Path, model_path: Path, clean_env: dict
) -> None:
    """A path that does not exist is exit 2 when nothing given exists (was exit 0); an
    existing folder with no media is nothing to do, exit 0 (was exit 2); a missing path
    beside real inputs is a failed input (exit 1) and the rest is done."""
    (tmp_path / "empty").mkdir()
    copy_samples(tmp_path / "c", [CLIP])
    base = ["transcribe", "--model", str(model_path), "-f", "txt", "--jsonl"]
    nope = run([*base, "./nope"], tmp_path, clean_env)
    assert "no such file or folder: ./nope" in one_line_error(nope, 2)
    empty = run([*base, "./empty"], tmp_path, clean_env)
    assert empty.returncode == 0, empty.stderr
    both = run([*base, "./nope", "c"], tmp_path, clean_env)
    assert both.returncode == 1, both.stderr
    got = recs(both.stdout)
    assert got["nope"]["status"] == "failed" and got["nope"]["error"] == "not found"
    assert got[CLIP]["status"] == "done"
    assert "error: ./nope: not found" in both.stderr


def test_language_checked_against_the_model(
    tmp_path: Path, model_path: Path, base_model: Path, clean_env: dict
) -> None:
    """An unknown language code (multilingual model) and a language an English-only model
    cannot do are exit 2 before the run, one line naming what is allowed (were one
    failure per file, and a silent switch to English with a warning per file)."""
    copy_samples(tmp_path / "c", CLIPS)
    xx = run(
        ["transcribe", "c", "--model", str(base_model), "--language", "xx"], tmp_path, clean_env
    )
    line = one_line_error(xx, 2)
    assert "unknown language code 'xx' (from cli)" in line and " fr, " in line
    fr = run(
        ["transcribe", "c", "--model", str(model_path), "--language", "fr"], tmp_path, clean_env
    )
    assert "is English-only" in one_line_error(fr, 2)
    assert not (tmp_path / "transcripts").exists()


def test_changed_model_or_settings_redone(
    tmp_path: Path, model_path: Path, base_model: Path, clean_env: dict
) -> None:
    """Skip-if-done means done with these settings: the same command skips; another
    setting that changes the words, or another model, redoes the files and the summary
    says why; --skip-existing keeps whatever is there (the old rule)."""
    copy_samples(tmp_path / "c", CLIPS)

    def go(*extra: str) -> dict:
        args = ["transcribe", "c", "-f", "txt,json", "--jsonl", "--summary", "s.json", *extra]
        r = run(
            [*args] if "--model" in extra else [*args, "--model", str(model_path)],
            tmp_path,
            clean_env,
        )
        assert r.returncode == 0, r.stderr
        summary = json.loads((tmp_path / "s.json").read_text())
        return {"status": {n: x["status"] for n, x in recs(r.stdout).items()}} | summary

    assert set(go()["status"].values()) == {"done"}
    assert set(go()["status"].values()) == {"skipped"}
    again = go("--word-timestamps")
    assert set(again["status"].values()) == {"done"}
    assert again["redone"] == {"word_timestamps changed": 2}
    words = json.loads((tmp_path / "transcripts" / "ast_en_digits__19.json").read_text())
    assert words["segments"][0]["words"]
    kept = go("--model", str(base_model), "--word-timestamps", "--skip-existing")
    assert set(kept["status"].values()) == {"skipped"}
    other = go("--model", str(base_model), "--word-timestamps")
    assert set(other["status"].values()) == {"done"} and other["redone"] == {"model changed": 2}
    assert set(go("--model", str(base_model), "--word-timestamps")["status"].values()) == {
        "skipped"
    }


def test_same_outputs_from_any_folder_and_old_names_moved(
    tmp_path: Path, model_path: Path, clean_env: dict
) -> None:
    """`find /data/clips -print0 | transcribe - -0 -o /data/out` finds the same outputs
    from any working folder (was: everything again under out/data/clips/...); a folder
    argument is mirrored relative to itself; transcripts under the old working-folder
    names are moved to the new names, not redone; the summary says where they went."""
    clips = tmp_path / "data" / "clips"
    copy_samples(clips / "sub", CLIPS)
    out = tmp_path / "data" / "out"
    listing = b"".join(str(p).encode() + b"\0" for p in sorted((clips / "sub").iterdir()))
    args = ["transcribe", "-", "-0", "--model", str(model_path), "-o", str(out), "-f", "txt"]
    (tmp_path / "elsewhere").mkdir()
    first = run([*args, "--jsonl", "-v", "--summary", "s.json"], tmp_path, clean_env, stdin=listing)
    assert first.returncode == 0, first.stderr
    assert {x["status"] for x in recs(first.stdout).values()} == {"done"}
    names = sorted(p.relative_to(out) for p in out.rglob("*.txt"))
    assert names == [
        Path(str(clips / "sub" / Path(n).stem).lstrip("/") + ".txt") for n in sorted(CLIPS)
    ]
    # -v and the summary say where the transcripts went.
    assert f"output {out}" in first.stderr
    assert json.loads((tmp_path / "s.json").read_text())["output_dir"] == str(out)
    second = run([*args, "--jsonl"], tmp_path / "elsewhere", clean_env, stdin=listing)
    assert {x["status"] for x in recs(second.stdout).values()} == {"skipped"}, second.stderr

    folder = run(
        ["transcribe", "clips", "--model", str(model_path), "-o", "o2", "-f", "txt"],
        tmp_path / "data",
        clean_env,
    )
    assert folder.returncode == 0, folder.stderr
    o2 = tmp_path / "data" / "o2"
    assert sorted(p.name for p in (o2 / "sub").iterdir() if p.suffix == ".txt") == sorted(
        Path(n).stem + ".txt" for n in CLIPS
    )
    # What a run of an earlier version left: outputs named from the working folder (here
    # data/), no records. The rerun moves them to the new names and does no work.
    legacy = o2 / "clips"
    shutil.move(o2 / "sub", legacy / "sub")
    (o2 / ".epyc-whisper-done.jsonl").unlink()
    moved = run(
        ["transcribe", "clips", "--model", str(model_path), "-o", "o2", "-f", "txt", "--jsonl"],
        tmp_path / "data",
        clean_env,
    )
    assert moved.returncode == 0, moved.stderr
    assert {x["status"] for x in recs(moved.stdout).values()} == {"skipped"}
    assert "moved 2 finished transcript(s)" in moved.stderr
    assert sorted(p.name for p in (o2 / "sub").iterdir()) == sorted(
        Path(n).stem + ".txt" for n in CLIPS
    )


def test_output_name_clash_is_a_failed_input(
    tmp_path: Path, model_path: Path, clean_env: dict
) -> None:
    """Two folder arguments with the same file name inside: the second is a failed input
    naming the clash and --relative-to (exit 1), never a silent skip or an overwrite."""
    copy_samples(tmp_path / "one", [CLIP])
    copy_samples(tmp_path / "two", [CLIP])
    args = ["transcribe", "one", "two", "--model", str(model_path), "-f", "txt", "--jsonl"]
    r = run(args, tmp_path, clean_env)
    assert r.returncode == 1, r.stderr
    (failed,) = [x for x in map(json.loads, r.stdout.splitlines()) if x["status"] == "failed"]
    assert failed["path"] == f"two/{CLIP}" and "--relative-to" in failed["error"]
    rooted = run([*args, "--relative-to", "."], tmp_path, clean_env)
    assert rooted.returncode == 0, rooted.stderr
    assert (tmp_path / "transcripts" / "two" / "ast_en_digits__19.txt").is_file()


def test_wait_queues_behind_a_live_run(tmp_path: Path, model_path: Path, clean_env: dict) -> None:
    """Without --wait a held folder fails at once (exit 3, naming --wait); with --wait the
    run waits for the other to finish, then does its work (exit 0)."""
    copy_samples(tmp_path / "c", [CLIP])
    out = tmp_path / "transcripts"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(8)"])
    # Reaped as soon as it exits: a zombie would still look alive to the lock.
    threading.Thread(target=holder.wait, daemon=True).start()
    lock = out / ".epyc-whisper.lock"
    lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
    try:
        args = ["transcribe", "c", "--model", str(model_path), "-f", "txt"]
        refused = run(args, tmp_path, clean_env)
        assert "--wait SECONDS" in one_line_error(refused, 3)
        t0 = time.monotonic()
        waited = run([*args, "--wait", "60"], tmp_path, clean_env)
    finally:
        holder.kill()
        holder.wait()
    assert waited.returncode == 0, waited.stderr
    assert time.monotonic() - t0 > 3 and "waited" in waited.stderr
    assert (out / "ast_en_digits__19.txt").is_file()


def test_no_cue_past_the_end_and_no_speech_is_empty(
    tmp_path: Path, model_path: Path, clean_env: dict
) -> None:
    """No cue ends after the media does, packed or not; a file flagged no_speech (here 4 s
    of digital silence, where tiny.en may write '. . . .' to 0:29) has empty
    txt/srt/vtt/tsv files and says why in its json notes."""
    c = tmp_path / "c"
    copy_samples(c, CLIPS + ["mfa_phrase_longstop.flac"])
    write_wav(c / "silence4.wav", np.zeros(4 * 16000))
    for pack in ("--pack", "--no-pack"):
        o = tmp_path / pack
        r = run(
            ["transcribe", "c", "--model", str(model_path), "-o", str(o), pack], tmp_path, clean_env
        )
        assert r.returncode == 0, r.stderr
        for doc_path in o.glob("*.json"):
            doc = json.loads(doc_path.read_text())
            stem = doc_path.with_suffix("")
            for seg in doc["segments"]:
                assert seg["end"] <= doc["duration"] + 1e-6, (doc_path.name, seg)
            if doc["no_speech"]:
                for ext in ("txt", "srt", "vtt", "tsv"):
                    body = Path(f"{stem}.{ext}").read_text()
                    assert body in ("", "WEBVTT\n\n", "start\tend\ttext\n"), (ext, body)
        assert json.loads((o / "silence4.json").read_text())["no_speech"] is True


def test_clamp_cuts_segments_and_words_at_the_duration() -> None:
    """A recorded result with a cue past the end (a 52.9 s file, a segment to 66.7 s and
    one starting after the end): cut at 52.9 s, the one after the end dropped."""
    result = {
        "duration": 52.9,
        "text": " a b c",
        "segments": [
            {
                "start": 40.0,
                "end": 66.7,
                "text": " a b",
                "words": [
                    {"start": 40.0, "end": 41.0, "word": " a"},
                    {"start": 52.0, "end": 60.0, "word": " b"},
                    {"start": 53.0, "end": 54.0, "word": " x"},
                ],
            },
            {"start": 55.0, "end": 58.0, "text": " c", "words": []},
        ],
    }
    _clamp_to_duration(result)
    (seg,) = result["segments"]
    assert seg["end"] == 52.9 and [w["end"] for w in seg["words"]] == [41.0, 52.9]
    assert result["text"] == " a b"


def test_model_path_that_does_not_exist(tmp_path: Path, clean_env: dict) -> None:
    """--model that is clearly a path and no folder is a usage error, exit 2 (was the
    hub's offline message, exit 3); the offline message names HF_HUB_OFFLINE."""
    copy_samples(tmp_path / "c", [CLIP])
    for model in ("/nope/model", "./models/tiny", "~/no-such-model"):
        r = run(["transcribe", "c", "--model", model], tmp_path, clean_env)
        assert f"model folder {model} (from cli) does not exist" in one_line_error(r, 2)
    env = {k: v for k, v in clean_env.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_HOME": str(tmp_path / "hf")}
    r = run(["transcribe", "c", "--model", "small"], tmp_path, env, timeout=60)
    assert "HF_HUB_OFFLINE" in one_line_error(r, 3)
