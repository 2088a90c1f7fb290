# Fresh-machine entry points: `make demo` and `make test` each set up everything they need.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench bench-quick clean model-3d model-2d bench-gpu

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, from TORCH_SPEC, so that the package's `torch>=2.4` is already satisfied
# and pip does not fetch a CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,gui]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/intermodal demo --overwrite

test: setup
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests

# The benchmark suite (benchmarks/suite.py): every dataset x every method, 3 timed runs each,
# then RESULTS.md's tables and plots from the stored measurements (hours on two cores).
bench: setup
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	nice -n 5 $(BIN)/python benchmarks/suite.py
	$(BIN)/python benchmarks/tables.py

# A few cases per dataset, the default against the strongest peers (under 15 min on two cores)
bench-quick: setup
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	nice -n 5 $(BIN)/python benchmarks/suite.py --quick
	$(BIN)/python benchmarks/tables.py

# On a machine with a CUDA GPU (and a CUDA build of torch: TORCH_SPEC=...): intermodal's rows
# on the GPU, stored as intermodal@cuda beside the CPU rows
bench-gpu: setup
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/suite.py --device cuda --methods intermodal,intermodal_model_none \
		--datasets synthetic_3d,rendered,real_motion,real_pair
	$(BIN)/python benchmarks/tables.py

# Retrain a bundled model from nothing: train on generated pairs (configs/general3d.toml,
# general2d.toml; a second call resumes), install the best checkpoint into the package.
model-3d: setup
	$(BIN)/python tools/train_bundled.py general3d

model-2d: setup
	$(BIN)/python tools/train_bundled.py general2d

clean:
	rm -rf $(VENV) intermodal-demo .pytest_cache
