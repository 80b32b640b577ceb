# Every target bootstraps what it needs (tools/bootstrap.sh): uv, the venv, npm packages.
SHELL := /bin/bash
export PATH := $(CURDIR)/.tools/bin:$(PATH)
UV_RUN := uv run --frozen
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: bootstrap demo test lint proto proto-check bench clean

bootstrap:
	@bash tools/bootstrap.sh

demo: bootstrap
	$(UV_RUN) lifeline demo $(DEMO_ARGS)

test: bootstrap lint
	$(UV_RUN) pytest -n 2 $(PYTEST_ARGS)

lint: bootstrap
	$(UV_RUN) ruff check .
	$(UV_RUN) ruff format --check .
	$(UV_RUN) mypy
	$(UV_RUN) lint-imports
	cd deploy/dev-idp && npx --no-install buf lint ../..

proto: bootstrap
	$(UV_RUN) python tools/protogen.py

bench: bootstrap
	$(UV_RUN) python -m bench

clean:
	rm -rf var .pytest_cache
