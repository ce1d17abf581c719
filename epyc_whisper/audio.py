"""Decoding media to 16 kHz mono float32, with clear per-file errors and an ffmpeg fallback.

PyAV (faster-whisper's decoder) is the hot path: in-process, no ffmpeg binary
needed, audio tracks of video files included. Damaged packets are skipped one by
one, as the ffmpeg program does, instead of ending the decode at the first one
(faster-whisper issue 988: ``container.decode()`` is a generator that dies with
its first error, so everything after the damage was lost). Where PyAV still gets
no audio at all (a codec its wheel lacks, such as Codec 2), pydub drives the
ffmpeg program as a fallback for that one file, and the result says so.

Memory: a decoded recording is one float32 array (4 bytes a sample, 230 MB an
hour). The decoder writes into one preallocated array sized from the duration
the file declares, converting each resampled chunk in place, so it never holds
more than that array plus one chunk (the previous BytesIO + ``astype`` + divide
held about 2.5 copies at its peak).
"""

from __future__ import annotations

import os
import shutil
from typing import IO, Any

import av
import numpy as np

from epyc_whisper.errors import MediaError

SAMPLE_RATE = 16000
# Resample in chunks this many input samples long: far fewer calls, bounded memory.
_CHUNK = 500_000
# A declared duration is trusted for preallocation up to this much audio; longer or
# unknown files grow the array (untouched preallocated pages cost no memory).
_PREALLOC_CAP_S = 6 * 3600
_UNKNOWN_S = 600
#: The note a file decoded by the fallback carries (job.py counts them for the summary).
FALLBACK_NOTE = "decoded with ffmpeg (pydub fallback)"


def open_options(version: str) -> dict[str, Any]:
    """Keyword arguments for ``av.open`` in this PyAV version: 19 removed
    ``metadata_errors`` (and passing it raises TypeError, which sent every file to the
    slow fallback); before 19 it keeps undecodable tags from failing the open."""
    major = int(version.split(".")[0])
    return {} if major >= 19 else {"metadata_errors": "ignore"}


_OPEN = open_options(av.__version__)


class _Samples:
    """float32 samples appended chunk by chunk into one growing array."""

    def __init__(self, expected: int) -> None:
        self.buf = np.empty(max(expected, 1 << 16), dtype=np.float32)
        self.n = 0

    def add_s16(self, pcm: np.ndarray) -> None:
        k = pcm.size
        if self.n + k > self.buf.size:
            grown = np.empty(max(self.n + k, int(self.buf.size * 1.5)), dtype=np.float32)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        out = self.buf[self.n : self.n + k]
        out[:] = pcm.reshape(-1)  # int16 -> float32 is exact
        out *= 1.0 / 32768.0  # a power of two: the same bits as faster-whisper's / 32768.0
        self.n += k

    def array(self) -> np.ndarray:
        return self.buf[: self.n]


def _declared_seconds(container: Any, stream: Any) -> float | None:
    """How long the file says this track is (None when it does not say)."""
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _resample_into(resampler: Any, frame: Any, out: _Samples) -> None:
    for r in resampler.resample(frame):
        out.add_s16(r.to_ndarray())


def decode_pyav(
    path: str | IO[bytes],
    sampling_rate: int = SAMPLE_RATE,
    track: int = 0,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Audio track ``track`` of ``path`` (a file name, or a file object such as the
    BytesIO of encoded bytes given to the Python API) as float32 mono at ``sampling_rate``.

    Damaged packets are skipped and counted; a file that decodes to clearly less than
    the duration it declares (truncated, or damaged beyond repair) is noted in ``notes``.
    """
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=sampling_rate)
    damaged = 0
    stopped: str | None = None
    with av.open(path, mode="r", **_OPEN) as container:
        streams = container.streams.audio
        if len(streams) == 0:
            kind = getattr(container.format, "long_name", None) or container.format.name
            raise MediaError(f"no audio track (the file is {kind})")
        if track >= len(streams):
            raise MediaError(f"no audio track {track} (the file has {len(streams)})")
        stream = streams[track]
        declared = _declared_seconds(container, stream)
        expect_s = min(declared, _PREALLOC_CAP_S) if declared else _UNKNOWN_S
        out = _Samples(int(expect_s * sampling_rate * 1.01) + sampling_rate)
        fifo = av.audio.fifo.AudioFifo()
        try:
            # container.decode() in per-packet form, so one bad packet costs one packet.
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    damaged += 1
                    continue
                for frame in frames:
                    frame.pts = None  # ignore timestamp gaps in damaged files
                    fifo.write(frame)
                if fifo.samples >= _CHUNK:
                    _resample_into(resampler, fifo.read(), out)
        except av.error.InvalidDataError as e:  # the container itself is damaged here
            stopped = getattr(e, "strerror", None) or str(e)
        if fifo.samples:
            _resample_into(resampler, fifo.read(), out)
        _resample_into(resampler, None, out)  # flush
    del resampler
    audio = out.array()
    if notes is not None and audio.size:
        got = audio.size / sampling_rate
        if damaged:
            notes.append(f"skipped {damaged} damaged packet(s)")
        if stopped:
            notes.append(f"stopped reading at damaged data ({stopped}) after {got:.1f} s")
        elif declared and got < 0.9 * declared and declared - got > 1.0:
            notes.append(
                f"decoded {got:.1f} s of the {declared:.1f} s the file declares "
                "(truncated or damaged): transcribed what could be read"
            )
    return audio


def decode_ffmpeg(path: str, sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The fallback: pydub -> the ffmpeg program, which reads damaged files up to the damage."""
    from pydub import AudioSegment

    seg = AudioSegment.from_file(path).set_channels(1).set_frame_rate(sampling_rate)
    seg = seg.set_sample_width(2)
    audio = np.frombuffer(seg.raw_data, dtype=np.int16).astype(np.float32)
    audio *= 1.0 / 32768.0
    return audio


def decode(
    path: str,
    sampling_rate: int = SAMPLE_RATE,
    track: int = 0,
    notes: list[str] | None = None,
    **_: Any,
) -> np.ndarray:
    """Decode one file, or raise MediaError with a one-line reason.

    Truncated or damaged files give what can be read (with a note), not an error;
    only a file with no readable audio at all fails.
    """
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
    own: list[str] = []
    try:
        audio = decode_pyav(path, sampling_rate, track, own)
        pyav_error = None if audio.size else "no decodable audio"
    except MediaError:
        raise
    except Exception as e:  # PyAV raises many types (av.error.*, ValueError, ...)
        # FFmpeg errors repeat the path; its strerror is the reason alone.
        audio, pyav_error = None, getattr(e, "strerror", None) or f"{type(e).__name__}: {e}"
    if pyav_error is None and audio is not None:
        if notes is not None:
            notes.extend(own)
        return audio
    if track == 0 and shutil.which("ffmpeg"):
        try:
            audio = decode_ffmpeg(path, sampling_rate)
        except Exception:
            audio = None
        if audio is not None and audio.size:
            if notes is not None:
                notes.append(f"{FALLBACK_NOTE}: PyAV said {pyav_error}")
            return audio
    raise MediaError(f"not decodable media ({pyav_error})")
