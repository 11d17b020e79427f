# The two commands of the README: `make demo` and `make test`. Both create .venv here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
ASSETS := ../shared/assets
DEMO_OUT := out/demo

.PHONY: setup setup-test demo test lint clean

setup: $(VENV)/.runtime
$(VENV)/.runtime: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

# torch is pinned so that pip takes the build that lies on this project's machines' disks;
# sam2 is source-only and builds against that torch (no build isolation, no CUDA kernels).
setup-test: $(VENV)/.test
$(VENV)/.test: $(VENV)/.runtime
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	SAM2_BUILD_CUDA=0 $(BIN)/python -m pip install -q --no-build-isolation "sam2==1.1.0"
	$(BIN)/python -m pip install -q -e ".[export,dev,ray,bench]"
	touch $@

demo: setup
	$(BIN)/python -m detseg.demo --out $(DEMO_OUT)

test: setup-test
	$(BIN)/python -m pytest -q

lint: setup-test
	$(BIN)/ruff check detseg tests bench

clean:
	rm -rf $(VENV) out build *.egg-info
