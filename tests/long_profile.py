"""Where a split recording's time goes: its pieces in process, one thread, each phase's
encoder passes, decodes and word alignments counted and timed.

    python tests/long_profile.py RECORDING.wav [OUT.json]

Runs what a worker runs for a long file (engine.split_recording, then piece_passes on
the pieces 4 at a time, as a feeder thread takes them, and each piece's rest), with
tiny.en int8, beam 5, on one thread, and prints per phase: ``first`` (the pieces'
first decodes and the passes after an early stop), ``halves`` (the halvings of failing
pieces), ``schedule`` (the temperature schedule) and ``guard`` (speech no word covered,
transcribed again). The counts do not move from run to run; the seconds do (10-20% on
the 2-core development machine). OUT.json gets the text, for a WER against the
recording's reference (make_long.py writes it beside the recording).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import sys
import tempfile
import time
from typing import Any

from epyc_whisper import engine, window
from epyc_whisper.audio import decode_pyav
from epyc_whisper.engine import WorkerSpec
from epyc_whisper.models import bundled_model

seconds: dict[str, float] = collections.defaultdict(float)
counts: collections.Counter[str] = collections.Counter()
phase = ["first"]


class Counting:
    """CTranslate2's model (which cannot be patched), each call counted and timed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _timed(self, what: str, n: int, call: Any, *a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = call(*a, **k)
        seconds[f"{phase[0]}.{what}"] += time.perf_counter() - t0
        counts[f"{phase[0]}.{what}"] += n
        return out

    def encode(self, *a: Any, **k: Any) -> Any:
        return self._timed("encode", 1, self.inner.encode, *a, **k)

    def generate(self, features: Any, *a: Any, **k: Any) -> Any:
        out = self._timed("generate", features.shape[0], self.inner.generate, features, *a, **k)
        counts[f"{phase[0]}.tokens"] += sum(len(r.sequences_ids[0]) for r in out)
        return out

    def align(self, *a: Any, **k: Any) -> Any:
        return self._timed("align", 1, self.inner.align, *a, **k)


def in_phase(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapped(*a: Any, **k: Any) -> Any:
        before, phase[0] = phase[0], name
        try:
            return fn(*a, **k)
        finally:
            phase[0] = before

    return wrapped


def main(path: str, out: str = "") -> None:
    tmp = tempfile.mkdtemp(prefix="long-profile-")
    spec = WorkerSpec(
        0, [], str(bundled_model()), "cpu", "int8", 1, 1, {"beam_size": 5}, pin=False,
        split_above=120, pool_workers=2, decode_batch=4, tmp_dir=tmp,
    )  # fmt: skip
    model = engine.get_model(spec)
    model.model = Counting(model.model)
    engine._schedule = in_phase("schedule", engine._schedule)
    engine._recover = in_phase("guard", engine._recover)
    first_decode = window.try_windows

    def try_windows(*a: Any, **k: Any) -> Any:  # a piece's rest decodes only its halves
        name = "halves" if phase[0] == "rest" else phase[0]
        return in_phase(name, first_decode)(*a, **k)

    window.try_windows = try_windows
    t0 = time.perf_counter()
    plan = engine.split_recording(model, decode_pyav(path), {"id": 1}, spec, spec.options)
    pieces = [
        {"pcm": plan["pcm"], "chunks": c, "index": i, "language": plan["language"]}
        | {"speech": plan["speech"][i], "quiet": plan["quiet"][i]}
        for i, c in enumerate(plan["pieces"])
    ]
    results = []
    for k in range(0, len(pieces), spec.decode_batch):
        phase[0] = "first"
        rests = engine.piece_passes(model, pieces[k : k + spec.decode_batch], spec.options)
        phase[0] = "rest"
        results += [rest() for _, rest in rests]
    wall = time.perf_counter() - t0
    os.unlink(plan["pcm"])
    print(
        f"{path}: {len(pieces)} pieces, {sum(r['halved'] for r in results)} halved, "
        f"{sum(len(r['recovered']) for r in results)} recovered, "
        f"{sum(len(r['unrecognised']) for r in results)} unrecognised, "
        f"{sum(len(r['quiet']) for r in results)} quiet; {wall:.2f} s in all"
    )
    for key in sorted(set(seconds) | set(counts)):
        timed = f"{seconds[key]:7.2f} s" if key in seconds else ""
        print(f"  {key:18s} {counts[key]:6d}  {timed}")
    if out:
        text = " ".join(s["text"].strip() for r in results for s in r["segments"])
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"text": text}, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
