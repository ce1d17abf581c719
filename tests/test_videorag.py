"""The VideoRAG drop-in on a VideoRAG-shaped cache folder: 30 s mp3 segments made from
real speech at test time, one segment missing, video after video on one shared pool."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLES, speech_text
from videorag_cache import segments_from, write_video_cache

from epyc_whisper import guide, videorag

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"\[(\d+\.\d\d)s -> (\d+\.\d\d)s\] (.*)\n")


def _clips() -> list[tuple[Path, str]]:
    """The bundled speech clips with their references (made up: their order)."""
    import csv

    with (SAMPLES / "manifest.tsv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(SAMPLES / r["file"], r["reference_transcript"]) for r in rows if r["language"] == "en"]


@pytest.fixture(scope="module")
def segments() -> list:
    """The 12 bundled speech clips laid into 30 s segments: two segments."""
    segs = segments_from(_clips())
    assert len(segs) == 2, [len(s.clips) for s in segs]
    return segs


def _check_lines(text: str) -> list[tuple[float, float, str]]:
    """VideoRAG's format exactly: nothing but "[%.2fs -> %.2fs] %s\\n" lines."""
    found = LINE.findall(text)
    assert "".join(f"[{a}s -> {b}s] {t}\n" for a, b, t in found) == text
    return [(float(a), float(b), t) for a, b, t in found]


def test_drop_in_on_a_videorag_cache(
    api_env: None, tmp_path: Path, segments: list, model_path: Path
) -> None:
    """Two videos (2 and 3 segments of 30 s mp3, one missing), the second called as
    VideoRAG calls it (no global_config): every index back in segment_index2name's
    order, "" for the missing one, VideoRAG's line format, the clips' words, and one
    model load per worker process for both videos."""
    work = tmp_path / "videorag"
    first = write_video_cache(work, "talk", segments)
    second = write_video_cache(work, "menu", [*segments, segments[0]], missing=("1",))
    assert sorted(p.suffix for p in (work / "_cache" / "menu").iterdir()) == [".mp3", ".mp3"]
    config = {"asr_model": str(model_path)}

    got = videorag.speech_to_text("talk", str(work), first, "mp3", config)
    t = guide.shared({}, fresh=False)
    # As VideoRAG calls it (no global_config): the shared one, whatever its settings.
    again = videorag.speech_to_text("menu", str(work), second, "mp3")
    assert guide.shared({}, fresh=False) is t, "the second video started another pool"
    assert list(got) == list(first) and list(again) == list(second)
    assert again["1"] == "" and again["0"] == got["0"] and again["2"] == got["0"]
    for index, seg in enumerate(segments):
        lines = _check_lines(got[str(index)])
        assert lines and all(0 <= a <= b <= 30.5 for a, b, _ in lines)
        heard = speech_text(" ".join(text for _, _, text in lines))
        for word in ("incorrect", "cancel", "stop", "buddy"):
            if word in speech_text(seg.reference):
                assert word in heard, (word, heard)
    stats = t.stats
    assert stats["files"] == 4 and stats["loads"] == stats["processes"] == len(t.worker_pids)


def test_async_twin_inside_a_running_loop(
    api_env: None, tmp_path: Path, segments: list, model_path: Path
) -> None:
    """aspeech_to_text inside a running event loop: the loop keeps running meanwhile,
    and the result is speech_to_text's."""
    work = tmp_path / "videorag"
    index2name = write_video_cache(work, "talk", segments[:1])
    config = {"asr_model": str(model_path)}

    async def main() -> tuple[dict[str, str], int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        got = await videorag.aspeech_to_text("talk", str(work), index2name, "mp3", config)
        ticker.cancel()
        return got, ticks

    got, ticks = asyncio.run(main())
    assert ticks > 0, "the event loop was blocked"
    assert got == videorag.speech_to_text("talk", str(work), index2name, "mp3", config)


def test_a_segment_that_cannot_be_read_is_empty(
    api_env: None, tmp_path: Path, model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A segment file that exists but is not audio gives "" and a warning naming it; the
    other segments of the video are transcribed."""
    work = tmp_path / "videorag"
    cache = work / "_cache" / "v"
    cache.mkdir(parents=True)
    (cache / "s-0.mp3").write_bytes(b"not an mp3 at all")
    (cache / "s-1.mp3").write_bytes((SAMPLES / "ast_en_vm-tocancel.wav").read_bytes())
    got = videorag.speech_to_text(
        "v", str(work), {"0": "s-0", "1": "s-1"}, "mp3", {"asr_model": str(model_path)}
    )
    assert got["0"] == "" and "cancel" in speech_text(got["1"])
    assert any("s-0.mp3" in r.getMessage() for r in caplog.records)


def test_readme_examples_run(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """The README's Python API examples, each as it is written, from a clone's root."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    runnable = [b for b in blocks if "epyc_whisper/samples" in b]
    assert len(runnable) == 3, "the three forms: Transcriber, the guide's names, VideoRAG"
    work = tmp_path / "clone"
    work.mkdir()
    (work / "epyc_whisper").symlink_to(ROOT / "epyc_whisper")
    for code in runnable:
        res = subprocess.run(
            [sys.executable, "-c", code],
            cwd=work,
            env=clean_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout.strip(), code
