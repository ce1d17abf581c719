# Two commands from a fresh clone: `make demo` and `make test`. Both install first.
PY ?= python3
# One venv per interpreter, so `make test PY=python3.13` beside a 3.11 .venv starts clean.
# pyenv's shim for python3.X refuses to run unless 3.X is active: then the venv is made
# with the newest installed 3.X (and needs no pyenv afterwards).
VENV ?= $(if $(filter python3,$(PY)),.venv,.venv-$(notdir $(PY)))
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all lint demo bench clean

# The supported Pythons (pyproject.toml's requires-python and classifiers); `make test-all`
# runs the suite on each in turn, for changes to the supported versions or dependencies.
PYTHONS ?= python3.11 python3.12 python3.13

install: $(STAMP)

# pip's own output (index notes, the build backend's warnings) goes to $(LOG), printed only
# when the install fails: a working `make demo` shows the demo, not the install.
LOG := $(VENV)/install.log

$(STAMP): pyproject.toml
	@echo "installing epyc-whisper[test] into $(VENV) (pip's log: $(LOG))"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) 2>/dev/null || \
	  PYENV_VERSION=$$(pyenv versions --bare | grep -E '^$(subst python,,$(notdir $(PY)))(\.|$$)' \
	    | sort -V | tail -1) $(PY) -m venv $(VENV)
	@{ $(BIN)/python -m pip install --upgrade pip && \
	   $(BIN)/python -m pip install -e '.[test]'; } > $(LOG) 2>&1 || \
	  { cat $(LOG); echo "make install: pip failed (its log is above, and in $(LOG))"; exit 1; }
	@command -v ffmpeg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null) || \
	    echo "note: ffmpeg not installed (needed only for the pydub fallback decoder)"; }
	@touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

test-all:
	@set -e; for py in $(PYTHONS); do \
	  echo "== $$py"; start=$$(date +%s); \
	  $(MAKE) --no-print-directory test PY=$$py; \
	  echo "== $$py: passed in $$(( $$(date +%s) - start )) s"; \
	done

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
	rm -rf .venv .venv-python3.* transcripts .pytest_cache .mypy_cache .ruff_cache
