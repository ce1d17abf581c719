"""Time and memory of models of large-v3's and turbo's real shape (random weights), on this machine.

    python tests/shaped_bench.py [--shapes large-v3,turbo] [--quantization int8]
        [--workdir /tmp/shaped] [--layers N] [--repeat 3] [--steps 32]

Builds each model with tests/make_shaped_model.py under --workdir (kept for the next
run; never commit them: a large-v3 copy is about 1.5 GB), then measures, each in a
fresh process so that no measurement inherits another's memory:

- load: seconds to load one copy as a worker does (faster-whisper's WhisperModel), the
  RSS it added, and the peak while loading (VmHWM, the high-water mark);
- two copies loading at once (two processes started together): the peak of their RSS
  summed, sampled every 20 ms, against what the layout plans for them;
- the layout's estimate of one copy (layout.estimate_model_bytes) against the measured
  RSS;
- encoder: seconds for one 30 s window on 1 and 2 threads (min of --repeat);
- decoder: milliseconds per step at beam 5, for 1 and 4 windows in one batch, on one
  thread: (time for 8 + --steps tokens - time for 8 tokens) / --steps, the end of text
  suppressed so every run takes its full length; and the RSS peak each batch added.

THE WEIGHTS ARE RANDOM: only the times and the memory mean something. Other people's
work on a shared machine slows the timings: the load average is printed with them;
repeat a figure that looks off.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.make_shaped_model import NOTICE, build  # noqa: E402

EOT = 50257


def _vm(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def child(task: dict[str, Any]) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    rss0, hwm0 = _vm("VmRSS"), _vm("VmHWM")
    import ctranslate2
    import numpy as np
    from faster_whisper import WhisperModel

    rss_lib = _vm("VmRSS")
    threads = int(task.get("threads", 1))
    t0 = time.perf_counter()
    model = WhisperModel(
        task["model"], device="cpu", compute_type=task["compute_type"], cpu_threads=threads
    )
    out: dict[str, Any] = {
        "load_s": time.perf_counter() - t0,
        "rss_before": rss0,
        "rss_libs": rss_lib,
        "rss_loaded": _vm("VmRSS"),
        "hwm_loaded": _vm("VmHWM"),
        "hwm_start": hwm0,
    }
    if task["what"] == "load":
        return out
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(30 * 16000) * 0.1).astype(np.float32)
    features = model.feature_extractor(audio)[:, :3000]
    if task["what"] == "encode":
        times, cpu = [], []
        for _ in range(int(task["repeat"])):
            t, c = time.perf_counter(), time.process_time()
            model.encode(features)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        out["encode_s"], out["encode_cpu_s"] = times, cpu
        return out
    # decode: one encoded window, repeated to the batch; the prompt of a window.
    enc = np.asarray(model.encode(features))
    out["hwm_encoded"] = _vm("VmHWM")
    tok = model.hf_tokenizer
    prompt = [tok.token_to_id(t) for t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>")]
    res: dict[str, Any] = {}
    for batch in (1, 4):
        stack = ctranslate2.StorageView.from_array(np.concatenate([enc] * batch))
        hwm = _vm("VmHWM")
        per, per_cpu = {}, {}
        for length in (8, 8 + int(task["steps"])):
            best = best_cpu = None
            for _ in range(2):
                t, c = time.perf_counter(), time.process_time()
                model.model.generate(
                    stack,
                    [prompt] * batch,
                    beam_size=5,
                    max_length=length,
                    suppress_tokens=[-1, EOT],
                    suppress_blank=False,
                )
                dt, dc = time.perf_counter() - t, time.process_time() - c
                best = dt if best is None else min(best, dt)
                best_cpu = dc if best_cpu is None else min(best_cpu, dc)
            per[length], per_cpu[length] = best, best_cpu
        step = (per[8 + int(task["steps"])] - per[8]) / int(task["steps"])
        step_cpu = (per_cpu[8 + int(task["steps"])] - per_cpu[8]) / int(task["steps"])
        res[str(batch)] = {
            "step_ms": step * 1000,
            "step_cpu_ms": step_cpu * 1000,
            "window_step_ms": step * 1000 / batch,
            "hwm_added": _vm("VmHWM") - hwm,
            "hwm": _vm("VmHWM"),
        }
    out["decode"] = res
    return out


def run_child(task: dict[str, Any]) -> dict[str, Any]:
    r = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(task)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def two_loads(model: str, compute_type: str) -> dict[str, Any]:
    """Two processes loading the same model at once: the peak of their RSS summed."""
    import psutil

    task = json.dumps({"what": "load", "model": model, "compute_type": compute_type})
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", task], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    ps = [psutil.Process(p.pid) for p in procs]
    peak = 0
    while any(p.poll() is None for p in procs):
        total = 0
        for p in ps:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, total)
        time.sleep(0.02)
    hwm = [json.loads(p.communicate()[0].strip().splitlines()[-1])["hwm_loaded"] for p in procs]
    return {"sampled_peak_sum": peak, "hwm_sum": sum(hwm)}


def planned(model: str, compute_type: str) -> dict[str, int]:
    """What the layout plans for one copy, and for a 2-process x 1-worker plan."""
    from epyc_whisper.layout import PROCESS_OVERHEAD, estimate_model_bytes, load_peak_bytes

    one = estimate_model_bytes(model, compute_type)
    peak = load_peak_bytes(model, compute_type, one)
    return {"estimate": one, "load_peak": peak, "two_loading": 2 * (peak + PROCESS_OVERHEAD)}


def mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="large-v3,turbo")
    p.add_argument("--quantization", default="int8", choices=["int8", "float16"])
    p.add_argument("--compute-type", default="int8")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/shaped"))
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--skip", default="", help="comma list of: load,two,encode,decode")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return 0
    skip = set(a.skip.split(","))
    print(NOTICE.format(shape=a.shapes) + "\n")
    rows = []
    for shape in a.shapes.split(","):
        name = f"{shape}-{a.quantization}" + (f"-l{a.layers}" if a.layers else "")
        folder = a.workdir / name
        if not (folder / "RANDOM-WEIGHTS.txt").is_file():  # written last: a whole build
            t = time.perf_counter()
            build(shape, folder, a.layers, a.quantization)
            print(f"built {folder} in {time.perf_counter() - t:.1f} s", flush=True)
        model, ct = str(folder), a.compute_type
        row: dict[str, Any] = {
            "model": name,
            "model.bin MiB": mib((folder / "model.bin").stat().st_size),
            "load avg": f"{os.getloadavg()[0]:.1f}",
        }
        plan = planned(model, ct)
        row["planned MiB"] = mib(plan["estimate"])
        row["planned load peak MiB"] = mib(plan["load_peak"])
        if "load" not in skip:
            loads = [run_child({"what": "load", "model": model, "compute_type": ct})]
            loads.append(run_child({"what": "load", "model": model, "compute_type": ct}))
            best = min(loads, key=lambda r: r["load_s"])
            row["load s"] = f"{best['load_s']:.2f}"
            row["RSS MiB"] = mib(best["rss_loaded"] - best["rss_libs"])
            row["load peak MiB"] = mib(best["hwm_loaded"] - best["rss_libs"])
            row["process RSS MiB"] = mib(best["rss_loaded"])
            row["process peak MiB"] = mib(best["hwm_loaded"])
        if "two" not in skip:
            two = two_loads(model, ct)
            row["2 loading: peak sum MiB"] = mib(two["sampled_peak_sum"])
            row["2 loading: HWM sum MiB"] = mib(two["hwm_sum"])
            row["2 loading planned MiB"] = mib(plan["two_loading"])
        if "encode" not in skip:
            for th in (1, 2):
                r = run_child(
                    {
                        "what": "encode",
                        "model": model,
                        "compute_type": ct,
                        "threads": th,
                        "repeat": a.repeat,
                    }
                )
                row[f"encode {th}t s"] = f"{min(r['encode_s']):.2f}"
                row[f"encode {th}t CPU s"] = f"{min(r['encode_cpu_s']):.2f}"
        if "decode" not in skip:
            r = run_child(
                {
                    "what": "decode",
                    "model": model,
                    "compute_type": ct,
                    "threads": 1,
                    "steps": a.steps,
                }
            )
            row["encode peak +MiB"] = mib(r["hwm_encoded"] - r["hwm_loaded"])
            row["b1 decode peak +MiB"] = mib(r["decode"]["1"]["hwm"] - r["hwm_loaded"])
            row["b4 decode peak +MiB"] = mib(r["decode"]["4"]["hwm"] - r["hwm_loaded"])
            r = r["decode"]
            row["step CPU ms b1"] = f"{r['1']['step_cpu_ms']:.1f}"
            row["step CPU ms b4"] = f"{r['4']['step_cpu_ms']:.1f}"
            row["step ms b1"] = f"{r['1']['step_ms']:.1f}"
            row["step ms b4"] = f"{r['4']['step_ms']:.1f}"
            row["window-step ms b4"] = f"{r['4']['window_step_ms']:.1f}"
        row["load avg after"] = f"{os.getloadavg()[0]:.1f}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("\n| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
