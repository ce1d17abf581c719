"""One exception family and the exit-code table (documented in README.md)."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes. Scripts and cron rely on these; keep them stable."""

    OK = 0  #: every input done or skipped
    INPUTS_FAILED = 1  #: the run finished, some inputs failed
    USAGE = 2  #: bad flag, preset, config file or setting
    ENVIRONMENT = 3  #: hardware, model, lock, disk or other environment problem
    INTERRUPTED = 130  #: SIGINT (128 + 2)
    TERMINATED = 143  #: SIGTERM (128 + 15)


class EpycWhisperError(Exception):
    """Base of every error the CLI turns into a one-line message and an exit code."""

    exit_code: ExitCode = ExitCode.ENVIRONMENT


class UsageError(EpycWhisperError):
    """A setting, flag or config file is wrong: the message names it, its source and
    what is allowed."""

    exit_code = ExitCode.USAGE


class EnvironmentProblem(EpycWhisperError):
    """The machine, the model, the output folder or the lock stops the run."""

    exit_code = ExitCode.ENVIRONMENT


class MediaError(EpycWhisperError):
    """One input file cannot be turned into audio; the message says why, in one line.
    Raised inside a worker (audio.decode): that file fails, the batch goes on."""

    exit_code = ExitCode.INPUTS_FAILED
