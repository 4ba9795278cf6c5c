# Two commands for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# CPU torch first: an unpinned resolve would pull the multi-GB CUDA build. Override for a GPU box,
# e.g. make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export MPLBACKEND := Agg

.PHONY: install demo demo-all test test-quick lint format params bench bench-weighting bench-branches bench-optimizer bench-pipeline mlflow-ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev,solvers,server,sweeps]'
	touch $(STAMP)

# demo: the whole default study (every chain of dvc.yaml), timed; demo-all is the same (older name).
demo demo-all: $(STAMP)
	@start=$$(date +%s); $(BIN)/dvc repro && end=$$(date +%s) && \
	echo "" && echo "dvc repro finished in $$((end - start)) s" && echo "Reports:" && \
	ls -1 reports/*.md reports/figures/*.png | sed 's/^/  /' && \
	echo "Open the runs in the MLflow UI (then browse http://127.0.0.1:5000):" && \
	echo "  $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db" && \
	echo "  (in the UI's sidebar pick 'Machine learning': MLflow 3 opens experiments on GenAI traces)"

test: lint
	$(BIN)/python -m pytest

test-quick: lint  # the tests not marked slow
	$(BIN)/python -m pytest -m 'not slow'

# ruff (configured in pyproject.toml): lint and format check; `make format` rewrites.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

# Regenerate params.yaml from conf/ (what `dvc exp run` does) after editing conf/.
params: $(STAMP)
	$(BIN)/pipeline-params

bench: $(STAMP)
	$(BIN)/python benchmarks/training_loop.py

bench-weighting: $(STAMP)
	$(BIN)/python benchmarks/weighting_step.py

bench-branches: $(STAMP)
	$(BIN)/python benchmarks/branches.py

bench-optimizer: $(STAMP)
	$(BIN)/python benchmarks/optimizer_step.py

# Seconds per stage, strategy and scheme+weighting of the default study next to a plain PyTorch loop
# (ARGS=--quick for a one-minute check, ARGS="--exp star" for one experiment, ARGS="--workers 1" for one process).
bench-pipeline: $(STAMP)
	$(BIN)/python benchmarks/pipeline_time.py $(ARGS)

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

clean:
	rm -rf artifacts mlflow.db mlartifacts multirun.yaml
