"""Long recordings of the two kinds issue 13 names, three ways, side by side in one run.

    python tests/long_bench.py [--rounds 3] [--seeds 1,2] [--kinds pauses,prompts]
                               [--manifest ../shared/data/dev/manifest.tsv] [--dir DIR]

Builds each recording with make_long.py (``pauses``: spontaneous-ish speech with long
pauses; ``prompts``: about 100 telephone prompts of one voice, 0.75 s apart, 8 kHz,
10 minutes), then runs faster-whisper sequential and BatchedInferencePipeline(8)
(long_baseline.py) and ``epyc-whisper transcribe --model bundled`` in turn, each a
whole process timed from outside, ``--rounds`` rounds. Prints the medians, the ratios,
the WER of each, how many of the words that sequential gets right each other way
misses ("lost"), and what our guard did (halved pieces, recovered and unrecognised
speech), from our json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jiwer

from epyc_whisper.bench import normalise
from epyc_whisper.models import bundled_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_long  # noqa: E402

WAYS = ("seq", "batched", "ours")


def run(way: str, wav: Path, out: Path) -> tuple[float, float, dict]:
    """One whole process; its wall time, its CPU time (user + system, all its processes)
    and its transcript (json). The CPU time moves less than the wall time when other
    work shares the machine."""
    if way == "ours":
        exe = Path(sys.executable).with_name("epyc-whisper")
        # A named file's outputs mirror its absolute path unless --relative-to says
        # from where (#18): from its own folder, so they sit at the top of ``out``.
        cmd = [str(exe), "transcribe", wav.name, "--model", "bundled", "-f", "json,txt"]
        cmd += ["-q", "-o", str(out), "--overwrite", "--relative-to", "."]
        target = out / (wav.stem + ".json")
    else:
        target = out / f"{wav.stem}.{way}.json"
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(HERE / "long_baseline.py"), way, str(bundled_model())]
        cmd += [str(wav), str(target)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=wav.parent)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, json.loads(target.read_text(encoding="utf-8"))


def right(ref: str, text: str) -> set[int]:
    """Positions of the reference words that ``text`` gets right (aligned as equal)."""
    o = jiwer.process_words(ref, normalise(text) or "")
    return {
        k
        for c in o.alignments[0]
        if c.type == "equal"
        for k in range(c.ref_start_idx, c.ref_end_idx)
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--kinds", default="pauses,prompts")
    p.add_argument("--manifest", default=str(HERE.parent.parent / "shared/data/dev/manifest.tsv"))
    p.add_argument("--dir", default="")
    a = p.parse_args()
    work = Path(a.dir or tempfile.mkdtemp(prefix="long-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    recs = []
    for kind in a.kinds.split(","):
        for seed in a.seeds.split(","):
            wav = work / f"{kind}{seed}.wav"
            make_long.main(str(wav), int(seed), 600.0, a.manifest, kind)
            recs.append(wav)
    walls: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    docs: dict[tuple[str, str], dict] = {}
    for r in range(a.rounds):
        for wav in recs:
            # Rotated each round, so that drift in the machine's load hits every way alike.
            for way in WAYS[r % 3 :] + WAYS[: r % 3]:
                wall, cpu, doc = run(way, wav, work / "out")
                walls.setdefault((wav.stem, way), []).append(wall)
                cpus.setdefault((wav.stem, way), []).append(cpu)
                docs[(wav.stem, way)] = doc
                print(
                    f"round {r + 1} {wav.stem} {way}: {wall:.2f} s, cpu {cpu:.2f} s",
                    file=sys.stderr,
                )
    print(
        "| recording | seq s | batched(8) s | ours s | x seq | x batched | CPU s seq / batched / "
        "ours | WER seq | WER batched | WER ours | lost batched | lost ours | guard (ours) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for wav in recs:
        ref = normalise(wav.with_suffix(".txt").read_text(encoding="utf-8"))
        n = len(ref.split())
        med = {w: statistics.median(walls[(wav.stem, w)]) for w in WAYS}
        cpu = {w: statistics.median(cpus[(wav.stem, w)]) for w in WAYS}
        wer = {w: 100 * jiwer.wer(ref, normalise(docs[(wav.stem, w)]["text"]) or "") for w in WAYS}
        seq = right(ref, docs[(wav.stem, "seq")]["text"])
        lost = {
            w: 100 * len(seq - right(ref, docs[(wav.stem, w)]["text"])) / max(1, len(seq))
            for w in ("batched", "ours")
        }
        sp = docs[(wav.stem, "ours")].get("split", {})
        rec = sp.get("recovered", [])
        guard = (
            f"{sp.get('pieces', 0)} pieces, {len(sp.get('halved', []))} halved, "
            f"{len(rec)} recovered ({sum(x['words'] for x in rec)} words, "
            f"{sum(x['span_s'][1] - x['span_s'][0] for x in rec):.1f} s), "
            f"{len(sp.get('unrecognised', []))} unrecognised"
        )
        dur = float(docs[(wav.stem, "ours")].get("duration", 0))
        print(
            f"| {wav.stem} ({dur:.0f} s, {n} words) | {med['seq']:.2f} | {med['batched']:.2f} | "
            f"{med['ours']:.2f} | {med['seq'] / med['ours']:.2f} | "
            f"{med['batched'] / med['ours']:.2f} | "
            f"{cpu['seq']:.1f} / {cpu['batched']:.1f} / {cpu['ours']:.1f} | "
            f"{wer['seq']:.2f} | {wer['batched']:.2f} | "
            f"{wer['ours']:.2f} | {lost['batched']:.2f}% | {lost['ours']:.2f}% | {guard} |"
        )
    print(f"\n{a.rounds} rounds, medians of whole processes; recordings and outputs in {work}")


if __name__ == "__main__":
    main()
