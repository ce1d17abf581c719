"""Before a run: settings resolved, the hardware read, the layout planned, the thread
environment computed, and the device and compute type checked against CTranslate2.

The same steps for ``transcribe``, ``detect``, ``bench`` and the Python API. Nothing here
imports CTranslate2: what only CTranslate2 can answer (GPUs, compute types) is asked in
a child process, so the caller's native libraries keep the thread environment they
were started with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epyc_whisper import __version__
from epyc_whisper.config import Settings, origin, resolve
from epyc_whisper.envsetup import MARKER, EnvVar, plan_env
from epyc_whisper.errors import EnvironmentProblem, UsageError
from epyc_whisper.hardware import Hardware, detect, tuning_advice
from epyc_whisper.layout import Layout, check_room, plan, thread_env
from epyc_whisper.measured import recall


@dataclass
class Prepared:
    """What a run starts from. Attributes: settings (each value with its source);
    hardware (what ``detect`` read); layout (processes, CT2 workers, threads, CPU sets);
    env (the thread environment the workers get, with what the user exported)."""

    settings: Settings
    hardware: Hardware
    layout: Layout
    env: list[EnvVar]

    def to_dict(self) -> dict[str, Any]:
        """``detect --json``: the hardware, the settings with their sources, the layout and
        the thread environment (README: the schema)."""
        s = self.settings
        return {
            "version": __version__,
            "hardware": self.hardware.to_dict(),
            "preset": s.preset,
            "settings": {k: {"value": v.value, "source": v.source} for k, v in s.values.items()},
            "layout": self.layout.to_dict(),
            "thread_env": {
                v.name: {"value": v.value, "source": v.source, "in_effect": v.in_effect}
                for v in self.env
            },
            "reexecuted": MARKER in os.environ,
            "tuning": tuning_advice(self.hardware),
        }

    def check_compute_type(self) -> None:
        """The compute type can run on this device (asks CTranslate2 where it must)."""
        s = self.settings
        check_compute_type(s.compute_type, s.device, s.source("compute_type"))


def prepare(
    cli: Mapping[str, Any],
    preset: str | None = None,
    config: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Prepared:
    """Settings, hardware, layout and the thread environment, in that order.

    ``cli`` holds the settings given explicitly (flags, API arguments); None values are
    ignored. Raises UsageError or EnvironmentProblem with a one-line message."""
    environ = os.environ if environ is None else environ
    settings = resolve(
        {k: v for k, v in cli.items() if v is not None},
        environ=environ,
        config_file=str(config) if config else None,
        preset=preset,
    )
    settings = check_device(settings)
    hw = detect()
    layout = plan(hw, settings, recall(settings.model, settings.compute_type))
    check_room(layout, settings)
    return Prepared(settings, hw, layout, plan_env(thread_env(layout), environ))


def _ask_ctranslate2(code: str, what: str) -> Any:
    """Run ``code`` (which prints JSON) in a child process, so the parent never loads
    CTranslate2 before its thread environment is set."""
    try:
        res = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        return json.loads(res.stdout)
    except (subprocess.SubprocessError, ValueError, OSError) as e:
        raise EnvironmentProblem(f"could not ask CTranslate2 for {what}: {e}") from None


def check_device(settings: Settings) -> Settings:
    """--device cuda needs a GPU CTranslate2 can use, and each --device-index among them;
    auto becomes cuda when there is one, else cpu. cpu (the default) asks nothing."""
    device = settings.device
    if device == "cpu":
        return settings
    count = int(
        _ask_ctranslate2(
            "import ctranslate2, json; print(json.dumps(ctranslate2.get_cuda_device_count()))",
            "the number of CUDA GPUs",
        )
    )
    where = origin("device", settings.source("device"))
    if device == "auto":
        chosen = "cuda" if count else "cpu"
        return settings.with_values(f"{settings.source('device')}, auto: {chosen}", device=chosen)
    if not count:
        raise UsageError(
            f"device '{device}' (from {where}): CTranslate2 finds no CUDA GPU here "
            "(or this CTranslate2 was built without CUDA); use --device cpu"
        )
    ids = [int(i) for i in settings.device_index.split(",")]
    bad = [i for i in ids if i >= count]
    if bad:
        raise UsageError(
            f"device_index {settings.device_index} (from "
            f"{origin('device_index', settings.source('device_index'))}): GPU {bad[0]} "
            f"does not exist; CTranslate2 finds {count} (0-{count - 1})"
        )
    return settings


def check_compute_type(compute_type: str, device: str, source: str = "cli") -> None:
    """float16/bfloat16/int16 are not CPU types everywhere, and a GPU has types of its own:
    ask CTranslate2, in a child process so the parent never loads it, which types this
    device can run."""
    if compute_type in ("default", "auto") or (
        device == "cpu" and compute_type in ("int8", "int8_float32", "float32")
    ):
        return
    code = (
        "import ctranslate2, json; "
        f"print(json.dumps(sorted(ctranslate2.get_supported_compute_types({device!r}))))"
    )
    supported = _ask_ctranslate2(code, "supported compute types")
    if compute_type not in supported:
        kind = "CPU" if device == "cpu" else "GPU"
        raise UsageError(
            f"compute_type '{compute_type}' (from {source}) cannot run on this {kind} with "
            f"CTranslate2; supported here: {', '.join(supported)}"
            + (" (float16 and bfloat16 are GPU types)" if device == "cpu" else "")
        )
