"""What made each transcript in an output folder, so that a rerun redoes what changed.

Skip-if-done means "done with these settings": a transcript made with tiny.en is not
kept when the user moves to large-v3, nor one made without ``--word-timestamps`` when
they ask for them. Every finished file adds one JSON line to ``OUT/.epyc-whisper-done.jsonl``:
its output name and the fingerprint of what made it (``made_with``). The file is only
appended to while the output folder's lock is held; a line cut short by a kill is
ignored, and the last line for a name wins. It is rewritten compactly when it has grown
to more than twice the names it holds.

Stdlib only: the CLI's parent process reads it before any worker starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from epyc_whisper.config import PASSED_THROUGH, SPECS, VAD_PARAMETERS
from epyc_whisper.writers import WRITER_OPTIONS, atomic_write_text

LEDGER_NAME = ".epyc-whisper-done.jsonl"

#: The settings that change the words of a transcript, besides the model and its
#: compute type: everything passed to faster-whisper's transcribe() (config.py's lists),
#: so a new decoding option is recorded as soon as it is passed. Layout settings
#: (processes, threads, packing, splitting) change the speed, not what the transcript is
#: for. The first seven were recorded before the whisper-ctranslate2 options (#17): a
#: record without the others counts as made with their defaults (see differences()).
_RECORDED_FIRST = (
    "language",
    "task",
    "beam_size",
    "vad",
    "word_timestamps",
    "initial_prompt",
    "temperature",
)
WORD_SETTINGS = _RECORDED_FIRST + tuple(
    k
    for k in (
        *PASSED_THROUGH,
        "temperature_increment_on_fallback",
        "suppress_tokens",
        *VAD_PARAMETERS,
    )
    if k not in _RECORDED_FIRST
)
#: Settings that change how the files are written, not the words: a transcript written
#: with other subtitle lines or json indentation is redone too.
SHAPE_SETTINGS = WRITER_OPTIONS


def model_identity(model_dir: Path) -> str:
    """A short digest of a CTranslate2 model folder that does not depend on where it lies:
    its config.json, vocabulary and tokenizer, the size of model.bin and its first and
    last MiB (the header and both ends of the weights), so that another model of the same
    shape, or the same one converted again, counts as another model."""
    h = hashlib.sha256()
    for name in ("config.json", "vocabulary.txt", "vocabulary.json", "tokenizer.json"):
        p = model_dir / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    weights = model_dir / "model.bin"
    size = weights.stat().st_size
    h.update(str(size).encode())
    with weights.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def fingerprint(model: str, model_id: str, compute_type: str, settings: Mapping[str, Any]) -> dict:
    """What makes a transcript what it is: the model (as named, and its identity), the
    compute type, and every setting in WORD_SETTINGS and SHAPE_SETTINGS."""
    made: dict[str, Any] = {"model": model, "model_id": model_id, "compute_type": compute_type}
    made.update({k: settings.get(k) for k in WORD_SETTINGS + SHAPE_SETTINGS})
    return made


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """None when a transcript made with ``old`` is what ``new`` would make; else why it is
    redone, in a few words: "model changed", "language, word_timestamps changed". The
    model's name alone does not count ('bundled' and its folder are the same model)."""
    if old.get("model_id") != new.get("model_id"):
        return "model changed"
    # A setting the record does not have was not one yet when it was made: its default.
    keys = [
        k
        for k in new
        if k not in ("model", "model_id")
        and old.get(k, SPECS[k].default if k in SPECS else None) != new.get(k)
    ]
    return f"{', '.join(keys)} changed" if keys else None


class Ledger:
    """The records of one output folder: ``get(name)``, ``add(name, made_with)``."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / LEDGER_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        self._lines = 0
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            try:
                rec = json.loads(line)
                self.entries[rec["name"]] = rec["made_with"]
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
            self._lines += 1

    def get(self, name: str) -> dict[str, Any] | None:
        return self.entries.get(name)

    def add(self, name: str, made_with: Mapping[str, Any]) -> None:
        """Record one finished transcript (called after its files are written)."""
        self.entries[name] = dict(made_with)
        line = json.dumps({"name": name, "made_with": made_with})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        self._lines += 1

    def compact(self) -> None:
        """Rewrite the file with one line per name once reruns have doubled it."""
        if self._lines <= 2 * max(len(self.entries), 1):
            return
        atomic_write_text(
            self.path,
            "".join(
                json.dumps({"name": n, "made_with": m}) + "\n" for n, m in self.entries.items()
            ),
        )
        self._lines = len(self.entries)

    def rename(self, old: str, new: str) -> None:
        """Move a record along with its transcript (the old naming rule's migration)."""
        made = self.entries.pop(old, None)
        if made is not None:
            self.add(new, made)
