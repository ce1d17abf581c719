"""Decoding (audio.py): the bundled samples go through PyAV, in every supported PyAV."""

from __future__ import annotations

import av
import pytest

from epyc_whisper import audio, job
from tests.conftest import SAMPLES

MEDIA = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".wav", ".flac"))


@pytest.mark.parametrize("path", MEDIA, ids=lambda p: p.name)
def test_bundled_samples_decode_through_pyav_not_the_fallback(path) -> None:
    """Each bundled sample decodes on the fast path: PyAV itself returns its audio and
    decode() adds no note. A PyAV upgrade that breaks av.open (as 19 did by removing
    metadata_errors) fails here instead of sending every file to the ffmpeg fallback."""
    samples = audio.decode_pyav(str(path))
    assert samples.size > 16000 * 0.5 and samples.dtype.name == "float32"
    notes: list[str] = []
    again = audio.decode(str(path), notes=notes)
    assert notes == [] and again.size == samples.size


def test_open_options_follow_the_pyav_version() -> None:
    """metadata_errors is passed to av.open only where PyAV still takes it (before 19);
    the installed version gets the options that match it."""
    assert audio.open_options("18.1.0") == {"metadata_errors": "ignore"}
    assert audio.open_options("19.0.2") == {}
    assert audio.open_options("20.1") == {}
    assert audio._OPEN == audio.open_options(av.__version__)


def test_fallback_note_is_what_the_summary_counts() -> None:
    """The parent counts fallback decodes by the note's start, without importing PyAV:
    the two strings must agree."""
    assert audio.FALLBACK_NOTE.startswith(job.FALLBACK_PREFIX)
