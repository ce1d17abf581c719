"""What the Python API gives back: ``Transcript`` and its ``Segment`` s, and ``write``.

A Transcript keeps the whole result the workers made (``to_dict()``), which is exactly
what the CLI writes as json; its fields are the parts a caller reads most. Stdlib only,
like writers.py: importing it loads nothing heavy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epyc_whisper import writers

__all__ = ["Segment", "Transcript", "write"]


@dataclass(frozen=True)
class Segment:
    """One segment of a transcript.

    Attributes:
        id: Its number in the transcript, from 1 (faster-whisper's numbering).
        start: Start time in seconds from the start of the input.
        end: End time in seconds.
        text: What was said, with faster-whisper's leading space.
        words: Word timings (dicts of start, end, word, probability) when word
            timestamps were asked for, else None.
        avg_logprob: The decode's average log probability.
        no_speech_prob: The model's probability that the window held no speech.
        compression_ratio: The gzip compression ratio of the text (high: repetitive).
    """

    id: int
    start: float
    end: float
    text: str
    words: list[dict[str, Any]] | None
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Segment:
        return cls(
            int(d["id"]),
            float(d["start"]),
            float(d["end"]),
            str(d["text"]),
            d.get("words"),
            float(d.get("avg_logprob", 0.0)),
            float(d.get("no_speech_prob", 0.0)),
            float(d.get("compression_ratio", 0.0)),
        )


@dataclass(frozen=True)
class Transcript:
    """The outcome of one input of ``Transcriber.transcribe``.

    Attributes:
        source: The file's absolute path, as the CLI's json has it (each file of a folder
            its own); a named path that could not be read, as given; an in-memory input
            (ndarray, bytes), its index in the call's inputs.
        status: ``done`` or ``failed``.
        error: Why it failed, in one line (None when done).
        text: The whole text ("" when failed or when nothing was said).
        segments: The segments, in order.
        language: The language code, given or detected (None when failed).
        language_probability: The detection's probability (1.0 when given).
        duration: Seconds of audio in the input (None when failed).
        no_speech: True when nothing was said (silence, noise, or text the model itself
            doubted was speech, which is then left out as the CLI leaves it out).
    """

    source: str | int
    status: str
    error: str | None = None
    text: str = ""
    segments: list[Segment] = field(default_factory=list)
    language: str | None = None
    language_probability: float | None = None
    duration: float | None = None
    no_speech: bool | None = None
    _result: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> Transcript:
        """From a finished result (job.complete_result has run on it)."""
        return cls(
            source=result["source"],
            status="done",
            text=result["text"],
            segments=[Segment.from_dict(s) for s in result["segments"]],
            language=result.get("language"),
            language_probability=result.get("language_probability"),
            duration=result.get("duration"),
            no_speech=result.get("no_speech"),
            _result=result,
        )

    @classmethod
    def failure(cls, source: str | int, error: str) -> Transcript:
        return cls(source=source, status="failed", error=error)

    @property
    def ok(self) -> bool:
        return self.status == "done"

    def to_dict(self) -> dict[str, Any]:
        """The transcript as the CLI's json has it (a copy: text, segments with every field
        faster-whisper gives, language, then our keys: duration, timings, notes, source,
        model, layout, no_speech, ...). A failed one: source, status and error."""
        if not self._result:
            return {"source": self.source, "status": self.status, "error": self.error}
        return copy.deepcopy(self._result)


def write(transcript: Transcript, fmt: str, path: str | Path | None = None, **options: Any) -> str:
    """Render ``transcript`` as ``fmt`` (txt, vtt, srt, tsv or json), with the CLI's writer
    options (max_line_width, max_line_count, max_words_per_line, highlight_words,
    pretty_json), byte for byte what the CLI writes; written atomically to ``path`` when
    one is given. Returns the text. Raises ValueError for an unknown format or option and
    for a failed transcript (it has nothing to write)."""
    unknown = set(options) - set(writers.WRITER_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown writer option {sorted(unknown)[0]!r}; known: "
            + ", ".join(writers.WRITER_OPTIONS)
        )
    if transcript.status != "done":
        raise ValueError(f"transcript of {transcript.source} failed ({transcript.error})")
    text = writers.get_writer(fmt).render(transcript.to_dict(), options)
    if path is not None:
        writers.atomic_write_text(Path(path), text)
    return text
