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

from epyc_whisper.job import JobState


def _hms(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def snapshot(state: JobState) -> dict[str, Any]:
    """The live numbers, computed once per refresh (shared by both views)."""
    wall = state.wall
    finished = state.done + state.failed
    todo = state.total - state.skipped
    rate = finished / wall if wall > 0 else 0.0
    eta = (todo - finished) / rate if rate > 0 else None
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
        "cpu": psutil.cpu_percent(interval=None),
        "rss_mib": state.rss() >> 20,
        "cache": cache,
        "workers": len(state.ready),
    }


def render(state: JobState) -> Group:
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
    t.add_row("machine", f"CPU {s['cpu']:.0f}%, workers {s['workers']}, memory {s['rss_mib']} MiB")
    t.add_row(
        "model cache",
        f"{int(c['loads'])} loads ({c['load_seconds']:.1f} s), "
        f"{int(c['hits'])} hits, hit rate {c['hit_rate']:.1%}",
    )
    return Group(Text("epyc-whisper transcribe", style="bold"), t)


def plain_line(state: JobState) -> str:
    s = snapshot(state)
    return (
        f"epyc-whisper: {s['finished']}/{s['todo']} files, {s['failed']} failed, "
        f"{s['audio_h']:.2f} h audio, {s['files_s']:.2f} files/s, RTFx {s['rtfx']:.1f}, "
        f"ETA {_hms(s['eta'])}, CPU {s['cpu']:.0f}%, mem {s['rss_mib']} MiB, "
        f"cache {int(s['cache']['loads'])} loads/{int(s['cache']['hits'])} hits"
    )


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

    def __enter__(self) -> ProgressView:
        if self.quiet:
            return self
        if self.console.is_terminal:
            self._live = Live(
                render(self.state), console=self.console, refresh_per_second=2, transient=False
            )
            self._live.__enter__()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()
        return self

    def _tick(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.5):
            if self._live is not None:
                self._live.update(render(self.state))
            elif time.monotonic() - last >= self.interval:
                last = time.monotonic()
                self.console.print(plain_line(self.state), highlight=False, soft_wrap=True)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._live is not None:
            self._live.update(render(self.state))
            self._live.__exit__(None, None, None)

    def message(self, text: str, style: str = "") -> None:
        """A line above the live view (errors, notices)."""
        self.console.print(text, style=style or None, highlight=False, markup=False, soft_wrap=True)


def summary_table(state: JobState) -> Table:
    s = snapshot(state)
    c = s["cache"]
    t = Table(title="epyc-whisper summary", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("done", str(state.done))
    skipped: dict[str, int] = {}
    for r in state.records:
        if r.status == "skipped":
            skipped[r.error or ""] = skipped.get(r.error or "", 0) + 1
    t.add_row(
        "skipped", str(state.skipped) + "".join(f"\n  {n} {why}" for why, n in skipped.items())
    )
    if state.redone:
        t.add_row(
            "redone",
            str(sum(state.redone.values()))
            + "".join(f"\n  {n} {why}" for why, n in state.redone.items()),
        )
    failed = [f"\n  {r.path}: {r.error}" for r in state.records if r.status == "failed"]
    t.add_row("failed", str(state.failed) + "".join(failed[:20]))
    if state.out_dir:
        t.add_row("output", state.out_dir)
    t.add_row("audio", f"{state.audio_seconds:.1f} s")
    t.add_row("wall time", f"{s['wall']:.1f} s")
    t.add_row("RTFx", f"{s['rtfx']:.1f} (audio seconds per wall second)")
    t.add_row(
        "model cache",
        f"{int(c['loads'])} loads in {c['load_seconds']:.1f} s, "
        f"{int(c['hits'])} hits, {int(c['misses'])} misses, hit rate {c['hit_rate']:.1%}",
    )
    t.add_row("peak memory", f"{state.peak_rss >> 20} MiB over all workers")
    if state.fallback_decodes:  # a systematic fallback (a broken PyAV) must not hide
        t.add_row(
            "decoding",
            f"{state.fallback_decodes} file(s) PyAV could not read were decoded by the "
            "slower ffmpeg fallback (see their notes)",
        )
    return t
