"""A drop-in for VideoRAG's ASR step, ``speech_to_text`` in ``videorag/_videoutil/asr.py``.

VideoRAG cuts each video into segments (30 s by default), writes each segment's audio
to ``{working_dir}/_cache/{video_name}/{segment_name}.{audio_output_format}`` (mp3 by
default) and calls ``speech_to_text(video_name, working_dir, segment_index2name,
audio_output_format)``. Its own version creates a faster-whisper ``WhisperModel`` for
every video and transcribes the segments one by one. This one sends all of a video's
segments to the process-wide shared ``Transcriber`` (``guide.shared``), so the models
load once per process, however many videos follow, and the segments run in parallel.

What it returns is what VideoRAG's returns: ``{index: text}`` for every index of
``segment_index2name``, in its order, where text is one line ``"[%.2fs -> %.2fs] %s\\n"``
(start, end, text, times from the segment's start) per segment, and ``""`` for a
segment whose audio file does not exist. One difference: a file that exists but
cannot be transcribed gives ``""`` and a logged warning naming the file and the
reason, where VideoRAG's loop would stop the whole video with an exception.

``global_config`` (VideoRAG's ``asdict(self)``) may carry ``asr_model`` (the model) and
``asr_config``, the guide's dict (``guide.asr_config_settings``). Without either, the
usual settings apply (``EPYC_WHISPER_MODEL``, a config file, ...).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from epyc_whisper import guide

if TYPE_CHECKING:
    from epyc_whisper.transcriber import Transcriber, Transcript

log = logging.getLogger(__name__)

#: VideoRAG's line per segment (videorag/_videoutil/asr.py).
LINE = "[%.2fs -> %.2fs] %s\n"


def segment_paths(
    video_name: str, working_dir: str, segment_index2name: Mapping[str, str], audio_format: str
) -> dict[str, str]:
    """index -> the audio file VideoRAG's split step wrote for that segment."""
    cache = os.path.join(working_dir, "_cache", video_name)
    return {
        index: os.path.join(cache, f"{name}.{audio_format}")
        for index, name in segment_index2name.items()
    }


def lines(transcript: Transcript) -> str:
    """A transcript as VideoRAG writes it: one line per segment; "" when it failed."""
    if transcript.status != "done":
        log.warning("speech_to_text: %s: %s", transcript.source, transcript.error)
        return ""
    return "".join(LINE % (s.start, s.end, s.text) for s in transcript.segments)


def manager(global_config: Mapping[str, Any] | None = None) -> Transcriber:
    """The shared ``Transcriber`` for ``global_config``'s ``asr_model`` and ``asr_config``;
    the current one whatever its settings when ``global_config`` names neither."""
    config = dict(global_config or {})
    asr_config = dict(config.get("asr_config") or {})
    if config.get("asr_model"):
        asr_config["model"] = config["asr_model"]
    if not asr_config:
        return guide.shared({}, fresh=False)
    settings, in_process = guide.asr_config_settings(asr_config)
    return guide.shared(settings, in_process=in_process, fresh=True)


def _present(paths: Mapping[str, str]) -> tuple[list[str], list[str]]:
    # VideoRAG skips a missing file (its split step logs why it wrote none) with "".
    found = [(i, p) for i, p in paths.items() if os.path.exists(p)]
    return [i for i, _ in found], [p for _, p in found]


def _collect(indexes: Sequence[str], order: Sequence[str], done: Sequence[Any]) -> dict[str, str]:
    texts = {i: lines(t) for i, t in zip(indexes, done, strict=True)}
    return {i: texts.get(i, "") for i in order}


def speech_to_text(
    video_name: str,
    working_dir: str,
    segment_index2name: Mapping[str, str],
    audio_output_format: str,
    global_config: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """VideoRAG's ``speech_to_text``: ``{index: "[start -> end] text" lines}`` for the
    segments of one video, through the shared ``Transcriber`` (module docstring)."""
    paths = segment_paths(video_name, working_dir, segment_index2name, audio_output_format)
    indexes, files = _present(paths)
    done = manager(global_config).transcribe(files) if files else []
    return _collect(indexes, list(paths), done)


async def aspeech_to_text(
    video_name: str,
    working_dir: str,
    segment_index2name: Mapping[str, str],
    audio_output_format: str,
    global_config: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """``speech_to_text`` for an event loop (VideoRAG's ``ainsert_videos``): the segments
    are transcribed without blocking the loop, so other videos' steps go on meanwhile."""
    import asyncio

    paths = segment_paths(video_name, working_dir, segment_index2name, audio_output_format)
    # Starting the shared Transcriber (the first time) loads models: off the loop.
    t = await asyncio.to_thread(manager, global_config)
    indexes, files = _present(paths)
    done = await t.atranscribe(files) if files else []
    return _collect(indexes, list(paths), done)
