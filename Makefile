# Two entry points, each doing all set-up on a fresh machine (see README.md).
.PHONY: demo test setup

setup:
	bash scripts/bootstrap.sh

demo: setup
	.venv/bin/ldsrig demo

test: setup
	.venv/bin/python -m pytest -q -n 2 --dist loadfile
