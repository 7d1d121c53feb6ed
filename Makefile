# Every target bootstraps .venv on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export MPLBACKEND := Agg
# Prefect's local state (its SQLite database, the fit cache) stays in the checkout.
export PREFECT_HOME ?= $(CURDIR)/runs/prefect

.PHONY: help demo test test-fast lint format bench validate clean

help:
	@echo "make demo       simulate a small fab and run the whole yield job on embedded defaults"
	@echo "make test       install everything and run the full test suite (slow tests included)"
	@echo "make test-fast  the tests without the slow statistical and end-to-end ones"
	@echo "make lint       ruff check and ruff format --check"
	@echo "make bench      benchmarks against the peers (writes benchmarks/results/)"
	@echo "make validate   the ranking's statistical validation on simulated fabs (prints its table)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/yieldrank demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	@command -v Rscript >/dev/null || { apt-get update -qq && apt-get install -y -qq r-cran-lme4 r-cran-glmmtmb; } \
		|| echo "R peers (lme4, glmmTMB) could not be installed: the benchmark skips them and says so"
	$(BIN)/python -m benchmarks.run --out benchmarks/results --linalg

validate: $(STAMP)
	$(BIN)/python -m flows.analysis.power_study

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
