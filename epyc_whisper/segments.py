"""A transcript as plain data: segments, words and the per-file result, in one shape.

A leaf module (stdlib only, imports nothing of ours): the worker's recognition code
(``engine``, ``window``, ``packing``) builds every segment here, and the parent's writers
read the same keys, so the engine <-> window import cycle is gone and a segment has one
definition instead of four hand-written dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: A segment's keys: faster-whisper 1.2.1's ``Segment`` fields in their order, as
#: ``dataclasses.asdict`` (whisper-ctranslate2) gives them, which is also the json order.
SEGMENT_KEYS: tuple[str, ...] = (
    "id",
    "seek",
    "start",
    "end",
    "text",
    "tokens",
    "avg_logprob",
    "compression_ratio",
    "no_speech_prob",
    "words",
    "temperature",
)


def word(start: float, end: float, text: str, probability: float) -> dict[str, Any]:
    """One word of a segment (``text`` keeps its leading space, as faster-whisper's)."""
    return {"start": start, "end": end, "word": text, "probability": probability}


def segment(
    start: float,
    end: float,
    text: str,
    *,
    id: int = 0,
    seek: int = 0,
    tokens: Sequence[int] = (),
    avg_logprob: float | None = None,
    compression_ratio: float | None = None,
    no_speech_prob: float | None = None,
    words: list[dict[str, Any]] | None = None,
    temperature: float | None = None,
) -> dict[str, Any]:
    """One segment with every key of SEGMENT_KEYS, in that order; ``words`` None without
    word timestamps."""
    return {
        "id": id,
        "seek": seek,
        "start": start,
        "end": end,
        "text": text,
        "tokens": list(tokens),
        "avg_logprob": avg_logprob,
        "compression_ratio": compression_ratio,
        "no_speech_prob": no_speech_prob,
        "words": words,
        "temperature": temperature,
    }


def segment_dict(seg: Any) -> dict[str, Any]:
    """A faster-whisper Segment as plain data: its fields in its order and its values as
    they are (faster-whisper already rounds times: segments to 3 decimals, words to 2),
    ``words`` None without word timestamps."""
    return segment(
        seg.start,
        seg.end,
        seg.text,
        id=seg.id,
        seek=seg.seek,
        tokens=seg.tokens,
        avg_logprob=seg.avg_logprob,
        compression_ratio=seg.compression_ratio,
        no_speech_prob=seg.no_speech_prob,
        words=None
        if seg.words is None
        else [word(w.start, w.end, w.word, w.probability) for w in seg.words],
        temperature=seg.temperature,
    )


def only_segment_keys(seg: dict[str, Any]) -> dict[str, Any]:
    """The segment without keys of our own (packing's ``foreign_words``), in key order."""
    return {k: seg[k] for k in SEGMENT_KEYS if k in seg}


def transcript(
    segs: list[dict[str, Any]],
    language: str,
    language_probability: float,
    duration: float,
    after_vad: float,
    notes: list[str],
    decode_s: float,
    transcribe_s: float,
) -> dict[str, Any]:
    """The transcript of one file as plain data: openai-whisper's keys plus ours."""
    return {
        "text": "".join(s["text"] for s in segs),
        "segments": segs,
        "language": language,
        "language_probability": round(language_probability, 4),
        "duration": round(duration, 3),
        "duration_after_vad": round(after_vad, 3),
        "timings": {"decode_s": decode_s, "transcribe_s": transcribe_s},
        "notes": notes,
    }
