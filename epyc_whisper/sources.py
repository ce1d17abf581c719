"""Walking the inputs of `epyc-whisper transcribe PATHS...` and naming their outputs.

Inputs are any mix of files, folders (walked recursively) and `-` (a list of paths on stdin).
Everything here is stdlib only and never opens a media file: it is imported by the CLI before
the thread environment is set, and it must stay instant on trees with many files.

Naming rules, in one place so that cron reruns always find the outputs of earlier runs, and
the same command finds the same outputs from any working folder:

- A file found in a folder argument is named relative to that folder (`clips/sub/a.wav` from
  `transcribe clips` is `sub/a`); a file argument or a stdin path by its absolute path without
  the leading `/`. With `--relative-to ROOT`, every input inside ROOT is named relative to it
  instead. Names never escape the output folder, and symlinks are never resolved for naming.
- Before 0.2 names were relative to the working folder (`output_rel()`, kept as
  `MediaInput.legacy_rel`): a rerun finds transcripts written under those names and moves
  them to the new ones instead of doing the work again.
- The media extension is then dropped (`clips/a.wav` -> `clips/a`, so `clips/a.srt`), as
  openai-whisper does, unless another media file in the same folder would claim the same
  name; then every one of them keeps its extension (`clips/a.wav`, `clips/a.mp3`). The rule
  looks at the folder on disk, not at what happens to be listed in this run, so a name never
  depends on the other arguments.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

__all__ = [
    "DEFAULT_EXTENSIONS",
    "MediaInput",
    "Skipped",
    "collect",
    "is_done",
    "output_base",
    "output_rel",
    "parse_extensions",
    "read_path_list",
    "safe_join",
]

#: What a folder walk picks up when `--ext` is not given: everything ffmpeg/PyAV decodes
#: routinely. Lowercase, without the dot.
DEFAULT_EXTENSIONS: frozenset[str] = frozenset(
    {
        # audio
        "wav", "flac", "mp3", "m4a", "aac", "ogg", "opus", "wma",
        # video (the audio track is transcribed)
        "mp4", "mkv", "mov", "avi", "webm", "ts",
    }
)  # fmt: skip

# Reasons for Skipped entries. Stable strings: the CLI counts skips by reason.
NOT_MEDIA = "not a media extension"
NOT_FOUND = "not found"
CLASH = "output name clashes with"  # followed by the input that owns the name
BROKEN_LINK = "broken symlink"
PERMISSION = "permission denied"
LOOP = "symlink loop"
NOT_REGULAR = "not a regular file"
IN_OUTPUT = "inside the output folder"
LISTED_FOLDER = "a folder in a path list (not walked)"
STDIN_TWICE = "stdin already read"

_Key = tuple[int, int]


@dataclass(frozen=True)
class MediaInput:
    """One media file to transcribe.

    Attributes:
        path: The path as found: absolute, normalised with `os.path.abspath` (lexically, so
            `a/../b` is `b`), symlinks NOT resolved. This is the path to open.
        rel: The output base name, relative, without the media extension (`clips/sub/a`), or
            with it when a sibling would claim the same name (`clips/sub/a.mp3`). Writers append
            `.txt`, `.srt`, ... to it inside the output folder (see `output_base`).
        key: `(st_dev, st_ino)` of the real file (symlinks followed), used for dedupe.
        size: Size in bytes.
        mtime: Modification time of the real file, compared by `is_done`.
        legacy_rel: The name the working-folder rule of earlier versions gave it, where that
            differs from `rel` (None otherwise): its transcripts are moved, not redone.
    """

    path: Path
    rel: PurePosixPath
    key: tuple[int, int]
    size: int
    mtime: float
    legacy_rel: PurePosixPath | None = None


@dataclass(frozen=True)
class Skipped:
    """An input that was found but will not be transcribed.

    Attributes:
        path: The path as the user spelled it (an argument or stdin line), or for files met in
            a folder walk that argument joined with the names below it, as `find` prints them.
        reason: Why, e.g. "not a media extension", "duplicate of <path>", "not found",
            "broken symlink", "permission denied", "symlink loop", "inside the output folder".
        named: The user named this path (an argument or a stdin line), as opposed to a file
            met in a folder walk: a named path that does not exist is an error, not a skip.
    """

    path: str
    reason: str
    named: bool = field(default=False, compare=False)

    @property
    def missing(self) -> bool:
        """A named path that is not there (or a link to nothing)."""
        return self.named and self.reason in (NOT_FOUND, BROKEN_LINK)


def parse_extensions(spec: str | None) -> frozenset[str]:
    """Parse `--ext`: None -> DEFAULT_EXTENSIONS; 'wav,.MP3, flac' -> {'wav', 'mp3', 'flac'}.

    Raises ValueError (naming the culprit) for an empty list or an item that could never match,
    such as 'tar.gz': only the part after the last dot of a file name is compared.
    """
    if spec is None:
        return DEFAULT_EXTENSIONS
    found: set[str] = set()
    for raw in spec.split(","):
        item = raw.strip().lstrip(".").lower()
        if not item:
            continue
        if "." in item or "/" in item or "\0" in item or any(c.isspace() for c in item):
            raise ValueError(
                f"bad extension {raw.strip()!r} in {spec!r}: give names like 'wav,mp3' "
                "(only the part after the last dot of a file name is compared)"
            )
        found.add(item)
    if not found:
        raise ValueError(f"no extensions in {spec!r}: give names like 'wav,mp3'")
    return frozenset(found)


def read_path_list(stream: IO[bytes], null: bool) -> list[str]:
    """Read paths from a binary stream: one a line, or NUL-separated with `null` (find -print0).

    Only the separator (and a CR before a newline, for lists made on Windows) is stripped,
    never other spaces, because names may start or end with them. Empty items are dropped.
    Items are decoded with `os.fsdecode` (surrogateescape), so names that are not valid in the
    locale's encoding survive the round trip back to the file system.

    Raises ValueError for NUL bytes in a newline list: that is `find -print0` output read
    without `-0`, and no path can hold a NUL.
    """
    data = stream.read()
    if not null and b"\0" in data:
        raise ValueError(
            "the path list on stdin is NUL-separated (find -print0): add -0 (--null) to read it"
        )
    if null:
        items = data.split(b"\0")
    else:
        items = [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]
    return [os.fsdecode(item) for item in items if item]


def output_rel(path: Path, cwd: Path) -> PurePosixPath:
    """Output name for an input path, with its extension still on.

    Relative to `cwd` when the path lies inside it (lexically, after abspath), else the absolute
    path without its leading '/'. It never contains '..' and is never absolute, so outputs stay
    inside the output folder, also for symlinks pointing elsewhere (links are never resolved for
    naming). It depends on nothing but `path` and `cwd`, so reruns find earlier outputs.

    A relative `path` is taken relative to `cwd`. Raises ValueError for `cwd` itself or '/',
    which cannot be input files.
    """
    return PurePosixPath(_output_rel_str(os.fspath(path), os.path.abspath(os.fspath(cwd))))


def _output_rel_str(path: str, cwd_abs: str) -> str:
    """`output_rel` on strings (pathlib objects are slow enough to matter in big walks)."""
    # A relative `path` is taken relative to `cwd`, not to the process's working folder.
    p = os.path.normpath(os.path.join(cwd_abs, path))
    if p == cwd_abs:
        rel = ""
    elif _inside(p, cwd_abs):
        rel = p[len(cwd_abs.rstrip("/")) + 1 :]
    else:
        rel = p.lstrip("/")
    if not rel:
        raise ValueError(f"{path} is not a file name (it is the working folder or '/')")
    return rel


def safe_join(out_dir: Path, rel: PurePosixPath) -> Path:
    """Return out_dir/rel, raising ValueError unless it lies strictly inside out_dir.

    The check is lexical (after normalising '..'), the belt to `output_rel`'s braces: a rel that
    is absolute or climbs out with '..' is refused, not silently rewritten.
    """
    joined = os.path.normpath(os.path.join(os.fspath(out_dir), os.fspath(rel)))
    root = os.path.abspath(os.fspath(out_dir))
    target = os.path.abspath(joined)
    if rel.is_absolute() or target == root or not _inside(target, root):
        raise ValueError(f"output name {str(rel)!r} is not inside the output folder {out_dir}")
    return Path(joined)


def output_base(inp: MediaInput, out_dir: Path) -> Path:
    """Where the outputs of `inp` go, before the format's extension: out_dir/inp.rel."""
    return safe_join(out_dir, inp.rel)


def is_done(inp: MediaInput, out_dir: Path, formats: Sequence[str]) -> bool:
    """True when every output (base + '.' + fmt) exists and is at least as new as the input.

    This lets the same cron line run every hour: finished inputs are skipped, and an input that
    changed since its transcript was written is done again. `formats` are concrete extensions
    ('txt', 'srt', ...), not 'all'; with no formats there is nothing to do, hence True.
    """
    base = os.fspath(output_base(inp, out_dir))
    for fmt in formats:
        try:
            st = os.stat(f"{base}.{fmt}")
        except OSError:
            return False
        if st.st_mtime < inp.mtime:
            return False
    return True


def collect(
    args: Sequence[str],
    extensions: frozenset[str],
    *,
    stdin: IO[bytes] | None = None,
    null: bool = False,
    exclude: Path | None = None,
    cwd: Path | None = None,
    relative_to: Path | None = None,
) -> tuple[list[MediaInput], list[Skipped]]:
    """Expand the PATHS of `transcribe` into media inputs, in order, and what was skipped.

    - `-` reads a path list from `stdin` (default: the process's stdin; NUL-separated with
      `null`); only the first `-` does, a second one is skipped. A file literally named `-`
      is `./-`. Lines of the list are never `-` themselves.
    - A folder argument is walked recursively in sorted (deterministic) order. Symlinked
      folders are followed, but no folder is entered twice: a link back to an ancestor is
      skipped as a "symlink loop", one to a folder already walked as a duplicate.
    - Folders named in a stdin list are not walked: `find . | epyc-whisper transcribe -` lists
      every file already, as with `cpio` and `rsync --files-from`. Walking them too would
      report every file twice.
    - A file is kept when its extension (case-insensitive) is in `extensions`, whether named
      explicitly or met in a walk; other files are Skipped("not a media extension").
    - The same real file reached twice (listed twice, via a symlink or a hard link) is kept
      once; the first occurrence wins and later ones are skipped as duplicates.
    - Missing paths, broken links and unreadable folders become Skipped entries, never
      exceptions.
    - Everything under `exclude` (the output folder, found by identity as well as by name) is
      pruned silently from walks, and skipped as "inside the output folder" when named. Pass
      it only when the output folder is a folder of its own: with outputs beside the inputs
      (`-o .`), every named input would lie inside it.

    Paths are made absolute against `cwd` (default: the process's working folder). Output
    names follow the module's naming rules: relative to the folder argument a file was found
    in, else its absolute path; relative to `relative_to` for everything inside it.
    """
    collector = _Collector(extensions, Path.cwd() if cwd is None else cwd, exclude, relative_to)
    stdin_read = False
    for arg in args:
        if arg == "-":
            if stdin_read:
                collector.skip(arg, STDIN_TWICE)
                continue
            stdin_read = True
            stream = sys.stdin.buffer if stdin is None else stdin
            for item in read_path_list(stream, null):
                collector.named(item, from_list=True)
        else:
            collector.named(arg, from_list=False)
    return collector.inputs, collector.skipped


# --- internals ---------------------------------------------------------------------------------


def _inside(path: str, root: str) -> bool:
    """Whether absolute, normalised `path` is `root` or lies below it (lexically)."""
    prefix = root.rstrip("/") + "/"
    return path == root or path.startswith(prefix)


def _split(name: str) -> tuple[str, str]:
    """(stem, lowercased extension without the dot) by pathlib's rules: '.wav' alone and 'a.'
    have no extension. String operations, because pathlib objects cost several microseconds
    each and a walk calls this for every file."""
    i = name.rfind(".")
    if 0 < i < len(name) - 1:
        return name[:i], name[i + 1 :].lower()
    return name, ""


def _suffix(name: str) -> str:
    """Lowercased extension without the dot (see `_split`)."""
    return _split(name)[1]


def _reason(exc: OSError, path: str) -> str:
    """A short, stable reason for an OSError from stat or scandir."""
    if isinstance(exc, FileNotFoundError):
        return BROKEN_LINK if os.path.lexists(path) else NOT_FOUND
    if isinstance(exc, PermissionError):
        return PERMISSION
    if exc.errno == errno.ELOOP:
        return LOOP
    return (exc.strerror or str(exc)).lower()


@dataclass
class _Frame:
    """One folder being walked: the walk keeps its own stack so deep trees cannot overflow
    Python's recursion limit."""

    key: _Key
    abs: str
    display: str
    entries: Iterator[os.DirEntry[str]]


class _Collector:
    """State of one `collect()` call: what was kept, what was skipped, what was seen."""

    def __init__(
        self,
        extensions: frozenset[str],
        cwd: Path,
        exclude: Path | None,
        relative_to: Path | None = None,
    ) -> None:
        self.extensions = extensions
        # Name collisions are judged against the default media set too, so that a run with
        # `--ext wav` names a.wav as a run without --ext does when a.mp3 sits beside it.
        self.sibling_exts = DEFAULT_EXTENSIONS | extensions
        self.cwd = os.path.abspath(os.fspath(cwd))
        self.relative_to = (
            None
            if relative_to is None
            else os.path.normpath(os.path.join(self.cwd, os.fspath(relative_to)))
        )
        self.root: str | None = self.relative_to  # what names are relative to right now
        self.inputs: list[MediaInput] = []
        self.skipped: list[Skipped] = []
        self._files: dict[_Key, str] = {}  # real file -> where it was first met
        self._dirs: dict[_Key, str] = {}  # folder -> where it was first entered
        self._rels: dict[PurePosixPath, str] = {}  # output name -> input that owns it
        # Per folder: how many media files share each stem, and the media file names.
        self._claims: dict[str, tuple[Counter[str], frozenset[str]]] = {}
        self._ex_abs: str | None = None
        self._ex_real: str | None = None
        self._ex_key: _Key | None = None
        if exclude is not None:
            self._ex_abs = os.path.normpath(os.path.join(self.cwd, os.fspath(exclude)))
            self._ex_real = os.path.realpath(self._ex_abs)
            try:
                st = os.stat(self._ex_abs)
            except OSError:
                pass  # not created yet: nothing can be inside it
            else:
                self._ex_key = (st.st_dev, st.st_ino)

    def skip(self, path: str, reason: str, named: bool = False) -> None:
        self.skipped.append(Skipped(path, reason, named))

    # -- named paths (arguments and stdin items) --

    def named(self, arg: str, *, from_list: bool) -> None:
        """Handle one path the user named."""
        if not arg:
            # os.path.join(cwd, '') would be the working folder: an empty name is no path.
            self.skip(arg, NOT_FOUND, named=True)
            return
        abs_ = os.path.normpath(os.path.join(self.cwd, arg))
        if self._excluded(abs_):
            self.skip(arg, IN_OUTPUT, named=True)
            return
        try:
            st = os.stat(abs_)
        except OSError as exc:
            self.skip(arg, _reason(exc, abs_), named=True)
            return
        if stat.S_ISDIR(st.st_mode):
            if from_list:
                self.skip(arg, LISTED_FOLDER, named=True)
            else:
                # Files found in it are named relative to it (unless --relative-to).
                self.root = self.relative_to or abs_
                self._walk(abs_, arg, (st.st_dev, st.st_ino))
                self.root = self.relative_to
            return
        if _suffix(os.path.basename(abs_)) not in self.extensions:
            self.skip(arg, NOT_MEDIA, named=True)
            return
        self._add(abs_, arg, st)

    def _excluded(self, abs_: str) -> bool:
        """Whether a named path lies in the output folder, by name or once links are resolved."""
        if self._ex_abs is None or self._ex_real is None:
            return False
        return _inside(abs_, self._ex_abs) or _inside(os.path.realpath(abs_), self._ex_real)

    # -- folder walks --

    def _walk(self, top_abs: str, top_display: str, top_key: _Key) -> None:
        """Walk a named folder depth-first in sorted order, never entering a folder twice."""
        if top_key in self._dirs:
            self.skip(top_display, f"duplicate of {self._dirs[top_key]}")
            return
        stack: list[_Frame] = []
        on_stack: set[_Key] = set()
        self._enter(top_abs, top_display, top_key, stack, on_stack)
        while stack:
            frame = stack[-1]
            entry = next(frame.entries, None)
            if entry is None:
                on_stack.discard(stack.pop().key)
                continue
            abs_ = os.path.join(frame.abs, entry.name)
            display = os.path.join(frame.display, entry.name)
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_link, is_dir = False, False  # let stat below say what is wrong
            if (
                is_link
                and self._ex_real is not None
                and _inside(os.path.realpath(abs_), self._ex_real)
            ):
                continue  # a link into the output folder: pruned silently like the folder
            if is_dir:
                try:
                    st = os.stat(abs_)
                except OSError as exc:
                    self.skip(display, _reason(exc, abs_))
                    continue
                key = (st.st_dev, st.st_ino)
                if key == self._ex_key:
                    continue  # the output folder: pruned silently
                if key in on_stack:
                    self.skip(display, LOOP)
                elif key in self._dirs:
                    self.skip(display, f"duplicate of {self._dirs[key]}")
                else:
                    self._enter(abs_, display, key, stack, on_stack)
                continue
            # Check the name first: most files in a big tree are not media, and need no stat.
            # They are not inputs either (a README beside the clips): not counted as skipped.
            if _suffix(entry.name) not in self.extensions:
                continue
            try:
                st = os.stat(abs_)
            except OSError as exc:
                self.skip(display, _reason(exc, abs_))
                continue
            self._add(abs_, display, st)

    def _enter(
        self,
        abs_: str,
        display: str,
        key: _Key,
        stack: list[_Frame],
        on_stack: set[_Key],
    ) -> None:
        """List a folder (sorted) and push it on the walk's stack, or skip it if unreadable."""
        # Marked before listing so an unreadable folder is reported once, not once per path.
        self._dirs[key] = display
        try:
            with os.scandir(abs_) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.skip(display, _reason(exc, abs_))
            return
        # The listing is at hand: record the folder's name claims now, saving a second scandir.
        self._claims.setdefault(abs_, self._claims_of(e.name for e in entries))
        stack.append(_Frame(key, abs_, display, iter(entries)))
        on_stack.add(key)

    # -- keeping a file --

    def _add(self, abs_: str, display: str, st: os.stat_result) -> None:
        """Keep a media file unless it is a duplicate, not a regular file, or its name is taken."""
        if not stat.S_ISREG(st.st_mode):
            # FIFOs, devices and sockets: decoding one would block or read forever.
            self.skip(display, NOT_REGULAR)
            return
        key = (st.st_dev, st.st_ino)
        first = self._files.get(key)
        if first is not None:
            self.skip(display, f"duplicate of {first}")
            return
        rel = self._rel(abs_)
        owner = self._rels.get(rel)
        if owner is not None:
            # Two distinct paths with one output name: e.g. cwd /srv holding mnt/a.wav and the
            # input /mnt/a.wav outside cwd. Never let one overwrite the other's transcript.
            self.skip(display, f"{CLASH} {owner}")
            return
        self._files[key] = display
        self._rels[rel] = display
        legacy = self._rel(abs_, self.cwd)
        self.inputs.append(
            MediaInput(
                Path(abs_), rel, key, st.st_size, st.st_mtime, None if legacy == rel else legacy
            )
        )

    def _rel(self, abs_: str, root: str | None = "") -> PurePosixPath:
        """Output base name, relative to ``root`` (default: the current naming root; None:
        the absolute path), without the media extension unless that collides."""
        root = self.root if root == "" else root
        rel = _output_rel_str(abs_, root) if root else abs_.lstrip("/")
        folder, name = os.path.split(abs_)
        stem = _split(name)[0]
        stems, names = self._folder_claims(folder)
        # This file counts once in `stems` itself; a second media file with the same stem, or
        # one whose whole name is our stem (a.mp3 beside a.mp3.wav), would want the same base,
        # so all of them keep their extension. Judged on the folder, not on this run's list.
        if stems[stem] > 1 or stem in names:
            return PurePosixPath(rel)
        return PurePosixPath(rel[: len(rel) - len(name)] + stem)

    def _folder_claims(self, folder: str) -> tuple[Counter[str], frozenset[str]]:
        claims = self._claims.get(folder)
        if claims is None:
            try:
                with os.scandir(folder) as it:
                    claims = self._claims_of(e.name for e in it)
            except OSError:
                # Cannot list it (e.g. search but no read permission): assume no siblings,
                # which is the common case and keeps the short name.
                claims = (Counter(), frozenset())
            self._claims[folder] = claims
        return claims

    def _claims_of(self, names: Iterable[str]) -> tuple[Counter[str], frozenset[str]]:
        split = [(n, _split(n)) for n in names]
        media = [(n, stem) for n, (stem, ext) in split if ext in self.sibling_exts]
        return Counter(stem for _, stem in media), frozenset(n for n, _ in media)
