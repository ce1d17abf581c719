"""Models of large-v3's shape (random weights, tests/make_shaped_model.py) through the real CLI.

A reduced model with large-v3's front end (128 mel bins, the 100-language vocabulary,
the real tokenizer) and 2 layers goes where tiny.en and base never take us: its
transcripts mean nothing, but every path must run on it as on the real model.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from epyc_whisper.audio import decode_pyav
from epyc_whisper.layout import LOAD_OVERHEAD, estimate_model_bytes, read_model_bin
from tests.conftest import SAMPLES, copy_samples, run_cli
from tests.make_shaped_model import EOT, NOTICE, build

SHORT = [
    "ast_en_agent-incorrect.wav",
    "ast_en_vm-tocancel.wav",
    "mfa_phrase_longstop.flac",
    "ast_en_digits__19.wav",
]
LANG = Path(__file__).parent / "fixtures" / "lang"


@pytest.fixture(scope="session")
def large_v3_l2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """large-v3's shape with 2 encoder and 2 decoder layers, stored int8 (170 MB)."""
    return build("large-v3", tmp_path_factory.mktemp("shaped") / "large-v3-l2", layers=2)


def _recording(path: Path, clips: list[str], gap_s: float = 1.0) -> Path:
    """Real clips joined with silences into one 16 kHz wav (made up, from real speech)."""
    parts = []
    for c in clips:
        parts += [decode_pyav(str(SAMPLES / c)), np.zeros(int(16000 * gap_s), np.float32)]
    x = np.concatenate(parts)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((x * 32767).astype(np.int16).tobytes())
    return path


def test_folder_has_the_shape_and_says_it_is_random(large_v3_l2: Path) -> None:
    """The folder loads as a 128-mel, 100-language Whisper model with large-v3's special
    tokens, says it is random, and its decoder stops after about 8 sampled tokens."""
    import ctranslate2
    from faster_whisper import WhisperModel

    cfg = json.loads((large_v3_l2 / "config.json").read_text())
    assert cfg["epyc_whisper_shaped"]["notice"] == NOTICE.format(shape="large-v3")
    assert "RANDOM WEIGHTS" in (large_v3_l2 / "RANDOM-WEIGHTS.txt").read_text()
    assert len(cfg["lang_ids"]) == 100
    model = WhisperModel(str(large_v3_l2), device="cpu", compute_type="int8", cpu_threads=1)
    assert model.model.n_mels == 128 and model.model.num_languages == 100
    assert model.model.is_multilingual
    tok = model.hf_tokenizer
    assert tok.token_to_id("<|yue|>") == 50358 and tok.token_to_id("<|notimestamps|>") == 50364
    assert tok.token_to_id("<|endoftext|>") == EOT
    features = model.feature_extractor(np.zeros(16000 * 5, np.float32))
    assert features.shape[0] == 128
    prompt = [tok.token_to_id(t) for t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>")]
    enc = model.encode(features[:, :3000])
    out = model.model.generate(ctranslate2.StorageView.from_array(np.asarray(enc)), [prompt])
    assert 1 <= len(out[0].sequences_ids[0]) <= 8


def test_estimate_reads_how_weights_are_stored(tmp_path: Path) -> None:
    """The same shape stored as int8 and as float16 is planned at the same memory once
    loaded as int8 (the header says how the weights are stored; the file size does not),
    and float32 plans four bytes a weight."""
    i8 = build("tiny", tmp_path / "i8", layers=1, quantization="int8")
    f16 = build("tiny", tmp_path / "f16", layers=1, quantization="float16")
    s8, s16 = read_model_bin(i8 / "model.bin"), read_model_bin(f16 / "model.bin")
    assert s8 is not None and s16 is not None
    assert (s8.weight_dtype, s16.weight_dtype) == ("int8", "float16")
    assert s8.weights == s16.weights
    size8, size16 = ((p / "model.bin").stat().st_size for p in (i8, f16))
    assert size16 > 1.8 * size8
    e8, e16 = estimate_model_bytes(str(i8), "int8"), estimate_model_bytes(str(f16), "int8")
    # Converted on load, a copy stays a little larger (measured: 1668 against 1539 MiB).
    assert e8 < e16 < 1.1 * e8
    assert estimate_model_bytes(str(f16), "float32") - LOAD_OVERHEAD >= 4 * s16.weights


def test_short_clip_in_every_format(
    tmp_path: Path, large_v3_l2: Path, clean_env: dict[str, str]
) -> None:
    """One short clip, unpacked, the ordinary faster-whisper way, into every format."""
    copy_samples(tmp_path / "c", SHORT[:1])
    r = run_cli(
        ["transcribe", "c", "--model", str(large_v3_l2), "--no-pack", "-o", "o", "-f", "all"],
        tmp_path,
        clean_env,
    )
    assert r.returncode == 0, r.stderr
    stem = Path(SHORT[0]).stem
    for ext in ("txt", "srt", "vtt", "tsv", "json"):
        assert (tmp_path / "o" / f"{stem}.{ext}").is_file(), ext
    doc = json.loads((tmp_path / "o" / f"{stem}.json").read_text())
    assert doc["segments"] and "packed" not in doc and doc["duration"] > 1


def test_packed_group_and_split_recording(
    tmp_path: Path, large_v3_l2: Path, clean_env: dict[str, str]
) -> None:
    """transcribe with --language: a packed group of short clips and a recording split
    into pieces finish on the 128-mel model; the run records the memory one
    copy took, and the next plan (detect) uses that measurement."""
    clips = tmp_path / "clips"
    copy_samples(clips / "group", SHORT)
    _recording(clips / "speech.wav", SHORT * 3)
    common = ["--model", str(large_v3_l2), "--language", "en", "-f", "json,srt"]
    r = run_cli(
        ["transcribe", str(clips), *common, "-o", str(tmp_path / "o"), "--split-above", "20"],
        tmp_path,
        clean_env,
    )
    assert r.returncode == 0, r.stderr
    docs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "o").rglob("*.json")}
    assert len(docs) == len(SHORT) + 1
    assert all(d["language"] == "en" and d["compute_type"] == "int8" for d in docs.values())
    assert docs["speech"]["split"]["pieces"] >= 2
    group = [docs[Path(c).stem] for c in SHORT]
    # The packed window was decoded: its clips kept it, or were sent alone because the
    # random words it gave them failed the checks (said in their notes).
    assert any("packed" in d or any("packed result" in n for n in d["notes"]) for d in group)
    memory = json.loads(
        (Path(clean_env["XDG_CACHE_HOME"]) / "epyc-whisper" / "model-memory.json").read_text()
    )
    measured = memory[f"{large_v3_l2.resolve()}|int8"]
    estimate = estimate_model_bytes(str(large_v3_l2), "int8")
    assert 0.9 * estimate < measured < estimate + (200 << 20), (measured, estimate)
    d = run_cli(["detect", "--model", str(large_v3_l2), "--json"], tmp_path, clean_env)
    assert d.returncode == 0, d.stderr
    layout = json.loads(d.stdout)["layout"]
    assert layout["model_bytes_source"] == "measured" and layout["model_bytes"] == measured


def test_multilingual_clips_without_language(
    tmp_path: Path, large_v3_l2: Path, clean_env: dict[str, str]
) -> None:
    """Without --language, each clip's language (real Spanish and French) is detected
    among the model's 100 (its lang_ids), and every clip gets a transcript."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    (tmp_path / "c").mkdir()
    for f in LANG.glob("*.wav"):
        (tmp_path / "c" / f.name).write_bytes(f.read_bytes())
    r = run_cli(
        ["transcribe", str(tmp_path / "c"), "--model", str(large_v3_l2), "-o", "o", "-f", "json"],
        tmp_path,
        clean_env,
    )
    assert r.returncode == 0, r.stderr
    docs = [json.loads(p.read_text()) for p in (tmp_path / "o").rglob("*.json")]
    assert len(docs) == len(list(LANG.glob("*.wav"))) == 3
    for d in docs:
        assert d["language"] in _LANGUAGE_CODES and 0 < d["language_probability"] <= 1


def test_detect_plans_it(tmp_path: Path, large_v3_l2: Path, clean_env: dict[str, str]) -> None:
    """detect plans the model from its header before any run has measured it."""
    d = run_cli(["detect", "--model", str(large_v3_l2), "--json"], tmp_path, clean_env)
    assert d.returncode == 0, d.stderr
    layout = json.loads(d.stdout)["layout"]
    assert layout["model_bytes_source"] == "estimated"
    assert layout["model_bytes"] == estimate_model_bytes(str(large_v3_l2), "int8")
    assert layout["total_bytes"] <= layout["budget_bytes"]
