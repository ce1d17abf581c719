"""What the user sees on stderr: a Rich live view on a terminal, plain lines elsewhere.

Rich already honours NO_COLOR, FORCE_COLOR, TTY_COMPATIBLE, TTY_INTERACTIVE and
COLUMNS, so there is no colour logic of our own here.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from epyc_whisper.job import ALREADY_DONE, JobState


def _hms(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def units(state: JobState) -> tuple[int, int]:
    """(finished, total) units of work: a file, or one piece of a split file. A split file
    counts by its pieces from the moment it is split, not as one file: otherwise the ETA
    of a run whose last file is a long recording reads 0:00:00 while its pieces run."""
    todo = state.total - state.skipped
    total = todo - state.split_files + state.pieces_total
    finished = state.done + state.failed - state.split_closed + state.pieces_done
    return finished, total


def snapshot(state: JobState) -> dict[str, Any]:
    """The live numbers, computed once per refresh (shared by both views)."""
    wall = state.wall
    finished = state.done + state.failed
    todo = state.total - state.skipped
    rate = finished / wall if wall > 0 else 0.0
    done_units, total_units = units(state)
    unit_rate = done_units / wall if wall > 0 else 0.0
    eta = max(0, total_units - done_units) / unit_rate if unit_rate > 0 else None
    cache = state.cache()
    return {
        "finished": finished,
        "todo": todo,
        "done": state.done,
        "failed": state.failed,
        "skipped": state.skipped,
        "audio_h": state.audio_seconds / 3600,
        "wall": wall,
        "files_s": rate,
        "rtfx": state.rtfx,
        "eta": eta,
        "rss_mib": state.rss() >> 20,
        "cache": cache,
        # CT2 workers, counted as `detect` counts them: each ready process's own.
        "workers": sum(int(info.get("workers", 1)) for info in state.ready.values()),
    }


class CpuSampler:
    """System CPU use between two samples. psutil's first ``cpu_percent(interval=None)``
    has nothing to compare with and returns a meaningless 0.0, so the first sample gives
    None ("-"). psutil (7) keeps the last sample per thread: call it from one thread."""

    def __init__(self) -> None:
        self.primed = False

    def __call__(self) -> float | None:
        value = psutil.cpu_percent(interval=None)
        if not self.primed:
            self.primed = True
            return None
        return value


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def node_lines(state: JobState) -> list[str]:
    """With the Ray backend, one line per node: its CT2 workers ready now and the files
    its workers finished."""
    return [
        f"{n}: {c['workers']} CT2 workers, {c['files']} files" for n, c in state.nodes().items()
    ]


def render(state: JobState, cpu: float | None = None) -> Group:
    s = snapshot(state)
    c = s["cache"]
    t = Table.grid(padding=(0, 2))
    t.add_row(
        "files",
        f"{s['finished']}/{s['todo']} done"
        + (f", [red]{s['failed']} failed[/]" if s["failed"] else "")
        + (f", {s['skipped']} skipped" if s["skipped"] else ""),
    )
    t.add_row("audio", f"{s['audio_h']:.2f} h transcribed")
    if state.pieces_total:  # long recordings count by their pieces
        t.add_row("pieces", f"{state.pieces_done}/{state.pieces_total} of split recordings")
    t.add_row(
        "throughput", f"{s['files_s']:.2f} files/s, RTFx {s['rtfx']:.1f}, ETA {_hms(s['eta'])}"
    )
    t.add_row(
        "machine",
        f"CPU {_cpu(cpu)}, CT2 workers {s['workers']}, memory {s['rss_mib']} MiB",
    )
    t.add_row(
        "model cache",
        f"{int(c['loads'])} loads ({c['load_seconds']:.1f} s), "
        f"{int(c['hits'])} hits, hit rate {c['hit_rate']:.1%}",
    )
    for line in node_lines(state):
        t.add_row("node", line)
    return Group(Text("epyc-whisper transcribe", style="bold"), t)


def plain_line(state: JobState, cpu: float | None = None) -> str:
    s = snapshot(state)
    pieces = f", pieces {state.pieces_done}/{state.pieces_total}" if state.pieces_total else ""
    return (
        f"epyc-whisper: {s['finished']}/{s['todo']} files{pieces}, {s['failed']} failed, "
        f"{s['audio_h']:.2f} h audio, {s['files_s']:.2f} files/s, RTFx {s['rtfx']:.1f}, "
        f"ETA {_hms(s['eta'])}, CPU {_cpu(cpu)}, CT2 workers {s['workers']}, "
        f"mem {s['rss_mib']} MiB, "
        f"cache {int(s['cache']['loads'])} loads/{int(s['cache']['hits'])} hits"
    ) + "".join(f"\nepyc-whisper: node {line}" for line in node_lines(state))


class ProgressView:
    """Refreshes from a background thread while the pool runs in the main thread."""

    def __init__(
        self, console: Console, state: JobState, quiet: bool, interval: float = 5.0
    ) -> None:
        self.console = console
        self.state = state
        self.quiet = quiet
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None
        self.cpu = CpuSampler()
        self._cpu: float | None = None

    def __enter__(self) -> ProgressView:
        if self.quiet:
            return self
        if self.console.is_terminal:
            self._live = Live(
                render(self.state, self._cpu),
                console=self.console,
                refresh_per_second=2,
                transient=False,
            )
            self._live.__enter__()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()
        return self

    def _tick(self) -> None:
        self._cpu = self.cpu()  # the first sample (None): what the next is measured from
        last = time.monotonic()
        while not self._stop.wait(min(0.5, self.interval)):
            if self._live is not None:
                if time.monotonic() - last >= 2:  # CPU over 2 s, not over one redraw
                    last, self._cpu = time.monotonic(), self.cpu()
                self._live.update(render(self.state, self._cpu))
            elif time.monotonic() - last >= self.interval:
                last = time.monotonic()
                line = plain_line(self.state, self.cpu())
                self.console.print(line, highlight=False, soft_wrap=True, markup=False)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._live is not None:
            self._live.update(render(self.state, self._cpu))
            self._live.__exit__(None, None, None)

    def message(self, text: str, style: str = "") -> None:
        """A line above the live view (errors, notices)."""
        self.console.print(text, style=style or None, highlight=False, markup=False, soft_wrap=True)


def _skips(state: JobState) -> dict[str, int]:
    skipped: dict[str, int] = {}
    for r in state.records:
        if r.status == "skipped":
            skipped[r.error or ""] = skipped.get(r.error or "", 0) + 1
    return skipped


def nothing_to_do(state: JobState) -> str | None:
    """'nothing to do: 12 already done, 2 not a media extension' when no input needed
    work (every input skipped), instead of a summary of zeros; else None."""
    if state.total != state.skipped or state.done or state.failed:
        return None
    parts: dict[str, int] = {}
    for why, n in _skips(state).items():
        key = ALREADY_DONE if why.startswith(ALREADY_DONE) else why
        parts[key] = parts.get(key, 0) + n
    said = ", ".join(f"{n} {why}" for why, n in parts.items())
    return f"nothing to do: {said or 'no media files found'}"


def summary_rows(state: JobState) -> list[tuple[str, str]]:
    """The summary as (key, value) rows; values may hold indented lines below. Figures
    that no worker measured (an interrupted run before any model was ready) are left out
    rather than shown as zeros."""
    s = snapshot(state)
    c = s["cache"]
    rows = [("done", str(state.done))]
    skipped = _skips(state)
    rows.append(
        ("skipped", str(state.skipped) + "".join(f"\n  {n} {why}" for why, n in skipped.items()))
    )
    if state.redone:
        rows.append(
            (
                "redone",
                str(sum(state.redone.values()))
                + "".join(f"\n  {n} {why}" for why, n in state.redone.items()),
            )
        )
    failed = [f"\n  {r.path}: {r.error}" for r in state.records if r.status == "failed"]
    rows.append(("failed", str(state.failed) + "".join(failed[:20])))
    if state.out_dir:
        rows.append(("output", state.out_dir))
    rows.append(("audio", f"{state.audio_seconds:.1f} s"))
    rows.append(("wall time", f"{s['wall']:.1f} s"))
    if state.audio_seconds > 0:
        rows.append(("RTFx", f"{s['rtfx']:.1f} (audio seconds per wall second)"))
    if state.ready:
        rows.append(
            (
                "model cache",
                f"{int(c['loads'])} loads in {c['load_seconds']:.1f} s, {int(c['hits'])} hits, "
                f"{int(c['misses'])} misses, hit rate {c['hit_rate']:.1%}",
            )
        )
    if state.peak_rss:
        rows.append(("peak memory", f"{state.peak_rss >> 20} MiB over all workers"))
    if state.node_of:  # the Ray backend: what each node did, one that joined included
        rows.append(("nodes", "\n".join(node_lines(state))))
    if state.fallback_decodes:  # a systematic fallback (a broken PyAV) must not hide
        rows.append(
            (
                "decoding",
                f"{state.fallback_decodes} file(s) PyAV could not read were decoded by the "
                "slower ffmpeg fallback (see their notes)",
            )
        )
    return rows


def summary_table(state: JobState) -> Table:
    """The summary for a terminal: a box-drawn table."""
    t = Table(title="epyc-whisper summary", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for key, value in summary_rows(state):
        t.add_row(key, value)
    return t


def summary_lines(state: JobState) -> str:
    """The summary for a log: ``key: value`` lines under a title, no box characters."""
    return "\n".join(
        ["epyc-whisper summary", *(f"{key}: {value}" for key, value in summary_rows(state))]
    )


def summary_line(state: JobState) -> str:
    """The one-line summary of ``-q``: counts, audio, time, RTFx, peak memory."""
    s = snapshot(state)
    line = f"epyc-whisper summary: {state.done} done, {state.skipped} skipped, "
    line += f"{state.failed} failed; {state.audio_seconds:.1f} s of audio in {s['wall']:.1f} s"
    if state.audio_seconds > 0:
        line += f", RTFx {s['rtfx']:.1f}"
    if state.peak_rss:
        line += f", peak memory {state.peak_rss >> 20} MiB"
    if state.fallback_decodes:
        line += f"; {state.fallback_decodes} file(s) decoded by the ffmpeg fallback"
    if state.redone:
        line += f"; {sum(state.redone.values())} redone (" + ", ".join(state.redone) + ")"
    if state.out_dir and state.done:
        line += f"; transcripts in {state.out_dir}"
    return line
