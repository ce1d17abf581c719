"""Transcribing audio of at most one Whisper window, encoding it once.

Packed windows (packing.py) and the pieces of a split recording (splitting.py) are
never longer than one 30 s window. faster-whisper's ``transcribe()`` still encodes
such audio again from the last word whenever the decoder does not end on a single
timestamp, even when all that is left is the silence after the last word (measured on
24 packed windows: 36 encoder passes, a third of them over trailing silence). Here the
window is encoded once; it is encoded again from the last word only when at least
``MIN_REST`` seconds are left after it, that is, when the decoder stopped before the
speech did (measured: 9 such passes for 57 packed windows, 8 for 16 pieces). The rest
follows ``transcribe()`` step for step, with faster-whisper's own functions: the same
prompt, the same segment split at timestamp tokens, the same no-speech skip, the same
word alignment. A window that would need temperature fallback goes the ordinary way,
``transcribe()`` with the whole temperature schedule (``transcribe_window``), or is left
to the caller (``try_window``: packing then transcribes each clip alone), so no result
differs in kind from an unpacked, unsplit one. ``vad_filter`` is not applied here: a
piece is already cut by VAD, and a packed clip was checked for speech.
"""

from __future__ import annotations

import inspect
from typing import Any

#: Seconds of audio after the last word below which the window counts as finished.
MIN_REST = 1.0
#: Encoder passes per window at most (each one must move forward anyway).
MAX_PASSES = 8
#: Options that change the prompt or the audio: such a window goes the ordinary way.
_ORDINARY_ONLY = ("initial_prompt", "prefix", "hotwords", "clip_timestamps")


def transcribe_window(model: Any, audio: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Segments (engine.segment_dict's form, times from the start of ``audio``) of
    16 kHz float32 ``audio`` no longer than one window, as ``model.transcribe`` would
    give them, with fewer encoder passes."""
    segs = try_window(model, audio, options)
    return _ordinary(model, audio, options) if segs is None else segs


def try_window(model: Any, audio: Any, options: dict[str, Any]) -> list[dict[str, Any]] | None:
    """transcribe_window without the temperature fallback: None when the decode at the
    first temperature fails faster-whisper's thresholds (the caller decides)."""
    from faster_whisper.tokenizer import Tokenizer

    defaults = _defaults(model)
    o = defaults | options
    t = o["temperature"]
    temps = [float(x) for x in t] if isinstance(t, (list, tuple)) else [float(t)]
    ordinary = any(o[k] not in (None, defaults[k]) for k in _ORDINARY_ONLY)
    if ordinary or not o["language"] or len(audio) > 30 * 16000:
        return _ordinary(model, audio, options)
    tokenizer = Tokenizer(
        model.hf_tokenizer, model.model.is_multilingual, task=o["task"], language=o["language"]
    )
    out: list[dict[str, Any]] = []
    start = 0  # frames (10 ms) into ``audio``
    for _ in range(MAX_PASSES):
        segs, resume = _one_pass(model, audio[start * 160 :], o, temps, tokenizer)
        if segs is None:
            return None
        out += _shift(segs, start / 100)
        if resume is None or resume <= 0:
            break
        start += resume
    for i, seg in enumerate(out, start=1):
        seg["id"] = i
    return out


def _ordinary(model: Any, audio: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    from epyc_whisper.engine import segment_dict

    return [segment_dict(s) for s in model.transcribe(audio, **options)[0]]


def _defaults(model: Any) -> dict[str, Any]:
    """transcribe()'s own defaults, so that a window is decoded with the same settings."""
    sig = inspect.signature(type(model).transcribe)
    return {k: p.default for k, p in sig.parameters.items() if p.default is not p.empty}


def _one_pass(
    model: Any, audio: Any, o: dict[str, Any], temps: list[float], tokenizer: Any
) -> tuple[list[dict[str, Any]] | None, int | None]:
    """One encoder pass and one decode at the first temperature. Returns the segments
    and the frame to go on from (None: finished), or (None, None) when the result
    fails the fallback thresholds."""
    from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens, pad_or_trim

    features = model.feature_extractor(audio)
    frames = features.shape[-1] - 1  # as transcribe(): the last frame is padding
    encoder_output = model.encode(pad_or_trim(features[:, :frames]))
    prompt = model.get_prompt(tokenizer, [], without_timestamps=o["without_timestamps"])
    suppress = o["suppress_tokens"]
    sampling = {"beam_size": o["beam_size"], "patience": o["patience"]}
    if temps[0] > 0:
        sampling = {
            "beam_size": 1,
            "num_hypotheses": o["best_of"],
            "sampling_topk": 0,
            "sampling_temperature": temps[0],
        }
    result = model.model.generate(
        encoder_output,
        [prompt],
        length_penalty=o["length_penalty"],
        repetition_penalty=o["repetition_penalty"],
        no_repeat_ngram_size=o["no_repeat_ngram_size"],
        max_length=model.max_length,
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=o["suppress_blank"],
        suppress_tokens=get_suppressed_tokens(tokenizer, suppress) if suppress else suppress,
        max_initial_timestamp_index=int(round(o["max_initial_timestamp"] / model.time_precision)),
        **sampling,
    )[0]
    tokens = result.sequences_ids[0]
    avg_logprob = result.scores[0] * len(tokens) ** o["length_penalty"] / (len(tokens) + 1)
    text = tokenizer.decode(tokens).strip()
    lp, ns, cr = o["log_prob_threshold"], o["no_speech_threshold"], o["compression_ratio_threshold"]
    silent = ns is not None and result.no_speech_prob > ns
    fallback = (cr is not None and get_compression_ratio(text) > cr) or (
        lp is not None and avg_logprob < lp
    )
    if fallback and not (silent and lp is not None and avg_logprob < lp) and len(temps) > 1:
        return None, None
    if silent and not (lp is not None and avg_logprob > lp):
        return [], None  # transcribe()'s no-speech skip: the window is silence
    segments, seek, single_ending = model._split_segments_by_timestamps(
        tokenizer=tokenizer,
        tokens=tokens,
        time_offset=0.0,
        segment_size=frames,
        segment_duration=frames / 100,
        seek=0,
    )
    if o["word_timestamps"]:
        model.add_word_timestamps(
            [segments],
            tokenizer,
            encoder_output,
            frames,
            o["prepend_punctuations"],
            o["append_punctuations"],
            last_speech_timestamp=0.0,
        )
        ends = [w["end"] for s in segments for w in s.get("words") or []]
        if not single_ending and ends and ends[-1] > 0:
            seek = round(ends[-1] * 100)
    resume = None if single_ending or frames - seek < MIN_REST * 100 else seek
    out = []
    for seg in segments:
        seg_text = tokenizer.decode(seg["tokens"])
        if seg["start"] == seg["end"] or not seg_text.strip():
            continue
        d = {
            "id": 0,
            "seek": 0,
            "start": round(float(seg["start"]), 3),
            "end": round(float(seg["end"]), 3),
            "text": seg_text,
            "tokens": list(seg["tokens"]),
            "temperature": temps[0],
            "avg_logprob": avg_logprob,
            "compression_ratio": get_compression_ratio(text),
            "no_speech_prob": result.no_speech_prob,
        }
        if o["word_timestamps"]:
            d["words"] = [
                {
                    "start": round(float(w["start"]), 3),
                    "end": round(float(w["end"]), 3),
                    "word": w["word"],
                    "probability": float(w["probability"]),
                }
                for w in seg.get("words") or []
            ]
        out.append(d)
    return out, resume


def _shift(segs: list[dict[str, Any]], by: float) -> list[dict[str, Any]]:
    for s in segs:
        s["seek"] = round(by * 100)
        s["start"], s["end"] = round(s["start"] + by, 3), round(s["end"] + by, 3)
        for w in s.get("words") or []:
            w["start"], w["end"] = round(w["start"] + by, 3), round(w["end"] + by, 3)
    return segs
