"""Making real media for tests with PyAV: videos with a speech track, long joined recordings."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from epyc_whisper.audio import decode_pyav


def make_video(
    speech: Path,
    dest: Path,
    audio_tracks: int = 1,
    with_audio: bool = True,
    seconds: float | None = None,
) -> Path:
    """An mp4/mkv: a moving test-pattern video stream plus the real speech of ``speech``
    as AAC (repeated ``audio_tracks`` times; track k>0 is the speech reversed)."""
    audio = decode_pyav(str(speech), 16000)
    if seconds is None:
        seconds = len(audio) / 16000
    fps = 10
    with av.open(str(dest), "w") as out:
        v = out.add_stream("mpeg4", rate=fps)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a_streams = []
        if with_audio:
            for _ in range(audio_tracks):
                a = out.add_stream("aac", rate=16000)
                a.layout = "mono"
                a_streams.append(a)
        for i in range(int(seconds * fps)):
            img = np.full((48, 64, 3), (i * 7) % 255, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for p in v.encode(frame):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        for k, a in enumerate(a_streams):
            samples = audio if k == 0 else audio[::-1].copy()
            pcm = (samples * 32767).astype(np.int16)
            step = 1024
            for j in range(0, len(pcm), step):
                chunk = pcm[j : j + step].reshape(1, -1)
                fr = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
                fr.sample_rate = 16000
                fr.pts = j
                fr.time_base = Fraction(1, 16000)
                for p in a.encode(fr):
                    out.mux(p)
            for p in a.encode():
                out.mux(p)
    return dest
