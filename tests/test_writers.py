"""Tests for epyc_whisper.writers: layouts, format parsing and crash-safe output.

The result dicts below are made up (no model ran), chosen to hit the layout rules: a
timestamp that rounds up into the next minute (65.9996 s) and one that rounds up into the
first hour (3599.9996 s, so VTT shows hours), non-ASCII text, a tab, and ``-->`` in a
segment's text (the other segments are ``-->``-free).

How the golden files in tests/golden/ were made and checked: they were typed by hand from the
rules in openai-whisper 20250625 ``whisper/utils.py`` (``format_timestamp``: ms =
round(s * 1000), hours ``HH:`` always in SRT and only when non-zero in VTT; SRT ``,`` and VTT
``.`` decimal marker; ``WEBVTT`` plus a blank line; every cue followed by a blank line; text
stripped and ``-->`` turned into ``->`` in cues; TSV integer milliseconds and tabs in text
turned into spaces; TXT one stripped segment per line). Then, outside this repository, the
same dicts were rendered with that release's ``WriteTXT``/``WriteVTT``/``WriteSRT``/
``WriteTSV`` and with whisper-ctranslate2 0.5.8's writers, default options: all clip.*
text files are byte-identical to both. clip.json was written by whisper-ctranslate2 0.5.8's
``WriteJSON`` from the same dict in its own shape (each segment's keys in faster-whisper's
``Segment`` order, ``words`` null), as our json follows it (#17; tests/test_compat.py).
words.* keeps the middle cue, a segment without words, which both tools drop (openai-whisper
and whisper-ctranslate2 0.5.8 give the same bytes minus that cue; see the writers module
docstring).
"""

from __future__ import annotations

import copy
import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from epyc_whisper import writers
from epyc_whisper.writers import (
    FORMATS,
    atomic_write_text,
    format_timestamp,
    get_writer,
    output_paths,
    parse_formats,
    remove_stale_temps,
    write_outputs,
)

GOLDEN = Path(__file__).parent / "golden"


def _segment(i: int, seek: int, start: float, end: float, text: str) -> dict[str, Any]:
    return {
        "id": i,
        "seek": seek,
        "start": start,
        "end": end,
        "text": text,
        "tokens": [50364 + i, 2425, 456, 11],
        "temperature": 0.0,
        "avg_logprob": -0.25,
        "compression_ratio": 0.9,
        "no_speech_prob": 0.01,
    }


def _clip_result() -> dict[str, Any]:
    segments = [
        _segment(0, 0, 0.0, 2.5, " Hello there, café."),
        _segment(1, 250, 2.5, 65.9996, " Ünïcödé wörds, naïve façade."),
        _segment(2, 359999, 3599.9996, 3725.25, " 日本語のテキスト --> arrows\tand a tab "),
    ]
    return {
        "text": "".join(s["text"] for s in segments),
        "segments": segments,
        "language": "en",
        "language_probability": 0.98,
        "duration": 3725.25,
        "model": "tiny.en",
    }


def _words_result() -> dict[str, Any]:
    seg0 = _segment(0, 0, 0.0, 2.5, " Hello there, café.")
    seg0["words"] = [
        {"start": 0.32, "end": 0.6, "word": " Hello", "probability": 0.9},
        {"start": 0.6, "end": 0.98, "word": " there,", "probability": 0.8},
        {"start": 1.1, "end": 1.52, "word": " café.", "probability": 0.7},
    ]
    seg1 = _segment(1, 250, 2.5, 4.0, " Mm-hmm.")
    seg1["words"] = []
    seg2 = _segment(2, 359990, 3599.9, 3601.5, " 日本語です。")
    seg2["words"] = [
        {"start": 3599.98, "end": 3600.4, "word": " 日本語", "probability": 0.9},
        {"start": 3600.4, "end": 3601.2, "word": "です。", "probability": 0.9},
    ]
    segments = [seg0, seg1, seg2]
    return {"text": "".join(s["text"] for s in segments), "segments": segments, "language": "en"}


def _golden(name: str) -> str:
    return (GOLDEN / name).read_bytes().decode("utf-8")


@pytest.mark.parametrize("fmt", ["txt", "vtt", "srt", "tsv"])
def test_text_formats_match_golden_files(fmt: str) -> None:
    """Each text format renders the clip result byte for byte as the golden file."""
    assert get_writer(fmt).render(_clip_result()) == _golden(f"clip.{fmt}")


def test_json_matches_golden_file() -> None:
    """The json writer writes whisper-ctranslate2's bytes, our metadata keys included."""
    rendered = get_writer("json").render(_clip_result())
    assert rendered == _golden("clip.json")
    assert json.loads(rendered)["model"] == "tiny.en"


def test_json_layout_is_openai_json_dump() -> None:
    """JSON is one line, no trailing newline, non-ASCII escaped: their json.dump(result)."""
    rendered = get_writer("json").render(_clip_result())
    assert rendered.isascii()
    assert "\\u00e9" in rendered and "\n" not in rendered
    assert rendered.startswith('{"text": " Hello there, caf\\u00e9.')


@pytest.mark.parametrize("fmt", ["vtt", "srt"])
def test_subtitles_use_word_timings_when_present(fmt: str) -> None:
    """With word timestamps, cues span first to last word; a wordless segment keeps its own."""
    assert get_writer(fmt).render(_words_result()) == _golden(f"words.{fmt}")


@pytest.mark.parametrize("fmt", ["txt", "tsv"])
def test_words_do_not_change_txt_and_tsv(fmt: str) -> None:
    """TXT and TSV use segment text and times whether or not word timings exist."""
    with_words = _words_result()
    without = copy.deepcopy(with_words)
    for segment in without["segments"]:
        del segment["words"]
    writer = get_writer(fmt)
    assert writer.render(with_words) == writer.render(without)


def test_words_none_means_segment_mode() -> None:
    """words=None (faster-whisper without word timestamps) renders like an absent key."""
    result = _clip_result()
    for segment in result["segments"]:
        segment["words"] = None
    assert get_writer("srt").render(result) == _golden("clip.srt")


def test_arrow_in_word_text_is_defused() -> None:
    """A '-->' inside word-mode cue text becomes '->' so the cue line stays parseable."""
    result = _words_result()
    result["segments"][0]["words"][1]["word"] = " -->"
    rendered = get_writer("srt").render(result)
    assert "Hello -> café." in rendered
    assert rendered.count("-->") == 3


def test_long_word_line_breaks_at_openai_width() -> None:
    """A word-mode line over 1000 characters wraps onto a new line, as openai-whisper does."""
    word = " " + "a" * 99  # 100 characters with the space
    words = [{"start": float(i), "end": i + 0.5, "word": word} for i in range(12)]
    seg = _segment(0, 0, 0.0, 12.0, word * 12)
    seg["words"] = words
    text = get_writer("vtt").render({"segments": [seg]}).split("\n")
    assert text[2] == "00:00.000 --> 00:11.500"
    assert text[3] == ("a" * 99) + word * 9  # 99 + 9 * 100 = 999 characters
    assert text[4] == word.strip() + word


def test_empty_result_renders_headers_only() -> None:
    """No segments: empty txt and srt, the VTT header, the TSV header line."""
    empty: dict[str, Any] = {"text": "", "segments": [], "language": "en"}
    rendered = {fmt: get_writer(fmt).render(empty) for fmt in FORMATS}
    assert rendered["txt"] == "" and rendered["srt"] == ""
    assert rendered["vtt"] == "WEBVTT\n\n"
    assert rendered["tsv"] == "start\tend\ttext\n"
    assert json.loads(rendered["json"]) == empty


@pytest.mark.parametrize(
    ("seconds", "hours", "marker", "expected"),
    [
        (0.0, False, ".", "00:00.000"),
        (0.0005, False, ".", "00:00.000"),  # round() is half-to-even, as in openai-whisper
        (0.0015, True, ",", "00:00:00,002"),
        (59.9999, False, ".", "01:00.000"),
        (3600.0, False, ".", "01:00:00.000"),
        (36000 * 10 + 1.25, True, ",", "100:00:01,250"),
    ],
)
def test_format_timestamp(seconds: float, hours: bool, marker: str, expected: str) -> None:
    """Timestamps round to milliseconds and carry into minutes and hours like openai-whisper."""
    assert format_timestamp(seconds, hours, marker) == expected


def test_format_timestamp_rejects_negative() -> None:
    """A negative time is an error, not a malformed timestamp."""
    with pytest.raises(ValueError, match="non-negative"):
        format_timestamp(-0.1)


def test_get_writer_extensions_and_unknown() -> None:
    """get_writer returns a writer per format with that extension; 'all' is not a writer."""
    assert [get_writer(fmt).extension for fmt in FORMATS] == list(FORMATS)
    with pytest.raises(ValueError, match='unknown output format "all"; choose from txt, vtt'):
        get_writer("all")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("txt,srt", ["txt", "srt"]),
        ("all", list(FORMATS)),
        ("json, all", ["json", "txt", "vtt", "srt", "tsv"]),
        (" srt , txt,srt,SRT ", ["srt", "txt"]),
        ("tsv,", ["tsv"]),
    ],
)
def test_parse_formats(spec: str, expected: list[str]) -> None:
    """parse_formats expands 'all', strips spaces, ignores case and keeps first occurrences."""
    assert parse_formats(spec) == expected


@pytest.mark.parametrize(("spec", "bad"), [("txt,xyz", "xyz"), ("", ""), (" , ", ",")])
def test_parse_formats_rejects_bad_names(spec: str, bad: str) -> None:
    """An unknown name or an empty spec raises ValueError naming it and the choices."""
    with pytest.raises(ValueError) as excinfo:
        parse_formats(spec)
    assert str(excinfo.value) == (
        f'unknown output format "{bad}"; choose from txt, vtt, srt, tsv, json, all'
    )


def _stray_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


def test_atomic_write_creates_parents_and_leaves_no_temp(tmp_path: Path) -> None:
    """A successful write creates parent folders, writes UTF-8 with '\\n' kept, no temp left."""
    target = tmp_path / "a" / "b" / "clip.txt"
    atomic_write_text(target, "héllo\nworld\n")
    assert target.read_bytes() == "héllo\nworld\n".encode()
    assert _stray_files(tmp_path) == []


def test_atomic_write_gives_umask_permissions(tmp_path: Path) -> None:
    """The output gets the usual 0666-minus-umask mode, not a temp file's 0600."""
    umask = os.umask(0o022)
    try:
        target = tmp_path / "clip.srt"
        atomic_write_text(target, "x")
    finally:
        os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("patched", "error"),
    [
        ("fsync", OSError(errno.ENOSPC, "No space left on device")),
        ("replace", OSError(errno.EXDEV, "Invalid cross-device link")),
        ("fsync", KeyboardInterrupt()),
    ],
)
def test_atomic_write_failure_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patched: str, error: BaseException
) -> None:
    """A failure mid-write (disk full, interrupt) re-raises, keeps the old file, drops the temp."""
    target = tmp_path / "clip.txt"
    target.write_text("old content\n", encoding="utf-8")

    def fail(*args: object) -> None:
        raise error

    monkeypatch.setattr(writers.os, patched, fail)
    with pytest.raises(type(error)):
        atomic_write_text(target, "new content that never lands\n" * 1000)
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.txt"]


def test_atomic_write_failure_on_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from the file write itself leaves no new file and no temp."""
    target = tmp_path / "out" / "clip.vtt"
    real_open = open

    class FullDisk:
        def __init__(self, file: Any) -> None:
            self._file = file

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self._file.close()

        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        return FullDisk(real_open(file, *args, **kwargs))

    monkeypatch.setattr(writers, "open", fake_open, raising=False)
    with pytest.raises(OSError) as excinfo:
        atomic_write_text(target, "text")
    assert excinfo.value.errno == errno.ENOSPC
    assert list((tmp_path / "out").iterdir()) == []


def test_write_outputs_writes_exactly_output_paths(tmp_path: Path) -> None:
    """write_outputs appends '.fmt' to the full base name and writes just output_paths."""
    base = tmp_path / "nested" / "talk.v2"
    formats = parse_formats("all")
    expected = output_paths(base, formats)
    assert [p.name for p in expected] == [f"talk.v2.{fmt}" for fmt in FORMATS]
    written = write_outputs(_clip_result(), base, formats)
    assert written == expected
    assert sorted(p.name for p in (tmp_path / "nested").iterdir()) == sorted(
        p.name for p in expected
    )
    assert (tmp_path / "nested" / "talk.v2.srt").read_text(encoding="utf-8") == _golden("clip.srt")


def test_write_outputs_dedupes_formats(tmp_path: Path) -> None:
    """A format listed twice is written once, and output_paths agrees."""
    base = tmp_path / "clip"
    assert output_paths(base, ["txt", "txt", "srt"]) == [
        tmp_path / "clip.txt",
        tmp_path / "clip.srt",
    ]
    assert write_outputs(_clip_result(), base, ["txt", "txt", "srt"]) == output_paths(
        base, ["txt", "srt"]
    )


def test_write_outputs_renders_before_writing(tmp_path: Path) -> None:
    """A result that a later format cannot render raises before any file is written."""
    result = _clip_result()
    result["not_json"] = {1, 2}  # a set: the txt writer copes, json.dumps does not
    with pytest.raises(TypeError):
        write_outputs(result, tmp_path / "clip", ["txt", "json"])
    assert list(tmp_path.iterdir()) == []


def test_write_outputs_keeps_finished_files_when_a_later_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the second write fails, the first file stays whole and the error propagates."""
    real = writers.atomic_write_text

    def fail_on_srt(path: Path, text: str) -> None:
        if path.suffix == ".srt":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr(writers, "atomic_write_text", fail_on_srt)
    with pytest.raises(OSError):
        write_outputs(_clip_result(), tmp_path / "clip", ["txt", "srt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.txt"]
    assert (tmp_path / "clip.txt").read_text(encoding="utf-8") == _golden("clip.txt")


def test_remove_stale_temps_removes_only_ours(tmp_path: Path) -> None:
    """Only regular '.<name>.epyc-<8 hex>.tmp' files go, in subfolders too; others stay."""
    ours = [
        tmp_path / ".clip.txt.epyc-0123abcd.tmp",
        tmp_path / "sub" / "deeper" / ".talk.v2.srt.epyc-deadbeef.tmp",
    ]
    others = [
        tmp_path / "clip.txt",
        tmp_path / "notes.tmp",
        tmp_path / ".other.tmp",
        tmp_path / ".clip.txt.0123abcd.tmp",
        tmp_path / ".clip.txt.epyc-XYZ.tmp",
        tmp_path / "sub" / "clip.epyc-0123abcd.tmp",
    ]
    for path in ours + others:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x", encoding="utf-8")
    link = tmp_path / ".linked.srt.epyc-00000000.tmp"
    link.symlink_to(tmp_path / "clip.txt")  # named like ours, but a symlink: left alone
    assert remove_stale_temps(tmp_path) == 2
    assert link.is_symlink()
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in others)
    assert remove_stale_temps(tmp_path / "missing") == 0


def test_remove_stale_temps_finds_a_real_leftover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temp file left by a killed atomic_write_text (simulated: unlink fails) is cleaned up."""

    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(writers.os, "fsync", killed)
    monkeypatch.setattr(writers.os, "unlink", lambda path: None)  # the process died first
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(tmp_path / "clip.json", "{}")
    monkeypatch.undo()
    leftovers = _stray_files(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".clip.json.epyc-")
    assert remove_stale_temps(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []
