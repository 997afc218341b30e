# landscape: set-up, tests, demo and benchmarks. Everything installs from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.landscape-installed
OUT ?= out

.PHONY: setup lint test demo bench bench-smoke browser clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# the CPU build of torch (a bare "torch" would pull a multi-GB CUDA build)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Debian's chromium + chromedriver for the report's browser test (needs root; CI runs as root)
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
		if [ "$$(id -u)" = "0" ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
		else echo "chromium missing and not root: the browser test will be skipped outside CI"; fi; \
	fi

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup browser lint
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

demo: setup
	$(VENV)/bin/landscape demo -o $(OUT)/demo

bench: setup
	$(PIP) install -q -e '.[bench]'
	$(PY) -m benchmarks.run --out BENCHMARKS.md

bench-smoke: setup
	$(PY) -m benchmarks.run --smoke --out $(OUT)/bench-smoke.md

clean:
	rm -rf $(OUT) .pytest_cache
