"""Transcript writers (txt, vtt, srt, tsv, json) and crash-safe file output.

The layouts are those of openai-whisper's ``whisper/utils.py`` (release 20250625:
``format_timestamp``, ``WriteTXT``, ``WriteVTT``, ``WriteSRT``, ``WriteTSV``,
``SubtitlesWriter.iterate_result`` with its options ``max_line_width``, ``max_line_count``,
``max_words_per_line`` and ``highlight_words``) and of whisper-ctranslate2 0.5.8's
``writers.py``, so a user switching from either tool gets the same bytes on Linux. json is
whisper-ctranslate2's: its result dict (``text``, ``segments``, ``language``), each segment
with faster-whisper's fields in their order (``words`` null without word timestamps), one
line (``--pretty-json``: indented by 4, non-ASCII as is, as its ``--pretty_json True``); our
own per-file keys follow its keys. Deviations, only where those tools break, drop output or
disagree:

* In word-timestamp mode a segment without words becomes one cue with the segment's own
  times and text (both tools drop it, and openai-whisper fails when the first one has none).
* ``-->`` inside cue text is always written as ``->``. Both tools do that only without word
  timestamps; a ``-->`` in a cue's text makes the file unparseable.
* ``max_line_count`` with ``max_line_width`` but no ``max_words_per_line``: cues run across
  segments and break at pauses over 3 s, as openai-whisper's do; whisper-ctranslate2 0.5.8
  also needs ``max_words_per_line`` for that and otherwise keeps segments apart.

Stdlib only: this module is imported by the CLI before the thread environment is set.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from epyc_whisper.segments import SEGMENT_KEYS

__all__ = [
    "FORMATS",
    "SEGMENT_KEYS",
    "WRITER_OPTIONS",
    "ResultWriter",
    "WriteJSON",
    "WriteSRT",
    "WriteTSV",
    "WriteTXT",
    "WriteVTT",
    "atomic_write_text",
    "format_timestamp",
    "get_writer",
    "output_paths",
    "parse_formats",
    "remove_stale_temps",
    "write_outputs",
]

FORMATS: tuple[str, ...] = ("txt", "vtt", "srt", "tsv", "json")

#: The settings the writers take (openai-whisper's writer options, and pretty_json).
WRITER_OPTIONS: tuple[str, ...] = (
    "max_line_width",
    "max_line_count",
    "max_words_per_line",
    "highlight_words",
    "pretty_json",
)

#: A segment's keys in json are segments.SEGMENT_KEYS. The result's own first keys:
RESULT_KEYS: tuple[str, ...] = ("text", "segments", "language")

# openai-whisper's defaults when max_line_width / max_words_per_line are not given.
_MAX_LINE_WIDTH = 1000
_MAX_WORDS_PER_LINE = 1000

# Temporary files of atomic_write_text: ".<target name>.epyc-<8 hex>.tmp". The leading dot
# hides them from globs such as "*.srt"; the "epyc-" tag lets remove_stale_temps tell them
# from anyone else's ".tmp" files.
_TEMP_TAG = "epyc-"
_TEMP_RE = re.compile(r"^\..*\." + _TEMP_TAG + r"[0-9a-f]{8}\.tmp$", re.DOTALL)
# NAME_MAX is 255 bytes on Linux filesystems; the tag, token, dots and ".tmp" take 19.
_TEMP_NAME_BUDGET = 255 - len(f"..{_TEMP_TAG}00000000.tmp")


def parse_formats(spec: str) -> list[str]:
    """Turn a comma-separated format list into format names, in order and without duplicates.

    ``"txt,srt"`` gives ``["txt", "srt"]``; ``"all"`` (alone or among others) gives every
    format in ``FORMATS`` order. Spaces around names and empty items (``"txt,"``) are ignored,
    names are case-insensitive.

    Raises:
        ValueError: for an unknown name, or when no name is given at all.
    """
    names = [part.strip().lower() for part in spec.split(",")]
    names = [name for name in names if name]
    if not names:
        raise ValueError(_unknown_format_message(spec.strip(), allow_all=True))
    chosen: list[str] = []
    for name in names:
        if name == "all":
            chosen.extend(FORMATS)
        elif name in FORMATS:
            chosen.append(name)
        else:
            raise ValueError(_unknown_format_message(name, allow_all=True))
    return list(dict.fromkeys(chosen))


def _unknown_format_message(name: str, *, allow_all: bool) -> str:
    choices = ", ".join(FORMATS + (("all",) if allow_all else ()))
    return f'unknown output format "{name}"; choose from {choices}'


def format_timestamp(
    seconds: float, always_include_hours: bool = False, decimal_marker: str = "."
) -> str:
    """Format seconds as ``[HH:]MM:SS.mmm`` exactly like openai-whisper's ``format_timestamp``.

    Milliseconds are ``round(seconds * 1000)`` (so float error and half-to-even rounding
    behave as there); hours appear when asked for or when non-zero.
    """
    if seconds < 0:
        raise ValueError(f"non-negative timestamp expected, got {seconds}")
    milliseconds = round(seconds * 1000.0)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    secs, milliseconds = divmod(milliseconds, 1_000)
    hours_marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_marker}{minutes:02d}:{secs:02d}{decimal_marker}{milliseconds:03d}"


class ResultWriter:
    """Turns a transcription result into the text of one output file.

    Attributes:
        extension: File name extension without the dot, also the format's name.
    """

    extension: str

    def render(self, result: dict[str, Any], options: dict[str, Any] | None = None) -> str:
        """Return the whole file content for ``result``; lines end with ``"\\n"``.
        ``options``: the WRITER_OPTIONS (missing or None: the tools' defaults)."""
        raise NotImplementedError


class WriteTXT(ResultWriter):
    """Plain text: each segment's text, stripped, on its own line."""

    extension = "txt"

    def render(self, result: dict[str, Any], options: dict[str, Any] | None = None) -> str:
        return "".join(segment["text"].strip() + "\n" for segment in result["segments"])


class SubtitlesWriter(ResultWriter):
    """Shared cue logic of SRT and VTT (openai-whisper's ``SubtitlesWriter``).

    Attributes:
        always_include_hours: Write ``00:`` hours even when zero.
        decimal_marker: Separator between seconds and milliseconds.
    """

    always_include_hours: bool
    decimal_marker: str

    def format_timestamp(self, seconds: float) -> str:
        """Format one cue time in this subtitle format's style."""
        return format_timestamp(seconds, self.always_include_hours, self.decimal_marker)

    def cues(
        self, result: dict[str, Any], options: dict[str, Any] | None = None
    ) -> Iterator[tuple[str, str, str]]:
        """Yield ``(start, end, text)`` per cue (openai-whisper's ``iterate_result``): one
        per segment, or with word timestamps cues shaped by the options, each word
        underlined in a cue of its own with ``highlight_words``.

        Like both reference tools, word mode is chosen by the first segment alone.
        """
        o = options or {}
        segments: list[dict[str, Any]] = result["segments"]
        if segments and segments[0].get("words"):
            for subtitle in _word_subtitles(segments, o):
                start = self.format_timestamp(subtitle[0][0])
                end = self.format_timestamp(subtitle[-1][1])
                text = "".join(word for _, _, word in subtitle).replace("-->", "->")
                if not o.get("highlight_words"):
                    yield start, end, text
                    continue
                last = start
                words = [word.replace("-->", "->") for _, _, word in subtitle]
                for i, (w_start, w_end, _) in enumerate(subtitle):
                    ws, we = self.format_timestamp(w_start), self.format_timestamp(w_end)
                    if last != ws:
                        yield last, ws, text
                    yield (
                        ws,
                        we,
                        "".join(
                            re.sub(r"^(\s*)(.*)$", r"\1<u>\2</u>", word) if j == i else word
                            for j, word in enumerate(words)
                        ),
                    )
                    last = we
        else:
            for segment in segments:
                yield (
                    self.format_timestamp(segment["start"]),
                    self.format_timestamp(segment["end"]),
                    segment["text"].strip().replace("-->", "->"),
                )


def _word_subtitles(
    segments: list[dict[str, Any]], options: dict[str, Any]
) -> Iterator[list[tuple[float, float, str]]]:
    """openai-whisper's ``iterate_subtitles``, as (start, end, word) per word of a cue.

    Without max_line_count (or without max_line_width) segments are kept: every segment
    starts a cue, and so does every ``max_words_per_line`` words of it. With both, cues run
    across segments: a new one starts after ``max_line_count`` lines or a pause over 3 s. A
    line longer than ``max_line_width`` characters (1000 by default) breaks. The first
    word of each line loses its surrounding spaces; the rest keep theirs.
    """
    max_line_count = options.get("max_line_count") or None
    raw_width = options.get("max_line_width") or None
    preserve_segments = max_line_count is None or raw_width is None
    max_line_width = raw_width or _MAX_LINE_WIDTH
    max_words = options.get("max_words_per_line") or _MAX_WORDS_PER_LINE
    line_len = 0
    line_count = 1
    subtitle: list[tuple[float, float, str]] = []
    last = next((s["words"][0]["start"] for s in segments if s.get("words")), 0.0)
    for segment in segments:
        # A segment without words is one word of its own text (see the module docstring).
        words = segment.get("words") or [
            {"word": segment["text"], "start": segment["start"], "end": segment["end"]}
        ]
        for chunk_start in range(0, len(words), max_words):
            chunk = words[chunk_start : chunk_start + max_words]
            for i, timing in enumerate(chunk):
                word: str = timing["word"]
                long_pause = not preserve_segments and timing["start"] - last > 3.0
                has_room = line_len + len(word) <= max_line_width
                seg_break = i == 0 and len(subtitle) > 0 and preserve_segments
                if line_len > 0 and has_room and not long_pause and not seg_break:
                    line_len += len(word)  # line continuation
                else:
                    word = word.strip()
                    if (
                        len(subtitle) > 0
                        and max_line_count is not None
                        and (long_pause or line_count >= max_line_count)
                        or seg_break
                    ):
                        yield subtitle  # cue break
                        subtitle = []
                        line_count = 1
                    elif line_len > 0:
                        line_count += 1  # line break
                        word = "\n" + word
                    line_len = len(word.strip())
                subtitle.append((timing["start"], timing["end"], word))
                last = timing["start"]
    if subtitle:
        yield subtitle


class WriteVTT(SubtitlesWriter):
    """WebVTT: a ``WEBVTT`` header, then ``MM:SS.mmm --> MM:SS.mmm`` cues (hours when > 0)."""

    extension = "vtt"
    always_include_hours = False
    decimal_marker = "."

    def render(self, result: dict[str, Any], options: dict[str, Any] | None = None) -> str:
        parts = ["WEBVTT\n\n"]
        parts.extend(
            f"{start} --> {end}\n{text}\n\n" for start, end, text in self.cues(result, options)
        )
        return "".join(parts)


class WriteSRT(SubtitlesWriter):
    """SubRip: numbered cues from 1, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``."""

    extension = "srt"
    always_include_hours = True
    decimal_marker = ","

    def render(self, result: dict[str, Any], options: dict[str, Any] | None = None) -> str:
        return "".join(
            f"{i}\n{start} --> {end}\n{text}\n\n"
            for i, (start, end, text) in enumerate(self.cues(result, options), start=1)
        )


class WriteTSV(ResultWriter):
    """Tab-separated ``start``, ``end`` (integer milliseconds) and ``text`` per segment.

    Integer milliseconds keep locale decimal commas out of the file (openai-whisper's reason).
    """

    extension = "tsv"

    def render(self, result: dict[str, Any], options: dict[str, Any] | None = None) -> str:
        lines = ["start\tend\ttext\n"]
        for segment in result["segments"]:
            text = segment["text"].strip().replace("\t", " ")
            start, end = round(1000 * segment["start"]), round(1000 * segment["end"])
            lines.append(f"{start}\t{end}\t{text}\n")
        return "".join(lines)


class WriteJSON(ResultWriter):
    """whisper-ctranslate2's json: ``text``, ``segments``, ``language`` first, then our own
    keys in the result's order; each segment's keys in SEGMENT_KEYS order (``words`` null
    when there are none, keys of ours after), values as they are.

    One line, no trailing newline, ``ensure_ascii`` on (``json.dump(result, file)``); with
    ``pretty_json`` indented by 4 with non-ASCII text as is (its ``--pretty_json True``).
    """

    extension = "json"

    def render(self, result: dict[str, Any], options: dict[str, Any] | None = None) -> str:
        doc = {k: result[k] for k in RESULT_KEYS if k in result}
        doc["segments"] = [_json_segment(s) for s in result.get("segments", [])]
        doc.update((k, v) for k, v in result.items() if k not in doc)
        if (options or {}).get("pretty_json"):
            return json.dumps(doc, indent=4, ensure_ascii=False)
        return json.dumps(doc)


def _json_segment(segment: dict[str, Any]) -> dict[str, Any]:
    seg = {k: segment.get(k) for k in SEGMENT_KEYS}
    seg.update((k, v) for k, v in segment.items() if k not in seg)
    return seg


_WRITERS: dict[str, type[ResultWriter]] = {
    "txt": WriteTXT,
    "vtt": WriteVTT,
    "srt": WriteSRT,
    "tsv": WriteTSV,
    "json": WriteJSON,
}


def get_writer(fmt: str) -> ResultWriter:
    """Return the writer for one format name in ``FORMATS`` (use ``parse_formats`` for "all").

    Raises:
        ValueError: for any other name.
    """
    try:
        return _WRITERS[fmt]()
    except KeyError:
        raise ValueError(_unknown_format_message(fmt, allow_all=False)) from None


def _temp_path(path: Path) -> Path:
    stem = path.name
    # Keep the temporary name within NAME_MAX even for a target name near the limit.
    while len(os.fsencode(stem)) > _TEMP_NAME_BUDGET:
        stem = stem[:-1]
    return path.with_name(f".{stem}.{_TEMP_TAG}{secrets.token_hex(4)}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` so readers see old or new, whole.

    The text goes to a hidden temporary file in the same folder (``.<name>.epyc-<hex>.tmp``),
    is flushed and fsync'ed, then renamed onto ``path`` with ``os.replace``. On any error,
    interrupts included, the temporary file is removed and the error re-raised, so an existing
    ``path`` keeps its old content. Parent folders are created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = _temp_path(path)
        try:
            # Mode 0o666 minus the umask, as open(path, "w") would give (mkstemp gives 0o600).
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with open(fd, "w", encoding="utf-8", newline="") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def output_paths(base: Path, formats: Sequence[str]) -> list[Path]:
    """The files ``write_outputs(result, base, formats)`` writes, in order.

    ``base`` is the output path without extension; ``"." + format`` is appended to its full
    name, so ``out/a.b`` gives ``out/a.b.txt``. Duplicate formats count once.
    """
    return [base.with_name(f"{base.name}.{fmt}") for fmt in dict.fromkeys(formats)]


def write_outputs(
    result: dict[str, Any],
    base: Path,
    formats: Sequence[str],
    options: dict[str, Any] | None = None,
) -> list[Path]:
    """Render ``result`` in every format (with the WRITER_OPTIONS in ``options``), then
    write each file atomically; return the paths.

    Rendering comes first, so a result a writer cannot handle (or an unknown format) raises
    before any file is touched. If a write fails, the files this call already wrote stay
    (each is whole) and the error propagates.
    """
    unique = list(dict.fromkeys(formats))
    rendered = [get_writer(fmt).render(result, options) for fmt in unique]
    paths = output_paths(base, unique)
    for path, text in zip(paths, rendered, strict=True):
        atomic_write_text(path, text)
    return paths


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files that ``atomic_write_text`` left under ``folder`` (recursively).

    Only regular files named like ours (``.<name>.epyc-<8 hex>.tmp``) are removed; symlinks
    are neither followed nor removed. Meant for the start of a run, before any writer of this
    folder is active: a live writer's temporary file would be removed too. Returns the count;
    a missing folder gives 0.
    """
    removed = 0
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            if not _TEMP_RE.match(name):
                continue
            candidate = os.path.join(dirpath, name)
            if os.path.islink(candidate) or not os.path.isfile(candidate):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(candidate)
                removed += 1
    return removed
