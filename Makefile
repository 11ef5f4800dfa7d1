# The two commands of the README: `make run` (main job) and `make test` (test suite).
# Both set up .venv first (scripts/setup.sh is a no-op when it is up to date).
.PHONY: setup run test lint bench

setup:
	@./scripts/setup.sh

run: setup
	.venv/bin/granalign demo

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy granalign graphs tools prompts agent

test: setup lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python -m pytest -q
