# The two commands of the README. Both set everything up first (idempotent), so each works on a fresh clone.
.PHONY: setup demo test test-all

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python run.py

test: setup
	.venv/bin/python -m pytest -q

test-all: setup
	.venv/bin/python -m pytest -q -m "slow or not slow"
