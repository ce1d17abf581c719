"""Measure the Ray backend (issue 15): ratios side by side, from one run.

    python tests/ray_bench.py [--files N] [--model bundled]

On this machine, with Ray clusters the program starts and stops itself, loopback only
(each node's processes pinned to its own CPUs, as separate machines would be):
- scale-out: two one-CPU nodes against one one-CPU node, the same files;
- overhead: one two-CPU node through Ray against the local pool on the same 2 CPUs,
  and the round trip of one batch message (driver -> worker -> driver) on each backend.

Times are for the whole command (starting Ray workers, loading models) and for the
work after the first model was ready (``workers_ready_after`` in ``--summary``). The
load average is printed with the figures: on a shared machine it moves them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback node IPs (issue 15)

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"


def _files(n: int, dest: Path) -> list[Path]:
    """The first ``n`` English dev clips (phrases16k, ivr8k), copied."""
    with (DEV / "manifest.tsv").open(encoding="utf-8", newline="") as f:
        rows = [
            r
            for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if r["subset"] in ("phrases16k", "ivr8k")
        ]
    dest.mkdir(parents=True)
    out = []
    for i, r in enumerate(rows[:n]):
        src = DEV / r["file"]
        out.append(dest / f"{i:04d}-{src.name}")
        shutil.copy(src, out[-1])
    return out


class _Cluster:
    """A Ray cluster of nodes with the given CPU sets, on 127.0.0.1."""

    def __init__(self, cpu_sets: list[list[int]]) -> None:
        from ray.cluster_utils import Cluster

        mine = sorted(os.sched_getaffinity(0))
        self.c = Cluster()
        try:
            for i, cpus in enumerate(cpu_sets):
                os.sched_setaffinity(0, cpus)  # inherited by the node's processes
                self.c.add_node(
                    num_cpus=len(cpus),
                    node_ip_address="127.0.0.1",
                    object_store_memory=150 << 20,
                    include_dashboard=False,
                    node_name=f"node{i}",
                )
        finally:
            os.sched_setaffinity(0, mine)
        self.c.wait_for_nodes()
        self.address = self.c.address

    def __enter__(self) -> _Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.c.shutdown()


def _transcribe(files: Path, work: Path, name: str, model: str, extra: list[str]) -> dict[str, Any]:
    out, summary = work / f"out-{name}", work / f"summary-{name}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPYC_WHISPER_")}
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "epyc_whisper", "-q", "transcribe", str(files), "--model", model,
         "-o", str(out), "-f", "txt", "--summary", str(summary), *extra],
        env=env,
        capture_output=True,
        text=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{name}: exit {r.returncode}: {r.stderr[-2000:]}")
    doc = json.loads(summary.read_text())
    after = doc["wall_seconds"] - (doc["workers_ready_after"] or 0)
    return {
        "name": name,
        "wall_s": round(wall, 2),
        "after_load_s": round(after, 2),
        "audio_s": doc["audio_seconds"],
        "done": doc["done"],
        "load": os.getloadavg()[0],
    }


def _roundtrips(backend: Any, push: Any, n: int) -> float:
    """Median ms of one empty batch to worker 0 and its request for the next back."""
    backend.start(0)
    seen: set[str] = set()
    while "want" not in seen:
        seen |= {ev[1] for ev in backend.events(0.5)}
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        push()
        got = False
        while not got:
            got = any(ev[1] == "want" for ev in backend.events(1.0))
        times.append((time.perf_counter() - t0) * 1000)
    backend.shutdown()
    return statistics.median(times)


def _spec(model: Any, cpus: list[int]) -> Any:
    from epyc_whisper.engine import WorkerSpec

    return WorkerSpec(0, cpus, str(model), "cpu", "int8", 2, 1, {"beam_size": 5})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=80)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--roundtrips", type=int, default=100)
    a = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("needs 2 CPUs")
    two = cpus[:2]
    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    try:
        files = _files(a.files, work / "in")
        src = work / "in"
        print(f"{len(files)} dev clips, model {a.model}, CPUs {two}, load {os.getloadavg()}")
        rows = []
        # The local pool on 2 CPUs (its own layout for them), the same CPUs as Ray's node.
        os.sched_setaffinity(0, two)
        try:
            rows.append(_transcribe(src, work, "local, 2 CPUs", a.model, []))
        finally:
            os.sched_setaffinity(0, cpus)
        for name, sets in (
            ("ray, one 2-CPU node", [two]),
            ("ray, one 1-CPU node", [two[:1]]),
            ("ray, two 1-CPU nodes", [two[:1], two[1:]]),
        ):
            with _Cluster(sets) as c:
                rows.append(
                    _transcribe(src, work, name, a.model, ["--backend", "ray", "--address",
                                                           c.address])
                )  # fmt: skip
        for r in rows:
            print(
                f"{r['name']:24} {r['done']} files, {r['audio_s']:.0f} s audio: whole "
                f"{r['wall_s']:6.2f} s, after load {r['after_load_s']:6.2f} s "
                f"(RTFx {r['audio_s'] / r['after_load_s']:.1f}), load avg {r['load']:.2f}"
            )
        by = {r["name"]: r for r in rows}

        def ratio(slow: str, fast: str, key: str) -> float:
            return by[slow][key] / by[fast][key]

        print(
            "two 1-CPU nodes vs one 1-CPU node: "
            f"{ratio('ray, one 1-CPU node', 'ray, two 1-CPU nodes', 'after_load_s'):.2f}x after "
            f"load, {ratio('ray, one 1-CPU node', 'ray, two 1-CPU nodes', 'wall_s'):.2f}x whole"
        )
        print(
            "ray 2-CPU node vs local pool on 2 CPUs (time ratio, 1.00 = same): "
            f"{ratio('ray, one 2-CPU node', 'local, 2 CPUs', 'after_load_s'):.3f} after load, "
            f"{ratio('ray, one 2-CPU node', 'local, 2 CPUs', 'wall_s'):.3f} whole"
        )

        # Per-batch overhead: the message round trip alone, each backend, one run.
        from epyc_whisper.models import resolve_model
        from epyc_whisper.pool import ProcessBackend
        from epyc_whisper.ray_backend import NodePlan, RayBackend, connect

        model = resolve_model(a.model, "cli")
        local = ProcessBackend([_spec(model, two)])
        local_ms = _roundtrips(local, lambda: local.send_batch(0, []), a.roundtrips)
        with _Cluster([two]) as c:
            ray = connect(c.address)
            node = ray.nodes()[0]
            plan = NodePlan(node["NodeID"], "node0", "127.0.0.1", 2, None, None, {})
            rb = RayBackend(ray, [_spec(model, two)], [(plan, {"OMP_NUM_THREADS": "1"})])
            ray_ms = _roundtrips(rb, lambda: rb.actors[0].push.remote(("batch", [])), a.roundtrips)
        print(
            f"one batch message round trip (median of {a.roundtrips}): local pipe "
            f"{local_ms:.2f} ms, ray actor {ray_ms:.2f} ms; overhead {ray_ms - local_ms:.2f} ms "
            f"per batch; load avg {os.getloadavg()}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
