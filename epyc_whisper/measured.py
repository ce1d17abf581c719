"""The measured memory of one loaded model, remembered between runs.

The memory check of the layout needs the size of one model copy before any worker
has loaded one. The first run can only estimate it (from the size of ``model.bin``);
every run then measures it, as the RSS a worker gained while loading the model
(CTranslate2 included), and the next plan uses that measurement instead. Kept in
``$XDG_CACHE_HOME/epyc-whisper/model-memory.json``, keyed by model and compute type.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path


def cache_file(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "epyc-whisper" / "model-memory.json"


def _key(model: str, compute_type: str) -> str:
    path = Path(model).expanduser()
    return f"{path.resolve() if path.exists() else model}|{compute_type}"


def _read(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: the estimate serves
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, int)}


def recall(model: str, compute_type: str, environ: Mapping[str, str] | None = None) -> int | None:
    """The bytes one copy of ``model`` took when last measured, or None."""
    return _read(cache_file(environ)).get(_key(model, compute_type))


def remember(
    model: str, compute_type: str, nbytes: int, environ: Mapping[str, str] | None = None
) -> None:
    """Record a measurement (atomically; a failure to write is not an error of the run)."""
    path = cache_file(environ)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read(path) | {_key(model, compute_type): int(nbytes)}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".model-memory.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass
