"""Build a long recording from real clips, for the long-recording measurements.

    python tests/make_long.py OUT.wav SEED SECONDS [MANIFEST] [--kind KIND]

KIND (default ``mixed``, issue 5):
- ``mixed``: English clips of ../shared/data/dev (ivr8k, phrases16k), shuffled with
  SEED, with silences of 0.4-6 s between them and one stretch of 12 clips 0.12 s apart
  (continuous speech longer than a piece), until SECONDS of audio (16 kHz).
- ``pauses`` (issue 13, kind 1): spontaneous-ish speech, one speaker (phrases16k:
  hesitations, many voice qualities), with long pauses (2-8 s) between unrelated
  utterances, so that several of them are squeezed into one piece (16 kHz). The dev
  set has no conversation; this is the nearest shape it allows. Clips in which Silero
  VAD hears no speech (whispered) are left out (``_heard``).
- ``room``: ``pauses`` with every silence between clips filled with real room tone
  instead of digital silence: the part of each clip before its first VAD speech (less
  a quarter second), looped. Measures quiet speech (engine._quiet_speech) where no
  silence is digital: nothing may be found in the tone itself.
- ``prompts`` (issue 13, kind 2): 100 telephone prompts of one voice (ivr8k), picked
  with SEED and played over and over in shuffled order, each 1-3 times in a row (as a
  menu repeats itself), 0.75 s apart, until SECONDS; written at 8 kHz like the clips.

The joined reference transcript is written beside it (OUT.txt), and each clip's
start, end (s) and reference (OUT.clips.tsv). Measured with it
(README): long10 = mixed seed 1, long10b = mixed seed 7, 600 s each.
"""

from __future__ import annotations

import argparse
import csv
import random
import wave
from pathlib import Path

import numpy as np

from epyc_whisper.audio import decode_pyav


def _rows(manifest: str, subsets: tuple[str, ...]) -> list[dict[str, str]]:
    with open(manifest, encoding="utf-8", newline="") as f:
        return [
            r
            for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if r["subset"] in subsets
        ]


def _heard(path: str) -> bool:
    """Whether Silero VAD hears speech in a clip. The whispered clips it does not hear
    are left out of ``pauses``: VAD drops them before any piece is made (as
    BatchedInferencePipeline's does), and that recording measures what happens to the
    speech VAD does hear. Checked alone: in the joined recording, after seconds of
    silence, Silero still hears nothing in 3-5 clips (whispered, high-pitched), whose
    words ours gets only from the guard's quiet speech; long_bench.py counts their words
    apart ("lost in heard clips")."""
    from faster_whisper.vad import get_speech_timestamps

    return bool(get_speech_timestamps(decode_pyav(path)))


def _before_speech(clip: np.ndarray) -> np.ndarray:
    """A clip's room tone: what comes before its first VAD speech, less a quarter second
    (after the speech, a whispered clip's rest would be in it: its words, not tone)."""
    from faster_whisper.vad import get_speech_timestamps

    speech = get_speech_timestamps(clip)
    return clip[: max(0, speech[0]["start"] - 4000)] if speech else clip[:0]


def main(out: str, seed: int, target: float, manifest: str, kind: str = "mixed") -> None:
    root = Path(manifest).parent
    rate = 8000 if kind == "prompts" else 16000
    random.seed(seed)
    if kind == "prompts":
        rows = _rows(manifest, ("ivr8k",))
        random.shuffle(rows)
        rows = rows[:100]
        order = []
        while len(order) < 1000:  # enough rounds of the same prompts for any SECONDS
            # As a menu does when no key is pressed: a prompt is often said again at once.
            order += [
                r for r in random.sample(rows, len(rows)) for _ in range(random.randint(1, 3))
            ]
        rows = order
    else:
        pauses = kind in ("pauses", "room")
        rows = _rows(manifest, ("phrases16k",) if pauses else ("ivr8k", "phrases16k"))
        random.shuffle(rows)
        if pauses:
            rows = [r for r in rows if _heard(str(root / r["file"]))]
    parts, refs, times, total = [], [], [], 0.0
    cache: dict[str, np.ndarray] = {}
    for i, r in enumerate(rows):
        if r["file"] not in cache:
            cache[r["file"]] = decode_pyav(str(root / r["file"]), sampling_rate=rate)
        a = cache[r["file"]]
        parts.append(a)
        refs.append(r["reference_transcript"])
        times.append(f"{total:.3f}\t{total + len(a) / rate:.3f}\t{r['reference_transcript']}\n")
        total += len(a) / rate
        if kind == "prompts":
            gap = 0.75
        elif kind in ("pauses", "room"):
            gap = random.choice([0.5, 1.0, 2.0, 3.0, 5.0, 8.0])
        else:
            gap = 0.12 if 5 <= i < 17 else random.choice([0.4, 0.8, 1.5, 3.0, 6.0])
        parts.append(np.zeros(int(gap * rate), np.float32))
        total += gap
        if total >= target:
            break
    if kind == "room":
        tone = np.concatenate([_before_speech(c) for c in cache.values()])
        for k in range(1, len(parts), 2):  # the silences, from a moving point in the tone
            at = k * rate % len(tone)
            parts[k] = np.resize(np.roll(tone, -at), len(parts[k]))
    pcm = (np.concatenate(parts) * 32767).astype(np.int16)
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    Path(out).with_suffix(".txt").write_text(" ".join(refs) + "\n", encoding="utf-8")
    Path(out).with_suffix(".clips.tsv").write_text("".join(times), encoding="utf-8")
    print(f"{out}: {len(pcm) / rate:.1f} s, {len(refs)} clips")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("seed", type=int)
    p.add_argument("seconds", type=float)
    p.add_argument("manifest", nargs="?", default="../shared/data/dev/manifest.tsv")
    p.add_argument("--kind", choices=("mixed", "pauses", "room", "prompts"), default="mixed")
    a = p.parse_args()
    main(a.out, a.seed, a.seconds, a.manifest, a.kind)
