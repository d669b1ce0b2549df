# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv with the pinned environment and build the extension themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# nvcc on PATH may be a wrapper script: point torch at the real toolkit root for lib64.
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda-13.0 /usr/local/cuda))
export CUDA_HOME
export MAX_JOBS ?= 2

.PHONY: env build build-cuda test test-fast demo quickstart bench gpu-check clean

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

env: $(VENV)/.installed

# Extension with CUDA kernels compiled even without a GPU (what CI proves builds).
build-cuda: env
	CT_KERNELS_BUILD_CUDA=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e .

# Extension as this machine can use it: CUDA only where a GPU is visible.
build: env
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

test: build-cuda
	$(PY) -m pytest tests -q -ra

demo: build
	$(PY) python/demo.py

quickstart: build
	$(PY) python/quickstart.py

bench: build
	$(PY) -m pytest benchmarks -q --benchmark-only

clean:
	rm -rf build *.egg-info ct_kernels/_C*.so
