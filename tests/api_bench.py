"""A pipeline's calls: one long-lived Transcriber against faster-whisper used the ways a
pipeline uses it, side by side in one run (issue 14, "Measure").

    python tests/api_bench.py [--calls 20] [--clips 16] [--rounds 1]
        [--manifest ../shared/data/dev/manifest.tsv] [--subsets ivr8k,phrases16k,nonspeech8k]

``--calls`` calls of ``--clips`` dev clips each (different clips in every call), each
side a whole process timed from outside (interpreter start, imports and model loading
count), tiny.en (``--model bundled``), beam 5:

- ``ours``: one ``epyc_whisper.Transcriber``, ``transcribe(clips)`` per call;
- (a) ``once``: one faster-whisper ``WhisperModel`` loaded once and reused, clips one by
  one, in int8 or the model's own compute type ("default": float32 for the bundled
  float16 model on a CPU), whichever is faster here: on some CPUs here float32 beats
  int8 for faster-whisper's default threads. Both run first on ``--probe-calls`` calls
  (printed), and the faster one is (a);
- (b) ``per-call``: VideoRAG's way (``videorag/_videoutil/asr.py`` creates a ``WhisperModel``
  in every call), in the compute type of (a), so only the loading differs.

Prints, per side, the wall and CPU seconds, the model loads, the WER against the dev
references, and the ratios to (a) and to ``per-call``; with ``loads`` of ours beside
the number of its worker processes, and the load average (other people's work on a
shared machine inflates every wall time; the ratios of one run are what count).
Targets on a 2-core machine: ours at least 2x (a) and 3x per-call, WER within 0.5
points.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEV = HERE.parent.parent / "shared" / "data" / "dev" / "manifest.tsv"


# --------------------------------------------------------------------------- the children
def child_faster_whisper(job: dict[str, Any]) -> dict[str, Any]:
    """faster-whisper the ordinary way: ``reload`` True creates the model in every call
    (VideoRAG's way), else once. Clips one by one, segments materialised as a user's
    loop does."""
    from faster_whisper import WhisperModel

    model = None
    loads = 0
    texts: dict[str, str] = {}
    for call in job["calls"]:
        if model is None or job["reload"]:
            model = WhisperModel(job["model"], compute_type=job["compute_type"])
            loads += 1
        for path in call:
            segments, _ = model.transcribe(path, beam_size=5)
            texts[path] = "".join(s.text for s in segments)
    return {"texts": texts, "loads": loads}


def child_ours(job: dict[str, Any]) -> dict[str, Any]:
    """One Transcriber for all the calls, one ``transcribe`` per call."""
    from epyc_whisper import Transcriber

    texts: dict[str, str] = {}
    with Transcriber(model=job["model"]) as t:
        for call in job["calls"]:
            for path, tr in zip(call, t.transcribe(call), strict=True):
                texts[path] = tr.text if tr.status == "done" else ""
        stats = dict(t.stats)
        procs = worker_processes(t)
    return {"texts": texts, "loads": stats.get("loads"), "stats": stats, "processes": procs}


def worker_processes(t: Any) -> int | None:
    """How many model processes the Transcriber's layout has (None: in-process)."""
    layout = getattr(t, "layout", None)
    return len(layout.processes) if layout is not None else None


def run_side(
    side: str, job: dict[str, Any], env: dict[str, str], script: str = __file__
) -> dict[str, Any]:
    """One side as a whole process: wall and CPU seconds (the child and all it waited
    for, workers included) and what the child printed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, script, "--child", side],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode:
        raise SystemExit(f"{side} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["wall"] = wall
    out["cpu"] = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    out["load"] = load
    return out


def run_rounds(
    jobs: dict[str, dict[str, Any]], rounds: int, env: dict[str, str], script: str = __file__
) -> dict[str, list[dict[str, Any]]]:
    """Every side ``rounds`` times, the order rotated each round (drift hits all sides);
    a line per run as it ends."""
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in jobs}
    for r in range(rounds):
        order = list(jobs)[r % len(jobs) :] + list(jobs)[: r % len(jobs)]
        for side in order:
            runs[side].append(run_side(side, jobs[side], env, script=script))
            print(f"round {r + 1}: {side} {runs[side][-1]['wall']:.1f} s", flush=True)
    return runs


def child_main(side: str) -> None:
    job = json.loads(sys.stdin.read())
    if side == "ours":
        out = child_ours(job)
    else:
        out = child_faster_whisper(job)
    print(json.dumps(out))


# --------------------------------------------------------------------------- the parent
def calls_of(manifest: Path, subsets: set[str], calls: int, clips: int) -> list[list[Path]]:
    """``calls`` lists of ``clips`` distinct dev clips, in manifest order."""
    from epyc_whisper.bench import read_manifest

    files = sorted(read_manifest(manifest, subsets))
    need = calls * clips
    if len(files) < need:
        raise SystemExit(f"{manifest}: {len(files)} clips in {sorted(subsets)}, {need} needed")
    return [files[k * clips : (k + 1) * clips] for k in range(calls)]


def fmt_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument(
        "--probe-calls", type=int, default=2, help="calls that pick the compute type of (a)"
    )
    p.add_argument("--manifest", type=Path, default=DEV)
    p.add_argument("--subsets", default="ivr8k,phrases16k,nonspeech8k")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child_main(a.child)
        return 0

    from epyc_whisper.bench import clean_env, read_manifest, wer
    from epyc_whisper.models import bundled_model

    subsets = set(a.subsets.split(","))
    refs = read_manifest(a.manifest, subsets)
    calls = calls_of(a.manifest, subsets, a.calls, a.clips)
    model = str(bundled_model())
    env = clean_env()
    env.setdefault("XDG_CONFIG_HOME", tempfile.mkdtemp(prefix="api-bench-xdg-"))
    env["EPYC_WHISPER_NO_SAVED"] = "1"  # the built-in layout, not a saved bench result
    base = {"model": model, "calls": [[str(f) for f in c] for c in calls]}
    print(f"{a.calls} calls x {a.clips} clips ({sum(map(len, calls))} files), model {model}")
    ct, probe = faster_compute_type({**base, "calls": base["calls"][: a.probe_calls]}, env)
    print(f"(a): compute type {ct}, the faster here on the first {a.probe_calls} call(s): {probe}")
    jobs = {
        "ours": base,
        "once": {**base, "compute_type": ct, "reload": False},
        "per-call": {**base, "compute_type": ct, "reload": True},
    }
    runs = run_rounds(jobs, a.rounds, env)

    def wall(side: str) -> float:
        return statistics.median(x["wall"] for x in runs[side])

    header = ["side", "wall s", "CPU s", "loads", "WER %", "x (a)", "x per-call", "load avg"]
    print("\n" + fmt_row(header))
    print("|" + "---|" * len(header))
    for side in jobs:
        last = runs[side][-1]
        texts = {Path(k): v for k, v in last["texts"].items()}
        w = wer(texts, refs)
        loads = str(last["loads"])
        if side == "ours":
            loads += f" ({last.get('processes')} worker processes)"
        name = {"once": f"(a) once, {ct}", "per-call": f"(b) per call, {ct}"}.get(side, side)
        cells = [
            name,
            f"{wall(side):.1f}",
            f"{statistics.median(x['cpu'] for x in runs[side]):.1f}",
            loads,
            "-" if w is None else f"{w:.2f}",
            f"{wall('once') / wall(side):.2f}",
            f"{wall('per-call') / wall(side):.2f}",
            " / ".join(f"{x['load']:.1f}" for x in runs[side]),
        ]
        print(fmt_row(cells))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}; ours' stats: {last_stats(runs)}")
    return 0


def faster_compute_type(
    job: dict[str, Any], env: dict[str, str], script: str = __file__
) -> tuple[str, str]:
    """int8 or the model's default ("default": float32 for a float16 model on a CPU),
    whichever runs ``job`` faster with faster-whisper here, and both times."""
    walls = {}
    for ct in ("int8", "default"):
        walls[ct] = run_side(
            f"once-{ct}", {**job, "compute_type": ct, "reload": False}, env, script
        )["wall"]
    best = min(walls, key=lambda k: walls[k])
    return best, ", ".join(f"{k} {v:.1f} s" for k, v in walls.items())


def last_stats(runs: dict[str, list[dict[str, Any]]]) -> str:
    stats = runs["ours"][-1].get("stats") or {}
    keep = ("loads", "cache_hits", "cache_misses", "hit_rate", "files", "audio_s", "rtfx")
    return json.dumps({k: stats[k] for k in keep if k in stats})


if __name__ == "__main__":
    sys.exit(main())
