# Fresh-machine entry points: `make demo` and `make test` each set up everything they need.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean model-3d model-2d bench-gpu

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

bench: setup
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/real_pair.py
	$(BIN)/python benchmarks/similarity_choice.py
	$(BIN)/python -m pip install --quiet itk-elastix
	OMP_NUM_THREADS=1 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 nice -n 10 $(BIN)/python benchmarks/compare.py
	nice -n 10 $(BIN)/python benchmarks/ants_seeds.py

# On a machine with a CUDA GPU (and a CUDA build of torch: TORCH_SPEC=...): section gpu_timings
bench-gpu: setup
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/gpu_timings.py --out benchmarks/measured/gpu_timings.json
	$(BIN)/python benchmarks/gpu_timings.py --render benchmarks/measured/gpu_timings.json

# Retrain a bundled model from nothing: train on generated pairs (configs/general3d.toml,
# general2d.toml; a second call resumes), install the best checkpoint into the package.
model-3d: setup
	$(BIN)/python tools/train_bundled.py general3d

model-2d: setup
	$(BIN)/python tools/train_bundled.py general2d

clean:
	rm -rf $(VENV) intermodal-demo .pytest_cache
