# Forgehall developer entry points. Everything installs itself: a fresh machine needs only
# Python >= 3.11 and make. uv comes from PyPI when it is not on PATH.

SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)

.PHONY: bootstrap assets browser up test check lint types contracts docs bench

VENDOR = src/forgehall/web/static/vendor

bootstrap: $(VENDOR)/.stamp
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --quiet
	@$(UV) run --no-sync python -m compileall -q src >/dev/null

## The web UI's front-end libraries: installed from the npm registry by the committed
## lockfile and copied into the static folder (never committed).
assets: $(VENDOR)/.stamp

$(VENDOR)/.stamp: package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm is needed to install the web UI's front-end libraries (Debian: apt-get install npm)" >&2; exit 1; }
	@npm ci --no-audit --no-fund --loglevel=error >/dev/null
	@mkdir -p $(VENDOR)
	@cp node_modules/htmx.org/dist/htmx.min.js $(VENDOR)/htmx.min.js
	@touch $@

## Debian's Chromium for the browser tests (the tests never download a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

## Run Forgehall for one person on embedded SQLite (prints the URL to open).
up: bootstrap
	$(UV) run --no-sync forgehall up

## Run the whole test suite (SQLite and PostgreSQL; see tests/conftest.py).
test: bootstrap browser
	$(UV) run --no-sync pytest

## Lint, format check, mypy --strict and the import-linter layer contracts.
check: lint types contracts

lint: bootstrap
	$(UV) run --no-sync ruff check src tests bench
	$(UV) run --no-sync ruff format --check src tests bench

types: bootstrap
	$(UV) run --no-sync mypy

contracts: bootstrap
	$(UV) run --no-sync lint-imports

## Regenerate the generated reference docs.
docs: bootstrap
	$(UV) run --no-sync forgehall config docs -o docs/configuration.md
	$(UV) run --no-sync python -m forgehall.cli.reference > docs/cli.md
	$(UV) run --no-sync python -m forgehall.openapi > docs/openapi.json

bench: bootstrap
	$(UV) run --no-sync python bench/serve_ready.py
