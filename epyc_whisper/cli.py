"""The command line: parse -> resolve settings -> one library call -> render -> exit code.

Nothing here imports numpy or CTranslate2 (ruff TID253 enforces it): ``--help`` is
instant, and no native library reads its thread variables before envsetup has set
them and re-executed the process.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from epyc_whisper import __version__
from epyc_whisper.errors import EpycWhisperError, ExitCode, UsageError

if TYPE_CHECKING:
    from epyc_whisper.job import Job, JobState
    from epyc_whisper.prepare import Prepared
    from epyc_whisper.progress import ProgressView

app = typer.Typer(
    name="epyc-whisper",
    help="Batch speech-to-text for many-core CPU servers, on faster-whisper.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console(soft_wrap=True, highlight=False)  # data: stdout
err = Console(stderr=True, highlight=False, soft_wrap=True)  # people: stderr
_opts: dict[str, Any] = {"verbose": False, "quiet": False}

# Typer option declarations shared by the commands that plan a layout.
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model name (large-v3, small, ...), a local CTranslate2 folder, or "
        "'bundled' for the tiny.en of the test extra. [default: large-v3]",
    ),
]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset", help="Preset from configs/: auto (default), epyc-32, epyc-64, epyc-128."
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="TOML file of settings (below CLI flags and EPYC_WHISPER_* variables)."
    ),
]
ComputeOpt = Annotated[
    str | None,
    typer.Option(
        "--compute-type", help="CTranslate2 compute type: int8 (default), int8_float32, float32."
    ),
]
ProcOpt = Annotated[
    int | None,
    typer.Option(
        "--processes", help="Model processes (copies of the weights). [default: one per L3]"
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers", help="CTranslate2 workers per process, sharing its weights. [default: auto]"
    ),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="Threads per CTranslate2 worker. [default: auto]")
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch-size", help="Files per queue item. [default: 32]")
]
MemOpt = Annotated[
    str | None,
    typer.Option(
        "--memory-limit",
        help="Memory the layout may plan for: a percentage of available memory "
        "or a size. [default: 80%]",
    ),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="cpu (default), cuda (one process per GPU of --device-index; tested only on "
        "CPU here) or auto (cuda when CTranslate2 finds a GPU).",
    ),
]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="local (default): worker processes on this machine; ray: actors on every "
        "node of a Ray cluster (pip install 'epyc-whisper[ray]').",
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="With --backend ray: the cluster's address (host:port, or auto for the one "
        "this machine is part of). [default: a private Ray on this machine, loopback only]",
    ),
]
ShipAudioOpt = Annotated[
    bool | None,
    typer.Option(
        "--ship-audio/--no-ship-audio",
        help="With --backend ray: send each file's bytes to the node that transcribes it "
        "(for nodes that cannot read the driver's files). [default: off]",
    ),
]
NoReexecOpt = Annotated[
    bool,
    typer.Option("--no-reexec", help="Do not re-execute with the computed thread environment."),
]


def _num(flag: str, help: str, metavar: str = "<number>") -> Any:
    """A decoding option taking a number (or ``none`` where it can be off) or a text:
    read as text and checked by config.resolve, so that flags, variables and config files
    share one message for a bad value."""
    return typer.Option(flag, help=help, show_default=False, metavar=metavar)


def _version(value: bool) -> None:
    if value:
        out.print(f"epyc-whisper {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="More detail on stderr.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only errors and the final summary on stderr.")
    ] = False,
) -> None:
    """Batch speech-to-text for many-core CPU servers, on faster-whisper."""
    _opts.update(verbose=False, quiet=False)  # each invocation starts afresh
    _verbosity(quiet=quiet, verbose=verbose)


def _verbosity(quiet: bool, verbose: bool) -> None:
    """-q/-v before the command or after it (``transcribe -q``): either place counts."""
    quiet, verbose = quiet or _opts["quiet"], verbose or _opts["verbose"]
    if verbose and quiet:
        raise UsageError("--quiet and --verbose cannot be used together")
    _opts.update(verbose=verbose, quiet=quiet)


QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Only errors and the final summary on stderr.")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="More detail on stderr.")]


def _cli_settings(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _given_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The settings among a command's parameters (``locals()`` on entry): each parameter
    named like a setting of config.SPECS is that setting; None means not given."""
    from epyc_whisper.config import SPECS

    return {
        k: str(v) if isinstance(v, Path) else v
        for k, v in params.items()
        if k in SPECS and v is not None
    }


def _prepare(cli: dict[str, Any], preset: str | None, config: Path | None) -> Prepared:
    from epyc_whisper.prepare import prepare

    prep = prepare(cli, preset, config)
    s = prep.settings
    if s.backend == "ray" and s.address and s.address != "auto":
        # Before the re-exec and Ray's import: an address where no Ray cluster answers
        # is told in seconds even on a loaded machine (connect checks it again).
        from epyc_whisper.ray_backend import check_address

        check_address(s.address)
    return prep


def _reexec_if_needed(env: list[Any], no_reexec: bool) -> None:
    """Re-execute with the thread environment before anything loads a native library."""
    from epyc_whisper.envsetup import reexec

    if not no_reexec:
        reexec(env)


# --------------------------------------------------------------------------- detect
@app.command()
def detect(
    model: ModelOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    compute_type: ComputeOpt = None,
    processes: ProcOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    batch_size: BatchOpt = None,
    memory_limit: MemOpt = None,
    device: DeviceOpt = None,
    backend: BackendOpt = None,
    address: AddressOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON document on stdout (schema in README).")
    ] = False,
    no_reexec: NoReexecOpt = False,
) -> None:
    """Show the hardware, the layout transcribe would use, and where each value came from."""
    cli = _given_settings(locals())
    prep = _prepare(cli, preset, config)
    # Re-executing here too lets `detect` report the values a run really gets.
    _reexec_if_needed(prep.env, no_reexec)
    prep.check_compute_type()
    doc = prep.to_dict()
    if prep.settings.backend == "ray":
        _detect_ray(prep.settings, doc, json_out)
        return
    if json_out:
        out.print_json(json.dumps(doc))
        return
    _render_detect(doc)


def _detect_ray(settings: Any, doc: dict[str, Any], json_out: bool) -> None:
    """Every node of the cluster, as that node sees and plans itself, and the total."""
    from epyc_whisper.ray_backend import cluster_doc, connect, plan_nodes

    ray = connect(settings.address)
    try:
        nodes = cluster_doc(plan_nodes(ray, settings))
    finally:
        ray.shutdown()
    doc = {k: doc[k] for k in ("version", "preset", "settings")} | nodes
    if json_out:
        out.print_json(json.dumps(doc))
        return
    for node in doc["nodes"]:
        out.rule(f"node {node['name']} ({node['address']}, {node['ray_cpus']} CPUs for Ray)")
        _render_detect(node | {"settings": {}, "tuning": []})
    t = doc["total"]
    out.print(
        f"total: {t['nodes']} node(s), {t['processes']} process(es), {t['workers']} CT2 "
        f"worker(s) on {t['cpus']} CPUs, {t['memory_bytes'] >> 20} MiB planned"
    )


def _render_detect(doc: dict[str, Any]) -> None:
    hw, lay = doc["hardware"], doc["layout"]
    gib = 1 << 30
    t = Table(title="Hardware", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    cpu = f"{hw['model_name']} ({hw['vendor']})"
    if hw["is_epyc"] or hw["zen"]:
        cpu += f", {'EPYC ' if hw['is_epyc'] else ''}{hw['zen'] or ''}".rstrip()
    t.add_row("CPU", cpu)
    t.add_row(
        "topology",
        f"{hw['sockets']} socket(s), {hw['physical_cores']} cores, "
        f"{hw['logical_cpus']} logical CPUs, SMT {'on' if hw['smt'] else 'off'}",
    )
    t.add_row("NUMA", "; ".join(f"node {n['id']}: {_cpus(n['cpus'])}" for n in hw["numa_nodes"]))
    t.add_row(
        "L3 domains",
        "; ".join(
            f"{_cpus(d['cpus'])} ({(d['size_bytes'] or 0) >> 20} MiB)" for d in hw["l3_domains"]
        ),
    )
    t.add_row("ISA", ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in hw["isa"].items()))
    t.add_row(
        "memory",
        f"{hw['mem_total_bytes'] / gib:.1f} GiB total, "
        f"{hw['mem_available_bytes'] / gib:.1f} GiB available",
    )
    t.add_row("huge pages", f"{hw['hugepages_total']} static, THP {hw['thp'] or 'n/a'}")
    t.add_row("governor", hw["governor"] or "n/a (no cpufreq)")
    quota = f", cgroup quota {hw['cpu_quota']:g} CPUs" if hw["cpu_quota"] else ""
    t.add_row("usable", f"{hw['usable_cpus']} CPUs: {_cpus(hw['allowed_cpus'])}{quota}")
    for n in hw["notes"]:
        t.add_row("note", n)
    out.print(t)

    lt = Table(title="Layout transcribe would use", title_justify="left")
    for col in ("process", "CPUs", "CT2 workers", "threads/worker"):
        lt.add_column(col)
    for p in lay["processes"]:
        lt.add_row(str(p["index"]), _cpus(p["cpus"]), str(p["workers"]), str(p["threads"]))
    out.print(lt)
    mib = 1 << 20
    out.print(
        f"compute type {lay['compute_type']}, {lay['batch_size']} files per batch, "
        f"{lay['model_bytes'] // mib} MiB per model copy ({lay['model_bytes_source']}), "
        f"{lay['total_bytes'] // mib} MiB in total (budget {lay['budget_bytes'] // mib} MiB)"
    )
    for w in lay["warnings"]:
        out.print(f"[yellow]warning:[/] {w}")

    st = Table(title="Settings and where they came from", title_justify="left")
    st.add_column("setting")
    st.add_column("value")
    st.add_column("source")
    for k, v in doc["settings"].items():
        unset = "auto" if k in ("processes", "workers", "threads") else "-"
        st.add_row(k, unset if v["value"] is None else str(v["value"]), v["source"])
    for k, v in doc["thread_env"].items():
        st.add_row(k, v["value"], "user (exported)" if v["source"] == "user" else "layout")
    out.print(st)
    if doc["tuning"]:
        out.print("System tuning (run by you, as root; epyc-whisper never changes the system):")
        for cmd in doc["tuning"]:
            out.print(f"  {cmd}")


def _cpus(cpus: list[int]) -> str:
    from epyc_whisper.hardware import _compact

    return _compact(cpus)


# --------------------------------------------------------------------------- transcribe
@app.command()
def transcribe(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="Files, folders (walked recursively) and '-' for a list of paths on stdin."
        ),
    ] = None,
    model: ModelOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    compute_type: ComputeOpt = None,
    processes: ProcOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    batch_size: BatchOpt = None,
    memory_limit: MemOpt = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir",
            "-o",
            help="Where transcripts go. A file found in a folder argument is named relative "
            "to that folder; a file argument or stdin path by its absolute path (see "
            "--relative-to). [default: ./transcripts, never beside your media]",
        ),
    ] = None,
    formats: Annotated[
        str | None,
        typer.Option("--format", "-f", help="txt,vtt,srt,tsv,json or all. [default: all]"),
    ] = None,
    null: Annotated[
        bool, typer.Option("--null", "-0", help="The stdin list is NUL-separated (find -print0).")
    ] = False,
    ext: Annotated[
        str | None,
        typer.Option(
            "--ext",
            help="Extensions to take, comma-separated. [default: wav,flac,mp3,m4a,aac,"
            "ogg,opus,wma,mp4,mkv,mov,avi,webm,ts]",
        ),
    ] = None,
    language: Annotated[
        str | None, typer.Option("--language", help="Language code; detected per file when unset.")
    ] = None,
    task: Annotated[str | None, typer.Option("--task", help="transcribe or translate.")] = None,
    beam_size: Annotated[int | None, typer.Option("--beam-size", help="[default: 5]")] = None,
    vad: Annotated[
        bool | None,
        typer.Option("--vad/--no-vad", help="Silero VAD drops silence first. [default: off]"),
    ] = None,
    word_timestamps: Annotated[
        bool | None,
        typer.Option("--word-timestamps/--no-word-timestamps", help="Word-level timestamps."),
    ] = None,
    initial_prompt: Annotated[
        str | None, typer.Option("--initial-prompt", help="Text given to the model as context.")
    ] = None,
    temperature: Annotated[
        str | None,
        typer.Option("--temperature", help="Fallback schedule. [default: 0,0.2,0.4,0.6,0.8,1]"),
    ] = None,
    device: DeviceOpt = None,
    device_index: Annotated[
        str | None,
        _num(
            "--device-index",
            "GPU ids with --device cuda, comma-separated: one process each.",
            "<ids>",
        ),
    ] = None,
    best_of: Annotated[
        str | None, _num("--best-of", "Candidates when sampling at a temperature > 0. [default: 5]")
    ] = None,
    patience: Annotated[
        str | None, _num("--patience", "Beam search patience. [default: 1]")
    ] = None,
    length_penalty: Annotated[
        str | None, _num("--length-penalty", "Length penalty (alpha) of beam search. [default: 1]")
    ] = None,
    repetition_penalty: Annotated[
        str | None,
        _num("--repetition-penalty", "Penalty on repeated tokens (> 1 penalises). [default: 1]"),
    ] = None,
    no_repeat_ngram_size: Annotated[
        str | None,
        _num("--no-repeat-ngram-size", "No repeated n-grams of this size. [default: 0, off]"),
    ] = None,
    temperature_increment_on_fallback: Annotated[
        str | None,
        _num(
            "--temperature-increment-on-fallback",
            "Fallback schedule from the first --temperature up to 1 in these steps "
            "(whisper-ctranslate2's way). [default: unset, --temperature as listed]",
        ),
    ] = None,
    compression_ratio_threshold: Annotated[
        str | None,
        _num(
            "--compression-ratio-threshold",
            "Gzip ratio above which a decode failed. [default: 2.4]",
        ),
    ] = None,
    log_prob_threshold: Annotated[
        str | None,
        _num(
            "--log-prob-threshold",
            "Average log probability below which a decode failed. [default: -1]",
        ),
    ] = None,
    no_speech_threshold: Annotated[
        str | None,
        _num(
            "--no-speech-threshold",
            "No-speech probability above which a window is silence; also the "
            "no-speech flag of a file. [default: 0.6; none: off]",
        ),
    ] = None,
    condition_on_previous_text: Annotated[
        bool | None,
        typer.Option(
            "--condition-on-previous-text/--no-condition-on-previous-text",
            help="Prompt each 30 s window of a file with the text before it. Packed windows "
            "and split pieces are single windows: they are never prompted. [default: on]",
            show_default=False,
        ),
    ] = None,
    prompt_reset_on_temperature: Annotated[
        str | None,
        _num(
            "--prompt-reset-on-temperature",
            "Drop that prompt after a fallback above. [default: 0.5]",
        ),
    ] = None,
    prefix: Annotated[
        str | None,
        _num(
            "--prefix",
            "Text the first window's transcript starts with. Turns packing off.",
            "<text>",
        ),
    ] = None,
    hotwords: Annotated[
        str | None,
        _num(
            "--hotwords", "Words or phrases the model should favour. Turns packing off.", "<text>"
        ),
    ] = None,
    suppress_blank: Annotated[
        bool | None,
        typer.Option(
            "--suppress-blank/--no-suppress-blank",
            help="Suppress a blank start of the output. [default: on]",
            show_default=False,
        ),
    ] = None,
    suppress_tokens: Annotated[
        str | None,
        _num(
            "--suppress-tokens",
            "Token ids never output, comma-separated. [default: -1, symbols]",
            "<ids>",
        ),
    ] = None,
    prepend_punctuations: Annotated[
        str | None,
        _num("--prepend-punctuations", "Joined to the next word (word timestamps).", "<text>"),
    ] = None,
    append_punctuations: Annotated[
        str | None,
        _num("--append-punctuations", "Joined to the word before (word timestamps).", "<text>"),
    ] = None,
    hallucination_silence_threshold: Annotated[
        str | None,
        _num(
            "--hallucination-silence-threshold",
            "Skip silences longer than this (s) around a likely hallucination. Turns on "
            "word timestamps, turns packing off.",
        ),
    ] = None,
    multilingual: Annotated[
        bool | None,
        typer.Option(
            "--multilingual/--no-multilingual",
            help="Detect the language of every segment. Turns packing off. [default: off]",
            show_default=False,
        ),
    ] = None,
    vad_threshold: Annotated[
        str | None,
        _num("--vad-threshold", "With --vad: speech probability threshold. [default: 0.5]"),
    ] = None,
    vad_min_speech_duration_ms: Annotated[
        str | None,
        _num("--vad-min-speech-duration-ms", "With --vad: shorter speech is dropped. [default: 0]"),
    ] = None,
    vad_max_speech_duration_s: Annotated[
        str | None, _num("--vad-max-speech-duration-s", "With --vad: longest speech chunk.")
    ] = None,
    vad_min_silence_duration_ms: Annotated[
        str | None,
        _num(
            "--vad-min-silence-duration-ms", "With --vad: silence that ends speech. [default: 2000]"
        ),
    ] = None,
    vad_speech_pad_ms: Annotated[
        str | None, _num("--vad-speech-pad-ms", "With --vad: padding around speech. [default: 400]")
    ] = None,
    max_line_width: Annotated[
        str | None,
        _num(
            "--max-line-width",
            "Characters per srt/vtt line (turns on word timestamps, as do the next three).",
        ),
    ] = None,
    max_line_count: Annotated[
        str | None, _num("--max-line-count", "Lines per srt/vtt cue, with --max-line-width.")
    ] = None,
    max_words_per_line: Annotated[
        str | None,
        _num("--max-words-per-line", "Words per srt/vtt cue (no effect with --max-line-width)."),
    ] = None,
    highlight_words: Annotated[
        bool | None,
        typer.Option(
            "--highlight-words/--no-highlight-words",
            help="Underline each word as it is spoken in srt/vtt. [default: off]",
            show_default=False,
        ),
    ] = None,
    pretty_json: Annotated[
        bool | None,
        typer.Option(
            "--pretty-json/--no-pretty-json",
            help="Indent the json (4 spaces, non-ASCII as is). [default: off]",
            show_default=False,
        ),
    ] = None,
    model_directory: Annotated[
        str | None,
        typer.Option(
            "--model-directory",
            hidden=True,  # whisper-ctranslate2's --model_directory (compat.py)
            help="A local CTranslate2 model folder; wins over --model.",
        ),
    ] = None,
    model_cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--model-cache-dir",
            hidden=True,  # whisper-ctranslate2's --model_dir
            help="The Hugging Face cache for this run (HF_HUB_CACHE).",
        ),
    ] = None,
    local_files_only: Annotated[
        bool | None,
        typer.Option(
            "--local-files-only/--no-local-files-only",
            hidden=True,  # whisper-ctranslate2's --local_files_only
            help="Models from the cache only (HF_HUB_OFFLINE=1).",
        ),
    ] = None,
    relative_to: Annotated[
        Path | None,
        typer.Option(
            "--relative-to",
            help="Name every input inside this folder relative to it (e.g. the root a "
            "`find` list starts from), whatever the working folder.",
        ),
    ] = None,
    overwrite: Annotated[
        bool | None, typer.Option("--overwrite", help="Redo inputs whose transcripts exist.")
    ] = None,
    skip_existing: Annotated[
        bool | None,
        typer.Option(
            "--skip-existing",
            help="Keep every transcript newer than its input, whatever model or settings "
            "made it (by default one made otherwise is redone).",
        ),
    ] = None,
    wait: Annotated[
        float | None,
        typer.Option(
            "--wait",
            help="If another run holds the output folder, wait up to this many seconds "
            "for it instead of failing at once (for overlapping cron runs).  [default: 0.0]",
        ),
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed", help="Redo only the files listed in OUTPUT_DIR/failures.jsonl."
        ),
    ] = False,
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help="One JSON object per finished file on stdout.")
    ] = False,
    progress_every: Annotated[
        float,
        typer.Option(
            "--progress-every",
            help="Without a terminal (a log), print a progress line every this many seconds.",
        ),
    ] = 5.0,
    file_timeout: Annotated[
        float | None,
        typer.Option(
            "--file-timeout", help="Seconds before a file is given up and its worker replaced."
        ),
    ] = None,
    audio_track: Annotated[
        int | None,
        typer.Option("--audio-track", help="Audio track of video files, from 0.  [default: 0]"),
    ] = None,
    max_files_per_worker: Annotated[
        int | None,
        typer.Option(
            "--max-files-per-worker",
            help="Recycle a worker after this many files (0: never).  [default: 0]",
        ),
    ] = None,
    max_worker_rss: Annotated[
        str | None,
        typer.Option(
            "--max-worker-rss", help="Recycle a worker whose memory passes this size (e.g. 4G)."
        ),
    ] = None,
    split_above: Annotated[
        float | None,
        typer.Option(
            "--split-above",
            help="Cut recordings longer than this many seconds at silences and "
            "transcribe the pieces in parallel. [default: 120]",
        ),
    ] = None,
    pack: Annotated[
        bool | None,
        typer.Option(
            "--pack/--no-pack",
            help="Pack short clips into shared 30 s windows, one language per window. "
            "[default: on]",
        ),
    ] = None,
    split: Annotated[
        bool | None,
        typer.Option(
            "--split/--no-split", help="Split long recordings (see --split-above). [default: on]"
        ),
    ] = None,
    summary_file: Annotated[
        Path | None,
        typer.Option("--summary", help="Also write the final summary as JSON to this file."),
    ] = None,
    backend: BackendOpt = None,
    address: AddressOpt = None,
    ship_audio: ShipAudioOpt = None,
    no_reexec: NoReexecOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Transcribe every audio and video file under PATHS, on every core."""
    cli = _given_settings(locals())  # first: every parameter named like a setting
    if model_directory:  # whisper-ctranslate2's --model_directory wins over --model
        cli["model"] = model_directory
    _verbosity(quiet=quiet, verbose=verbose)
    # Their --model_dir and --local_files_only are faster-whisper's download_root and
    # local_files_only: here the Hugging Face cache and offline switch (models.py reads
    # both; the re-executed process inherits them).
    if model_cache_dir is not None:
        os.environ["HF_HUB_CACHE"] = str(model_cache_dir.absolute())
    if local_files_only:
        os.environ["HF_HUB_OFFLINE"] = "1"
    prep = _prepare(cli, preset, config)
    _reexec_if_needed(prep.env, no_reexec)
    prep.check_compute_type()
    if progress_every <= 0:
        raise UsageError(f"--progress-every {progress_every:g}: expected a number of seconds > 0")

    from epyc_whisper.config import origin
    from epyc_whisper.job import FAILURES_NAME, FileRecord, open_job
    from epyc_whisper.job import output_dir as output_dir_of
    from epyc_whisper.progress import ProgressView

    quiet, verbose = _opts["quiet"], _opts["verbose"]

    def on_record(rec: FileRecord) -> None:
        if jsonl:
            out.print(json.dumps(rec.to_dict(), ensure_ascii=False), markup=False)
        if rec.status == "failed":
            view.message(f"error: {rec.path}: {rec.error}", "red")
        elif rec.status == "skipped" and verbose:
            view.message(f"skipped: {rec.path}: {rec.error}")

    def on_notice(msg: str) -> None:
        if not quiet:
            view.message(f"note: {msg}", "yellow")

    opened = open_job(
        prep,
        list(paths or []),
        extensions=ext,
        stdin=sys.stdin.buffer if "-" in (paths or []) else None,
        null=null,
        relative_to=relative_to,
        retry_failed=retry_failed,
        on_record=on_record,
        on_notice=on_notice,
        on_detail=(lambda m: view.message(f"note: {m}")) if verbose else None,
    )
    if opened is None:
        failures = output_dir_of(prep.settings) / FAILURES_NAME
        err.print(f"nothing to retry: no failures listed in {failures}")
        raise typer.Exit(ExitCode.OK)
    job, inputs, skipped = opened
    if not quiet:  # -q: errors and the one-line summary only (a cron log)
        for w in prep.layout.warnings:
            err.print(f"[yellow]warning:[/] {w}")
    if verbose and job.packing_off:
        err.print(f"packing off: {job.packing_off}")
    view = ProgressView(err, job.state, quiet, progress_every)
    if verbose:
        err.print(
            f"layout: {prep.layout.summary()}; model {job.model_path}; output {job.opts.out_dir}"
        )
    got_signal = _stop_on_signals(job, view)
    try:
        with view:
            state = job.run(inputs, skipped)
    except KeyboardInterrupt:
        got_signal.append(signal.SIGINT)
        state = job.state
    _render_summary(state, quiet)
    if summary_file is not None:
        job.write_summary(summary_file)
    if got_signal:
        rest = state.total - state.skipped - state.done - state.failed
        # With --overwrite, "the same command" would redo the files just finished too.
        s = prep.settings
        how = f"without {origin('overwrite', s.source('overwrite'))}" if s.overwrite else "again"
        err.print(
            f"interrupted: {rest} file(s) not finished; run the same command {how} to finish them"
        )
        raise typer.Exit(
            ExitCode.TERMINATED if got_signal[0] == signal.SIGTERM else ExitCode.INTERRUPTED
        )
    raise typer.Exit(ExitCode.INPUTS_FAILED if state.failed else ExitCode.OK)


def _stop_on_signals(job: Job, view: ProgressView) -> list[int]:
    """SIGINT/SIGTERM stop the run gently (the files in flight finish); the list returned
    fills with the signals received. Before the pool exists, a signal interrupts at once."""
    got_signal: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        got_signal.append(signum)
        if job.request_stop(signum):
            if len(got_signal) == 1:
                view.message(
                    "stopping: finishing files in flight (signal again to stop now)", "yellow"
                )
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return got_signal


def _render_summary(state: JobState, quiet: bool) -> None:
    """One line with -q or when there was nothing to do; else the box on a terminal and
    `key: value` lines elsewhere (a cron log gets no box-drawing characters)."""
    from epyc_whisper.progress import nothing_to_do, summary_line, summary_lines, summary_table

    idle = nothing_to_do(state)
    if idle is not None:
        err.print(f"epyc-whisper: {idle}", markup=False)
    elif quiet:
        err.print(summary_line(state), markup=False)
    elif err.is_terminal:
        err.print(summary_table(state))
    else:
        err.print(summary_lines(state), markup=False)


# --------------------------------------------------------------------------- bench
@app.command()
def bench(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="Media files or folders to measure on. [default: the bundled "
            "sample clips, repeated to --seconds of audio]"
        ),
    ] = None,
    model: ModelOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    compute_type: ComputeOpt = None,
    processes: ProcOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    batch_size: BatchOpt = None,
    seconds: Annotated[
        float | None,
        typer.Option(
            "--seconds",
            help="Repeat the workload to this much audio. [default: 600 for the "
            "bundled clips, none for your own files]",
        ),
    ] = None,
    refs: Annotated[
        Path | None,
        typer.Option("--refs", help="Folder with a reference .txt per audio stem, for WER."),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="TSV with columns file, reference_transcript (as in "
            "../shared/data/dev): its files are the workload and its texts the references.",
        ),
    ] = None,
    subset: Annotated[
        str | None, typer.Option("--subset", help="Only these manifest subsets, comma-separated.")
    ] = None,
    modes: Annotated[
        str,
        typer.Option(
            "--modes",
            help="Comma-separated: reload, baseline, unpacked "
            "(transcribe with --no-pack), optimized (transcribe as configured).",
        ),
    ] = "reload,baseline,unpacked,optimized",
    repeat: Annotated[
        int, typer.Option("--repeat", help="Runs per mode (min and median reported).")
    ] = 1,
    sweep: Annotated[
        bool,
        typer.Option(
            "--sweep", help="Also try processes x workers x threads x compute type (and AVX-512)."
        ),
    ] = False,
    max_minutes: Annotated[
        float, typer.Option("--max-minutes", help="Stop the sweep within this many minutes.")
    ] = 30.0,
    beam_size: Annotated[int, typer.Option("--beam-size", help="Beam size, both sides.")] = 5,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="A Markdown table on stdout.")
    ] = False,
    plot_file: Annotated[
        Path | None,
        typer.Option(
            "--plot", help="Draw RTFx against processes and threads to this PNG (needs matplotlib)."
        ),
    ] = None,
    save: Annotated[
        bool,
        typer.Option(
            "--save",
            help="Save the best layout (WER within 0.5 points of baseline) for later "
            "transcribe/detect runs.",
        ),
    ] = False,
    backend: BackendOpt = None,
    address: AddressOpt = None,
    ship_audio: ShipAudioOpt = None,
) -> None:
    """Measure faster-whisper the ordinary way against transcribe, side by side."""
    from epyc_whisper import bench as b
    from epyc_whisper.config import user_config_path
    from epyc_whisper.models import resolve_model

    b.check_options(repeat, max_minutes, plot_file)
    wanted = b.parse_modes(modes)
    cli = _cli_settings(
        model=model,
        compute_type=compute_type,
        processes=processes,
        workers=workers,
        threads=threads,
        batch_size=batch_size,
        backend=backend,
        address=address,
        ship_audio=ship_audio,
    )
    prep = _prepare(cli, preset, config)
    prep.check_compute_type()
    model_path = resolve_model(prep.settings.model, prep.settings.source("model"))
    files, refs_of, seconds = b.choose_workload(paths, manifest, subset, refs, seconds)
    progress = _BenchProgress()
    report = b.measure(
        prep,
        model_path,
        files,
        refs_of,
        seconds,
        wanted,
        repeat=repeat,
        sweep=sweep,
        max_minutes=max_minutes,
        beam_size=beam_size,
        say=err.print,
        on_progress=progress.event,
        on_tick=progress.tick,
    )
    doc = report.to_dict()
    for w in report.warnings:
        err.print(f"[yellow]warning:[/] {w}")
    counted = {d["cpu_counted"] for d in doc["rows"] if "cpu_counted" in d}
    if len(counted) > 1 or b.CPU_COUNTED["ray"] in counted:
        for d in doc["rows"]:
            if "cpu_counted" in d:
                err.print(f"note: CPU of {d['mode']}: {d['cpu_counted']}", markup=False)
    if plot_file is not None:
        b.plot(report, plot_file)
        err.print(f"plot written to {plot_file}")
    if save:
        best, path = b.save(report, user_config_path())
        err.print(f"saved the best layout ({best['mode']}, RTFx {best['rtfx']}) to {path}")
    if json_out:
        out.print_json(json.dumps(doc))
    elif markdown:
        out.print(_bench_markdown(doc), markup=False)
    elif out.is_terminal:
        out.print(_bench_table(doc))
    else:  # a file or a pipe: the whole table, not cut to 80 columns
        _print_full_width(_bench_table(doc))
        if not _opts["quiet"]:
            err.print("note: --markdown or --json give the same numbers for other programs")


def _print_full_width(table: Table) -> None:
    """Rich lays a table out to the console's width (80 columns without a terminal, and
    Console.print's own width= is capped by it): print it on a console as wide as the
    table wants."""
    from rich.measure import Measurement

    wide = Console(file=sys.stdout, width=10_000, highlight=False, soft_wrap=True)
    width = Measurement.get(wide, wide.options, table).maximum
    Console(file=sys.stdout, width=width, highlight=False).print(table)


class _BenchProgress:
    """bench's progress on stderr: a line as each mode run starts; while it runs, the
    files finished and the time left in it (a status line on a terminal, else a line
    once the first file is finished and then every 10 s). Nothing with -q."""

    def __init__(self) -> None:
        self.quiet = _opts["quiet"]
        self.status: Any = None
        self.last: float | None = None
        self.estimated = False

    def event(self, message: str | None) -> None:
        """A mode run starts (None: the bench is over)."""
        if self.status is not None:
            self.status.stop()
            self.status = None
        self.last, self.estimated = None, False
        if message is not None and not self.quiet:
            err.print(message, markup=False)

    def tick(self, message: str) -> None:
        import time

        if self.quiet:
            return
        if err.is_terminal:
            if self.status is None:
                self.status = err.status(message)
                self.status.start()
            else:
                self.status.update(message)
            return
        now = time.monotonic()
        first = " left" in message and not self.estimated
        if first or (self.last is not None and now - self.last >= 10):
            err.print(message, markup=False)
            self.estimated = self.estimated or first
            self.last = now
        elif self.last is None:
            self.last = now


_BENCH_COLS = [
    ("mode", "mode"),
    ("wall_min", "wall s (min)"),
    ("wall_median", "median"),
    ("rtfx", "RTFx"),
    ("files_per_s", "files/s"),
    ("cpu_util", "CPU"),
    ("peak_rss_mib", "peak RSS MiB"),
    ("loads", "loads"),
    ("load_seconds", "load s"),
    ("ratio", "x baseline"),
    ("wer", "WER %"),
]


def _bench_cells(d: dict[str, Any]) -> list[str]:
    if d.get("error"):
        return [d["mode"], f"failed: {d['error']}"] + [""] * (len(_BENCH_COLS) - 2)
    cells = []
    for key, _ in _BENCH_COLS:
        v = d.get(key)
        if key == "cpu_util" and v is not None:
            v = f"{100 * v:.0f}%"
        cells.append("-" if v is None else str(v))
    return cells


def _bench_table(doc: dict[str, Any]) -> Table:
    t = Table(
        title=f"epyc-whisper bench: {doc['files']} files, {doc['audio_seconds']:.0f} s "
        f"of audio, {doc['meta']['cpu']}",
        title_justify="left",
    )
    for _, head in _BENCH_COLS:
        t.add_column(head)
    for d in doc["rows"]:
        t.add_row(*_bench_cells(d))
    return t


def _bench_markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"{doc['files']} files, {doc['audio_seconds']:.0f} s of audio; {doc['meta']['cpu']}, "
        f"{doc['meta']['usable_cpus']} CPUs; faster-whisper "
        f"{doc['meta'].get('faster_whisper')}, CTranslate2 {doc['meta'].get('ctranslate2')}",
        "",
        "| " + " | ".join(h for _, h in _BENCH_COLS) + " |",
        "|" + "---|" * len(_BENCH_COLS),
    ]
    for d in doc["rows"]:
        lines.append("| " + " | ".join(_bench_cells(d)) + " |")
    counted = sorted({d["cpu_counted"] for d in doc["rows"] if "cpu_counted" in d})
    lines += ["", *(f"CPU: {c}." for c in counted)] if counted else []
    return "\n".join(lines)


def main() -> None:
    """Console-script entry point: every library error becomes one line and an exit code."""
    from typer._click.exceptions import ClickException  # typer >= 0.26 vendors Click

    from epyc_whisper.compat import translate

    try:
        # whisper-ctranslate2's spellings (--beam_size, --vad_filter True): compat.py.
        # sys.argv itself, so that the re-executed process parses the same arguments.
        sys.argv[1:] = translate(sys.argv[1:])
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except EpycWhisperError as e:
        err.print(f"epyc-whisper: error: {e}", markup=False)
        sys.exit(int(e.exit_code))
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except ClickException as e:  # bad flags, missing arguments: Click's own message
        e.show()
        sys.exit(int(ExitCode.USAGE))
    except typer.Abort:
        sys.exit(int(ExitCode.INTERRUPTED))
