"""Speech that got no words is transcribed again; a failing piece is halved first."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from epyc_whisper import engine, window
from epyc_whisper.audio import decode
from epyc_whisper.recovery import covered, merge, uncovered, within
from epyc_whisper.splitting import halve, quietest_point, sounding, widen
from tests.conftest import SAMPLES, speech_text
from tests.conftest import run_cli as run
from tests.media import write_wav
from tests.test_window import encoded, encodes

SR = 16000


def _w(s: float, e: float, word: str = " x") -> dict[str, Any]:
    return {"start": s, "end": e, "word": word, "probability": 0.9}


# --------------------------------------------------------------------------- unit
def test_uncovered_finds_the_skipped_utterance_only() -> None:
    """Three utterances, the middle one without words: that one is found; the words of
    the others cover theirs, and a sub-1.5 s gap inside speech is not a stretch."""
    speech = [(0.0, 2.0), (3.0, 5.0), (6.0, 9.0)]
    chunks = [(0.0, 2.5), (2.5, 5.5), (5.5, 9.5)]
    words = [(0.1, 0.6), (0.7, 1.9), (6.1, 6.5), (7.6, 8.9)]  # 6.5 -> 7.6: 1.1 s, no stretch
    assert uncovered(speech, chunks, words) == [(3.0, 5.0)]


def test_a_word_stretched_over_skipped_speech_does_not_cover_it() -> None:
    """The alignment's way of hiding a skip (seen on real pieces: "stop." timed over 11 s):
    a word whose end maps past a squeezed-out silence covers only its own chunk, and no
    word covers more than LONGEST_WORD; the speech it spans is found."""
    chunks = [(10.0, 12.0), (20.0, 23.0)]
    speech = [(10.2, 11.8), (20.3, 22.8)]
    stretched = [(10.3, 11.0), (11.1, 22.5)]  # the last word "ends" inside the next chunk
    assert covered(stretched, chunks)[1] == (11.1, 12.0)
    assert uncovered(speech, chunks, stretched) == [(20.3, 22.8)]
    long_word = [(20.3, 22.8)]  # inside one chunk, but far longer than any word
    assert uncovered([(20.3, 24.8)], [(20.0, 25.0)], long_word) == [(21.8, 24.8)]


def test_zero_length_words_still_split_stretches() -> None:
    """Words the alignment gives no length (seen on real pieces, at the end of their
    utterance) still break the speech into stretches: short utterances, each with its
    word, are not a stretch together; 2 s of speech before the next word is."""
    speech = [(0.0, 1.0), (1.6, 2.6), (3.2, 4.2)]
    words = [(1.0, 1.0), (2.6, 2.6), (4.2, 4.2)]
    assert uncovered(speech, [(0.0, 4.5)], words) == []
    assert uncovered(speech, [(0.0, 4.5)], words[:2]) == []  # 1 s without a word: too little
    assert uncovered(speech, [(0.0, 4.5)], words[::2]) == [(1.6, 4.2)]  # 2 s before a word


def test_recovered_words_land_in_time_order() -> None:
    """A segment whose words lie on both sides of the recovered stretch is cut in two
    there; the recovered words come between, every word in time order, texts and tokens
    from the words."""
    seg = {"id": 1, "start": 0.0, "end": 9.0, "text": " a b c", "tokens": [1], "temperature": 0.0}
    seg["words"] = [_w(0.0, 0.5, " a"), _w(0.6, 1.0, " b"), _w(8.0, 9.0, " c")]
    found = [((3.0, 6.0), [_w(3.1, 3.5, " y"), _w(4.0, 5.5, " z")], {"temperature": 0.0})]
    out = merge([seg], found, lambda t: [len(t)])
    assert [s["text"] for s in out] == [" a b", " y z", " c"]
    words = [w["start"] for s in out for w in s["words"]]
    assert words == sorted(words) and len(words) == 5
    assert [s["tokens"] for s in out] == [[4], [4], [2]]
    assert out[1]["start"] == 3.1 and out[1]["end"] == 5.5


def test_words_the_piece_has_are_not_taken_twice() -> None:
    """The second try's audio is padded, and a stretch can end at a word the piece has: a
    word whose middle lies outside the stretch, or the same word as one the piece has
    within 0.75 s, is not taken; the same word further away is."""
    segs = [
        {
            "words": [
                _w(2.5, 2.8, " before"),
                _w(3.1, 3.6, " in"),
                _w(4.0, 4.4, " One."),
                _w(5.8, 6.4, " edge"),
            ]
        }
    ]
    assert [w["word"] for w in within(segs, (3.0, 6.0), [(4.6, 4.6, " one")])] == [
        " in",
        " edge",
    ]
    assert len(within(segs, (3.0, 6.0), [(5.6, 5.6, " one")])) == 4 - 1


def test_sounding_is_what_is_left_that_is_not_digital_silence() -> None:
    """Outside the speech ranges, the runs of 0.1 s blocks with a peak over -60 dBFS,
    joined across less than a second: 1.5 s of faint sound with a 0.5 s dip is one
    stretch (to the block); a 0.2 s click and the speech ranges themselves are not
    found, nor is silence at -70 dBFS."""
    x = np.zeros(10 * SR, np.float32)
    x[SR : 2 * SR] = 0.01  # the speech range
    x[int(3.5 * SR) : 5 * SR] = 0.002  # faint sound
    x[4 * SR : int(4.5 * SR)] = 0  # the dip
    x[7 * SR : int(7.2 * SR)] = 0.5  # a click
    x[8 * SR :] = 10 ** (-70 / 20)
    assert sounding(x, [(SR, 2 * SR)], SR // 2) == [(int(3.5 * SR), 5 * SR)]
    x[int(3.5 * SR) : 4 * SR] = 0
    assert sounding(x, [(SR, 2 * SR), (3 * SR, 6 * SR)], SR // 2) == []
    late = (int(4.5 * SR), 5 * SR)  # what is left of the faint sound
    assert sounding(x, [], SR // 2) == [(SR, 2 * SR), late]
    assert sounding(x, [], SR // 10) == [(SR, 2 * SR), late, (7 * SR, int(7.2 * SR))]


def test_halve_at_the_longest_silence() -> None:
    """A piece is cut at its widest gap between ranges (of equal ones, the most even
    cut), or balanced at the join nearest the middle; a piece of one range at the
    quietest point of its middle third."""
    chunks = [(0, 10), (12, 20), (30, 40), (41, 50)]
    assert halve(chunks, lambda lo, hi: lo) == ([(0, 10), (12, 20)], [(30, 40), (41, 50)])
    even = [(0, 10), (15, 20), (25, 60)]
    assert halve(even, lambda lo, hi: lo) == ([(0, 10), (15, 20)], [(25, 60)])
    # Balanced (the second cut): the join nearest the middle of the speech, whatever the
    # gap; the widest gap (10 samples) would leave 10 of the 29 on one side.
    lopsided = [(0, 10), (20, 21), (21, 30), (31, 40)]
    assert halve(lopsided, lambda lo, hi: lo) == ([(0, 10)], [(20, 21), (21, 30), (31, 40)])
    assert halve(lopsided, lambda lo, hi: lo, balanced=True) == (
        [(0, 10), (20, 21)],
        [(21, 30), (31, 40)],
    )
    x = np.ones(30 * SR, np.float32)
    x[17 * SR : 17 * SR + 640] = 0.0
    left, right = halve([(0, 30 * SR)], functools.partial(quietest_point, x))
    assert left[0][0] == 0 and right[-1][1] == 30 * SR and abs(left[-1][1] - 17 * SR) < 700
    assert left[-1][1] == right[0][0]


# --------------------------------------------------------------------------- real
CLIPS = ["ast_en_vm-savemessage.wav", "ast_en_agent-incorrect.wav", "mfa_phrase_longstop.flac"]


@pytest.fixture(scope="module")
def model(model_path: Path) -> Any:
    from faster_whisper import WhisperModel

    return WhisperModel(str(model_path), compute_type="int8", cpu_threads=1)


@pytest.fixture(scope="module")
def piece(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A piece of three real clips with 6 s pauses between them, as split_recording makes
    it: one shared PCM file, Silero's speech ranges, widened by 0.5 s as chunks."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    gap = np.zeros(6 * SR, np.float32)
    x = np.concatenate([p for name in CLIPS for p in (decode(str(SAMPLES / name)), gap)])
    vad = VadOptions(min_silence_duration_ms=300, speech_pad_ms=150)
    speech = [(c["start"], c["end"]) for c in get_speech_timestamps(x, vad)]
    pcm = tmp_path_factory.mktemp("piece") / "p.pcm"
    np.round(x * 32768.0).clip(-32768, 32767).astype(np.int16).tofile(pcm)
    chunks = widen(speech, SR // 2, len(x))
    return {"pcm": str(pcm), "chunks": chunks, "index": 0, "language": "en", "speech": speech}


def _clip(piece: dict[str, Any], k: int) -> tuple[float, float]:
    """Where the k-th clip is in file time (s): its chunks lie between the pauses."""
    starts = [0.0]
    for name in CLIPS:
        starts.append(starts[-1] + len(decode(str(SAMPLES / name))) / SR + 6.0)
    return starts[k], starts[k + 1] - 6.0


def _squeezed(piece: dict[str, Any], lo: float, hi: float) -> tuple[float, float]:
    """File times -> the piece's squeezed time (its chunks back to back)."""

    def at(t: float) -> float:
        return sum(max(0.0, min(e / SR, t) - s / SR) for s, e in piece["chunks"])

    return at(lo), at(hi)


OPTS = {"beam_size": 5, "temperature": [0.0, 0.2, 0.4]}


def _middle_skipped(real: Any, middle: tuple[float, float]) -> Any:
    """try_windows as it is, except that the piece's first decode loses the words timed
    in ``middle`` (squeezed time): the decoder's skip, made on purpose."""
    calls = []

    def skipping(model: Any, audios: Any, options: Any, batch: int = 0, **kw: Any) -> Any:
        out = real(model, audios, options, batch, **kw)
        calls.append(len(audios))
        if len(calls) == 1:
            for segs in out:
                for s in segs or []:
                    s["words"] = [w for w in s["words"] if not middle[0] <= w["start"] < middle[1]]
        return out

    return skipping


def test_skipped_middle_is_recovered_in_place(
    model: Any, piece: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The piece's middle utterance comes back without words: the guard finds its VAD
    speech, transcribes it alone, and its words land in time order inside it, segment
    ids from 1, the json listing the span and the word count.

    CPU-independent: the skip is made on purpose (the real model does not skip it on
    every CPU), and the second try is a clear, lone prompt ("login incorrect")."""
    lo, hi = _clip(piece, 1)
    skip = _middle_skipped(window.try_windows, _squeezed(piece, lo - 0.5, hi + 0.5))
    monkeypatch.setattr(window, "try_windows", skip)
    opts = OPTS | {"word_timestamps": True}
    sizes, (r,) = encoded(model, lambda: engine.transcribe_pieces(model, [piece], opts))
    # The piece in a whole window, the guard's stretch in a short one (window.SHORT_WINDOW).
    assert sizes == [3000, 1500]
    assert len(r["recovered"]) == 1 and r["unrecognised"] == []
    span = r["recovered"][0]["span_s"]
    assert lo - 0.5 <= span[0] < span[1] <= hi + 0.5 and r["recovered"][0]["words"] >= 3
    words = [w for s in r["segments"] for w in s["words"]]
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    assert [s["id"] for s in r["segments"]] == list(range(1, len(r["segments"]) + 1))
    inside = speech_text("".join(w["word"] for w in words if lo - 0.5 <= w["start"] < hi + 0.5))
    assert "login incorrect" in inside
    text = speech_text("".join(s["text"] for s in r["segments"]))
    assert text.index("save") < text.index("login") < text.index("long stop")


def test_guard_without_word_timestamps_keeps_words_out(
    model: Any, piece: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard runs on word timestamps even when none were asked for, and the
    transcript then has none; the recovered text is there all the same."""
    lo, hi = _clip(piece, 1)
    skip = _middle_skipped(window.try_windows, _squeezed(piece, lo - 0.5, hi + 0.5))
    monkeypatch.setattr(window, "try_windows", skip)
    (r,) = engine.transcribe_pieces(model, [piece], OPTS)
    assert r["recovered"] and all("words" not in s for s in r["segments"])
    assert "login incorrect" in speech_text("".join(s["text"] for s in r["segments"]))


def test_noise_the_vad_took_for_speech_is_listed_not_invented(model: Any, tmp_path: Path) -> None:
    """Speech by VAD that gives no words a second time either (here: near-silence in a
    piece, claimed as speech) adds nothing and is listed as unrecognised.

    CPU-independent: digital silence is the clear case (tiny.en's decode of it is
    skipped as no-speech or fails the thresholds; it never yields words inside it)."""
    a = decode(str(SAMPLES / "ast_en_agent-incorrect.wav"))
    x = np.concatenate([a, np.zeros(4 * SR, np.float32)])
    pcm = tmp_path / "p.pcm"
    np.round(x * 32768.0).clip(-32768, 32767).astype(np.int16).tofile(pcm)
    n = len(a)
    p = {
        "pcm": str(pcm),
        "chunks": [(0, len(x))],
        "index": 0,
        "language": "en",
        "speech": [(0, n), (n + SR, n + 3 * SR)],  # 2 s of "speech" in the silence
    }
    (r,) = engine.transcribe_pieces(model, [p], OPTS)
    assert r["recovered"] == []
    assert len(r["unrecognised"]) == 1 and r["unrecognised"][0][0] >= n / SR
    assert "login incorrect" in speech_text("".join(s["text"] for s in r["segments"]))


WHISPERED = "mfa_whisper.flac"  # "this is all very whispered"


def _split_json(
    x: np.ndarray, tmp_path: Path, model_path: Path, env: dict[str, str], *more: str
) -> dict[str, Any]:
    """``x`` as a WAV through the CLI (real workers), split from 10 s on: its json."""
    import json

    path = write_wav(tmp_path / "rec.wav", x)
    args = ["transcribe", str(path), "--model", str(model_path), "-f", "json", "-q", *more]
    r = run([*args, "-o", str(tmp_path / "out"), "--split-above", "10"], tmp_path, env)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(next((tmp_path / "out").rglob("rec.json")).read_text()))


def _quiet_recording() -> tuple[np.ndarray, tuple[float, float]]:
    """A clip, 3 s of digital silence, a whispered sentence (that Silero VAD does not
    hear after the silence), 3 s, a clip, 3 s; and where the whispered clip is (s)."""
    gap = np.zeros(3 * SR, np.float32)
    names = ["ast_en_vm-savemessage.wav", WHISPERED, "ast_en_agent-incorrect.wav"]
    clips = [decode(str(SAMPLES / n)) for n in names]
    start = (len(clips[0]) + len(gap)) / SR
    return np.concatenate([p for c in clips for p in (c, gap)]), (
        start,
        start + len(clips[1]) / SR,
    )


def test_quiet_speech_is_found_outside_the_pieces_and_noise_is_not() -> None:
    """Silero VAD at its threshold for speech leaves the whispered sentence out of every
    piece; at QUIET_THRESHOLD it is found there, one stretch, and nothing else is.
    With stationary noise as loud as -40 dBFS over the silences, the stretch is the
    whole sound between the pieces around it (one window), and the noise adds none.

    CPU-independent: the whispered clip peaks at about 0.25 there and the noise at
    about 0.07 (measured), far from the threshold of 0.15 either way."""
    from concurrent.futures import ThreadPoolExecutor

    from faster_whisper.vad import VadOptions, get_speech_timestamps

    x, (lo, hi) = _quiet_recording()
    vad = VadOptions(min_silence_duration_ms=300, speech_pad_ms=150)
    speech = [(c["start"], c["end"]) for c in get_speech_timestamps(x, vad)]
    kept = widen(speech, SR // 2, len(x))
    assert not any(s < hi * SR and e > lo * SR for s, e in kept)  # no piece holds it
    rng = np.random.default_rng(1)
    noise = np.fft.rfft(rng.standard_normal(len(x)))
    noise = np.fft.irfft(noise / np.sqrt(np.maximum(np.arange(len(noise)), 1)), len(x))
    noise *= 10 ** (-40 / 20) / np.sqrt(np.mean(noise**2))  # pink, -40 dBFS
    noisy = np.where(np.abs(x) > 0, x, noise).astype(np.float32)
    gap = next((a[1], b[0]) for a, b in zip(kept, kept[1:], strict=False) if b[0] > lo * SR)
    with ThreadPoolExecutor(2) as ex:
        (span,) = engine._quiet_speech(x, kept, ex)
        assert lo * SR <= span[0] < span[1] <= hi * SR
        block = SR // 10  # to the block
        whole = (gap[0], gap[0] + (gap[1] - gap[0]) // block * block)
        assert engine._quiet_speech(noisy, kept, ex) == [whole]
        assert engine._quiet_speech(noise.astype(np.float32), [], ex) == []


@pytest.mark.slow
def test_quiet_speech_is_transcribed_in_its_place(
    tmp_path: Path, model_path: Path, clean_env: dict[str, str]
) -> None:
    """End to end (the CLI, a split recording, real workers): the whispered sentence
    that no piece holds comes back in its place in time, between the clips' words,
    with segment ids renumbered, and the json says where (``split.quiet``). Unsplit,
    transcribe() has it too: this is what the split recording used to lose."""
    x, (lo, hi) = _quiet_recording()
    doc = _split_json(x, tmp_path, model_path, clean_env)
    (quiet,) = doc["split"]["quiet"]
    assert lo <= quiet["span_s"][0] < quiet["span_s"][1] <= hi and quiet["words"] >= 3
    segs = doc["segments"]
    assert [s["id"] for s in segs] == list(range(1, len(segs) + 1))
    assert all(a["end"] <= b["start"] + 0.05 for a, b in zip(segs, segs[1:], strict=False))
    inside = " ".join(s["text"] for s in segs if lo - 0.5 <= s["start"] and s["end"] <= hi)
    assert "this is all very" in speech_text(inside)
    text = speech_text(" ".join(s["text"] for s in segs))
    assert text.index("save") < text.index("this is all very") < text.index("login")


@pytest.mark.slow
def test_recording_of_quiet_speech_only_is_not_empty(
    tmp_path: Path, model_path: Path, clean_env: dict[str, str]
) -> None:
    """A long recording in which Silero VAD hears no speech at its threshold, only quiet
    speech (mains hum, 3 s of silence, the whispered sentence, 3 s), is transcribed from
    that, not written empty as a recording of silence is.

    CPU-independent: Silero's probability there stays under 0.5 and over 0.15 by a
    margin (measured: no speech, one quiet stretch, the whispered one)."""
    gap = np.zeros(3 * SR, np.float32)
    hum = _sounds(np.random.default_rng(3))[2]
    x = np.concatenate([hum, gap, decode(str(SAMPLES / WHISPERED)), gap])
    at = (len(hum) + len(gap)) / SR
    doc = _split_json(x, tmp_path, model_path, clean_env)
    assert doc["split"]["pieces"] == 1
    # tiny.en's words for it move with its window ("this is all very whispered" alone,
    # "this is there all right whisper" in a piece): that it is there is the point.
    text = speech_text(doc["text"])
    assert "whisper" in text and len(text.split()) >= 3
    assert all(at - 0.5 <= s["start"] < s["end"] <= len(x) / SR for s in doc["segments"])


def _sounds(rng: np.random.Generator) -> list[np.ndarray]:
    """Made-up sounds that are not speech: a breath (noise around 1.5 kHz, rising and
    falling), clicks, mains hum, and a tune of decaying sine notes."""
    n = int(0.7 * SR)
    f = np.fft.rfft(rng.standard_normal(n))
    f *= np.exp(-(((np.fft.rfftfreq(n, 1 / SR) - 1500) / 1200) ** 2))
    breath = np.fft.irfft(f, n) * np.sin(np.linspace(0, np.pi, n)) ** 2
    breath *= 10 ** (-30 / 20) / np.abs(breath).max()
    clicks = np.zeros(2 * SR)
    for t in rng.uniform(0, 2 * SR - 100, 12).astype(int):
        clicks[t : t + 80] = rng.standard_normal(80) * 0.05 * np.exp(-np.arange(80) / 15)
    t = np.arange(3 * SR) / SR
    hum = 0.01 * np.sin(2 * np.pi * 60 * t) + 0.004 * np.sin(2 * np.pi * 180 * t)
    note = t[: 3 * SR // 8]
    tune = np.concatenate(
        [0.03 * np.sin(2 * np.pi * f * note) * np.exp(-note * 3) for f in (262, 330, 392, 294)]
    )
    return [x.astype(np.float32) for x in (breath, clicks, hum, tune)]


@pytest.mark.slow
def test_sounds_that_are_not_speech_give_no_words(
    tmp_path: Path, model_path: Path, clean_env: dict[str, str]
) -> None:
    """End to end, split: speech clips with made-up breaths, clicks, hum and a tune in
    the silences between them (2 s of silence either side). Quiet speech may be looked
    for there, but no word lands in any of those sounds.

    CPU-independent: measured, Silero hears only the tune at its low threshold, and
    Whisper's decode of it fails the thresholds by a wide margin. Without them it is
    the classic " You" (word probability 0.006), as on each of these sounds alone."""
    rng = np.random.default_rng(3)
    gap = np.zeros(2 * SR, np.float32)
    clips = [decode(str(SAMPLES / n)) for n in CLIPS]
    parts: list[np.ndarray] = []
    noise: list[tuple[float, float]] = []
    for clip, sound in zip(clips * 2, _sounds(rng) * 2, strict=False):
        at = sum(len(p) for p in parts) + len(clip) + len(gap)
        noise.append((at / SR, (at + len(sound)) / SR))
        parts += [clip, gap, sound, gap]
    x = np.concatenate(parts)
    doc = _split_json(x, tmp_path, model_path, clean_env, "--word-timestamps")
    assert doc["split"]["pieces"] >= 2
    words = [w for s in doc["segments"] for w in s["words"]]
    assert speech_text(" ".join(w["word"] for w in words))  # the clips' words are there
    for lo, hi in noise:
        assert not [w for w in words if lo <= (w["start"] + w["end"]) / 2 <= hi], (lo, hi)


def test_quiet_sound_whisper_hears_nothing_in_is_left_out(model: Any, tmp_path: Path) -> None:
    """Quiet sound given to the guard that gives no words (here: faint noise) adds
    nothing and is listed nowhere: it was never speech to the VAD, so it is not
    ``unrecognised`` either.

    CPU-independent: tiny.en's decode of 2 s of -60 dBFS noise alone is skipped as
    no-speech or fails the thresholds; it never yields words inside it."""
    a = decode(str(SAMPLES / "ast_en_agent-incorrect.wav"))
    noise = np.random.default_rng(2).standard_normal(4 * SR) * 10 ** (-60 / 20)
    x = np.concatenate([a, noise.astype(np.float32)])
    pcm = tmp_path / "p.pcm"
    np.round(x * 32768.0).clip(-32768, 32767).astype(np.int16).tofile(pcm)
    n = len(a)
    p = {
        "pcm": str(pcm),
        "chunks": [(0, n)],
        "index": 0,
        "language": "en",
        "speech": [(0, n)],
        "quiet": [(n + SR, n + 3 * SR)],
    }
    (r,) = engine.transcribe_pieces(model, [p], OPTS)
    assert r["quiet"] == [] and r["unrecognised"] == [] and r["recovered"] == []
    assert all(s["end"] <= n / SR + 0.05 for s in r["segments"])
    assert "login incorrect" in speech_text("".join(s["text"] for s in r["segments"]))


def test_failing_piece_is_halved_before_the_schedule(
    model: Any, piece: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A piece that fails at the first temperature is cut at its longest silence and each
    half decoded at the first temperature, one encoder pass each, with no call to
    transcribe(); the halves' words are what each half gives alone, in file time.

    CPU-independent: the failure is made on purpose (whether a piece passes the real
    thresholds is a borderline decision that differs between CPUs); what is asserted is
    the path taken and equality with each half decoded alone on this machine."""
    full = sum(e - s for s, e in piece["chunks"])
    left, right = halve(piece["chunks"], lambda lo, hi: lo)
    # Equal pauses: the most even cut, before the last clip (one speech range).
    assert left == piece["chunks"][:-1] and right == piece["chunks"][-1:]
    pcm = np.memmap(piece["pcm"], dtype=np.int16, mode="r")
    o = OPTS | {"language": "en", "word_timestamps": True}
    real = window.try_windows
    passes, alone = 0, []
    for chunks in (piece["chunks"], left, right):  # each alone, on this machine
        n, segs = encodes(model, lambda c=chunks: real(model, [engine._read(pcm, c)], o)[0])
        passes += n
        alone += engine._to_file_time(segs or [], chunks) if chunks != piece["chunks"] else []

    def failing_whole(model: Any, audios: Any, options: Any, batch: int = 0, **kw: Any) -> Any:
        out = real(model, audios, options, batch, **kw)
        return [None if len(a) == full else s for a, s in zip(audios, out, strict=True)]

    monkeypatch.setattr(window, "try_windows", failing_whole)
    calls: list[Any] = []
    monkeypatch.setattr(model, "transcribe", lambda *a, **k: calls.append(k) or ([], None))
    n, (r,) = encodes(
        model, lambda: engine.transcribe_pieces(model, [piece], OPTS | {"word_timestamps": True})
    )
    assert r["halved"] and calls == [] and r["recovered"] == []
    assert n == passes  # the whole piece, then each half: no pass more than alone
    assert [(s["start"], s["text"]) for s in r["segments"]] == [
        (s["start"], s["text"]) for s in alone
    ]
    assert "long stop" in speech_text(r["segments"][-1]["text"])


def test_half_that_still_fails_takes_the_schedule(
    model: Any, piece: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a half that fails again goes through transcribe()'s temperature schedule, from
    its second temperature (the first is the decode that just failed), each decode
    capped at 10 tokens a second of its audio; the other half keeps its
    first-temperature decode."""
    full = sum(e - s for s, e in piece["chunks"])
    left, right = halve(piece["chunks"], lambda lo, hi: lo)
    n_right = sum(e - s for s, e in right)
    real = window.try_windows

    def failing(model: Any, audios: Any, options: Any, batch: int = 0, **kw: Any) -> Any:
        out = real(model, audios, options, batch, **kw)
        return [None if len(a) in (full, n_right) else s for a, s in zip(audios, out, strict=True)]

    monkeypatch.setattr(window, "try_windows", failing)
    calls = []
    real_transcribe = model.transcribe

    def spy(audio: Any, **k: Any) -> Any:
        calls.append((len(audio), k["temperature"], k["max_new_tokens"]))
        return real_transcribe(audio, **k)

    monkeypatch.setattr(model, "transcribe", spy)
    (r,) = engine.transcribe_pieces(model, [piece], OPTS)
    cap = min(220, int(engine.TOKENS_PER_SECOND * n_right / SR) + 20)  # no loop runs to 448
    assert r["halved"] and calls == [(n_right, OPTS["temperature"][1:], cap)]
    text = speech_text("".join(s["text"] for s in r["segments"]))
    assert text.index("save") < text.index("long stop")


def test_half_that_fails_again_is_cut_at_its_middle(
    model: Any, piece: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second cut, of a half that fails again, is at the join nearest the middle of
    its speech (not its longest silence, which can leave nearly all of it on one side):
    the windows decoded after it are exactly halve(..., balanced=True)'s parts."""
    full = sum(e - s for s, e in piece["chunks"])
    left, right = halve(piece["chunks"], lambda lo, hi: lo)
    n_left = sum(e - s for s, e in left)
    parts = halve(left, lambda lo, hi: lo, balanced=True)
    assert parts != halve(left, lambda lo, hi: lo)  # the test tells the two apart
    real = window.try_windows
    seen: list[list[int]] = []

    def failing(model: Any, audios: Any, options: Any, batch: int = 0, **kw: Any) -> Any:
        seen.append([len(a) for a in audios])
        out = real(model, audios, options, batch, **kw)
        return [None if len(a) in (full, n_left) else s for a, s in zip(audios, out, strict=True)]

    monkeypatch.setattr(window, "try_windows", failing)
    (r,) = engine.transcribe_pieces(model, [piece], OPTS)
    n_right = sum(e - s for s, e in right)
    assert seen[:3] == [[full], [n_left, n_right], [sum(e - s for s, e in p) for p in parts]]
    assert r["halved"] and r["segments"]


def test_piece_that_loops_is_cut_twice_at_once(
    model: Any, piece: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A piece whose first decode ran to its token limit (window.Looped: the decoder
    looped) is cut at its longest silence and each half with more than one speech range
    cut again at the join nearest its middle, before anything is decoded: the windows
    decoded next are those parts, and no half is decoded on its own.

    CPU-independent: the loop is made on purpose; what is asserted is the path."""
    full = sum(e - s for s, e in piece["chunks"])
    left, right = halve(piece["chunks"], lambda lo, hi: lo)
    parts = [
        q for h in (left, right) for q in (halve(h, lambda lo, hi: lo, True) if len(h) > 1 else [h])
    ]
    assert len(parts) == 3  # the left half cut again, the right one (one range) not
    real = window.try_windows
    seen: list[list[int]] = []

    def looping(model: Any, audios: Any, options: Any, batch: int = 0, **kw: Any) -> Any:
        seen.append([len(a) for a in audios])
        out = real(model, audios, options, batch, **kw)
        return [window.Looped() if len(a) == full else s for a, s in zip(audios, out, strict=True)]

    monkeypatch.setattr(window, "try_windows", looping)
    (r,) = engine.transcribe_pieces(model, [piece], OPTS | {"word_timestamps": True})
    assert seen[:2] == [[full], [sum(e - s for s, e in p) for p in parts]]
    text = speech_text("".join(s["text"] for s in r["segments"]))
    assert r["halved"] and text.index("save") < text.index("login") < text.index("long stop")


def _repetitive_whole(
    real: Any, full: int, threshold: float, seen: list[list[int]], after: float = float("inf")
) -> Any:
    """try_windows as it is, except that the piece's first decode fails only the
    compression ratio (its segments kept, as a real repetitive menu's are), and the text
    of its segments from ``after`` seconds on is said ten times over."""

    def failing(model: Any, audios: Any, options: Any, batch: int = 0, **kw: Any) -> Any:
        seen.append([len(a) for a in audios])
        out = real(model, audios, options, batch, **kw)
        for a, segs in zip(audios, out, strict=True):
            for s in segs if len(a) == full and segs else []:
                if s["start"] >= after:
                    s["text"] = s["text"] * 10
        return [
            window.Repetitive(s, threshold) if len(a) == full and s else s
            for a, s in zip(audios, out, strict=True)
        ]

    return failing


def test_piece_failing_only_the_ratio_is_judged_in_halves_without_decoding_them(
    model: Any, piece: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A piece whose decode fails only the compression ratio is cut at its longest silence
    as any failing piece, but each half is judged first by the words the decode timed in
    it: both halves' text passes, so neither is decoded again (one encoder pass in all),
    and the piece keeps the decode's own words, in file time.

    CPU-independent: the failure is made on purpose; what is asserted is the path."""
    full = sum(e - s for s, e in piece["chunks"])
    o = OPTS | {"word_timestamps": True}
    seen: list[list[int]] = []
    monkeypatch.setattr(
        window, "try_windows", _repetitive_whole(window.try_windows, full, 2.4, seen)
    )
    n, (r,) = encodes(model, lambda: engine.transcribe_pieces(model, [piece], o))
    assert r["halved"] and r["recovered"] == [] and seen == [[full]] and n == 1
    pcm = np.memmap(piece["pcm"], dtype=np.int16, mode="r")
    (whole,) = window.try_windows(
        model, [engine._read(pcm, piece["chunks"])], o | {"language": "en"}
    )
    assert whole
    alone = engine._to_file_time(whole, piece["chunks"])
    assert [(s["start"], s["text"]) for s in r["segments"]] == [
        (s["start"], s["text"]) for s in alone
    ]
    assert "long stop" in speech_text(r["segments"][-1]["text"])


def test_half_whose_text_fails_is_the_only_one_decoded_again(
    model: Any, piece: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of the two halves of a piece that failed only the compression ratio, the one whose
    own text is still over the threshold (here: its words said ten times over, on
    purpose; one speech range, so no smaller part to judge) is decoded again on its own,
    and its words are that decode's; the other keeps the first decode's words."""
    full = sum(e - s for s, e in piece["chunks"])
    left, right = halve(piece["chunks"], lambda lo, hi: lo)
    assert len(right) == 1
    cut = sum(e - s for s, e in left) / SR
    seen: list[list[int]] = []
    failing = _repetitive_whole(window.try_windows, full, 2.4, seen, after=cut)
    monkeypatch.setattr(window, "try_windows", failing)
    (r,) = engine.transcribe_pieces(model, [piece], OPTS | {"word_timestamps": True})
    assert seen[:2] == [[full], [sum(e - s for s, e in right)]]
    text = speech_text("".join(s["text"] for s in r["segments"]))
    assert r["halved"] and text.count("long stop") == 1 and "login incorrect" in text


def test_part_that_fails_only_the_ratio_is_judged_in_smaller_parts_before_sampling() -> None:
    """After its halvings, a part whose decode still fails only the compression ratio is
    judged on its own text in smaller parts (cut at the join nearest the middle of its
    speech, no decoding) before the schedule: a prompt said three times passes as one
    and two; a part of one speech range that still fails is left for the schedule."""
    from faster_whisper.transcribe import get_compression_ratio

    from epyc_whisper.segments import segment, word

    said = " Letters of your party's first or last name."
    chunks = [(0, 3 * SR), (4 * SR, 7 * SR), (8 * SR, 11 * SR)]  # squeezed: 0-3, 3-6, 6-9 s
    segs = [
        segment(s + 0.2, s + 2.8, said, words=[word(s + 0.2, s + 2.8, said, 0.9)])
        for s in (0.0, 3.0, 6.0)
    ]
    three, two = (get_compression_ratio((said * n).strip()) for n in (3, 2))
    assert three > two  # the test's threshold lies between them
    text = window.Repetitive(segs, (three + two) / 2)
    assert not text.passes()
    parts = engine._judged(chunks, text, lambda lo, hi: lo)
    assert [c for c, _ in parts] == [chunks[:1], chunks[1:]]
    assert [[s["start"] for s in got or []] for _, got in parts] == [[0.2], [0.2, 3.2]]
    one = window.Repetitive(segs[:1], 0.5)  # one range, over the threshold: the schedule
    assert engine._judged(chunks[:1], one, lambda lo, hi: lo) == [(chunks[:1], None)]
