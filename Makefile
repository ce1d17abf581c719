# Two commands from a fresh clone: `make demo` and `make test`. Both install first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@command -v ffmpeg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null) || \
	    echo "note: ffmpeg not installed (needed only for the pydub fallback decoder)"; }
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check epyc_whisper tests
	$(BIN)/ruff format --check epyc_whisper tests
	$(BIN)/mypy epyc_whisper

demo: install
	$(BIN)/epyc-whisper transcribe epyc_whisper/samples --model bundled -o transcripts -f txt,srt,json
	@echo "transcripts written under ./transcripts"

bench: install
	$(BIN)/epyc-whisper bench --model bundled

clean:
	rm -rf $(VENV) transcripts .pytest_cache .mypy_cache .ruff_cache
