"""VideoRAG's shape: videos cut into 30 s mp3 segments, transcribed video after video,
through the drop-in against VideoRAG's own loop, side by side in one run (issue 14).

    python tests/videorag_bench.py [--videos 4] [--segments 5] [--rounds 1] [--dir DIR]
        [--manifest ../shared/data/dev/manifest.tsv] [--subsets ivr8k,phrases16k]
        [--once-compute-type int8|default]

Builds a VideoRAG working folder (tests/videorag_cache.py: real dev clips laid into
30 s segments, mp3, VideoRAG's names and ``_cache`` layout) with ``--videos`` videos of
``--segments`` segments, then runs, each a whole process timed from outside, tiny.en,
beam 5:

- ``ours``: ``epyc_whisper.videorag.speech_to_text`` for each video in turn (the shared
  Transcriber: models load once for all videos);
- ``videorag``: VideoRAG's own loop, as ``videorag/_videoutil/asr.py`` has it: a
  ``WhisperModel`` created for every video with its defaults, the video's segments
  transcribed one by one, one ``"[%.2fs -> %.2fs] %s\\n"`` line per segment (our
  rewrite of what that file does, not its code);
- ``once``: (a), one ``WhisperModel`` loaded once for all the videos, segments one by
  one, in int8 or the model's default compute type, whichever ran the first video
  faster here (both times are printed; ``--once-compute-type`` skips that probe).

Prints the wall and CPU seconds, the WER of each against the clips' references, the
ratios to VideoRAG's own and to (a), and the load average. Targets on a 2-core
machine: ours at least 2x VideoRAG's own and 1.5x (a).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from api_bench import DEV, faster_compute_type, fmt_row, run_rounds  # noqa: E402

SIDES = ("ours", "videorag", "once")
LINE = "[%.2fs -> %.2fs] %s\n"  # VideoRAG's, videorag/_videoutil/asr.py


# --------------------------------------------------------------------------- the children
def _segment_files(job: dict[str, Any], video: str) -> dict[str, str]:
    cache = os.path.join(job["working_dir"], "_cache", video)
    return {i: os.path.join(cache, f"{name}.mp3") for i, name in job["videos"][video].items()}


def child_videorag(job: dict[str, Any]) -> dict[str, Any]:
    """VideoRAG's loop (``reload``: a model per video, its default compute type) or (a)
    (one model for all videos, ``compute_type``)."""
    from faster_whisper import WhisperModel

    model = None
    loads = 0
    out: dict[str, dict[str, str]] = {}
    for video in job["videos"]:
        if model is None or job["reload"]:
            model = WhisperModel(job["model"], compute_type=job["compute_type"])
            loads += 1
        texts: dict[str, str] = {}
        for index, path in _segment_files(job, video).items():
            if not os.path.exists(path):
                texts[index] = ""
                continue
            segments, _ = model.transcribe(path)
            texts[index] = "".join(LINE % (s.start, s.end, s.text) for s in segments)
        out[video] = texts
    return {"transcripts": out, "loads": loads}


def child_ours(job: dict[str, Any]) -> dict[str, Any]:
    """The drop-in, video after video, as VideoRAG's insert_video calls it."""
    from epyc_whisper import guide
    from epyc_whisper.videorag import speech_to_text

    config = {"asr_model": job["model"]}
    out = {
        video: speech_to_text(video, job["working_dir"], index2name, "mp3", config)
        for video, index2name in job["videos"].items()
    }
    t = guide.shared({}, fresh=False)
    stats = dict(t.stats)
    guide.close_shared()
    return {"transcripts": out, "loads": stats.get("loads"), "processes": stats.get("processes")}


def child_main(side: str) -> None:
    job = json.loads(sys.stdin.read())
    out = child_ours(job) if side == "ours" else child_videorag(job)
    print(json.dumps(out))


# --------------------------------------------------------------------------- the parent
def words(transcript: str) -> str:
    """The text of VideoRAG's lines, without their "[start -> end]" prefixes."""
    return " ".join(re.sub(r"^\[[^]]*\]", "", line) for line in transcript.splitlines())


def build(
    working_dir: Path, manifest: Path, subsets: set[str], videos: int, segments: int
) -> tuple[dict[str, dict[str, str]], dict[Path, str]]:
    """The working folder (built once per folder) and the references per segment file."""
    from videorag_cache import segments_from, write_video_cache

    from epyc_whisper.bench import read_manifest

    done = working_dir / "videos.json"
    if done.is_file():
        saved = json.loads(done.read_text(encoding="utf-8"))
        return saved["videos"], {Path(k): v for k, v in saved["refs"].items()}
    clips = sorted(read_manifest(manifest, subsets).items())
    segs = segments_from(clips)
    need = videos * segments
    if len(segs) < need:
        raise SystemExit(f"{len(segs)} segments of 30 s in {sorted(subsets)}, {need} needed")
    out: dict[str, dict[str, str]] = {}
    refs: dict[Path, str] = {}
    for v in range(videos):
        name = f"video{v:02d}"
        part = segs[v * segments : (v + 1) * segments]
        index2name = write_video_cache(working_dir, name, part)
        out[name] = index2name
        for (_, seg_name), seg in zip(index2name.items(), part, strict=True):
            refs[working_dir / "_cache" / name / f"{seg_name}.mp3"] = seg.reference
    done.write_text(
        json.dumps({"videos": out, "refs": {str(k): v for k, v in refs.items()}}),
        encoding="utf-8",
    )
    return out, refs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--segments", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--dir", type=Path, default=None, help="working folder (kept for reruns)")
    p.add_argument("--manifest", type=Path, default=DEV)
    p.add_argument("--subsets", default="ivr8k,phrases16k")
    p.add_argument(
        "--once-compute-type",
        help="the compute type of (a), already measured faster here (skips the probe)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child_main(a.child)
        return 0

    from epyc_whisper.bench import clean_env, wer
    from epyc_whisper.models import bundled_model

    work = a.dir or Path(tempfile.mkdtemp(prefix="videorag-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    videos, refs = build(work, a.manifest, set(a.subsets.split(",")), a.videos, a.segments)
    model = str(bundled_model())
    env = clean_env()
    env["EPYC_WHISPER_NO_SAVED"] = "1"
    # The child processes are this file run again: they import api_bench beside it.
    base = {"model": model, "working_dir": str(work), "videos": videos}
    nseg = sum(map(len, videos.values()))
    print(f"{len(videos)} videos x {a.segments} segments of 30 s ({nseg * 30} s), in {work}")
    if a.once_compute_type:
        ct = a.once_compute_type
        print(f"(a): compute type {ct}, as given (--once-compute-type)")
    else:
        first = dict(list(videos.items())[:1])
        ct, probe = faster_compute_type({**base, "videos": first}, env, script=__file__)
        print(f"(a): compute type {ct}, the faster here on the first video: {probe}")
    jobs = {
        "ours": base,
        # VideoRAG's WhisperModel(model) takes faster-whisper's default compute type.
        "videorag": {**base, "compute_type": "default", "reload": True},
        "once": {**base, "compute_type": ct, "reload": False},
    }
    runs = run_rounds({side: jobs[side] for side in SIDES}, a.rounds, env, script=__file__)

    def wall(side: str) -> float:
        return statistics.median(x["wall"] for x in runs[side])

    header = ["side", "wall s", "CPU s", "loads", "WER %", "x videorag", "x (a)", "load avg"]
    print("\n" + fmt_row(header))
    print("|" + "---|" * len(header))
    for side in SIDES:
        last = runs[side][-1]
        texts = {
            work / "_cache" / video / f"{videos[video][i]}.mp3": words(text)
            for video, per in last["transcripts"].items()
            for i, text in per.items()
        }
        w = wer(texts, refs)
        name = {"once": f"(a) once, {ct}", "videorag": "VideoRAG's own, default"}.get(side, side)
        cells = [
            name,
            f"{wall(side):.1f}",
            f"{statistics.median(x['cpu'] for x in runs[side]):.1f}",
            str(last["loads"])
            + (f" ({last['processes']} worker processes)" if "processes" in last else ""),
            "-" if w is None else f"{w:.2f}",
            f"{wall('videorag') / wall(side):.2f}",
            f"{wall('once') / wall(side):.2f}",
            " / ".join(f"{x['load']:.1f}" for x in runs[side]),
        ]
        print(fmt_row(cells))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
