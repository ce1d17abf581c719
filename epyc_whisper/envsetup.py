"""The thread environment and the self re-exec.

OpenMP reads OMP_NUM_THREADS, OpenBLAS reads OPENBLAS_NUM_THREADS and CTranslate2
reads CT2_* when the native libraries load, so setting them later, from inside
the process, changes nothing. The CLI therefore computes them first and replaces
itself with a fresh interpreter (os.execve) that inherits them. A variable the
user exported is never overridden; ``detect`` shows it as theirs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

MARKER = "EPYC_WHISPER_REEXEC"


@dataclass(frozen=True)
class EnvVar:
    """Attributes: name; value: what the child will see; source: 'user' (exported by
    the user, kept), 'layout' (set by us) ; in_effect: the value this process has now."""

    name: str
    value: str
    source: str
    in_effect: str | None


def plan_env(wanted: Mapping[str, str], environ: Mapping[str, str]) -> list[EnvVar]:
    """Our wanted values, except where the user already exported the variable."""
    out = []
    for name, value in wanted.items():
        if name in environ and not _set_by_us(name, environ):
            out.append(EnvVar(name, environ[name], "user", environ.get(name)))
        else:
            out.append(EnvVar(name, value, "layout", environ.get(name)))
    return out


def _set_by_us(name: str, environ: Mapping[str, str]) -> bool:
    # After our re-exec the variable is present but ours: the marker lists our names.
    return name in environ.get(MARKER, "").split(",")


def reexec_needed(environ: Mapping[str, str]) -> bool:
    return MARKER not in environ


def child_environ(plan: list[EnvVar], environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of the re-executed process: user's plus ours, plus the marker
    naming the variables we set (so the child can tell ours from the user's)."""
    env = dict(environ)
    ours = []
    for var in plan:
        env[var.name] = var.value
        if var.source == "layout":
            ours.append(var.name)
    env[MARKER] = ",".join(ours) or "-"
    return env


def reexec(plan: list[EnvVar], argv: list[str] | None = None) -> None:
    """Replace this process with ``python -m epyc_whisper ARGS`` under the planned
    environment. Only returns when the marker says we already did (no loop)."""
    if not reexec_needed(os.environ):
        return
    args = [sys.executable, "-m", "epyc_whisper", *(sys.argv[1:] if argv is None else argv)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, child_environ(plan, os.environ))
