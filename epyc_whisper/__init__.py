"""epyc-whisper: batch speech-to-text for many-core CPU servers, on faster-whisper.

Importing this package loads nothing heavy: numpy and CTranslate2 are imported only
inside worker processes, after the thread environment is set (envsetup.py). The public
names below are imported on first use (module ``__getattr__``), so ``import
epyc_whisper`` and the CLI's ``--help`` stay instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_LAZY = {
    "Transcriber": "epyc_whisper.transcriber",
    "Transcript": "epyc_whisper.transcript",
    "Segment": "epyc_whisper.transcript",
    "write": "epyc_whisper.transcript",
}

__all__ = ["Segment", "Transcriber", "Transcript", "__version__", "write"]

if TYPE_CHECKING:
    from epyc_whisper.transcriber import Transcriber
    from epyc_whisper.transcript import Segment, Transcript, write


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'epyc_whisper' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
