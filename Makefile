# The two set-up commands (each creates .venv if missing, installs, and runs):
#   make demo   - the whole pipeline offline on the bundled examples (outputs/demo)
#   make test   - the fast test suite, offline (what CI runs); make test-slow: the long end-to-end ones
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cnet-installed
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: demo test test-slow lint install clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cnet demo --output outputs/demo --overwrite

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" -n auto --dist loadfile

test-slow: $(STAMP)
	CNET_RUN_SLOW=1 $(PY) -m pytest -q -p no:cacheprovider -m slow

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
