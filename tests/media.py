"""Making real media for tests with PyAV: videos with a speech track, long joined recordings."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

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
            _encode_pcm(out, a, (samples * 32767).astype(np.int16), 1024)
    return dest


def _encode_pcm(out: Any, stream: Any, pcm: np.ndarray, step: int) -> None:
    """16 kHz mono s16 samples through an audio stream's encoder into the container."""
    for j in range(0, len(pcm), step):
        fr = av.AudioFrame.from_ndarray(pcm[j : j + step].reshape(1, -1), "s16", "mono")
        fr.sample_rate = 16000
        fr.pts = j
        fr.time_base = Fraction(1, 16000)
        for p in stream.encode(fr):
            out.mux(p)
    for p in stream.encode():
        out.mux(p)


# --- made-up and damaged media for the fault matrix (tests/test_faults.py) -------------


def write_wav(dest: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    """A 16-bit mono WAV (stdlib ``wave``) from float samples in [-1, 1]."""
    import wave

    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(dest), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return dest


def white_noise_wav(dest: Path, seconds: float = 6.0, amplitude: float = 0.1) -> Path:
    """Made up: Gaussian white noise (fixed seed), no speech at all."""
    rng = np.random.default_rng(6)
    return write_wav(dest, rng.standard_normal(int(seconds * 16000)) * amplitude)


def joined_speech(dest: Path, clips: list[Path], gap: float = 0.5) -> Path:
    """Real speech: the clips one after another with ``gap`` seconds of silence between."""
    silence = np.zeros(int(gap * 16000), dtype=np.float32)
    parts: list[np.ndarray] = []
    for c in clips:
        parts += [decode_pyav(str(c), 16000), silence]
    return write_wav(dest, np.concatenate(parts))


def encode_audio(src: Path, dest: Path, codec: str) -> Path:
    """Re-encode real speech with PyAV (``libmp3lame`` for .mp3, ``flac`` for .flac)."""
    pcm = (decode_pyav(str(src), 16000) * 32767).astype(np.int16)
    with av.open(str(dest), "w") as out:
        a = out.add_stream(codec, rate=16000)
        a.layout = "mono"
        _encode_pcm(out, a, pcm, 1152)
    return dest


def sparse_long_wav(dest: Path, speech: Path, minutes: int, speech_at: tuple[int, ...]) -> Path:
    """Made up, cheaply: ``minutes`` of digital silence (16 kHz mono WAV, written a minute
    at a time, so making it needs no memory) with the real speech of ``speech`` at the
    start of each minute listed in ``speech_at``."""
    import wave

    talk = (decode_pyav(str(speech), 16000) * 32767).astype("<i2").tobytes()
    minute = bytes(16000 * 2 * 60)
    with wave.open(str(dest), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        for m in range(minutes):
            w.writeframes(talk + minute[len(talk) :] if m in speech_at else minute)
    return dest


def png_bytes(width: int = 8, height: int = 8) -> bytes:
    """A small, valid PNG image (stdlib only)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + bytes([y * 30 % 256, 0, 255 - y] * width) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
