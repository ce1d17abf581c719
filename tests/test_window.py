"""One window encoded once (window.py), against faster-whisper's own transcribe()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from epyc_whisper import packing, window
from epyc_whisper.audio import decode
from epyc_whisper.window import Looped, Repetitive, transcribe_window, try_window, try_windows
from tests.conftest import SAMPLES, speech_text

#: Packed in this order, tiny.en stops after the fourth clip ("... enter filename"
#: then an opening timestamp): the fifth clip needs a second pass, from the last word.
EARLY_STOP = [
    "mfa_phrase_poofy.flac",
    "mfa_phrase_thenorm.flac",
    "ast_en_digits__19.wav",
    "ast_en_dictate__enter_filename.wav",
    "ast_en_agent-incorrect.wav",
]
OPTS = {"language": "en", "word_timestamps": True, "condition_on_previous_text": False}


@pytest.fixture(scope="module")
def model(model_path: Path) -> Any:
    from faster_whisper import WhisperModel

    return WhisperModel(str(model_path), compute_type="int8", cpu_threads=1)


def packed(names: list[str]) -> Any:
    auds = {n: decode(str(SAMPLES / n)) for n in names}
    (win,) = packing.pack([(n, len(a) / 16000) for n, a in auds.items()])
    return packing.samples(win, auds.__getitem__)


def encoded(model: Any, fn: Any) -> tuple[list[int], Any]:
    """The frames the encoder was given in each pass ``fn()`` made, and what it returned."""
    real, sizes = model.encode, []

    def sized(features: Any) -> Any:
        sizes.append(features.shape[-1])
        return real(features)

    model.encode = sized
    try:
        out = fn()
    finally:
        del model.encode
    return sizes, out


def encodes(model: Any, fn: Any) -> tuple[int, Any]:
    """How many encoder passes ``fn()`` made, and what it returned."""
    sizes, out = encoded(model, fn)
    return len(sizes), out


class Generating:
    """CTranslate2's model (which cannot be patched), each generate call passed on and
    then shown to ``seen(prompts, options, results)``."""

    def __init__(self, inner: Any, seen: Any) -> None:
        self.inner, self.seen = inner, seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, features: Any, prompts: list[Any], **kw: Any) -> Any:
        out = self.inner.generate(features, prompts, **kw)
        self.seen(prompts, kw, out)
        return out


def test_early_stop_of_a_piece_is_carried_on_in_the_same_window(
    model: Any, monkeypatch: Any
) -> None:
    """For the pieces of a split recording (``share_rests``), a decode that stops early is
    carried on over the same encoder output, its own last segment and the timestamp it
    stopped at given as the prefix (not its whole text): one encoder pass, not two, and
    the words of every clip, in order, inside the audio. A continuation that runs to
    its own token limit, or whose text the decoder doubts (its mean log probability
    under log_prob_threshold), is not taken: the rest gets its pass, as without."""
    from faster_whisper.tokenizer import Tokenizer

    buf = packed(EARLY_STOP)
    prompts: list[list[int]] = []
    made: list[list[int]] = []

    def seen(p: Any, kw: dict[str, Any], out: Any) -> None:
        prompts.append(list(p[0]))
        made.append(list(out[0].sequences_ids[0]))

    monkeypatch.setattr(model, "model", Generating(model.model, seen))
    n, (segs,) = encodes(model, lambda: try_windows(model, [buf], OPTS, share_rests=True))
    assert n == 1 and len(prompts) == 2
    ts = Tokenizer(model.hf_tokenizer, False, task="transcribe", language="en").timestamp_begin
    first = made[0]
    assert first[-1] >= ts and first[-2] >= ts  # it stopped at a new segment's start
    prefix = prompts[1][len(prompts[0]) :]
    assert prefix[0] >= ts and prefix == first[len(first) - len(prefix) :]
    assert len(prefix) < len(first)  # its last segment, not its whole text
    text = speech_text("".join(s["text"] for s in segs))
    assert "file name" in text and "login incorrect" in text
    words = [w for s in segs for w in s["words"]]
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and words[-1]["end"] <= len(buf) / 16000 + 0.02
    assert [s["id"] for s in segs] == list(range(1, len(segs) + 1))
    # A continuation held to no more tokens than it already has: not taken.
    monkeypatch.setattr(window, "MOST_TOKENS_PER_SECOND", 0)
    monkeypatch.setattr(window, "MOST_TOKENS_EXTRA", 1)
    single = OPTS | {"temperature": 0.0}
    m, (rest,) = encodes(model, lambda: try_windows(model, [buf], single, share_rests=True))
    assert m == 2 and rest
    monkeypatch.undo()
    # Doubted: every continuation is under a threshold of 0 (a single temperature, so
    # the first decode itself is taken whatever its log probability).
    doubted = OPTS | {"temperature": 0.0, "log_prob_threshold": 0.0}
    m, (rest,) = encodes(model, lambda: try_windows(model, [buf], doubted, share_rests=True))
    assert m == 2 and rest


def test_early_stop_is_resumed_and_nothing_is_lost(model: Any) -> None:
    """The decoder stops before the last clip: one more pass, from the last word, picks
    it up. The words are those of transcribe(), in order, inside the audio."""
    buf = packed(EARLY_STOP)
    n, segs = encodes(model, lambda: try_window(model, buf, OPTS))
    m, ordinary = encodes(model, lambda: list(model.transcribe(buf, **OPTS)[0]))
    assert n == 2 and m >= n
    text = speech_text("".join(s["text"] for s in segs))
    assert "file name" in text and "login incorrect" in text
    assert text == speech_text("".join(s.text for s in ordinary))
    starts = [s["start"] for s in segs]
    assert starts == sorted(starts) and segs[-1]["end"] <= len(buf) / 16000 + 0.02
    assert [s["id"] for s in segs] == list(range(1, len(segs) + 1))
    for s in segs:
        assert s["words"] and s["start"] - 0.02 <= s["words"][0]["start"]
        assert s["words"][-1]["end"] <= s["end"] + 0.02


def test_finished_window_is_encoded_once(model: Any) -> None:
    """Speech that ends well inside the window: one encoder pass; transcribe() takes at
    least as many for the same words."""
    buf = packed(["ast_en_vm-tocancel.wav", "ast_en_agent-incorrect.wav"])
    n, segs = encodes(model, lambda: try_window(model, buf, OPTS))
    m, ordinary = encodes(model, lambda: list(model.transcribe(buf, **OPTS)[0]))
    assert n == 1 and m >= 1
    text = speech_text("".join(s["text"] for s in segs))
    assert text == speech_text("".join(s.text for s in ordinary))
    assert "login incorrect" in text and "cancel" in text


def test_windows_decoded_as_one_batch_give_what_one_at_a_time_gives(model: Any) -> None:
    """Three windows in one batch give exactly what each gives alone, with the same
    encoder passes: the first decode covers all three, and only windows that stopped
    early are decoded again.

    CPU-independent: the noise window may pass or fail the fallback thresholds depending
    on the CPU's kernels (it did differ between Zen 4 and Zen 5), so what is asserted is
    the equality of the batched and the one-at-a-time result on this machine, and the
    batch sizes are derived from the passes each window took alone, not pinned."""
    noise = (np.random.RandomState(1).randn(16000 * 5) * 0.01).astype(np.float32)
    bufs = [packed(EARLY_STOP), packed(["ast_en_vm-tocancel.wav", "mfa_phrase_poofy.flac"]), noise]
    passes, alone = zip(
        *(encodes(model, lambda b=b: try_window(model, b, OPTS)) for b in bufs), strict=True
    )
    batches: list[int] = []

    # Pass k decodes every window that needs a k-th pass (a window stopped early).
    per_pass = [sum(p > k for p in passes) for k in range(max(passes))]
    real = model.model
    model.model = Generating(real, lambda prompts, kw, out: batches.append(len(prompts)))
    try:
        n, together = encodes(model, lambda: try_windows(model, bufs, OPTS))
        assert batches == per_pass and batches[0] == 3 and n == sum(passes)
        batches.clear()
        in_twos = try_windows(model, bufs, OPTS, batch=2)
        assert batches == [b for k in per_pass for b in ([2, k - 2] if k > 2 else [k])]
    finally:
        model.model = real
    assert together == list(alone) == in_twos and alone[0] and alone[1]


def test_windows_are_encoded_side_by_side_on_the_models_workers(
    model: Any, model_path: Path
) -> None:
    """With two CTranslate2 workers, one thread's windows are encoded two at a time (both
    cores help when the other feeder thread has nothing to do), and they give exactly
    what a model with one worker gives, one window after another."""
    import threading
    import time

    from faster_whisper import WhisperModel

    two = WhisperModel(str(model_path), compute_type="int8", cpu_threads=1, num_workers=2)
    bufs = [
        packed(EARLY_STOP),
        packed(["ast_en_vm-tocancel.wav"]),
        packed(["mfa_phrase_poofy.flac"]),
    ]
    real, calls = two.encode, []

    def timed(features: Any) -> Any:
        t0 = time.perf_counter()
        out = real(features)
        calls.append((threading.get_ident(), t0, time.perf_counter()))
        return out

    two.encode = timed
    got = try_windows(two, bufs, OPTS)
    assert len({c[0] for c in calls}) >= 2  # (a second pass of one window: this thread)
    firsts = sorted(calls, key=lambda c: c[1])[:2]
    assert firsts[1][1] < firsts[0][2]  # the second began before the first ended
    assert got == try_windows(model, bufs, OPTS) and all(got)


def test_short_windows_are_encoded_over_less_than_30_seconds() -> None:
    """Whisper's 3000 frames unless short; a short window 15 s, or twice its audio in
    whole seconds, never over 3000."""
    assert window.encoded_frames(200) == window.encoded_frames(2999) == 3000
    assert window.encoded_frames(200, short=True) == window.encoded_frames(750, True) == 1500
    assert window.encoded_frames(1120, short=True) == 2300  # 11.2 s: 22.4 s, rounded up
    assert window.encoded_frames(1600, short=True) == 3000


def test_short_window_gives_the_words_of_a_whole_one(model: Any) -> None:
    """A lone prompt decoded in a short window (the guard's): its encoder is given 15 s,
    not 30, and its words from the first to the last are there, as in a 30 s window.

    CPU-independent: a clear telephone prompt, its phrases compared as plain words."""
    buf = decode(str(SAMPLES / "ast_en_agent-incorrect.wav"))
    sizes, ((short,), (whole,)) = encoded(
        model,
        lambda: (try_windows(model, [buf], OPTS, short=True), try_windows(model, [buf], OPTS)),
    )
    assert sizes == [1500, 3000]
    assert short and whole and short[0]["words"]
    for segs in (short, whole):  # its start and its end, in both: no word left out
        text = speech_text("".join(s["text"] for s in segs))
        assert "login incorrect" in text and "agent number" in text and "pound key" in text
    assert short[-1]["words"][-1]["end"] <= len(buf) / 16000 + 0.02


def test_failed_thresholds_go_the_ordinary_way(model: Any) -> None:
    """A decode that fails the fallback thresholds (here: any log probability fails):
    try_window leaves the decision to the caller; transcribe_window takes
    transcribe() with its temperature schedule."""
    buf = packed(["ast_en_vm-tocancel.wav", "ast_en_agent-incorrect.wav"])
    strict = OPTS | {"log_prob_threshold": 0.0, "temperature": [0.0, 0.2]}
    assert try_window(model, buf, strict) is None
    calls = []
    real = model.transcribe

    def spy(*a: Any, **k: Any) -> Any:
        calls.append(k)
        return real(*a, **k)

    model.transcribe = spy
    try:
        segs = transcribe_window(model, buf, strict)
        assert len(calls) == 1 and calls[0]["temperature"] == [0.0, 0.2] and segs
        calls.clear()
        transcribe_window(model, buf, OPTS | {"initial_prompt": "Voicemail."})
        assert len(calls) == 1  # a prompt changes the decode: the ordinary way
    finally:
        del model.transcribe


def test_window_failing_only_the_ratio_is_kept_for_the_caller(model: Any) -> None:
    """With ``keep_failed``, a decode whose one fault is its compression ratio comes back
    with its segments and words (``Repetitive``, the same segments a passing decode of the
    same tokens gives), for the caller to judge in parts; without it, None as before. A
    decode that fails the log probability is None either way.

    CPU-independent: the failure is made on purpose (a threshold every text is over)."""
    buf = packed(["ast_en_vm-tocancel.wav", "ast_en_agent-incorrect.wav"])
    o = OPTS | {"temperature": [0.0, 0.2]}
    passing = try_window(model, buf, o | {"compression_ratio_threshold": None})
    over = o | {"compression_ratio_threshold": 0.01}
    assert try_window(model, buf, over) is None
    (kept,) = try_windows(model, [buf], over, keep_failed=True)
    assert isinstance(kept, Repetitive) and kept.threshold == 0.01
    assert passing and list(kept) == passing and all(s["words"] for s in kept)
    low = over | {"log_prob_threshold": 0.0}
    assert try_windows(model, [buf], low, keep_failed=True) == [None]


def test_repetitive_text_is_judged_in_parts() -> None:
    """Repetitive.split: each segment goes to the side its words are on (copies), the
    later side's times from the cut; a side passes on its own where it has words, its own
    text is within the threshold and no speech is left after a stop; a segment with
    words on both sides of the cut makes no split at all."""
    from epyc_whisper.segments import segment, word

    def seg(text: str, s: float, e: float) -> dict[str, Any]:
        return segment(s, e, text, words=[word(s, e, text, 0.9)], compression_ratio=3.0)

    menu = " Press one for sales. Press one for sales."
    segs = [seg(menu, 0.0, 4.0), seg(" Goodbye.", 6.0, 7.0), seg(" Goodbye.", 8.0, 9.0)]
    before, after = Repetitive(segs, 2.4).split(5.0) or (None, None)
    assert before is not None and after is not None and before.passes() and after.passes()
    assert [s["text"] for s in before] == [menu]
    assert [(s["start"], s["end"]) for s in after] == [(1.0, 2.0), (3.0, 4.0)]
    assert after[0]["words"][0]["start"] == 1.0 and segs[1]["words"][0]["start"] == 6.0
    assert all(s["compression_ratio"] < 2.4 for s in before.accepted() + after.accepted())
    strict = Repetitive(segs, 0.5).split(5.0)  # each side's text over 0.5
    assert strict and not any(side.passes() for side in strict)
    whole, nothing = Repetitive(segs, 2.4).split(10.0) or (None, None)
    assert whole and len(whole) == 3 and nothing is not None and not nothing.passes()
    # The decoder stopped at 8.5 s, before the speech did: the later side is incomplete.
    early, late = Repetitive(segs, 2.4, stop=8.5).split(5.0) or (None, None)
    assert early is not None and early.passes() and late is not None and not late.passes()
    first, _ = Repetitive(segs, 2.4, stop=3.0).split(5.0) or (None, None)
    assert first is not None and not first.passes()
    spans = [segment(0.0, 8.0, " a b", words=[word(0.0, 1.0, " a", 1), word(7.0, 8.0, " b", 1)])]
    assert Repetitive(spans, 2.4).split(5.0) is None


def test_silence_and_noise_as_transcribe_gives_them(model: Any) -> None:
    """No speech: the window path ends where transcribe() ends, on noise and on digital
    silence (tiny.en's usual lone "You" on both paths, or nothing).

    CPU-independent: whether try_window accepts the noise decode or leaves it to the
    ordinary way (None: it failed the thresholds) is a low-margin decision that differs
    between CPUs; transcribe_window, which takes the ordinary way in that case, must give
    what transcribe() gives on the same machine either way. The schedule here is two
    temperatures of 0: a fallback that samples gives other text from one call to the
    next (on a Zen 5, noise came back " ." from one and " . ." from the other, and
    CTranslate2's set_random_seed did not make two calls alike), while a second decode
    at 0 takes the same fallback path and is the same beam search every time."""

    def spans(segs: Any) -> list[tuple[float, float, str]]:
        return [(s["start"], s["end"], s["text"]) for s in segs]

    o = OPTS | {"temperature": [0.0, 0.0]}
    for audio in (
        (np.random.RandomState(0).randn(16000 * 5) * 0.01).astype(np.float32),
        np.zeros(16000 * 5, dtype=np.float32),
    ):
        first = try_window(model, audio, o)
        ours = spans(transcribe_window(model, audio, o))
        theirs = [(s.start, s.end, s.text) for s in model.transcribe(audio, **o)[0]]
        assert ours == theirs
        if first is not None:  # accepted at temperature 0: that is the result
            assert spans(first) == ours


def test_decode_that_runs_to_its_limit_fails(model: Any, monkeypatch: Any) -> None:
    """A decode is limited to MOST_TOKENS_PER_SECOND of its audio (plus a margin): under
    the limit it gives exactly the tokens of an unlimited decode; one that runs to it
    stops there and fails (a loop), unless there is no fallback to go to (a single
    temperature: transcribe() takes what it gives)."""
    from epyc_whisper import window

    buf = packed(["ast_en_vm-tocancel.wav", "ast_en_agent-incorrect.wav"])
    lengths: list[int] = []
    made: list[int] = []

    def seen(prompts: Any, kw: dict[str, Any], out: Any) -> None:
        lengths.append(kw["max_length"])
        made.extend(len(r.sequences_ids[0]) for r in out)

    monkeypatch.setattr(model, "model", Generating(model.model, seen))
    limited = try_window(model, buf, OPTS)
    assert limited and lengths[0] < model.max_length  # a short window: a lower limit
    natural = made[0]
    assert natural < window.most_tokens(model, len(buf))
    monkeypatch.setattr(window, "MOST_TOKENS_PER_SECOND", 1000)
    lengths.clear()
    assert try_window(model, buf, OPTS) == limited and lengths[0] == model.max_length
    # A limit below what this window says: the decode stops there and fails.
    monkeypatch.setattr(window, "MOST_TOKENS_PER_SECOND", 0)
    monkeypatch.setattr(window, "MOST_TOKENS_EXTRA", natural // 2)
    made.clear()
    assert try_window(model, buf, OPTS) is None
    assert natural // 2 <= made[0] < natural
    # For a caller that cuts a loop smaller at once (keep_failed): Looped, but only where
    # the text is over the compression-ratio threshold too (a loop repeats itself; dense
    # speech at the limit does not, and is None as before).
    assert try_windows(model, [buf], OPTS, keep_failed=True) == [None]
    (looped,) = try_windows(
        model, [buf], OPTS | {"compression_ratio_threshold": 0.01}, keep_failed=True
    )
    assert isinstance(looped, Looped) and looped == []
    single = try_window(model, buf, OPTS | {"temperature": 0.0})
    assert single == try_window(model, buf, OPTS | {"temperature": [0.0]}) and single
    assert speech_text("".join(s["text"] for s in single)) == speech_text(
        "".join(s["text"] for s in limited)
    )


def _rest_passes(model: Any, rests: list[Any], opts: dict[str, Any]) -> tuple[int, Any]:
    """window._rest_passes as try_windows calls it: encoder passes and results."""
    from faster_whisper.tokenizer import Tokenizer

    o = window._defaults(model) | opts
    tokenizer = Tokenizer(model.hf_tokenizer, False, task="transcribe", language="en")
    temps = window.temperatures(model, opts)
    return encodes(model, lambda: window._rest_passes(model, rests, o, temps, tokenizer, 4))


def test_rests_after_early_stops_share_a_window(model: Any) -> None:
    """What is left of several windows after an early stop is decoded in one shared
    window (one encoder pass, not one each), and each rest takes back its own words,
    timed inside its own audio, as finished (nothing more to resume)."""
    names = ["ast_en_agent-incorrect.wav", "ast_en_vm-savemessage.wav", "mfa_phrase_longstop.flac"]
    rests = [decode(str(SAMPLES / n)) for n in names]
    o = OPTS | {"temperature": [0.0, 0.2]}
    n, out = _rest_passes(model, rests, o)
    assert n == 1
    for (segs, resume), rest, said in zip(
        out, rests, ["login incorrect", "save", "long stop"], strict=True
    ):
        assert resume is None and segs and said in speech_text("".join(s["text"] for s in segs))
        words = [w for s in segs for w in s["words"]]
        assert words and 0 <= words[0]["start"] and words[-1]["end"] <= len(rest) / 16000 + 0.02


def test_rests_whose_shared_window_fails_go_alone(model: Any) -> None:
    """A shared window that fails the thresholds (here: any log probability fails) is not
    trusted: each rest goes through its own pass, as without sharing."""
    names = ["ast_en_agent-incorrect.wav", "ast_en_vm-savemessage.wav"]
    rests = [decode(str(SAMPLES / n)) for n in names]
    strict = OPTS | {"temperature": [0.0, 0.2], "log_prob_threshold": 0.0}
    n, out = _rest_passes(model, rests, strict)
    assert n == 1 + 2 and out == [(None, None), (None, None)]


def test_rest_after_a_shared_window_stops_or_fails_goes_alone(monkeypatch: Any) -> None:
    """Which rests keep their share of a shared window (the scheduling logic alone, over
    canned decodes): those the decoder finished, with words of their own; a rest after
    the point where the decoder stopped, one with no words, and one whose own text fails
    the compression ratio in a window that failed only that, each get a pass alone."""
    from epyc_whisper.segments import segment, word

    def seg(text: str, s: float) -> dict[str, Any]:
        return segment(s, s + 1.0, text, words=[word(s, s + 1.0, text, 0.9)])

    rests = [np.zeros(n * 16000, np.float32) for n in (3, 3, 3, 3)]
    # Slots at 0, 5, 10 and 15 s (pack's 2 s gaps).
    decoded = [seg(" one", 0.5), seg(" two", 5.5), seg(" three", 10.5)]
    calls: list[list[float]] = []

    def passes(model: Any, bufs: list[Any], *a: Any, **k: Any) -> Any:
        calls.append([len(b) / 16000 for b in bufs])
        if len(calls) == 1:  # the shared window: stopped at 14 s, in the fourth rest
            return [(window.Repetitive(decoded, 2.4, 14.0), None)]
        return [([seg(" alone", 0.5)], None) for _ in bufs]

    monkeypatch.setattr(window, "_passes", passes)
    out = window._rest_passes(None, rests, {}, [0.0], None, 4)
    assert calls[1] == [3.0]  # only the fourth rest alone
    assert [s[0]["text"] for s, _ in out] == [" one", " two", " three", " alone"]
    # The same window with the third rest's own text over the threshold: it goes alone.
    decoded[2] = seg(" three" * 12, 10.5)
    calls.clear()
    out = window._rest_passes(None, rests, {}, [0.0], None, 4)
    assert calls[1] == [3.0, 3.0] and out[2][0][0]["text"] == " alone"
