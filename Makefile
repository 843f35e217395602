# Two entry points: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    ?= demo_output

.PHONY: install demo test check lint format experiments bench clean browser docs screenshots mutation

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch/torchvision pinned to the builds this project is developed and tested with
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[dev,zoo,interop]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/convscope demo --out $(OUT) --overwrite

check: $(STAMP)
	$(BIN)/ruff check src tests benchmarks experiments docs/_reference.py docs/_screenshots.py docs/_results.py tools
	$(BIN)/ruff format --check src tests benchmarks experiments docs/_reference.py docs/_screenshots.py docs/_results.py tools
	$(BIN)/mypy

# The browser tests (tests/test_explorer.py, tests/test_pages_browser.py) and make screenshots
# drive Debian's Chromium through the system chromedriver (tests/_browser.py); without them
# those tests skip. Cheap when already installed.
browser:
	@if [ ! -x /usr/bin/chromedriver ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo -n"; \
	    echo "installing Debian's chromium and chromium-driver for the browser tests"; \
	    ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install \
	        -y -qq --no-install-recommends chromium chromium-driver ) \
	      || echo "warning: could not install chromium chromium-driver; browser tests will skip"; \
	  else \
	    echo "warning: no apt-get here; install Chromium and chromedriver at /usr/bin for the browser tests"; \
	  fi; \
	fi

# The pictures of the main pages in docs/screenshots/ (demo --quick, explain, linear explore).
screenshots: $(STAMP) browser
	$(BIN)/python docs/_screenshots.py

test: check browser
	$(BIN)/python -m pytest -q -m "not slow"

# The docs site (MkDocs + mkdocstrings) into site/: the CLI and API reference pages are
# generated from the code first (docs/_reference.py), and every number the pages quote about
# our results is rewritten from the committed results files (docs/_results.py, also run by
# mkdocs as a hook); any warning fails the build.
docs: $(STAMP)
	$(BIN)/python docs/_reference.py
	$(BIN)/python docs/_results.py
	$(BIN)/mkdocs build --strict

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks experiments
	$(BIN)/ruff check --fix src tests benchmarks experiments

experiments: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Mutation testing of the core with mutmut (hours on 2 cores; not part of make test).
# MODULES="kernels spectral" runs some groups only; results are cached in .mutation/ and
# the report goes to docs/mutation.md and docs/mutation.json.
MODULES ?= kernels spectral attribution decoding numpy_cnn_layers evaluate linear
mutation: $(STAMP)
	$(BIN)/python tools/mutation.py run --modules $(MODULES)

clean:
	rm -rf $(VENV) .mutation mutants build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache site docs/reference
