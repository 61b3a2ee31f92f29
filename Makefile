# Two entry points for a new user; see README.md.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test bench wheel

# The target is pip, not python: Debian's venv creates bin/python before it fails for want of
# ensurepip (the python3-venv package), and a half-made .venv must not count as made.
$(VENV)/bin/pip:
	rm -rf $(VENV)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(VENV)/bin/pip
	$(PY) -m pip install --quiet -e '.[dev]'

# Replays a recorded call through the AMI simulator and measures it live.
demo: install
	$(VENV)/bin/talkmeter demo

test: install
	$(PY) -m pytest

# Throughput and memory figures of the AMI pipeline, then what faults cost, then the ledger's
# recording latency, views and rerate on a database of 1M conversations it builds and drops, then
# the alerts' latency and cost (prints, asserts nothing; `benchmarks/ledger.py --conversations
# 10000000` for the large run).
bench: install
	$(PY) benchmarks/pipeline.py
	$(PY) benchmarks/faults.py
	$(PY) benchmarks/ledger.py
	$(PY) benchmarks/alerts.py
	$(PY) benchmarks/standby.py

# The package to install where there is no clone: dist/talkmeter-<version>-py3-none-any.whl.
wheel: install
	$(PY) -m build --no-isolation --outdir dist .
