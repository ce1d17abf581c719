"""VideoRAG-shaped cache folders for tests and benchmarks, made from real speech.

VideoRAG's split step (``videorag/_videoutil/split.py``) cuts a video into 30 s segments
and writes each one's audio as ``{working_dir}/_cache/{video_name}/{name}.mp3``, where
``name`` is ``"{timestamp}-{index}-{start}-{end}"`` and the index is a string ("0",
"1", ...); it returns ``segment_index2name``. Here a "video" is real dev clips laid one
after another into 30 s segments (a clip never straddles two segments, so each
segment's reference transcript is exact), with silence after the last clip of each
segment, encoded as mp3 with PyAV's libmp3lame. Made up: the order of the clips and the
silences; the speech is real.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from epyc_whisper.audio import decode_pyav

RATE = 16000


@dataclass
class Segment:
    """One segment of a made-up video. Attributes: samples (float32, 16 kHz); reference
    (the words of its clips, in order); clips (the source files)."""

    samples: np.ndarray
    reference: str
    clips: list[Path]


def segments_from(
    clips: Sequence[tuple[Path, str]], seconds: float = 30.0, gap: float = 0.5
) -> list[Segment]:
    """Real clips (path, reference) laid into segments of exactly ``seconds``: each takes
    clips while they fit, ``gap`` s of silence after each, and silence to the end."""
    size = int(seconds * RATE)
    silence = np.zeros(int(gap * RATE), dtype=np.float32)
    out: list[Segment] = []
    parts: list[np.ndarray] = []
    refs: list[str] = []
    used: list[Path] = []

    def close() -> None:
        pcm = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        pcm = np.concatenate([pcm, np.zeros(size - len(pcm), dtype=np.float32)])
        out.append(Segment(pcm, " ".join(r for r in refs if r), list(used)))
        parts.clear(), refs.clear(), used.clear()

    for path, ref in clips:
        audio = decode_pyav(str(path), RATE)[: size - len(silence)]
        if sum(len(p) for p in parts) + len(audio) + len(silence) > size:
            close()
        parts += [audio, silence]
        refs.append(ref)
        used.append(path)
    if parts:
        close()
    return out


def write_mp3(dest: Path, samples: np.ndarray) -> Path:
    """16 kHz mono mp3 (libmp3lame), as VideoRAG's ffmpeg step writes a segment's audio."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
    with av.open(str(dest), "w") as out:
        stream = out.add_stream("libmp3lame", rate=RATE)
        stream.layout = "mono"
        step = 1152  # an mp3 frame
        for j in range(0, len(pcm), step):
            frame = av.AudioFrame.from_ndarray(pcm[j : j + step].reshape(1, -1), "s16", "mono")
            frame.sample_rate = RATE
            frame.pts = j
            frame.time_base = Fraction(1, RATE)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dest


def write_video_cache(
    working_dir: Path,
    video_name: str,
    segments: Sequence[Segment],
    seconds: int = 30,
    missing: Sequence[str] = (),
    stamp: str = "1733000000000",
) -> dict[str, str]:
    """The cache VideoRAG's split step leaves for one video; returns its
    ``segment_index2name``. The indexes in ``missing`` get a name but no file (VideoRAG's
    split step logs a failed extraction and goes on)."""
    cache = working_dir / "_cache" / video_name
    cache.mkdir(parents=True, exist_ok=True)
    index2name: dict[str, str] = {}
    for k, seg in enumerate(segments):
        start, end = k * seconds, (k + 1) * seconds
        name = f"{stamp}-{k}-{start}-{end}"
        index2name[str(k)] = name
        if str(k) not in missing:
            write_mp3(cache / f"{name}.mp3", seg.samples)
    return index2name
