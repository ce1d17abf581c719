"""faster-whisper on one long file, the two ways issue 5 compares against, timed whole.

    python tests/long_baseline.py seq|batched MODEL FILE OUT.json

``seq``: WhisperModel.transcribe (defaults, beam 5). ``batched``:
BatchedInferencePipeline(batch_size=8). Writes {"text", "wall"}; time the whole process
from outside (/usr/bin/time) to include start-up and model loading, as for ours.
"""

from __future__ import annotations

import json
import sys
import time

t0 = time.perf_counter()
from faster_whisper import BatchedInferencePipeline, WhisperModel  # noqa: E402

mode, model, path, out = sys.argv[1:5]
m = WhisperModel(model, compute_type="int8")
if mode == "seq":
    segments, _ = m.transcribe(path, beam_size=5)
else:
    segments, _ = BatchedInferencePipeline(m).transcribe(path, beam_size=5, batch_size=8)
text = "".join(s.text for s in segments)
with open(out, "w", encoding="utf-8") as f:
    json.dump({"text": text, "wall": time.perf_counter() - t0}, f)
