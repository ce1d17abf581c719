"""Decoding media to 16 kHz mono float32, with clear per-file errors and an ffmpeg fallback.

PyAV (faster-whisper's decoder) is the hot path: in-process, no ffmpeg binary
needed, audio tracks of video files included. Where PyAV rejects a file that the
ffmpeg program can still read up to the damage (faster-whisper issue 988), pydub
drives ffmpeg as a fallback for that one file, and the result says so.
"""

from __future__ import annotations

import gc
import io
import os
import shutil
from collections.abc import Iterator
from typing import Any

import av
import numpy as np

SAMPLE_RATE = 16000


class MediaError(Exception):
    """This file cannot be turned into audio; the message says why, in one line."""


def _frames(container: Any, stream: Any) -> Iterator[Any]:
    it = container.decode(stream)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue  # a damaged packet: skip it, keep what can be read


def _resample_into(resampler: Any, frame: Any, buf: io.BytesIO) -> None:
    for out in resampler.resample(frame):
        buf.write(out.to_ndarray().tobytes())


def decode_pyav(path: str, sampling_rate: int = SAMPLE_RATE, track: int = 0) -> np.ndarray:
    """Audio track ``track`` of ``path`` as float32 mono at ``sampling_rate``."""
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=sampling_rate)
    buf = io.BytesIO()
    with av.open(path, mode="r", metadata_errors="ignore") as container:
        streams = container.streams.audio
        if len(streams) == 0:
            raise MediaError("no audio track")
        if track >= len(streams):
            raise MediaError(f"no audio track {track} (the file has {len(streams)})")
        fifo = av.audio.fifo.AudioFifo()
        for frame in _frames(container, streams[track]):
            frame.pts = None  # ignore timestamp gaps in damaged files
            fifo.write(frame)
            if fifo.samples >= 500_000:  # resample in large chunks: far fewer calls
                _resample_into(resampler, fifo.read(), buf)
        if fifo.samples:
            _resample_into(resampler, fifo.read(), buf)
        _resample_into(resampler, None, buf)  # flush
    # Resampler objects are freed only by the garbage collector (faster-whisper issue 390).
    del resampler
    gc.collect()
    return np.frombuffer(buf.getbuffer(), dtype=np.int16).astype(np.float32) / 32768.0


def decode_ffmpeg(path: str, sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The fallback: pydub -> the ffmpeg program, which reads damaged files up to the damage."""
    from pydub import AudioSegment

    seg = AudioSegment.from_file(path).set_channels(1).set_frame_rate(sampling_rate)
    seg = seg.set_sample_width(2)
    return np.frombuffer(seg.raw_data, dtype=np.int16).astype(np.float32) / 32768.0


def decode(
    path: str,
    sampling_rate: int = SAMPLE_RATE,
    track: int = 0,
    notes: list[str] | None = None,
    **_: Any,
) -> np.ndarray:
    """Decode one file, or raise MediaError with a one-line reason."""
    try:
        size = os.stat(path).st_size
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise MediaError("file disappeared before it could be read") from None
    except PermissionError:
        raise MediaError("permission denied") from None
    except OSError as e:
        raise MediaError(f"cannot read: {e.strerror or e}") from None
    if size == 0:
        raise MediaError("empty file (0 bytes)")
    try:
        audio = decode_pyav(path, sampling_rate, track)
        pyav_error = None if audio.size else "no decodable audio"
    except MediaError:
        raise
    except Exception as e:  # PyAV raises many types (av.error.*, ValueError, ...)
        # FFmpeg errors repeat the path; its strerror is the reason alone.
        audio, pyav_error = None, getattr(e, "strerror", None) or f"{type(e).__name__}: {e}"
    if pyav_error is None and audio is not None:
        return audio
    if track == 0 and shutil.which("ffmpeg"):
        try:
            audio = decode_ffmpeg(path, sampling_rate)
        except Exception:
            audio = None
        if audio is not None and audio.size:
            if notes is not None:
                notes.append(f"decoded with ffmpeg (pydub fallback): PyAV said {pyav_error}")
            return audio
    raise MediaError(f"not decodable media ({pyav_error})")
