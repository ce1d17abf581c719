"""Build a long recording from real clips, for the long-recording measurements (issue 5).

    python tests/make_long.py OUT.wav SEED SECONDS [MANIFEST]

Joins English clips of ../shared/data/dev (ivr8k, phrases16k), shuffled with SEED, with
silences of 0.4-6 s between them and one stretch of 12 clips 0.12 s apart (continuous
speech longer than a piece), until SECONDS of audio. The joined reference transcript is
written beside it (OUT.txt). Measured with it (README, closing note): long10 = seed 1,
long10b = seed 7, 600 s each.
"""

from __future__ import annotations

import csv
import random
import sys
import wave
from pathlib import Path

import numpy as np

from epyc_whisper.audio import decode_pyav


def main(out: str, seed: int, target: float, manifest: str) -> None:
    root = Path(manifest).parent
    with open(manifest, encoding="utf-8", newline="") as f:
        rows = [
            r
            for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if r["subset"] in ("ivr8k", "phrases16k")
        ]
    random.seed(seed)
    random.shuffle(rows)
    parts, refs, total = [], [], 0.0
    for i, r in enumerate(rows):
        a = decode_pyav(str(root / r["file"]))
        parts.append(a)
        refs.append(r["reference_transcript"])
        total += len(a) / 16000
        gap = 0.12 if 5 <= i < 17 else random.choice([0.4, 0.8, 1.5, 3.0, 6.0])
        parts.append(np.zeros(int(gap * 16000), np.float32))
        total += gap
        if total >= target:
            break
    pcm = (np.concatenate(parts) * 32767).astype(np.int16)
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    Path(out).with_suffix(".txt").write_text(" ".join(refs) + "\n", encoding="utf-8")
    print(f"{out}: {len(pcm) / 16000:.1f} s")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        args[0],
        int(args[1]),
        float(args[2]),
        args[3] if len(args) > 3 else "../shared/data/dev/manifest.tsv",
    )
