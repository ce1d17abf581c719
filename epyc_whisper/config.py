"""Settings, the configs/*.toml presets, and the one place where precedence lives.

Precedence, highest first: CLI flag > ``EPYC_WHISPER_*`` environment variable >
``--config FILE`` > preset > the layout saved by ``bench --save`` > detected
default > built-in default. Every resolved value remembers where it came from,
so ``detect`` can show it.
"""

from __future__ import annotations

import difflib
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epyc_whisper.errors import UsageError


def _configs_dir() -> Path:
    """configs/ of the source tree (editable installs, a checkout), else the copy a wheel
    installs under <prefix>/share/epyc-whisper/configs."""
    here = Path(__file__).resolve().parent.parent / "configs"
    if here.is_dir():
        return here
    return Path(sys.prefix) / "share" / "epyc-whisper" / "configs"


CONFIGS_DIR = _configs_dir()
ENV_PREFIX = "EPYC_WHISPER_"

#: CPU compute types CTranslate2 can be asked for. float16/bfloat16/int16 are
#: checked against the running CPU in a child process (prepare.check_compute_type).
COMPUTE_TYPES = (
    "default",
    "auto",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)


def user_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``bench --save`` writes the best layout; read by every later run."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "epyc-whisper" / "config.toml"


class Refused(ValueError):
    """A check's own complete sentence, for a value no "expected ..." fits (an unknown
    name among choices). ``what`` says what the value is, ``hint`` what to do instead;
    ``resolve`` puts where the value came from between them: ``unknown output format
    "docx" (from --format): choose from txt, ...``."""

    def __init__(self, what: str, hint: str) -> None:
        super().__init__(f"{what}: {hint}")
        self.what, self.hint = what, hint


#: Settings whose flag is not ``--`` + the name with dashes.
_FLAGS = {"formats": "--format"}


def origin(name: str, source: str) -> str:
    """Where a value came from, as the user wrote it: the flag for 'cli', else the source
    (``env EPYC_WHISPER_X``, ``config FILE``, ...)."""
    if source == "cli":
        return _FLAGS.get(name, "--" + name.replace("_", "-"))
    return source


def _optional_positive_int(name: str, value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    return _count(1)(name, value)


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        v = str(value).strip()
        if v not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return v

    return check


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def _text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    v = str(value).strip()
    return v or None


def _required_text(name: str, value: Any) -> str:
    # An empty model or output folder would reach Path(None) far from here: refuse it now.
    v = _text(name, value)
    if v is None:
        raise ValueError("a non-empty value")
    return v


def _seconds(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError("a number of seconds > 0") from None
    if v <= 0:
        raise ValueError("a number of seconds > 0")
    return v


def _memory(name: str, value: Any) -> str:
    """'80%' of available memory, or an absolute size like '64G', '512M'."""
    v = str(value).strip().upper()
    try:
        if v.endswith("%"):
            pct = float(v[:-1])
            if not 0 < pct <= 100:
                raise ValueError
        else:
            parse_size(v)
    except ValueError:
        raise ValueError("a percentage of available memory (80%) or a size (64G, 512M)") from None
    return v


def _temperature(name: str, value: Any) -> str:
    items = value if isinstance(value, list) else str(value).split(",")
    try:
        temps = [float(t) for t in items]
    except ValueError:
        raise ValueError("comma-separated numbers between 0 and 1, e.g. 0,0.2,0.4") from None
    if not temps or any(not 0 <= t <= 1 for t in temps):
        raise ValueError("comma-separated numbers between 0 and 1, e.g. 0,0.2,0.4")
    return ",".join(f"{t:g}" for t in temps)


def _number(
    low: float | None = None, high: float | None = None, *, above: bool = False, none: bool = False
) -> Callable[[str, Any], float | None]:
    """A float check: ``low`` <= v (or < with ``above``), v <= ``high``; ``none``: the
    words None/none/off (whisper-ctranslate2's "None") turn the threshold off."""
    rng = (
        f"{'>' if above else '>='} {low:g}"
        if low is not None and high is None
        else f"between {low:g} and {high:g}"
        if low is not None and high is not None
        else ""
    )
    want = ("a number " + rng).strip() + (", or none" if none else "")

    def check(name: str, value: Any) -> float | None:
        if none and str(value).strip().lower() in ("none", "off", ""):
            return None
        try:
            if isinstance(value, bool):
                raise ValueError
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(want) from None
        if v != v or (low is not None and (v <= low if above else v < low)):
            raise ValueError(want)
        if high is not None and v > high:
            raise ValueError(want)
        return v

    return check


def _count(low: int, none: bool = False) -> Callable[[str, Any], int | None]:
    """A whole number >= ``low``; with ``none``, None/none/"" leaves it unset."""

    def check(name: str, value: Any) -> int | None:
        if none and (value is None or str(value).strip().lower() in ("none", "")):
            return None
        try:
            n = int(value)
            if isinstance(value, bool) or str(value).strip() != str(n):
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"a whole number >= {low}" + (", or none" if none else "")) from None
        if n < low:
            raise ValueError(f"a whole number >= {low}" + (", or none" if none else ""))
        return n

    return check


def _verbatim(name: str, value: Any) -> str:
    # Punctuation sets are passed exactly: no stripping (a space could be one of them).
    return str(value)


def _token_ids(name: str, value: Any) -> str:
    """Comma-separated token ids, as whisper-ctranslate2's --suppress_tokens: "-1" (the
    default: faster-whisper's set of symbols), "" or none (suppress nothing)."""
    items = value if isinstance(value, list) else str(value).split(",")
    items = [str(i).strip() for i in items if str(i).strip()]
    if [i.lower() for i in items] == ["none"]:
        return ""
    try:
        ids = [int(i) for i in items]
    except ValueError:
        raise ValueError('comma-separated token ids, e.g. "-1" or "-1,50363"; "" for none') from (
            None
        )
    if any(i < -1 for i in ids):
        raise ValueError('comma-separated token ids >= -1, e.g. "-1" or "-1,50363"')
    return ",".join(str(i) for i in ids)


def _device_index(name: str, value: Any) -> str:
    """GPU ids, comma-separated ("0", "0,1"): one model process per GPU."""
    items = value if isinstance(value, list) else str(value).split(",")
    try:
        ids = [int(str(i).strip()) for i in items if str(i).strip()]
    except ValueError:
        raise ValueError('GPU ids, comma-separated: "0" or "0,1"') from None
    if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ValueError('GPU ids, comma-separated, each once: "0" or "0,1"')
    return ",".join(str(i) for i in ids)


def _formats(name: str, value: Any) -> str:
    from epyc_whisper.writers import parse_formats

    spec = ",".join(value) if isinstance(value, list) else str(value)
    try:
        return ",".join(parse_formats(spec))
    except ValueError as e:  # 'unknown output format "docx"; choose from txt, ...'
        what, _, hint = str(e).partition("; ")
        raise Refused(what, hint or "choose from txt, vtt, srt, tsv, json, all") from None


def _optional_size(name: str, value: Any) -> str | None:
    """A size like '4G' (see parse_size); none, off, "" or 0: no limit."""
    v = "" if value is None else str(value).strip().upper()
    if v in ("", "NONE", "OFF", "0"):
        return None
    try:
        parse_size(v)
    except ValueError:
        raise ValueError("a size like 4G or 512M, or none") from None
    return v


def parse_size(text: str) -> int:
    """'64G' -> bytes. Units K, M, G, T (powers of 1024); a bare number is bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    for unit, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if t.endswith(unit):
            t, mult = t[:-1], m
            break
    n = float(t)
    if n <= 0:
        raise ValueError(text)
    return int(n * mult)


@dataclass(frozen=True)
class Spec:
    """One setting. Attributes: default: built-in value; check: validates and normalises,
    raising ValueError('what is allowed'). The flag's --help text says what it does."""

    default: Any
    check: Callable[[str, Any], Any]


SPECS: dict[str, Spec] = {
    "model": Spec("large-v3", _required_text),
    "device": Spec("cpu", _choice("cpu", "cuda", "auto")),
    "compute_type": Spec("int8", _choice(*COMPUTE_TYPES)),
    # model processes (model copies); auto by default
    "processes": Spec(None, _optional_positive_int),
    # CTranslate2 workers per process (share weights)
    "workers": Spec(None, _optional_positive_int),
    # threads per CTranslate2 worker
    "threads": Spec(None, _optional_positive_int),
    "batch_size": Spec(32, _count(1)),
    # memory the layout may plan to use
    "memory_limit": Spec("80%", _memory),
    "formats": Spec("all", _formats),
    "output_dir": Spec("transcripts", _required_text),
    # spoken language code; detected when unset
    "language": Spec(None, _text),
    "task": Spec("transcribe", _choice("transcribe", "translate")),
    "beam_size": Spec(5, _count(1)),
    "vad": Spec(False, _bool),
    "word_timestamps": Spec(False, _bool),
    "temperature": Spec("0,0.2,0.4,0.6,0.8,1", _temperature),
    "pack": Spec(True, _bool),
    "split": Spec(True, _bool),
    # recordings longer than this many seconds are split
    "split_above": Spec(120.0, _seconds),
    "initial_prompt": Spec(None, _text),
    # faster-whisper transcribe() options, passed through as given (defaults: its own).
    "best_of": Spec(5, _count(1)),
    "patience": Spec(1.0, _number(0, above=True)),
    "length_penalty": Spec(1.0, _number()),
    "repetition_penalty": Spec(1.0, _number(0, above=True)),
    # no repeated n-grams of this size (0: off)
    "no_repeat_ngram_size": Spec(0, _count(0)),
    # with it, the schedule runs from the first temperature to 1 in these steps
    "temperature_increment_on_fallback": Spec(None, _number(0, 1, above=True, none=True)),
    "compression_ratio_threshold": Spec(2.4, _number(none=True)),
    "log_prob_threshold": Spec(-1.0, _number(none=True)),
    "no_speech_threshold": Spec(0.6, _number(0, 1, none=True)),
    "condition_on_previous_text": Spec(True, _bool),
    "prompt_reset_on_temperature": Spec(0.5, _number(0, 1)),
    "prefix": Spec(None, _text),
    "hotwords": Spec(None, _text),
    "suppress_blank": Spec(True, _bool),
    # token ids never output ("-1": symbols)
    "suppress_tokens": Spec("-1", _token_ids),
    "prepend_punctuations": Spec("\"'\u201c\u00bf([{-", _verbatim),
    "append_punctuations": Spec("\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001", _verbatim),
    "hallucination_silence_threshold": Spec(None, _number(0, above=True, none=True)),
    "multilingual": Spec(False, _bool),
    # VAD: speech probability threshold
    "vad_threshold": Spec(None, _number(0, 1, none=True)),
    # VAD: speech shorter than this is dropped
    "vad_min_speech_duration_ms": Spec(None, _count(0, none=True)),
    # VAD: longest speech chunk
    "vad_max_speech_duration_s": Spec(None, _number(0, above=True, none=True)),
    # VAD: silence that ends a speech chunk
    "vad_min_silence_duration_ms": Spec(None, _count(0, none=True)),
    # VAD: padding around speech
    "vad_speech_pad_ms": Spec(None, _count(0, none=True)),
    # GPU ids with --device cuda: one process each
    "device_index": Spec("0", _device_index),
    # How the subtitles and json are written (openai-whisper's writer options).
    "max_line_width": Spec(None, _count(1, none=True)),
    "max_line_count": Spec(None, _count(1, none=True)),
    "max_words_per_line": Spec(None, _count(1, none=True)),
    "highlight_words": Spec(False, _bool),
    "pretty_json": Spec(False, _bool),
    # How a run treats the output folder, its inputs and its workers.
    "overwrite": Spec(False, _bool),
    # keep every transcript newer than its input, whatever made it
    "skip_existing": Spec(False, _bool),
    # seconds to wait for another run's lock on the output folder
    "wait": Spec(0.0, _number(0)),
    "audio_track": Spec(0, _count(0)),
    # seconds before a file is given up and its worker process replaced (none: never)
    "file_timeout": Spec(None, _number(0, above=True, none=True)),
    # recycle a worker after this many files (0: never)
    "max_files_per_worker": Spec(0, _count(0)),
    "max_worker_rss": Spec(None, _optional_size),
    # Where the workers run (ray_backend.py). Settings rather than bare flags, so a cluster
    # address can live in a config file or EPYC_WHISPER_ADDRESS like everything else:
    # local worker processes, or actors on a Ray cluster
    "backend": Spec("local", _choice("local", "ray")),
    # Ray cluster address (host:port, auto); unset: a private Ray on this machine
    "address": Spec(None, _text),
    # Ray: send each file's bytes to its node (for nodes that cannot see the driver's files)
    "ship_audio": Spec(False, _bool),
}

#: Settings passed to faster-whisper's ``transcribe()`` under the same name, as they are.
PASSED_THROUGH = (
    "language",
    "task",
    "beam_size",
    "best_of",
    "patience",
    "length_penalty",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "compression_ratio_threshold",
    "log_prob_threshold",
    "no_speech_threshold",
    "condition_on_previous_text",
    "prompt_reset_on_temperature",
    "initial_prompt",
    "prefix",
    "hotwords",
    "suppress_blank",
    "word_timestamps",
    "prepend_punctuations",
    "append_punctuations",
    "multilingual",
    "hallucination_silence_threshold",
)
#: Our vad_* settings -> faster-whisper's VadOptions fields (vad_parameters).
VAD_PARAMETERS = {
    "vad_threshold": "threshold",
    "vad_min_speech_duration_ms": "min_speech_duration_ms",
    "vad_max_speech_duration_s": "max_speech_duration_s",
    "vad_min_silence_duration_ms": "min_silence_duration_ms",
    "vad_speech_pad_ms": "speech_pad_ms",
}


#: Options that need word timestamps: setting one turns them on (openai-whisper and
#: whisper-ctranslate2 refuse instead; here the flag says what the user wants).
NEEDS_WORDS = (
    "max_line_width",
    "max_line_count",
    "max_words_per_line",
    "highlight_words",
    "hallucination_silence_threshold",
)

#: Names users paste from the guide, mapped to ours.
ALIASES = {
    "num_models": "processes",
    "epyc_num_models": "processes",
    "model_instances": "processes",
    "epyc_batch_size": "batch_size",
    "num_workers": "workers",
    "cpu_threads": "threads",
    "output_format": "formats",
    "vad_filter": "vad",
    "logprob_threshold": "log_prob_threshold",  # whisper-ctranslate2's spelling
}


@dataclass(frozen=True)
class Value:
    """A resolved setting. Attributes: value; source: 'cli', 'env EPYC_WHISPER_X',
    'config FILE', 'preset NAME', 'saved FILE', 'detected' or 'default'."""

    value: Any
    source: str


@dataclass
class Settings:
    """All resolved settings with their sources (``values[name].source``)."""

    values: dict[str, Value] = field(default_factory=dict)
    preset: str = "auto"

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name].value
        except KeyError:
            raise AttributeError(name) from None

    def source(self, name: str) -> str:
        return self.values[name].source

    def as_dict(self) -> dict[str, Any]:
        return {k: v.value for k, v in self.values.items()}

    def with_values(self, source: str, **kw: Any) -> Settings:
        """A copy with some values replaced (used by the layout clamp and bench)."""
        vals = dict(self.values)
        for k, v in kw.items():
            vals[k] = Value(v, source)
        return Settings(vals, self.preset)


def canonical_key(key: str, where: str) -> str:
    """Map an alias to its setting name; unknown keys are a usage error with a suggestion."""
    k = key.strip().lower().replace("-", "_")
    k = ALIASES.get(k, k)
    if k not in SPECS:
        close = difflib.get_close_matches(k, list(SPECS) + list(ALIASES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"unknown setting '{key}' in {where}{hint} (known: {', '.join(SPECS)})")
    return k


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.toml"))


def read_toml(path: Path, where: str) -> dict[str, Any]:
    """A TOML file as a flat {setting: value}; sections are allowed and flattened."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{where}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{where}: cannot read {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{where}: invalid TOML in {path}: {e}") from None
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):  # [layout] / [transcribe] sections are only grouping
            flat.update(v)
        else:
            flat[k] = v
    flat.pop("description", None)
    return flat


def load_preset(name: str, where: str = "--preset") -> dict[str, Any]:
    path = CONFIGS_DIR / f"{name}.toml"
    if not path.is_file():
        close = difflib.get_close_matches(name, list_presets(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UsageError(
            f"unknown preset '{name}' (from {where}){hint}; available: {', '.join(list_presets())}"
        )
    return read_toml(path, f"preset {name}")


def _layer(raw: Mapping[str, Any], source: str) -> dict[str, tuple[Any, str]]:
    out: dict[str, tuple[Any, str]] = {}
    given: dict[str, str] = {}
    for k, v in raw.items():
        key = canonical_key(k, source)
        _no_twice(key, k, given, source)
        out[key] = (v, source)
    return out


def _no_twice(key: str, name: str, given: dict[str, str], where: str) -> None:
    # 'num_models' and 'processes' in one file (or env) would silently race on order.
    if key in given:
        raise UsageError(
            f"{key} is given twice in {where}: as '{given[key]}' and as '{name}'; keep one"
        )
    given[key] = name


def env_layer(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    out: dict[str, tuple[Any, str]] = {}
    given: dict[str, str] = {}
    for name, v in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _NOT_SETTINGS:
            continue
        key = canonical_key(name[len(ENV_PREFIX) :], f"environment variable {name}")
        _no_twice(key, name, given, "the environment")
        out[key] = (v, f"env {name}")
    return out


#: Our own variables that are not settings (re-exec marker, config/preset pointers).
_NOT_SETTINGS = {
    "EPYC_WHISPER_REEXEC",
    "EPYC_WHISPER_CONFIG",
    "EPYC_WHISPER_PRESET",
    "EPYC_WHISPER_NO_SAVED",
}


def resolve(
    cli: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
    preset: str | None = None,
    detected: Mapping[str, Any] | None = None,
    use_saved: bool = True,
) -> Settings:
    """Resolve every setting from all layers; the one place precedence lives.

    ``cli`` holds only flags the user actually gave (None means not given).
    Raises UsageError naming the setting, the value, its source and what is allowed.
    """
    environ = os.environ if environ is None else environ
    preset_from = "--preset" if preset else "EPYC_WHISPER_PRESET"
    preset = preset or environ.get("EPYC_WHISPER_PRESET") or "auto"
    config_from = "--config" if config_file else "EPYC_WHISPER_CONFIG"
    config_file = config_file or environ.get("EPYC_WHISPER_CONFIG")
    layers: list[dict[str, tuple[Any, str]]] = [
        _layer({k: v for k, v in (cli or {}).items() if v is not None}, "cli"),
        env_layer(environ),
    ]
    if config_file:
        layers.append(
            _layer(
                read_toml(Path(config_file), f"{config_from} {config_file}"),
                f"config {config_file}",
            )
        )
    layers.append(_layer(load_preset(preset, preset_from), f"preset {preset}"))
    saved = user_config_path(environ)
    if use_saved and not environ.get("EPYC_WHISPER_NO_SAVED") and saved.is_file():
        layers.append(_layer(read_toml(saved, f"saved layout {saved}"), f"saved {saved}"))
    layers.append(_layer(dict(detected or {}), "detected"))

    values: dict[str, Value] = {}
    for name, spec in SPECS.items():
        raw, source = spec.default, "default"
        for layer in layers:
            if name in layer:
                raw, source = layer[name]
                break
        try:
            value = spec.check(name, raw) if raw is not None else None
        except Refused as e:
            raise UsageError(f"{e.what} (from {origin(name, source)}): {e.hint}") from None
        except ValueError as e:
            raise UsageError(f"invalid {name} = {raw!r} (from {source}): expected {e}") from None
        values[name] = Value(value, source)
    wants = [n for n in NEEDS_WORDS if values[n].value not in (None, False)]
    if wants and not values["word_timestamps"].value:
        w = values["word_timestamps"]
        if w.source == "cli":
            raise UsageError(
                f"{origin(wants[0], values[wants[0]].source)} needs word timestamps, but "
                "--no-word-timestamps is given; drop one of them"
            )
        by = origin(wants[0], values[wants[0]].source)
        values["word_timestamps"] = Value(True, f"implied by {by}")
    if values["overwrite"].value and values["skip_existing"].value:
        raise UsageError(
            f"{origin('overwrite', values['overwrite'].source)} and "
            f"{origin('skip_existing', values['skip_existing'].source)} cannot be used together"
        )
    return Settings(values, preset)
