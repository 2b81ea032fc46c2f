# The two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint bench clean compose-smoke

setup: $(STAMP)  ## create .venv and install (quick no-op when nothing changed)

$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	scripts/install.sh $(VENV) dev
	@touch $(STAMP)

demo: setup  ## run the main job on the embedded default
	$(VENV)/bin/critic-unlearn demo

test: setup  ## the whole test suite, what CI runs (pytest exit 5, "no tests collected", fails too)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup  ## the unit tests without the slow ones: under 2 minutes, for every edit
	$(PY) -m pytest tests/unit -m "not slow" $(PYTEST_ARGS)

lint: setup  ## ruff, then the layer contracts in pyproject.toml ([tool.importlinter])
	$(VENV)/bin/ruff check critic_unlearn tests bench
	$(VENV)/bin/lint-imports

compose-smoke: setup  ## docker-compose.yml as real containers: build, up, the toy job, checks, down
	$(PY) deploy/compose_smoke.py

bench: setup
	$(PY) -m bench.micro.sampler_overhead

clean:
	rm -rf runs .cache .pytest_cache
