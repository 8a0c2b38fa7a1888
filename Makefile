# Two commands: `make run` (set up, then serve the editor on 127.0.0.1:8188) and `make test`.
# Set-up is idempotent: each step re-runs only when its inputs changed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
PYTEST_ARGS ?=
PLUGIN_PROJECTS := $(wildcard plugins/*/pyproject.toml)

.PHONY: run test test-all setup setup-python setup-web setup-browser bench clean

run: setup
	$(PY) main.py serve $(ARGS)

test: setup setup-browser
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: setup setup-browser
	$(PY) -m pytest $(PYTEST_ARGS)

setup: setup-python setup-web

setup-python: $(VENV)/.stamp-python

# Torch: keep a build that is already there (a CUDA one on GPU machines). With none, machines with
# an NVIDIA driver get the default (CUDA) wheel; others ask for 2.13.0, which resolves to a CPU build
# where one is on the machine's wheel path, as on our CI machines.
$(VENV)/.stamp-python: pyproject.toml $(PLUGIN_PROJECTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || { \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install "torch>=2.4,<3"; \
	  else $(PIP) install "torch==2.13.0" || $(PIP) install "torch>=2.4,<3"; fi; }
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps "k-diffusion==0.1.1.post1"
	for p in $(dir $(PLUGIN_PROJECTS)); do $(PIP) install -q -e "$$p" || exit 1; done
	touch $@

setup-web: web/node_modules/.stamp

web/node_modules/.stamp: web/package.json $(wildcard web/package-lock.json)
	@if [ -f web/package.json ]; then cd web && npm ci --no-audit --no-fund --loglevel=error; fi
	@mkdir -p web/node_modules && touch $@

# Browser tests need Debian's chromium (no browser can be downloaded by test tools here).
setup-browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

bench: setup
	$(PY) -m bench.engine
	$(PY) -m bench.sampling
	$(PY) -m bench.server

clean:
	rm -rf $(VENV) web/node_modules .pytest_cache
