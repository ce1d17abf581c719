"""Coming from whisper-ctranslate2 (#17): its flags, its decoding options, its writers.

The golden files under tests/golden/wc2/ were written once, outside this repository, by
tests/make_wc2_golden.py in a scratch venv with whisper-ctranslate2==0.5.8 (faster-whisper
1.2.1): eight of the bundled sample clips joined with 1.5 s of silence (44 s, real speech),
transcribed by the ``whisper-ctranslate2`` command itself with the bundled tiny.en
(``--model_directory``, ``--compute_type int8 --threads 1 --language en``), one folder per
set of its options (``options.json`` holds its writer options), each with all five formats
from its own writers. The same script rendered the same segments with openai-whisper
20250625's writers and checked that every txt/vtt/srt/tsv is byte-identical to
whisper-ctranslate2's; ``openai_width_count`` (max_line_width with max_line_count and no
max_words_per_line, where the two tools disagree) is openai-whisper's, whose rule we follow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import SAMPLES, copy_samples, run_cli

from epyc_whisper import cli, compat, job, ledger, prepare, window
from epyc_whisper.config import SPECS, resolve
from epyc_whisper.errors import UsageError
from epyc_whisper.writers import FORMATS, SEGMENT_KEYS, WRITER_OPTIONS, get_writer

WC2 = Path(__file__).parent / "golden" / "wc2"
VARIANTS = sorted(p.name for p in WC2.iterdir() if p.is_dir())
README = Path(__file__).resolve().parent.parent / "README.md"


def _variant(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    opts = json.loads((WC2 / name / "options.json").read_text())
    result = json.loads((WC2 / name / "joined.json").read_text(encoding="utf-8"))
    return result, opts


@pytest.mark.parametrize("variant", VARIANTS)
def test_all_formats_match_whisper_ctranslate2_golden(variant: str) -> None:
    """Every format whisper-ctranslate2 0.5.8 (or openai-whisper) wrote from these segments
    with these writer options, we write byte for byte."""
    result, opts = _variant(variant)
    for fmt in FORMATS:
        path = WC2 / variant / f"joined.{fmt}"
        if not path.exists():
            continue
        assert get_writer(fmt).render(result, opts) == path.read_text(encoding="utf-8"), fmt


def test_json_from_faster_whisper_segments_is_theirs_then_ours() -> None:
    """Segments as faster-whisper gives them, through engine.segment_dict and our writer:
    whisper-ctranslate2's json byte for byte, our per-file keys after its keys."""
    from faster_whisper.transcribe import Segment, Word

    from epyc_whisper.engine import segment_dict

    for variant in ("plain", "words"):
        theirs = (WC2 / variant / "joined.json").read_text(encoding="utf-8")
        doc = json.loads(theirs)
        segs = []
        for s in doc["segments"]:
            words = None if s["words"] is None else [Word(**w) for w in s["words"]]
            segs.append(segment_dict(Segment(**{**s, "words": words})))
        ours = {"text": doc["text"], "segments": segs, "language": "en", "model": "tiny.en"}
        rendered = get_writer("json").render(ours)
        assert rendered == theirs[:-1] + ', "model": "tiny.en"}'


def test_pretty_json_is_their_pretty_json() -> None:
    """--pretty-json indents as whisper-ctranslate2's --pretty_json True: 4 spaces, no
    ASCII escapes."""
    result, opts = _variant("pretty")
    assert opts == {"pretty_json": True}
    text = get_writer("json").render(result, opts)
    assert text == (WC2 / "pretty" / "joined.json").read_text(encoding="utf-8")
    assert get_writer("json").render({"text": "café", "segments": []}, opts) == (
        '{\n    "text": "café",\n    "segments": []\n}'
    )


# Real whisper-ctranslate2 command lines (its README and --help), program name dropped.
THEIR_LINES = [
    "inaguracio2011.mp3 --model medium --task translate",
    "myfile.mp3 --compute_type int8 --vad_filter True --vad_threshold 0.4 "
    "--vad_min_speech_duration_ms 250 --vad_max_speech_duration_s 20 "
    "--vad_min_silence_duration_ms 500",
    "a.wav b.wav --output_format srt --output_dir subs --word_timestamps True "
    "--max_line_width 42 --max_line_count 2 --highlight_words False",
    "a.wav --model_directory ./my-ct2-model --device cpu --threads 2 --language None "
    "--beam_size 5 --best_of 5 --patience 1.0 --length_penalty 1.0 --temperature 0 "
    "--temperature_increment_on_fallback 0.2 --compression_ratio_threshold 2.4 "
    "--logprob_threshold -1.0 --no_speech_threshold 0.6 --condition_on_previous_text False "
    "--prompt_reset_on_temperature 0.5 --suppress_tokens -1 --suppress_blank True "
    "--initial_prompt Hello --prefix So --hotwords EPYC --repetition_penalty 1.1 "
    "--no_repeat_ngram_size 3 --hallucination_silence_threshold 2 --pretty_json True "
    "--max_words_per_line 5 --verbose False --print_colors False --batched False "
    "--multilingual False --local_files_only True",
    "a.wav -o out -f json -p True --device_index 0 --model_dir ./cache --verbose True",
]


def _parse(line: str) -> dict[str, Any]:
    command = typer.main.get_command(cli.app).commands["transcribe"]  # type: ignore[attr-defined]
    ctx = command.make_context("transcribe", compat.translate(line.split()))
    return dict(ctx.params)


def test_their_command_lines_parse() -> None:
    """Real whisper-ctranslate2 command lines parse as transcribe's options, with their
    meaning (underscore names, True/False values, their renamed flags)."""
    p = [_parse(line) for line in THEIR_LINES]
    assert p[0]["model"] == "medium" and p[0]["task"] == "translate"
    assert p[1]["vad"] is True and p[1]["vad_threshold"] == "0.4"
    assert p[1]["vad_max_speech_duration_s"] == "20" and p[1]["compute_type"] == "int8"
    assert p[2]["paths"] == ["a.wav", "b.wav"] and p[2]["formats"] == "srt"
    assert str(p[2]["output_dir"]) == "subs" and p[2]["word_timestamps"] is True
    assert p[2]["max_line_width"] == "42" and p[2]["highlight_words"] is False
    big = p[3]
    assert big["model_directory"] == "./my-ct2-model" and big["device"] == "cpu"
    assert big["threads"] == 2 and big["language"] is None  # None: detected
    assert big["log_prob_threshold"] == "-1.0" and big["condition_on_previous_text"] is False
    assert big["suppress_tokens"] == "-1" and big["suppress_blank"] is True
    assert big["temperature_increment_on_fallback"] == "0.2" and big["prefix"] == "So"
    assert big["pretty_json"] is True and big["quiet"] is True  # --verbose False
    assert big["multilingual"] is False and big["local_files_only"] is True
    assert p[4]["pretty_json"] is True and p[4]["device_index"] == "0"
    assert str(p[4]["model_cache_dir"]) == "cache" and p[4]["quiet"] is False


def test_translate_leaves_ours_alone() -> None:
    """Our own spellings, paths and values pass unchanged, and translating twice is
    translating once."""
    ours = ["a_b.wav", "--beam-size", "3", "--no-vad", "--initial-prompt", "True", "--", "--x_y"]
    assert compat.translate(ours) == ours
    theirs = ["x.wav", "--vad_filter=True", "--word_timestamps", "false", "--beam_size=2"]
    once = compat.translate(theirs)
    assert once == ["x.wav", "--vad", "--no-word-timestamps", "--beam-size=2"]
    assert compat.translate(once) == once


@pytest.mark.parametrize(
    "flag, why",
    [
        ("--live_transcribe True", "microphone"),
        ("--hf_token abc", "diarization"),
        ("--speaker_num 3", "diarization"),
        ("--print_colors True", "terminal"),
        ("--batched True", "BatchedInferencePipeline"),
        ("--batch_size 8", "files per queue item"),
    ],
)
def test_options_without_meaning_say_so(flag: str, why: str) -> None:
    """Their options with no meaning here are refused in one line naming the reason."""
    with pytest.raises(UsageError, match=why) as e:
        compat.translate(["a.wav", *flag.split()])
    assert "\n" not in str(e.value) and e.value.exit_code == 2


def test_option_without_meaning_exits_2(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """On the command line such an option exits 2 with that line, not "No such option"."""
    res = run_cli(["transcribe", "a.wav", "--live_transcribe", "True"], tmp_path, clean_env)
    assert res.returncode == 2
    assert "live transcription from a microphone has no meaning" in res.stderr
    assert "No such option" not in res.stderr


def _settings(**cli_values: Any) -> Any:
    return resolve(cli_values, environ={}, use_saved=False)


def test_decoding_settings_pass_through_exactly() -> None:
    """Every decoding setting reaches transcribe() under faster-whisper's name and value;
    the defaults are faster-whisper's own."""
    import inspect

    from faster_whisper import WhisperModel

    defaults = {
        k: p.default for k, p in inspect.signature(WhisperModel.transcribe).parameters.items()
    }
    opts = job.transcribe_options(_settings())
    for k, v in opts.items():
        assert v == defaults[k] or k in ("language", "vad_filter"), k
    assert "vad_parameters" not in opts
    given = job.transcribe_options(
        _settings(
            best_of="3",
            patience="2",
            length_penalty="0.5",
            repetition_penalty="1.2",
            no_repeat_ngram_size="4",
            compression_ratio_threshold="none",
            log_prob_threshold="-0.5",
            no_speech_threshold="0.3",
            condition_on_previous_text=False,
            prompt_reset_on_temperature="0.7",
            prefix="So",
            hotwords="EPYC Zen",
            suppress_blank=False,
            suppress_tokens="-1,50363",
            prepend_punctuations="¿",
            append_punctuations=".!",
            hallucination_silence_threshold="2.5",
            multilingual=True,
            temperature="0.2",
            temperature_increment_on_fallback="0.4",
            vad_threshold="0.4",
            vad_min_silence_duration_ms="500",
        )
    )
    assert given["best_of"] == 3 and given["patience"] == 2.0 and given["length_penalty"] == 0.5
    assert given["repetition_penalty"] == 1.2 and given["no_repeat_ngram_size"] == 4
    assert given["compression_ratio_threshold"] is None and given["log_prob_threshold"] == -0.5
    assert given["no_speech_threshold"] == 0.3 and given["condition_on_previous_text"] is False
    assert given["prompt_reset_on_temperature"] == 0.7 and given["prefix"] == "So"
    assert given["hotwords"] == "EPYC Zen" and given["suppress_blank"] is False
    assert given["suppress_tokens"] == [-1, 50363] and given["prepend_punctuations"] == "¿"
    assert given["append_punctuations"] == ".!" and given["multilingual"] is True
    assert given["hallucination_silence_threshold"] == 2.5
    assert given["temperature"] == [0.2, 0.6000000000000001, 1.0]  # numpy.arange's values
    assert given["vad_parameters"] == {"threshold": 0.4, "min_silence_duration_ms": 500}
    assert given["word_timestamps"] is True  # hallucination_silence_threshold needs words


def test_new_settings_come_from_env_and_config_files(tmp_path: Path) -> None:
    """The new settings are settings like the others: EPYC_WHISPER_* and config files,
    their spelling of a name included, with the same precedence."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "[transcribe]\nbest_of = 2\nlogprob_threshold = -2\nsuppress_tokens = [-1, 7]\n"
        'max_line_width = 30\npretty_json = true\ndevice_index = "0,1"\n'
    )
    env = {"EPYC_WHISPER_BEST_OF": "4", "EPYC_WHISPER_HOTWORDS": "Zen", "EPYC_WHISPER_VAD": "1"}
    s = resolve({}, environ=env, config_file=str(cfg), use_saved=False)
    assert s.best_of == 4 and s.source("best_of") == "env EPYC_WHISPER_BEST_OF"
    assert s.log_prob_threshold == -2.0 and s.suppress_tokens == "-1,7"
    assert s.max_line_width == 30 and s.pretty_json is True and s.hotwords == "Zen"
    assert s.word_timestamps is True and s.source("word_timestamps").startswith("implied by")
    assert s.device_index == "0,1"
    with pytest.raises(UsageError, match=r"invalid best_of = '0' \(from cli\)"):
        _settings(best_of="0")
    with pytest.raises(UsageError, match="needs word timestamps"):
        _settings(max_line_width="30", word_timestamps=False)


def test_packing_and_windows_step_aside_where_they_cannot_honour() -> None:
    """Packing is off for options that change a shared window's prompt or time line; the
    one-pass window goes the ordinary way for options only transcribe() implements."""
    base = _settings()
    assert job.packing_allowed(base, False)
    for k, v in [("prefix", "So"), ("hotwords", "Zen"), ("multilingual", True)]:
        assert not job.packing_allowed(_settings(**{k: v}), False), k
    assert not job.packing_allowed(_settings(hallucination_silence_threshold="2"), False)
    for k in ("prefix", "hotwords", "multilingual", "hallucination_silence_threshold"):
        assert k in window._ORDINARY_ONLY


def test_one_pass_window_sends_ordinary_options_the_ordinary_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A window with multilingual or a hallucination threshold is transcribed by
    transcribe() itself, never by the one-pass path."""
    from faster_whisper import WhisperModel

    class Model:
        transcribe = WhisperModel.transcribe  # transcribe()'s defaults, no weights

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(window, "ordinary", lambda m, a, o: calls.append(o) or [])
    for extra in ({"multilingual": True}, {"hallucination_silence_threshold": 2.0}):
        window.try_windows(Model(), [[0.0] * 16000], {"language": "en", **extra})
    assert len(calls) == 2


def test_ledger_keeps_old_records_unless_a_new_setting_changed() -> None:
    """A transcript recorded before the new settings existed counts as made with their
    defaults: kept with defaults, redone when one of them is changed."""
    old = ledger.fingerprint("m", "id", "int8", _settings().as_dict())
    for k in ledger.WORD_SETTINGS[7:] + ledger.SHAPE_SETTINGS:
        del old[k]
    same = ledger.fingerprint("m", "id", "int8", _settings().as_dict())
    assert ledger.differences(old, same) is None
    changed = ledger.fingerprint("m", "id", "int8", _settings(best_of="2").as_dict())
    assert ledger.differences(old, changed) == "best_of changed"
    shaped = ledger.fingerprint("m", "id", "int8", _settings(max_line_width="20").as_dict())
    assert ledger.differences(same, shaped) == "word_timestamps, max_line_width changed"


def test_device_is_checked_like_the_compute_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """--device cuda without a GPU, or with a GPU id that is not there, is a usage error;
    auto picks cuda or cpu; a cuda layout is one process per --device-index."""
    from epyc_whisper.engine import WorkerSpec
    from epyc_whisper.hardware import detect
    from epyc_whisper.layout import plan
    from epyc_whisper.pool import make_specs

    gpus = [0]
    monkeypatch.setattr(prepare, "_ask_ctranslate2", lambda code, what: gpus[0])
    assert prepare.check_device(_settings()).device == "cpu"
    with pytest.raises(UsageError, match="no CUDA GPU"):
        prepare.check_device(_settings(device="cuda"))
    assert prepare.check_device(_settings(device="auto")).device == "cpu"
    gpus[0] = 2
    assert prepare.check_device(_settings(device="auto")).device == "cuda"
    with pytest.raises(UsageError, match="GPU 2 does not exist"):
        prepare.check_device(_settings(device="cuda", device_index="0,2"))
    s = prepare.check_device(_settings(device="cuda", device_index="0,1", model="tiny.en"))
    layout = plan(detect(), s)
    specs: list[WorkerSpec] = make_specs(layout, "m", {}, device_index=[0, 1])
    assert [sp.device_index for sp in specs] == [0, 1] and {sp.device for sp in specs} == {"cuda"}
    with pytest.raises(UsageError, match="device"):
        _settings(device="tpu")


def test_readme_lists_their_flags_and_our_json_keys() -> None:
    """The README's "Coming from whisper-ctranslate2" section names every flag of theirs
    handled here, every new setting, and every per-file json key of ours."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Coming from whisper-ctranslate2", 1)[1].split("\n## ", 1)[0]
    for flag in list(compat.RENAMED) + list(compat.NO_MEANING):
        assert f"`{flag}" in section, flag
    for name in list(job.PASSED_THROUGH) + list(job.VAD_PARAMETERS) + list(WRITER_OPTIONS):
        assert f"--{name.replace('_', '-')}" in text, name
    for key in ("language_probability", "duration", "duration_after_vad", "timings", "notes"):
        assert f"`{key}`" in section, key
    for key in ("source", "model", "compute_type", "layout", "versions", "audio_track"):
        assert f"`{key}`" in section, key
    for key in ("no_speech", "packed", "split"):
        assert f"`{key}`" in section, key
    assert all(k in SPECS for k in job.PASSED_THROUGH)


@pytest.mark.slow
def test_real_run_writes_their_json_and_shapes_subtitles(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    """A real run pasted from whisper-ctranslate2 (--no-pack, each file alone): json in
    its layout (key order, ids from 1, words null without word timestamps), subtitle
    shaping turning word timestamps on."""
    copy_samples(tmp_path / "in", ["ast_en_dictate__enter_filename.wav"])
    base = ["transcribe", "in", "--model", "bundled", "--no-pack", "--processes", "1"]
    res = run_cli(
        base
        + [
            "-o",
            "plain",
            "--output_format",
            "json",
            "--beam_size",
            "5",
            "--vad_filter",
            "False",
            "--device",
            "cpu",
        ],
        tmp_path,
        clean_env,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "plain" / "ast_en_dictate__enter_filename.json").read_text())
    assert list(doc)[:3] == ["text", "segments", "language"]
    assert [list(s) for s in doc["segments"]] == [list(SEGMENT_KEYS)] * len(doc["segments"])
    assert doc["segments"][0]["id"] == 1 and doc["segments"][0]["words"] is None
    res = run_cli(
        base + ["-o", "shaped", "-f", "srt,json", "--max_line_width", "16", "-p", "True"],
        tmp_path,
        clean_env,
    )
    assert res.returncode == 0, res.stderr
    srt = (tmp_path / "shaped" / "ast_en_dictate__enter_filename.srt").read_text()
    text_lines = [ln for ln in srt.splitlines() if ln and "-->" not in ln and not ln.isdigit()]
    assert len(text_lines) > 2 and all(len(ln) <= 16 for ln in text_lines)
    pretty = (tmp_path / "shaped" / "ast_en_dictate__enter_filename.json").read_text()
    assert pretty.startswith('{\n    "text": ')
    assert json.loads(pretty)["segments"][0]["words"]
    assert SAMPLES.is_dir()
