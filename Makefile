# Two commands: `make run` serves the app on 127.0.0.1 (SQLite file, mail to a local folder);
# `make test` runs lint, types and the whole suite. Both set up .venv first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test install lint types chromium wrk bench lock clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Forum Scheduler needs Python 3.11 or newer ($(PYTHON) is older)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/scheduler migrate
	$(BIN)/scheduler demo
	$(BIN)/scheduler serve

lint: $(STAMP)
	$(BIN)/ruff check scheduler tests
	$(BIN)/ruff format --check scheduler tests

types: $(STAMP)
	$(BIN)/mypy

# The browser tests drive Debian's Chromium (Playwright downloads no browser of its own).
chromium:
	@test -x /usr/bin/chromium || { \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; }

test: lint types chromium
	$(BIN)/pytest

# The HTTP benches load the server with Debian's wrk.
wrk:
	@command -v wrk >/dev/null || { \
		echo "installing Debian's wrk for the benches"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk; }

bench: $(STAMP) wrk
	$(BIN)/python tests/bench/bench_events.py
	$(BIN)/python tests/bench/bench_registrations.py

# Refresh the pinned versions after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^forum-scheduler' > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
