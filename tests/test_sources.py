"""Tests for epyc_whisper.sources: walking inputs, path lists, dedupe and output names.

All files are real files in tmp_path; their contents are made-up bytes (nothing is decoded).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from epyc_whisper.sources import (
    DEFAULT_EXTENSIONS,
    MediaInput,
    Skipped,
    collect,
    is_done,
    output_base,
    output_rel,
    parse_extensions,
    read_path_list,
    safe_join,
)


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rels(inputs: list[MediaInput]) -> list[str]:
    return [str(i.rel) for i in inputs]


def absname(path: Path) -> str:
    """The output name of a file argument or stdin path: its absolute path without '/'."""
    return str(path).lstrip("/")


def reasons(skipped: list[Skipped]) -> dict[str, str]:
    return {s.path: s.reason for s in skipped}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """clips/ with nested folders, mixed extensions and upper-case extensions."""
    root = tmp_path / "clips"
    touch(root / "b.wav")
    touch(root / "A.WAV")
    touch(root / "notes.txt")
    touch(root / "sub" / "deep" / "c.Mp3")
    touch(root / "sub" / "d.mkv")
    touch(root / "sub" / "cover.jpg")
    touch(root / "z.flac")
    return tmp_path


# --- extensions and path lists -------------------------------------------------------------------


def test_default_extensions() -> None:
    """The default set holds the documented audio and video extensions, lowercase, no dot."""
    assert DEFAULT_EXTENSIONS == {
        *"wav flac mp3 m4a aac ogg opus wma".split(),
        *"mp4 mkv mov avi webm ts".split(),
    }


def test_parse_extensions() -> None:
    """--ext is split on commas, trimmed, lowercased, dot-stripped; None means the defaults."""
    assert parse_extensions(None) is DEFAULT_EXTENSIONS
    assert parse_extensions("wav,.MP3, flac") == {"wav", "mp3", "flac"}
    assert parse_extensions("wav,,") == {"wav"}


@pytest.mark.parametrize("spec", ["", " , ", ".", "tar.gz", "w av", "a/b"])
def test_parse_extensions_rejects(spec: str) -> None:
    """An empty --ext or an item that could never match a file name is a ValueError."""
    with pytest.raises(ValueError):
        parse_extensions(spec)


def test_read_path_list_lines() -> None:
    """Newline lists keep inner and edge spaces, strip only LF/CRLF and drop empty lines."""
    data = b" lead.wav\ntrail.wav \r\n\n\"q'.wav\ncaf\xc3\xa9.wav\n-rf.wav"
    assert read_path_list(io.BytesIO(data), null=False) == [
        " lead.wav",
        "trail.wav ",
        "\"q'.wav",
        "café.wav",
        "-rf.wav",
    ]


def test_read_path_list_nul_and_odd_bytes() -> None:
    """NUL lists keep newlines inside names; bytes invalid in UTF-8 survive via surrogateescape."""
    data = b"a\nb.wav\0\0caf\xe9.wav\0"
    items = read_path_list(io.BytesIO(data), null=True)
    assert items == ["a\nb.wav", os.fsdecode(b"caf\xe9.wav")]
    assert os.fsencode(items[1]) == b"caf\xe9.wav"


# --- walking -------------------------------------------------------------------------------------


def test_walk_nested_mixed_case(tree: Path) -> None:
    """A folder is walked recursively in sorted order; extensions match case-insensitively;
    files are named relative to the folder; other files met in the walk are not inputs and
    not counted as skipped (a README beside the clips)."""
    inputs, skipped = collect(["clips"], DEFAULT_EXTENSIONS, cwd=tree)
    assert rels(inputs) == ["A", "b", "sub/d", "sub/deep/c", "z"]
    assert inputs[0].path == tree / "clips" / "A.WAV"
    assert inputs[0].size == 1
    st = os.stat(tree / "clips" / "A.WAV")
    assert inputs[0].key == (st.st_dev, st.st_ino)
    assert inputs[0].mtime == st.st_mtime
    assert skipped == []


def test_walk_respects_ext(tree: Path) -> None:
    """Only the --ext extensions are kept from a walk."""
    inputs, _ = collect(["clips"], parse_extensions("wav"), cwd=tree)
    assert rels(inputs) == ["A", "b"]


def test_explicit_files_need_media_extension(tree: Path) -> None:
    """A named file with a non-media extension is skipped too, so `find . | ... -` works."""
    inputs, skipped = collect(["clips/notes.txt", "clips/b.wav"], DEFAULT_EXTENSIONS, cwd=tree)
    assert rels(inputs) == [str(tree / "clips" / "b").lstrip("/")]
    assert skipped == [Skipped("clips/notes.txt", "not a media extension")]


def test_folder_named_like_media_is_walked(tmp_path: Path) -> None:
    """A folder whose name ends in .wav is walked, not taken for a file."""
    touch(tmp_path / "x.wav" / "inner.ogg")
    inputs, skipped = collect(["."], DEFAULT_EXTENSIONS, cwd=tmp_path)
    assert rels(inputs) == ["x.wav/inner"]
    assert skipped == []


def test_not_regular_file(tmp_path: Path) -> None:
    """A FIFO named like media is skipped, never opened (opening it would block)."""
    os.mkfifo(tmp_path / "pipe.wav")
    inputs, skipped = collect(["."], DEFAULT_EXTENSIONS, cwd=tmp_path)
    assert inputs == []
    assert skipped == [Skipped("./pipe.wav", "not a regular file")]


# --- stdin ---------------------------------------------------------------------------------------

ODD_NAMES = ["with space.wav", "quote'\"s.wav", "café ünï.mp3", "-rf.wav", "-"]


def make_odd(tmp_path: Path) -> None:
    for name in ODD_NAMES:
        touch(tmp_path / name)


def test_stdin_newline_list(tmp_path: Path) -> None:
    """'-' reads a newline list: spaces, quotes, non-ASCII and leading dashes are plain names."""
    make_odd(tmp_path)
    listing = "".join(f"{n}\n" for n in ODD_NAMES[:4]).encode()
    inputs, skipped = collect(["-"], DEFAULT_EXTENSIONS, stdin=io.BytesIO(listing), cwd=tmp_path)
    assert [i.path.name for i in inputs] == ODD_NAMES[:4]
    assert rels(inputs) == [
        absname(tmp_path / n) for n in ["with space", "quote'\"s", "café ünï", "-rf"]
    ]
    assert skipped == []


def test_stdin_nul_list_and_odd_bytes(tmp_path: Path) -> None:
    """'-' with null=True reads find -print0 output, incl. newlines and non-UTF-8 bytes."""
    make_odd(tmp_path)
    touch(tmp_path / "two\nlines.wav")
    odd = os.fsencode(tmp_path) + b"/caf\xe9.wav"
    with open(odd, "wb") as f:  # a Latin-1 name, as old tarballs leave behind
        f.write(b"x")
    listing = b"\0".join([b"./two\nlines.wav", odd, b"./with space.wav", b"./-"]) + b"\0"
    inputs, skipped = collect(
        ["-"], DEFAULT_EXTENSIONS, stdin=io.BytesIO(listing), null=True, cwd=tmp_path
    )
    assert [os.fsencode(i.path.name) for i in inputs] == [
        b"two\nlines.wav",
        b"caf\xe9.wav",
        b"with space.wav",
    ]
    assert os.fsencode(str(inputs[1].rel)) == os.fsencode(absname(tmp_path)) + b"/caf\xe9"
    # A line "-" is a file named '-', not stdin again; it has no media extension.
    assert skipped == [Skipped("./-", "not a media extension")]


def test_stdin_read_once_and_folders_not_walked(tree: Path) -> None:
    """Only the first '-' reads stdin; folders in a path list are skipped, not walked."""
    listing = b"clips\nclips/b.wav\n"
    inputs, skipped = collect(["-", "-"], DEFAULT_EXTENSIONS, stdin=io.BytesIO(listing), cwd=tree)
    assert rels(inputs) == [absname(tree / "clips" / "b")]
    assert skipped == [
        Skipped("clips", "a folder in a path list (not walked)"),
        Skipped("-", "stdin already read"),
    ]


def test_args_and_stdin_in_order(tree: Path) -> None:
    """Arguments and the stdin list are expanded in the order given."""
    inputs, _ = collect(
        ["clips/z.flac", "-", "clips/A.WAV"],
        DEFAULT_EXTENSIONS,
        stdin=io.BytesIO(b"clips/b.wav\n"),
        cwd=tree,
    )
    assert rels(inputs) == [absname(tree / "clips" / n) for n in ("z", "b", "A")]


# --- dedupe, loops, errors -----------------------------------------------------------------------


def test_same_file_once(tmp_path: Path) -> None:
    """The same real file listed twice, via a symlink and via a hard link is kept once."""
    touch(tmp_path / "a.wav")
    os.symlink("a.wav", tmp_path / "soft.wav")
    os.link(tmp_path / "a.wav", tmp_path / "hard.wav")
    args = ["a.wav", "./a.wav", "soft.wav", "hard.wav", "."]
    inputs, skipped = collect(args, DEFAULT_EXTENSIONS, cwd=tmp_path)
    assert rels(inputs) == [absname(tmp_path / "a")]
    assert skipped == [
        Skipped("./a.wav", "duplicate of a.wav"),
        Skipped("soft.wav", "duplicate of a.wav"),
        Skipped("hard.wav", "duplicate of a.wav"),
        Skipped("./a.wav", "duplicate of a.wav"),
        Skipped("./hard.wav", "duplicate of a.wav"),
        Skipped("./soft.wav", "duplicate of a.wav"),
    ]


def test_symlink_loop_terminates(tmp_path: Path) -> None:
    """A folder symlink to its parent is reported as a loop, and the walk ends."""
    touch(tmp_path / "top" / "sub" / "a.wav")
    os.symlink("..", tmp_path / "top" / "sub" / "up")
    os.symlink(".", tmp_path / "top" / "self")
    inputs, skipped = collect(["top"], DEFAULT_EXTENSIONS, cwd=tmp_path)
    assert rels(inputs) == ["sub/a"]
    assert reasons(skipped) == {"top/self": "symlink loop", "top/sub/up": "symlink loop"}


def test_symlinked_folder_followed_once(tmp_path: Path) -> None:
    """Symlinked folders are followed, but a folder reached twice is walked once."""
    touch(tmp_path / "real" / "a.wav")
    os.symlink("real", tmp_path / "alias")
    inputs, skipped = collect(["."], DEFAULT_EXTENSIONS, cwd=tmp_path)
    assert rels(inputs) == ["alias/a"]  # sorted: alias comes first and wins
    assert skipped == [Skipped("./real", "duplicate of ./alias")]


def test_file_symlink_loop(tmp_path: Path) -> None:
    """A file symlink pointing at itself is reported, not raised."""
    os.symlink("me.wav", tmp_path / "me.wav")
    inputs, skipped = collect(["me.wav", "."], DEFAULT_EXTENSIONS, cwd=tmp_path)
    assert inputs == []
    assert skipped == [Skipped("me.wav", "symlink loop"), Skipped("./me.wav", "symlink loop")]


def test_permission_denied_folder(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreadable folder is skipped, not raised. Tests run as root, where chmod 000 does not
    stop reads, so os.scandir is monkeypatched to raise PermissionError for that folder."""
    locked = str(tree / "clips" / "sub")
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Iterator[os.DirEntry[str]]:
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # sources.py calls os.scandir at run time
    inputs, skipped = collect(["clips", "clips/sub"], DEFAULT_EXTENSIONS, cwd=tree)
    assert rels(inputs) == ["A", "b", "z"]
    assert Skipped("clips/sub", "permission denied") in skipped
    # Named again after the walk, it is the same folder: no second listing attempt.
    assert Skipped("clips/sub", "duplicate of clips/sub") in skipped


def test_missing_paths(tmp_path: Path) -> None:
    """Missing paths, broken symlinks and empty names become Skipped entries."""
    os.symlink("gone.wav", tmp_path / "dangling.wav")
    inputs, skipped = collect(
        ["nope.wav", "nodir/", "dangling.wav", "", "."], DEFAULT_EXTENSIONS, cwd=tmp_path
    )
    assert inputs == []
    assert skipped == [
        Skipped("nope.wav", "not found"),
        Skipped("nodir/", "not found"),
        Skipped("dangling.wav", "broken symlink"),
        Skipped("", "not found"),
        Skipped("./dangling.wav", "broken symlink"),
    ]


# --- the output folder ---------------------------------------------------------------------------


def test_output_folder_excluded(tree: Path) -> None:
    """The output folder inside a walked tree is pruned silently, and reported when named."""
    out = tree / "clips" / "out"
    touch(out / "old.wav")
    touch(out / "b.txt")
    os.symlink("out", tree / "clips" / "alias_of_out")  # the same folder by another name
    inputs, skipped = collect(
        ["clips", "clips/out/old.wav", "clips/alias_of_out/old.wav"],
        DEFAULT_EXTENSIONS,
        exclude=Path("clips/out"),
        cwd=tree,
    )
    assert rels(inputs) == ["A", "b", "sub/d", "sub/deep/c", "z"]
    assert not [s for s in skipped if "out/" in s.path and s.reason != "inside the output folder"]
    assert Skipped("clips/out/old.wav", "inside the output folder") in skipped
    assert Skipped("clips/alias_of_out/old.wav", "inside the output folder") in skipped


def test_output_folder_not_created_yet(tree: Path) -> None:
    """An output folder that does not exist yet excludes nothing and raises nothing."""
    inputs, _ = collect(["clips"], DEFAULT_EXTENSIONS, exclude=tree / "new_out", cwd=tree)
    assert len(inputs) == 5


# --- output names --------------------------------------------------------------------------------


def test_output_rel_inside_outside_dotdot(tmp_path: Path) -> None:
    """Inside cwd: relative; outside: absolute minus '/'; '..' is resolved lexically first."""
    cwd = tmp_path / "proj"
    outside = str(tmp_path).lstrip("/")
    assert output_rel(cwd / "clips" / "a.wav", cwd) == PurePosixPath("clips/a.wav")
    assert output_rel(tmp_path / "other" / "a.wav", cwd) == PurePosixPath(f"{outside}/other/a.wav")
    assert output_rel(cwd / ".." / "proj" / "a.wav", cwd) == PurePosixPath("a.wav")
    assert output_rel(cwd / ".." / "other" / "a.wav", cwd) == PurePosixPath(
        f"{outside}/other/a.wav"
    )
    # A sibling folder whose name starts like cwd is not inside it.
    assert output_rel(tmp_path / "project" / "a.wav", cwd) == PurePosixPath(
        f"{outside}/project/a.wav"
    )
    assert output_rel(Path("/a.wav"), Path("/")) == PurePosixPath("a.wav")
    for rel in (
        output_rel(Path("../../x.wav"), cwd),
        output_rel(cwd / ".." / ".." / "x.wav", cwd),
    ):
        assert ".." not in rel.parts and not rel.is_absolute()
    # A relative path is relative to the cwd argument, not to the process's working folder.
    assert output_rel(Path("sub/../a.wav"), cwd) == PurePosixPath("a.wav")
    for not_a_file in (cwd, Path("/")):
        with pytest.raises(ValueError):
            output_rel(not_a_file, cwd)


def test_collect_names_dotdot_args(tmp_path: Path) -> None:
    """A '..' argument is made absolute, and named by its absolute path; the name of the
    old working-folder rule is kept as legacy_rel where it differs."""
    touch(tmp_path / "proj" / "a.wav")
    touch(tmp_path / "other" / "b.wav")
    cwd = tmp_path / "proj"
    inputs, _ = collect(["../proj/a.wav", "../other/b.wav"], DEFAULT_EXTENSIONS, cwd=cwd)
    assert inputs[0].path == cwd / "a.wav"
    assert rels(inputs) == [absname(cwd / "a"), absname(tmp_path / "other" / "b")]
    assert [i.legacy_rel for i in inputs] == [PurePosixPath("a"), None]


def test_names_do_not_depend_on_the_working_folder(tmp_path: Path) -> None:
    """The same folder argument, file argument or stdin list gives the same names from
    any working folder; --relative-to names everything inside its root relative to it."""
    touch(tmp_path / "data" / "clips" / "sub" / "a.wav")
    clips = tmp_path / "data" / "clips"
    listing = str(clips / "sub" / "a.wav").encode() + b"\n"
    seen = []
    for cwd in (tmp_path, clips / "sub", Path("/")):
        walked, _ = collect([str(clips)], DEFAULT_EXTENSIONS, cwd=cwd)
        named, _ = collect([str(clips / "sub" / "a.wav")], DEFAULT_EXTENSIONS, cwd=cwd)
        listed, _ = collect(["-"], DEFAULT_EXTENSIONS, stdin=io.BytesIO(listing), cwd=cwd)
        rooted, _ = collect(
            ["-"], DEFAULT_EXTENSIONS, stdin=io.BytesIO(listing), cwd=cwd, relative_to=clips
        )
        seen.append((rels(walked), rels(named), rels(listed), rels(rooted)))
    assert seen[0] == seen[1] == seen[2]
    assert seen[0] == (["sub/a"], [absname(clips / "sub/a")], [absname(clips / "sub/a")], ["sub/a"])


def test_absolute_symlink_outside_tree(tmp_path: Path) -> None:
    """An absolute symlink leading outside the tree is named by the link, inside out_dir."""
    touch(tmp_path / "elsewhere" / "far.wav")
    (tmp_path / "proj" / "clips").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere", tmp_path / "proj" / "clips" / "ext")
    os.symlink(tmp_path / "elsewhere" / "far.wav", tmp_path / "proj" / "clips" / "f.wav")
    out = tmp_path / "proj" / "out"
    inputs, _ = collect(["clips"], DEFAULT_EXTENSIONS, cwd=tmp_path / "proj")
    assert rels(inputs) == ["ext/far"]  # f.wav is the same real file: a duplicate
    assert inputs[0].path == tmp_path / "proj" / "clips" / "ext" / "far.wav"
    assert output_base(inputs[0], out) == out / "ext" / "far"


def test_stem_collision_keeps_extension(tmp_path: Path) -> None:
    """a.wav and a.mp3 in one folder both keep their extension; b.wav alone loses it."""
    for name in ("a.wav", "a.mp3", "b.wav", "a.txt"):
        touch(tmp_path / "c" / name)
    inputs, _ = collect(["c"], DEFAULT_EXTENSIONS, cwd=tmp_path)
    assert rels(inputs) == ["a.mp3", "a.wav", "b"]


def test_stem_collision_is_stable(tmp_path: Path) -> None:
    """Names depend on the folder, not on what else is listed or on --ext, so reruns match."""
    touch(tmp_path / "a.wav")
    touch(tmp_path / "a.mp3")
    alone, _ = collect(["a.wav"], DEFAULT_EXTENSIONS, cwd=tmp_path, relative_to=tmp_path)
    wav_only, _ = collect(["."], parse_extensions("wav"), cwd=tmp_path)
    assert rels(alone) == rels(wav_only) == ["a.wav"]


def test_stem_equal_to_sibling_name(tmp_path: Path) -> None:
    """a.mp3.wav would take the name a.mp3 keeps in a collision, so all names stay distinct."""
    for name in ("a.mp3", "a.wav", "a.mp3.wav"):
        touch(tmp_path / name)
    inputs, _ = collect(["."], DEFAULT_EXTENSIONS, cwd=tmp_path)
    names = rels(inputs)
    assert names == ["a.mp3", "a.mp3.wav", "a.wav"]
    assert len(set(names)) == len(names)


def test_output_name_clash_skipped(tmp_path: Path) -> None:
    """Two folder arguments holding the same relative name (one/a.wav, two/a.wav): the
    first wins, the second is reported as a clash (the run fails it, see test_cron)."""
    touch(tmp_path / "one" / "a.wav")
    touch(tmp_path / "two" / "a.wav", b"other")
    inputs, skipped = collect(["one", "two"], DEFAULT_EXTENSIONS, cwd=tmp_path)
    assert [i.path for i in inputs] == [tmp_path / "one" / "a.wav"]
    assert skipped == [Skipped("two/a.wav", "output name clashes with one/a.wav")]


# --- is_done and safe_join -----------------------------------------------------------------------


def test_is_done(tmp_path: Path) -> None:
    """Done only when every format's output exists and is at least as new as the input."""
    src = touch(tmp_path / "in" / "a.wav")
    os.utime(src, (1_000_000, 1_000_000))
    [inp], _ = collect(["in"], DEFAULT_EXTENSIONS, cwd=tmp_path)
    out = tmp_path / "out"
    assert not is_done(inp, out, ["txt"])  # missing
    txt = touch(out / "a.txt")
    srt = touch(out / "a.srt")
    os.utime(txt, (2_000_000, 2_000_000))
    os.utime(srt, (1_000_000, 1_000_000))  # same second as the input counts as done
    assert is_done(inp, out, ["txt", "srt"])
    assert not is_done(inp, out, ["txt", "srt", "json"])  # one missing
    os.utime(srt, (999_999, 999_999))  # older than the input: the input changed since
    assert not is_done(inp, out, ["txt", "srt"])
    assert is_done(inp, out, ["txt"])
    assert is_done(inp, out, [])


@pytest.mark.parametrize(
    "rel", ["../x", "a/../../x", "/etc/passwd", ".", "a/..", "//x", "a/../../out2/x"]
)
def test_safe_join_rejects_escapes(tmp_path: Path, rel: str) -> None:
    """safe_join refuses names that are absolute, climb out, or are the folder itself."""
    with pytest.raises(ValueError):
        safe_join(tmp_path / "out", PurePosixPath(rel))


def test_safe_join_accepts_inside(tmp_path: Path) -> None:
    """safe_join joins names that stay inside, normalising harmless '..' lexically."""
    out = tmp_path / "out"
    assert safe_join(out, PurePosixPath("clips/a")) == out / "clips" / "a"
    assert safe_join(out, PurePosixPath("a/../b")) == out / "b"
    assert safe_join(Path("."), PurePosixPath("x/y")) == Path("x/y")


def test_nul_list_without_null_flag_is_refused() -> None:
    """find -print0 output read as a newline list (-0 forgotten) is a ValueError that
    says to add -0, not a traceback about an embedded null byte."""
    with pytest.raises(ValueError, match=r"add -0 \(--null\)"):
        read_path_list(io.BytesIO(b"./a.wav\0./b.wav\0"), null=False)
