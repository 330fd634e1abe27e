# Two commands do all the set-up on a fresh machine with Python 3.10+ and pip:
#   make run    creates .venv, installs genlab, trains NICE on moons (ARGS="model=cnf ..." to override)
#   make test   creates .venv, installs genlab with its test tools and both logger extras, runs
#               the test suite
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch (seconds to install here). On a CUDA machine: make TORCH=torch run
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test lint bench notebooks clean

$(BIN)/genlab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,launchers]" "$(TORCH)"
	@touch $@

# The logger extras, so that their tests run (tensorboard and mlflow: about half a minute more
# to install); naming $(TORCH) again keeps pip from moving torch.
$(VENV)/.loggers: $(BIN)/genlab
	$(BIN)/python -m pip install --quiet -e ".[dev,launchers,tensorboard,mlflow]" "$(TORCH)"
	@touch $@

run: $(BIN)/genlab
	$(BIN)/genlab $(ARGS)

test: $(VENV)/.loggers
	$(BIN)/python -m pytest -n 2 -q

lint: $(BIN)/genlab
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(BIN)/genlab
	# the peers, with torch held at the installed build; torchdyn pulls a torchvision that
	# does not load beside this torch and is not needed (torchmetrics imports it if present)
	$(BIN)/python -m pip install --quiet -e ".[bench]" "torch==$$($(BIN)/python -c 'import torch; print(torch.__version__.split("+")[0])')"
	$(BIN)/python -m pip uninstall --quiet -y torchvision
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/peers.py

# The tutorials as executed notebooks beside their .py sources (QUICK=1 for a seconds budget).
notebooks: $(BIN)/genlab
	$(BIN)/python -m pip install --quiet "jupytext>=1.16" nbclient ipykernel "$(TORCH)"
	cd docs/tutorials && MPLBACKEND=Agg ../../$(BIN)/jupytext --to ipynb --execute *.py

clean:
	rm -rf $(VENV) build *.egg-info
