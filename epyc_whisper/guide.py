"""The guide's names, for the Python pipelines it was written for (VideoRAG).

Users paste two things from the guide: ``get_epyc_manager(config_override)`` and an
``asr_config`` dict. This module turns both into ``Transcriber`` settings, checks them
exactly as the CLI checks its flags (same functions, same one-line message, raised as a
``ValueError``), and keeps the one process-wide shared ``Transcriber``.

What the guide's keys mean here:

- ``num_models`` / ``epyc_num_models``: model processes, each holding one copy of the
  weights (our ``processes``).
- ``workers``: the guide's worker-process count, that is how many files are transcribed
  at once by the whole pool. Here a model process runs several CTranslate2 workers that
  share its copy of the weights, so ``workers`` is divided over the model processes:
  ``num_models`` 12 with ``workers`` 96 is 12 processes of 8 CTranslate2 workers each
  (the CLI's ``--processes 12 --workers 8``). It must be a multiple of the number of
  processes. This is the one key whose meaning differs from the setting of the same
  name (CTranslate2 workers per process), which is ``num_workers`` in a guide dict.
- ``batch_size`` / ``epyc_batch_size``: files per queue item (our ``batch_size``).
- ``compute_type``: CTranslate2's compute type. ``float16`` and ``bfloat16`` are GPU
  types; on a CPU that cannot run them the error lists what it can.
- Every other setting name (``config.SPECS``) and alias (``config.ALIASES``) is taken
  as it is.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from epyc_whisper.config import SPECS, Settings, canonical_key
from epyc_whisper.errors import UsageError

if TYPE_CHECKING:
    from epyc_whisper.hardware import Hardware
    from epyc_whisper.layout import Layout
    from epyc_whisper.transcriber import Transcriber

#: The guide's total worker count (see the module docstring), in a guide dict only.
GUIDE_WORKERS = "workers"
#: The keys of the guide's asr_config that are not settings.
ASR_CONFIG_ONLY = ("mode", "use_epyc_optimization")
#: The one asr_config mode: the model runs on this machine.
LOCAL = "local"


class ConfigError(UsageError, ValueError):
    """A guide dict the CLI would refuse: the CLI's own one-line message (what is wrong,
    where it came from, what is allowed), as a ``ValueError`` for Python callers."""


def _settings_of(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Guide keys and setting names -> setting names; an unknown key or one setting given
    under two names is an error (the config file's rules)."""
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in raw.items():
        try:
            name = canonical_key(str(key), where)
        except UsageError as e:
            raise ConfigError(str(e)) from None
        if name in given:
            raise ConfigError(
                f"{name} is given twice in {where}: as '{given[name]}' and as '{key}'; keep one"
            )
        given[name] = str(key)
        out[name] = value
    return out


def _processes_planned(
    settings: Mapping[str, Any], hw: Hardware | None, environ: Mapping[str, str] | None
) -> int:
    """How many model processes these settings get where ``num_models`` is not given:
    the layout's own answer (one per L3 domain, fewer when memory is short)."""
    _, layout = plan_settings(settings, hw=hw, environ=environ, check_types=False)
    return len(layout.processes)


def override_settings(
    config_override: Mapping[str, Any] | None,
    *,
    hw: Hardware | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The guide's ``config_override`` -> ``Transcriber`` settings (our names), with the
    guide's ``workers`` divided over the model processes (module docstring)."""
    raw = dict(config_override or {})
    total = raw.pop(GUIDE_WORKERS, None)
    settings = _settings_of(raw, "config_override")
    if total is None:
        return settings
    if "workers" in settings:
        raise ConfigError(
            "config_override gives both 'workers' (the guide's worker count, all processes "
            "together) and 'num_workers' (CTranslate2 workers per process); keep one"
        )
    try:
        count = SPECS["workers"].check("workers", total)
    except ValueError as e:
        raise ConfigError(
            f"invalid workers = {total!r} (from config_override): expected {e}"
        ) from None
    if settings.get("processes") is not None:
        try:
            nproc = SPECS["processes"].check("processes", settings["processes"])
        except ValueError as e:
            raise ConfigError(
                f"invalid processes = {settings['processes']!r} (from config_override): "
                f"expected {e}"
            ) from None
        said = f"num_models = {nproc}"
    else:
        nproc = _processes_planned(settings, hw, environ)
        said = f"the {nproc} model process(es) planned for this machine"
    if count % nproc:
        low = max(nproc, count - count % nproc)
        raise ConfigError(
            f"workers = {count} (from config_override; the guide's worker count, all "
            f"processes together) is not a multiple of {said}: each model process runs the "
            f"same number of CTranslate2 workers; give {low} or {low + nproc}"
        )
    settings["workers"] = count // nproc
    return settings


def asr_config_settings(asr_config: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The guide's ``asr_config`` -> (settings, in_process). ``use_epyc_optimization``
    False is the guide's traditional way: one model in the caller's process, inputs one
    by one; the pool's keys (``epyc_num_models``, ``epyc_batch_size``, ...) then do
    nothing, as in the guide, where the switch turns them off."""
    raw = dict(asr_config)
    mode = raw.pop("mode", LOCAL)
    if str(mode).strip().lower() != LOCAL:
        raise ConfigError(
            f"asr_config mode {mode!r}: only 'local' is supported (the model runs on this machine)"
        )
    optimise = raw.pop("use_epyc_optimization", True)
    try:
        optimise = SPECS["pack"].check("use_epyc_optimization", optimise)  # a boolean check
    except ValueError as e:
        raise ConfigError(
            f"invalid use_epyc_optimization = {optimise!r} (from asr_config): expected {e}"
        ) from None
    settings = override_settings(raw)
    if not optimise:
        for name in ("processes", "workers", "threads", "batch_size"):
            settings.pop(name, None)
    return settings, not optimise


@dataclass(frozen=True)
class Plan:
    """What a guide dict comes to on a machine. Attributes: settings (resolved, with
    sources, as the CLI resolves its flags); layout (processes, CT2 workers, threads)."""

    settings: Settings
    layout: Layout


def plan_settings(
    settings: Mapping[str, Any],
    *,
    hw: Hardware | None = None,
    environ: Mapping[str, str] | None = None,
    check_types: bool = True,
) -> tuple[Settings, Layout]:
    """The CLI's checks, in the CLI's order, on settings given as flags: resolve them
    (precedence), check the device, plan the layout on ``hw`` (this machine when None),
    check the memory limit, then the compute type (a child process asks CTranslate2).
    Raises ConfigError with the message the CLI prints."""
    from epyc_whisper.config import resolve
    from epyc_whisper.hardware import detect
    from epyc_whisper.layout import check_room, plan
    from epyc_whisper.measured import recall
    from epyc_whisper.prepare import check_compute_type, check_device

    try:
        resolved = check_device(resolve(dict(settings), environ=environ))
        machine = detect() if hw is None else hw
        layout = plan(machine, resolved, recall(resolved.model, resolved.compute_type))
        check_room(layout, resolved)
        if check_types:
            check_compute_type(
                resolved.compute_type, resolved.device, resolved.source("compute_type")
            )
    except ConfigError:
        raise
    except UsageError as e:
        raise ConfigError(str(e)) from None
    return resolved, layout


def plan_override(
    config_override: Mapping[str, Any] | None,
    *,
    hw: Hardware | None = None,
    environ: Mapping[str, str] | None = None,
) -> Plan:
    """The plan a ``config_override`` gets on ``hw`` (this machine when None), or the
    ConfigError (a ValueError) the CLI would give for the same settings as flags."""
    settings = override_settings(config_override, hw=hw, environ=environ)
    resolved, layout = plan_settings(settings, hw=hw, environ=environ)
    return Plan(resolved, layout)


# --------------------------------------------------------------------------- the shared one
_lock = threading.Lock()
_shared: Transcriber | None = None
_shared_key: tuple[Any, ...] | None = None


def _key(settings: Mapping[str, Any], in_process: bool) -> tuple[Any, ...]:
    return (in_process, tuple(sorted((k, repr(v)) for k, v in settings.items())))


def shared(settings: Mapping[str, Any], *, in_process: bool = False, fresh: bool) -> Transcriber:
    """The process-wide ``Transcriber``. ``fresh`` False: the current one, whatever its
    settings (started with ``settings`` if there is none yet). ``fresh`` True: the
    current one if it was started with these settings, else the old one is closed and
    one is started with them. One that was closed, or whose pool stopped, is replaced."""
    from epyc_whisper.transcriber import Transcriber

    global _shared, _shared_key
    key = _key(settings, in_process)
    with _lock:
        current = _shared if _shared is not None and _usable(_shared) else None
        if current is not None and (not fresh or key == _shared_key):
            return current
        if _shared is not None:
            _shared.close()
            _shared = _shared_key = None
        # Its own checks are the CLI's (a ValueError with the CLI's message).
        made = Transcriber(in_process=in_process, **settings)
        _shared, _shared_key = made, key
        return made


def _usable(t: Transcriber) -> bool:
    try:
        t._check_open()  # RuntimeError when closed, forked away from, or its pool stopped
    except RuntimeError:
        return False
    return True


def get_epyc_manager(config_override: Mapping[str, Any] | None = None) -> Transcriber:
    """The guide's ``get_epyc_manager``: a process-wide shared ``Transcriber``, created on
    first use. Called again without an override (or with an empty one), it returns the
    same one; with other settings it closes the old one and starts a new one. Takes the
    guide's keys (``num_models``, ``batch_size``, ``workers``, ``compute_type``; see the
    module docstring for what ``workers`` means) and every setting name. A dict the CLI
    would refuse raises a ValueError with the CLI's message."""
    if not config_override:
        return shared({}, fresh=False)
    return shared(override_settings(config_override), fresh=True)


def close_shared() -> None:
    """Close the shared ``Transcriber`` if there is one (the next call starts afresh)."""
    global _shared, _shared_key
    with _lock:
        if _shared is not None:
            _shared.close()
        _shared = _shared_key = None
