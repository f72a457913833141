# anomstream: the two commands a newcomer needs are `make run` and `make test`; both install what is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# extra pytest arguments, e.g. `make test PYTEST_ARGS="--ignore=tests/reliability"` for a quick run
PYTEST_ARGS ?=

.PHONY: run test test-reliability lint bench stack stack-down clean help

help:
	@echo "make run    - install what is missing, start the local stack, run the system end to end"
	@echo "make test   - install what is missing, lint (ruff, mypy), run every test on the real stack (~25 min)"
	@echo "make test-reliability - only the fault suite: crashes, outages, rebalances, bad input (~11 min)"
	@echo "make lint   - ruff and mypy only"
	@echo "make bench  - the benchmarks in bench/ (figures and ratios)"
	@echo "make stack  - start the local Kafka broker and Schema Registry; make stack-down stops them"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

stack: $(STAMP)
	$(BIN)/anomstream stack up

stack-down: $(STAMP)
	$(BIN)/anomstream stack down

run: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/run.sh

lint: $(STAMP)
	$(BIN)/ruff check $(wildcard anomstream producer trainer scorer tests bench)
	$(BIN)/mypy $(wildcard anomstream producer trainer scorer)

test: lint stack
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-reliability: lint stack
	$(BIN)/python -m pytest tests/reliability

bench: stack
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .stack .pytest_cache .mypy_cache .ruff_cache
