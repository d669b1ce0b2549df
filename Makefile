# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv with the pinned environment and build the extension themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# nvcc on PATH may be a wrapper script: point torch at the real toolkit root for lib64.
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda-13.0 /usr/local/cuda))
export CUDA_HOME
export MAX_JOBS ?= 2

.PHONY: env build build-cuda test test-fast test-torch211 test-triton39 demo quickstart bench gpu-check clean

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

# The GPU machine's software (torch 2.11 + CUDA 13.0, Triton 3.6) on this CPU, before a device
# session spends time on it: its own venv and a copy of the tree (the extension is built against
# that torch, CUDA kernels included), tests through Triton 3.6's interpreter, which needs
# numpy < 2.3. Not part of `make test`; the first run downloads about 3 GB.
COMPAT_VENV := .venv-torch211
COMPAT_DIR  := build/compat-torch211
test-torch211:
	test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/pip install -q torch==2.11.0 torchvision==0.26.0 "numpy<2.3" timm pytest ninja \
		setuptools wheel pytorch-metric-learning
	rm -rf $(COMPAT_DIR) && mkdir -p $(COMPAT_DIR)
	git ls-files -z | xargs -0 cp --parents -t $(COMPAT_DIR)
	cd $(COMPAT_DIR) && CT_KERNELS_BUILD_CUDA=1 $(abspath $(COMPAT_VENV))/bin/pip install -q --no-build-isolation \
		--no-deps -e .
	cd $(COMPAT_DIR) && $(abspath $(COMPAT_VENV))/bin/python -m pytest tests -q -ra -p no:cacheprovider

# Triton 3.9, the newest the package supports, under the development torch (which pins 3.8, so
# pip would not put 3.9 in the venv): the wheel goes to its own folder, which PYTHONPATH puts
# before the venv's Triton. The interpreter for the suite; offline_compile --check (the sm_80 /
# sm_90 compiles) runs within it. Not part of `make test`.
TRITON39_DIR := build/triton39
test-triton39: build-cuda
	test -f $(TRITON39_DIR)/triton/__init__.py || $(PY) -m pip install -q --no-deps --target $(TRITON39_DIR) \
		triton==3.9.0
	PYTHONPATH=$(abspath $(TRITON39_DIR)) $(PY) -m pytest tests -q -ra -p no:cacheprovider

clean:
	rm -rf build *.egg-info ct_kernels/_C*.so
