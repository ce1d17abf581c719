"""Packing short clips into shared windows: attribution rules (unit) and real runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from epyc_whisper import packing
from epyc_whisper.packing import Slot, Window, attribute, doubt, owner, pack
from tests.conftest import SAMPLES, copy_samples, run_cli, speech_text


def w(start: float, end: float, word: str, p: float = 0.9) -> dict:
    return {"start": start, "end": end, "word": word, "probability": p}


def test_pack_keeps_order_and_window_budget() -> None:
    """Clips are packed in order, gaps between them, no window over its budget."""
    wins = pack([("a", 3.0), ("b", 4.0), ("c", 20.0), ("d", 2.0)], window=28.0, gap=2.0)
    assert [[s.key for s in win.slots] for win in wins] == [["a", "b"], ["c", "d"]]
    assert wins[0].slots[1].offset == 5.0 and all(win.length <= 28.0 for win in wins)


def test_word_at_a_boundary_goes_to_the_clip_holding_its_middle() -> None:
    """The boundary is the middle of the gap; a straddling word goes by its midpoint."""
    win = Window([Slot("a", 0.0, 3.0), Slot("b", 5.0, 3.0)])  # boundary at 4.0
    assert owner(3.9, win.slots) == 0 and owner(4.1, win.slots) == 1
    segs = [
        {
            "start": 0.0,
            "end": 8.0,
            "text": "x",
            "words": [w(0.1, 0.5, " one"), w(3.0, 5.4, " two"), w(5.5, 6.0, " three")],
        }
    ]
    a, b = attribute(segs, win)
    assert [x["word"] for s in a for x in s["words"]] == [" one"]
    assert [x["word"] for s in b for x in s["words"]] == [" two", " three"]


def test_clip_times_start_at_zero_and_stay_inside() -> None:
    """Each clip's times are its own: from 0, never past its duration."""
    win = Window([Slot("a", 0.0, 3.0), Slot("b", 5.0, 2.0)])
    segs = [
        {"start": 0.0, "end": 2.5, "text": " hi", "words": [w(0.2, 2.5, " hi")]},
        {"start": 5.0, "end": 7.4, "text": " yo", "words": [w(4.9, 7.4, " yo")]},
    ]
    _, b = attribute(segs, win)
    assert b[0]["start"] == 0.0 and b[0]["end"] == 2.0 and b[0]["text"] == " yo"


def test_segment_inside_one_clip_goes_whole() -> None:
    """A segment whose timestamps lie in one clip is not split by drifting word times."""
    win = Window([Slot("a", 0.0, 3.0), Slot("b", 5.0, 3.0)])
    segs = [
        {"start": 0.2, "end": 2.9, "text": " a b", "words": [w(0.2, 1.0, " a"), w(3.9, 4.5, " b")]}
    ]  # " b" drifted past the boundary
    a, b = attribute(segs, win)
    assert [x["word"] for s in a for x in s["words"]] == [" a", " b"] and b == []


def test_doubt_rules() -> None:
    """Doubtful: no words for speech, too few words for the speech, a word inside a
    neighbour, a stretch of VAD speech no word covers; unsure words alone are not."""
    seg = {"words": [w(0, 1, " i")]}
    assert doubt([], 2.0) is not None and doubt([], 0.0) is None
    assert doubt([seg], 3.5) is not None  # one word for 3.5 s of speech
    assert doubt([{"words": [w(0, 1, " hi")], "foreign_words": 1}], 0.8) is not None
    assert doubt([{"words": [w(0, 1, " hi", 0.2)]}], 0.8) is None
    assert doubt([{"words": [w(0, 0.5, " thank"), w(0.5, 1, " you")]}], 1.0) is None
    # Words for the first utterance only: the second, 2 s of VAD speech, was skipped.
    two = [w(0.2, 0.6, " thank"), w(0.6, 1.0, " you"), w(1.0, 1.3, " very")]
    assert doubt([{"words": two}], 3.0, [(0.0, 1.3), (3.0, 5.0)]) is not None
    assert doubt([{"words": two + [w(3.1, 4.8, " much")]}], 3.0, [(0.0, 1.3), (3.0, 5.0)]) is None


def test_real_packed_run(tmp_path: Path, model_path: Path, clean_env: dict[str, str]) -> None:
    """Short speech clips share a window (json says which); a silence clip between them is
    not packed and gets no neighbour's words; each clip's times start at 0."""
    names = [
        "ast_en_agent-incorrect.wav",
        "ast_en_silence__3.wav",
        "ast_en_vm-tocancel.wav",
        "ast_en_digits__19.wav",
        "mfa_phrase_longstop.flac",
    ]
    clips = copy_samples(tmp_path / "c", names)
    r = run_cli(
        [
            "transcribe",
            *map(str, clips),
            "--model",
            str(model_path),
            "-o",
            str(tmp_path / "o"),
            "-f",
            "json",
            "--pack",
            "--batch-size",
            "8",
            "--workers",
            "1",
            "--threads",
            "1",
            "--processes",
            "1",
        ],
        tmp_path,
        clean_env,
    )
    assert r.returncode == 0, r.stderr
    docs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "o").rglob("*.json")}
    assert "packed" not in docs["ast_en_silence__3"]
    assert docs["ast_en_silence__3"]["text"].strip() == ""
    packed = [d for d in docs.values() if "packed" in d]
    assert len(packed) >= 2
    assert len({d["packed"]["window"] for d in packed}) < len(packed)  # a shared window
    for d in packed:
        assert d["segments"][0]["start"] < d["duration"]
        assert all(0 <= s["start"] <= s["end"] <= d["duration"] + 0.01 for s in d["segments"])
        assert d["segments"][0]["words"] is None  # not asked for (json: null, #17)
        assert d["packed"]["gap_s"] == packing.GAP
        assert d["segments"][0]["id"] == 1  # numbered like faster-whisper's own
    assert "login incorrect" in speech_text(docs["ast_en_agent-incorrect"]["text"])
    nopack = run_cli(
        [
            "transcribe",
            *map(str, clips),
            "--model",
            str(model_path),
            "-o",
            str(tmp_path / "n"),
            "-f",
            "json",
            "--no-pack",
        ],
        tmp_path,
        clean_env,
    )
    assert nopack.returncode == 0
    assert not any("packed" in json.loads(p.read_text()) for p in (tmp_path / "n").rglob("*.json"))


def test_fallback_transcribes_doubtful_clip_alone(model_path: Path) -> None:
    """A clip whose packed words are doubtful is transcribed alone, and says so."""
    from faster_whisper import WhisperModel

    from epyc_whisper.engine import WorkerSpec, transcribe_group

    model = WhisperModel(str(model_path), compute_type="int8", cpu_threads=1)
    spec = WorkerSpec(0, [], str(model_path), "cpu", "int8", 1, 1, {"beam_size": 5}, pack=True)
    group = [
        {"id": i, "path": str(SAMPLES / n)}
        for i, n in enumerate(["ast_en_agent-incorrect.wav", "ast_en_vm-tocancel.wav"])
    ]
    real_doubt = packing.doubt
    try:
        packing.doubt = lambda segs, speech, *_: "forced by the test" if speech > 3 else None
        msgs = transcribe_group(model, group, spec, "en")
    finally:
        packing.doubt = real_doubt
    by_id = {m[1]: m[2] for m in msgs}
    assert "packed" not in by_id[0] and any("transcribed alone" in n for n in by_id[0]["notes"])
    assert "login incorrect" in speech_text(by_id[0]["text"])
    assert "packed" in by_id[1]


def test_failed_window_sends_every_clip_alone(model_path: Path) -> None:
    """A packed window whose decode fails faster-whisper's fallback thresholds (here a
    log-probability threshold nothing meets) is not used: each of its clips is
    transcribed alone, with its own temperature fallback, and says why."""
    from faster_whisper import WhisperModel

    from epyc_whisper.engine import WorkerSpec, transcribe_group

    model = WhisperModel(str(model_path), compute_type="int8", cpu_threads=1)
    opts = {"beam_size": 5, "log_prob_threshold": 0.0}
    spec = WorkerSpec(0, [], str(model_path), "cpu", "int8", 1, 1, opts, pack=True)
    names = ["ast_en_agent-incorrect.wav", "ast_en_vm-tocancel.wav"]
    group = [{"id": i, "path": str(SAMPLES / n)} for i, n in enumerate(names)]
    msgs = transcribe_group(model, group, spec, "en")
    assert [m[0] for m in msgs] == ["done", "done"]
    for _, _, result in msgs:
        assert "packed" not in result
        assert any("window failed the quality thresholds" in n for n in result["notes"])
    assert "login incorrect" in speech_text(msgs[0][2]["text"])


def test_words_timed_inside_a_neighbour_make_a_clip_doubtful() -> None:
    """A segment kept whole by one clip, whose words sit inside another clip's audio (the
    same phrase said in both), is doubtful: that clip is transcribed alone."""
    win = Window([Slot("a", 0.0, 1.2), Slot("b", 3.2, 1.2)])
    segs = [
        {
            "start": 0.0,
            "end": 1.1,
            "text": " 19 19",
            "words": [w(0.1, 0.9, " 19"), w(3.4, 4.0, " 19")],
        }
    ]
    a, b = attribute(segs, win)
    assert a[0]["foreign_words"] == 1 and b == []
    assert "neighbouring clip" in (doubt(a, 1.0) or "")


def test_mixed_languages_never_share_a_window(
    tmp_path: Path, base_model: Path, clean_env: dict[str, str]
) -> None:
    """Multilingual model, no --language: each clip's language is detected first, and
    only clips of one language share a window (real Spanish, French and English)."""
    lang_dir = Path(__file__).parent / "fixtures" / "lang"
    copy_samples(
        tmp_path / "c",
        ["ast_en_agent-incorrect.wav", "ast_en_vm-tocancel.wav", "mfa_phrase_longstop.flac"],
    )
    for f in lang_dir.glob("*.wav"):
        (tmp_path / "c" / f.name).write_bytes(f.read_bytes())
    r = run_cli(
        [
            "transcribe",
            str(tmp_path / "c"),
            "--model",
            str(base_model),
            "-o",
            str(tmp_path / "o"),
            "-f",
            "json",
            "--pack",
            "--processes",
            "1",
            "--workers",
            "1",
            "--threads",
            "2",
        ],
        tmp_path,
        clean_env,
    )
    assert r.returncode == 0, r.stderr
    docs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "o").rglob("*.json")}
    assert len(docs) == 6
    assert docs["ast_es_agent-newlocation"]["language"] == "es"
    assert docs["ast_fr_agent-incorrect"]["language"] == "fr"
    assert docs["ast_en_agent-incorrect"]["language"] == "en"
    windows: dict[str, set[str]] = {}
    for d in docs.values():
        if "packed" in d:
            windows.setdefault(d["packed"]["window"], set()).add(d["language"])
    assert windows and all(len(langs) == 1 for langs in windows.values())
    assert any(
        len([d for d in docs.values() if d.get("packed", {}).get("window") == w]) > 1
        for w in windows
    )  # some window really is shared


def test_group_hands_back_its_work_longest_file_first(model_path: Path, tmp_path: Path) -> None:
    """With ``defer``, a group answers only for files it could not read and hands the
    rest back, as calls that give its files' messages: each file that goes the ordinary
    way, longest first (here a 24 s file, too long to pack, then a silent clip), then
    the packed clips' windows. Each call gives the messages the group gives without
    ``defer``. A free feeder thread of the worker then takes them."""
    from faster_whisper import WhisperModel

    from epyc_whisper.engine import WorkerSpec, transcribe_group
    from tests.media import joined_speech

    long = joined_speech(
        tmp_path / "long.wav",
        [SAMPLES / "ast_en_agent-incorrect.wav", SAMPLES / "mfa_whisper.flac"] * 2,
        gap=0.5,
    )
    model = WhisperModel(str(model_path), compute_type="int8", cpu_threads=1)
    # Temperature 0 only: on some CPUs the silent clip's decode at 0 fails the thresholds
    # and the fallback samples (random text: " ." once, " . ." the next time).
    opts = {"beam_size": 5, "temperature": 0.0}
    spec = WorkerSpec(0, [], str(model_path), "cpu", "int8", 1, 1, opts, pack=True)
    paths = [
        SAMPLES / "ast_en_vm-tocancel.wav",
        SAMPLES / "ast_en_silence__3.wav",
        long,
        tmp_path / "missing.wav",
        SAMPLES / "mfa_phrase_buddy.flac",
    ]
    group = [{"id": i, "path": str(p)} for i, p in enumerate(paths)]
    handed: list = []
    own = transcribe_group(model, group, spec, "en", handed.extend)
    assert [m[:2] for m in own] == [("failed", 3)]
    assert [ids for ids, _ in handed] == [[2], [1], [0, 4]]
    later = {m[1]: m for _, run in handed for m in run()}
    inline = {m[1]: m for m in transcribe_group(model, group, spec, "en")}
    assert sorted(later) == [0, 1, 2, 4] and sorted(inline) == [0, 1, 2, 3, 4]
    for i in (0, 1, 2, 4):
        assert later[i][0] == inline[i][0] == "done"
        assert later[i][2]["text"] == inline[i][2]["text"]
        assert ("packed" in later[i][2]) == (i in (0, 4))
    assert "login incorrect" in speech_text(later[2][2]["text"])


def _worker_answers(model_path: Path, names: list[str], wait: float = 120) -> list[tuple]:
    """The real worker loop (engine.worker_main) in a thread, given the sample clips
    ``names`` as one batch: the one answer for each (done, failed or split), after which
    it is asked to stop, gives no second answer, and ends."""
    import threading
    from multiprocessing import Pipe

    from epyc_whisper import engine

    parent, child = Pipe()
    spec = engine.WorkerSpec(
        0, [], str(model_path), "cpu", "int8", 1, 1, {"beam_size": 5}, pin=False, pack=True
    )
    worker = threading.Thread(target=engine.worker_main, args=(child, spec), daemon=True)
    worker.start()
    parent.send(("batch", [{"id": i, "path": str(SAMPLES / n)} for i, n in enumerate(names)]))
    answers: list[tuple] = []
    while len(answers) < len(names):
        assert parent.poll(wait), "the worker stopped answering"
        msg = parent.recv()
        if msg[0] in ("done", "failed", "split"):
            answers.append(msg)
    parent.send(("stop",))
    while parent.poll(60) and (msg := parent.recv())[0] != "bye":
        assert msg[0] not in ("done", "failed", "split"), f"a second answer: {msg[:2]}"
    worker.join(30)
    assert not worker.is_alive()
    return answers


def test_worker_answers_each_file_once_when_a_group_fails_after_handing_back(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, own_model_cache: None
) -> None:
    """A group whose window decode raises after it handed a silent clip back: the
    packed clips fail with the reason, the handed-back clip is still transcribed, and
    every file gets exactly one answer (the real worker loop, in a thread)."""
    from epyc_whisper import window

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("the window decode broke")

    monkeypatch.setattr(window, "try_windows", broken)
    names = ["ast_en_vm-tocancel.wav", "ast_en_silence__3.wav", "mfa_phrase_buddy.flac"]
    answers = _worker_answers(model_path, names)
    by_id = {m[1]: m for m in answers}
    assert sorted(by_id) == [0, 1, 2]
    assert by_id[0][0] == by_id[2][0] == "failed" and "window decode broke" in by_id[0][2]
    assert by_id[1][0] == "done" and "packed" not in by_id[1][2]


def test_worker_answers_when_its_feeder_meets_an_unexpected_error(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, own_model_cache: None
) -> None:
    """An error raised in a worker's feeder thread outside the calls that catch their own
    (here: a group's packing language, asked again in the feeder) fails that chunk's
    files with the reason, each answered once, and the worker still stops when asked.
    Before, the feeder died and the files were never answered: the run waited for ever."""
    import threading

    from epyc_whisper import engine

    real = engine.packing_language

    def failing(*a: Any, **k: Any) -> Any:
        if "feeder" in threading.current_thread().name:  # not the batch's own cut
            raise RuntimeError("the feeder broke")
        return real(*a, **k)

    monkeypatch.setattr(engine, "packing_language", failing)
    answers = _worker_answers(model_path, ["ast_en_vm-tocancel.wav", "mfa_phrase_buddy.flac"], 60)
    assert sorted(m[1] for m in answers) == [0, 1]
    assert all(m[0] == "failed" and "the feeder broke" in m[2] for m in answers)
