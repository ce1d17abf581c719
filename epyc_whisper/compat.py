"""whisper-ctranslate2's spellings of our options, so that a pasted command line works.

``translate(argv)`` rewrites the arguments before Click parses them:

* an option spelled with underscores (``--beam_size``) becomes ours with dashes
  (``--beam-size``); the options whose name differs are in ``RENAMED``
  (``--output_format`` -> ``--format``, ``--vad_filter`` -> ``--vad``, ...);
* a value-style boolean (``--vad_filter True``, ``--word_timestamps=false``) becomes the
  flag or its ``--no-`` form;
* their values that mean "the default" here are dropped (``--language None``,
  ``--verbose True``), ``--verbose False`` becomes ``--quiet``. Their ``--threads 0``
  ("automatic") is left to fail as ours does, naming the flag: a zero count is refused
  everywhere here, and leaving the flag out is automatic;
* an option that has no meaning for a batch tool over files (live microphone input,
  speaker diarization, colour-coded terminal output, the batched pipeline) is refused
  with one line saying so (a UsageError: exit 2), not Click's "No such option".

Why a rewrite and not more names on each typer.Option: Click cannot give a flag option a
``True``/``False`` value, the underscore names would double every option's line in
``--help``, and an argument list rewritten in one place is easy to test against real
whisper-ctranslate2 command lines (tests/test_compat.py). The names users see in
``--help`` and in error messages stay ours.

Stdlib only: it runs in the CLI before anything is imported.
"""

from __future__ import annotations

from collections.abc import Sequence

from epyc_whisper.errors import UsageError

#: Their option -> ours, where the names differ by more than ``_`` for ``-``.
RENAMED = {
    "--output_format": "--format",
    "--model_directory": "--model-directory",
    "--model_dir": "--model-cache-dir",
    "--vad_filter": "--vad",
    "--logprob_threshold": "--log-prob-threshold",
    "--pretty_json": "--pretty-json",
    "-p": "--pretty-json",
}

#: Our boolean flags (and their negative form) that also take their True/False value.
BOOL_FLAGS = {
    "--vad": "--no-vad",
    "--word-timestamps": "--no-word-timestamps",
    "--condition-on-previous-text": "--no-condition-on-previous-text",
    "--suppress-blank": "--no-suppress-blank",
    "--multilingual": "--no-multilingual",
    "--highlight-words": "--no-highlight-words",
    "--pretty-json": "--no-pretty-json",
    "--local-files-only": "--no-local-files-only",
    "--pack": "--no-pack",
    "--split": "--no-split",
}

#: Their options with no meaning here, and why. Boolean ones given False (off, as by
#: default) are accepted and dropped.
NO_MEANING = {
    "--live_transcribe": "live transcription from a microphone",
    "--live_volume_threshold": "live transcription from a microphone",
    "--live_input_device": "live transcription from a microphone",
    "--live_input_device_sample_rate": "live transcription from a microphone",
    "--hf_token": "speaker diarization",
    "--speaker_name": "speaker diarization",
    "--speaker_num": "speaker diarization",
    "--print_colors": "colour-coded transcripts on the terminal (transcripts go to files)",
    "--batched": "faster-whisper's BatchedInferencePipeline (epyc-whisper batches and "
    "packs on its own; --batch-size is files per queue item)",
    "--batch_size": "the batched pipeline's batch size (epyc-whisper's --batch-size is "
    "files per queue item)",
}
_BOOL_NO_MEANING = ("--live_transcribe", "--print_colors", "--batched")

#: (option, value) pairs that mean our default: dropped.
_DEFAULT_VALUES = {("--language", "none")}

_TRUE, _FALSE = "true", "false"


def _split(token: str) -> tuple[str, str | None]:
    name, eq, value = token.partition("=")
    return name, value if eq else None


def translate(argv: Sequence[str]) -> list[str]:
    """whisper-ctranslate2's spellings in ``argv`` as ours (see the module docstring);
    everything else is left as it is, for Click to parse or refuse. Idempotent."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--":  # the rest are paths
            out += args[i - 1 :]
            break
        if not token.startswith("-") or token == "-":
            out.append(token)
            continue
        name, value = _split(token)
        # The value of a value-style option: after '=', or the next argument.
        given = value if value is not None else (args[i] if i < len(args) else None)
        inline = value is not None
        word = (given or "").lower()
        if name in NO_MEANING:
            if name in _BOOL_NO_MEANING and word == _FALSE:
                i += 0 if inline else 1
                continue
            raise UsageError(f"{name}: {NO_MEANING[name]} has no meaning in epyc-whisper; drop it")
        if name == "--verbose" and word in (_TRUE, _FALSE):
            # theirs: print each segment as it is transcribed (True by default); ours
            # shows progress by default: False means as little on the terminal as we can.
            i += 0 if inline else 1
            if word == _FALSE:
                out.append("--quiet")
            continue
        if name.startswith("--") and "_" in name:
            name = RENAMED.get(name, name.replace("_", "-"))
        else:
            name = RENAMED.get(name, name)
        if name in BOOL_FLAGS and word in (_TRUE, _FALSE):
            i += 0 if inline else 1
            out.append(name if word == _TRUE else BOOL_FLAGS[name])
            continue
        if not inline and (name, word) in _DEFAULT_VALUES:
            i += 1
            continue
        out.append(name if value is None else f"{name}={value}")
    return out
