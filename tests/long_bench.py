"""Long recordings of the two kinds issue 13 names, three ways, side by side in one run.

    python tests/long_bench.py [--rounds 3] [--seeds 1,2] [--kinds pauses,prompts]
                               [--manifest ../shared/data/dev/manifest.tsv] [--dir DIR]
                               [--ways seq,batched,ours]

Builds each recording with make_long.py (``pauses``: spontaneous-ish speech with long
pauses; ``room``: the same in room tone; ``prompts``: about 100 telephone prompts of one
voice, 0.75 s apart, 8 kHz, 10 minutes), then runs faster-whisper sequential and
BatchedInferencePipeline(8) (long_baseline.py) and ``epyc-whisper transcribe --model
bundled`` in turn, each a whole process timed from outside, ``--rounds`` rounds. Prints
the medians, the ratios, the WER of each, how many of the words that sequential gets
right (in every round) each other way misses ("lost"), how many one sequential run
misses of another's (its own spread: it samples at higher temperatures), and what our
guard did (halved pieces, recovered and unrecognised speech, quiet speech taken), from
our json. "lost in heard clips" leaves out the clips in which Silero VAD hears no speech
at all in the recording (whispered ones): BatchedInferencePipeline's VAD drops their
words, and ours has them only from the guard's quiet speech (engine._quiet_speech).
Every run is kept in DIR/runs.json: a way left out of ``--ways`` is taken from there (an
earlier run in the same DIR).
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
import wave
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


def make_long_duration(wav: Path) -> float:
    with wave.open(str(wav), "rb") as w:
        return w.getnframes() / w.getframerate()


def unheard(wav: Path) -> set[int]:
    """Positions of the reference words in clips where Silero VAD, as the engine runs it
    on the whole recording, hears no speech at all (whispered clips: no split recording
    and no BatchedInferencePipeline can have their words; sequential, without VAD, can)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    from epyc_whisper.audio import decode_pyav

    vad = VadOptions(min_silence_duration_ms=300, speech_pad_ms=150)  # engine.split_recording
    speech = [
        (c["start"] / 16000, c["end"] / 16000)
        for c in get_speech_timestamps(decode_pyav(str(wav)), vad)
    ]
    out, n = set(), 0
    for line in wav.with_suffix(".clips.tsv").read_text(encoding="utf-8").splitlines():
        s, e, text = line.split("\t", 2)
        k = len((normalise(text) or "").split())
        if not any(a < float(e) and b > float(s) for a, b in speech):
            out.update(range(n, n + k))
        n += k
    return out


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
    p.add_argument(
        "--ways",
        default=",".join(WAYS),
        help="the ways to run; a way left out is read from DIR/out (an earlier run's)",
    )
    a = p.parse_args()
    work = Path(a.dir or tempfile.mkdtemp(prefix="long-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    recs = []
    for kind in a.kinds.split(","):
        for seed in a.seeds.split(","):
            wav = work / f"{kind}{seed}.wav"
            make_long.main(str(wav), int(seed), 600.0, a.manifest, kind)
            recs.append(wav)
    # Every round of every way: wall, CPU, text (and our split record), kept in
    # DIR/runs.json, so that a way left out of --ways is taken from an earlier run's.
    store = work / "runs.json"
    runs: dict[str, dict[str, list[dict]]] = (
        json.loads(store.read_text(encoding="utf-8")) if store.exists() else {}
    )
    ways = a.ways.split(",")
    for wav in recs:
        for way in ways:
            runs.setdefault(wav.stem, {})[way] = []
    for r in range(a.rounds):
        for wav in recs:
            # Rotated each round, so that drift in the machine's load hits every way alike.
            for way in WAYS[r % 3 :] + WAYS[: r % 3]:
                if way not in ways:
                    continue
                wall, cpu, doc = run(way, wav, work / "out")
                runs[wav.stem][way].append(
                    {"wall": wall, "cpu": cpu, "text": doc["text"], "split": doc.get("split", {})}
                )
                print(
                    f"round {r + 1} {wav.stem} {way}: {wall:.2f} s, cpu {cpu:.2f} s",
                    file=sys.stderr,
                )
    store.write_text(json.dumps(runs), encoding="utf-8")
    print(
        "| recording | seq s | batched(8) s | ours s | x seq | x batched | CPU s seq / batched / "
        "ours | WER seq | WER batched | WER ours | lost seq (another run) | lost batched "
        "| lost ours | lost in heard clips batched / ours | guard (ours) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for wav in recs:
        ref = normalise(wav.with_suffix(".txt").read_text(encoding="utf-8"))
        n = len(ref.split())
        got = runs[wav.stem]
        med = {w: statistics.median(x["wall"] for x in got[w]) for w in WAYS}
        cpu = {w: statistics.median(x["cpu"] for x in got[w]) for w in WAYS}
        last = {w: got[w][-1]["text"] for w in WAYS}
        wer = {w: 100 * jiwer.wer(ref, normalise(last[w]) or "") for w in WAYS}
        # Sequential samples at its higher temperatures, so the words it gets right move
        # from run to run: "lost" is measured against the words it got right in every
        # round, and "lost seq" is what one of its runs misses of another's (the spread
        # of the yardstick itself; with one round, nothing to compare: n/a).
        seqs = [right(ref, x["text"]) for x in got["seq"]]
        steady = set.intersection(*seqs)
        lost = {
            w: 100 * len(steady - right(ref, last[w])) / max(1, len(steady))
            for w in ("batched", "ours")
        }
        # The same, leaving out the clips VAD does not hear (what no guard can recover).
        heard = steady - unheard(wav)
        lost_heard = {
            w: 100 * len(heard - right(ref, last[w])) / max(1, len(heard))
            for w in ("batched", "ours")
        }
        spread = [100 * len(x - y) / max(1, len(x)) for x in seqs for y in seqs if x is not y]
        lost_seq = f"{statistics.median(spread):.2f}%" if spread else "n/a"
        sp = got["ours"][-1].get("split", {})
        rec, quiet = sp.get("recovered", []), sp.get("quiet", [])
        guard = (
            f"{sp.get('pieces', 0)} pieces, {len(sp.get('halved', []))} halved, "
            f"{len(rec)} recovered ({sum(x['words'] for x in rec)} words, "
            f"{sum(x['span_s'][1] - x['span_s'][0] for x in rec):.1f} s), "
            f"{len(sp.get('unrecognised', []))} unrecognised, "
            f"{len(quiet)} quiet ({sum(x['words'] for x in quiet)} words)"
        )
        dur = float(make_long_duration(wav))
        print(
            f"| {wav.stem} ({dur:.0f} s, {n} words) | {med['seq']:.2f} | {med['batched']:.2f} | "
            f"{med['ours']:.2f} | {med['seq'] / med['ours']:.2f} | "
            f"{med['batched'] / med['ours']:.2f} | "
            f"{cpu['seq']:.1f} / {cpu['batched']:.1f} / {cpu['ours']:.1f} | "
            f"{wer['seq']:.2f} | {wer['batched']:.2f} | "
            f"{wer['ours']:.2f} | {lost_seq} | {lost['batched']:.2f}% | {lost['ours']:.2f}% "
            f"| {lost_heard['batched']:.2f}% / {lost_heard['ours']:.2f}% | {guard} |"
        )
    print(f"\n{a.rounds} rounds, medians of whole processes; recordings and outputs in {work}")


if __name__ == "__main__":
    main()
