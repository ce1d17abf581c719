"""epyc-whisper: batch speech-to-text for many-core CPU servers, on faster-whisper.

Importing this package loads nothing heavy: numpy and CTranslate2 are imported only
inside worker processes, after the thread environment is set (envsetup.py).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
