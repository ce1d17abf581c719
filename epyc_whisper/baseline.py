"""The "before" sides of ``bench``: faster-whisper used the ordinary way.

Run as ``python -m epyc_whisper.baseline MODE MODEL OUT.json FILE...`` in a fresh
process, so the timing covers interpreter start, imports and model loading, as a
user's own script would. MODE is ``baseline`` (one ``WhisperModel`` with default
threads, files one after another) or ``reload`` (the model loaded again for
every file, the guide's "before").
"""

from __future__ import annotations

import json
import sys
import time

from faster_whisper import WhisperModel


def main(argv: list[str]) -> None:
    mode, model_path, out, compute_type, beam = argv[:5]
    files = argv[5:]
    loads, load_s = 0, 0.0
    texts: dict[str, str] = {}
    audio = 0.0
    model = None
    # One byte per file finished, for bench's progress (it reads the size while we run).
    with open(out + ".progress", "w", encoding="ascii") as progress:
        for path in files:
            if model is None or mode == "reload":
                t0 = time.perf_counter()
                model = WhisperModel(model_path, compute_type=compute_type)
                loads += 1
                load_s += time.perf_counter() - t0
            try:
                segments, info = model.transcribe(path, beam_size=int(beam))
                texts[path] = "".join(s.text for s in segments)
                audio += info.duration
            except Exception as e:  # report and go on, as transcribe does
                texts[path] = ""
                print(f"{path}: {e}", file=sys.stderr)
            progress.write("\n")
            progress.flush()
    with open(out, "w", encoding="utf-8") as f:
        json.dump(
            {"texts": texts, "loads": loads, "load_seconds": load_s, "audio_seconds": audio}, f
        )


if __name__ == "__main__":
    main(sys.argv[1:])
