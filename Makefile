# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv with the pinned environment and build the extension themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# nvcc on PATH may be a wrapper script: point torch at the real toolkit root for lib64.
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda-13.0 /usr/local/cuda))
export CUDA_HOME
export MAX_JOBS ?= 2

.PHONY: env build build-cuda test test-fast test-torch211 test-torch212 test-torch213 test-torch25 test-torch28 test-compat test-triton39 demo quickstart bench gpu-check clean

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

# The suite under the other supported torch releases, on this CPU: each in its own venv
# (.venv-torch2NN) and a copy of the tree, the extension built against that torch with its CUDA
# kernels, tests through that torch's Triton interpreter. test-torch211 is the GPU machine's
# software (torch 2.11 + CUDA 13.0, Triton 3.6), worth running before a device session spends
# time on it. numpy < 2.3 because Triton 3.6's interpreter needs it; `!=V+cpu` because the local
# wheel folder holds CPU-only builds that pip would otherwise prefer (no CUDA kernels to build).
# Not part of `make test`; the first run of each downloads about 3 GB.
test-torch211:
	$(MAKE) test-compat COMPAT_TORCH=2.11.0 COMPAT_VISION=0.26.0
test-torch212:
	$(MAKE) test-compat COMPAT_TORCH=2.12.1 COMPAT_VISION=0.27.1
test-torch213:
	$(MAKE) test-compat COMPAT_TORCH=2.13.0 COMPAT_VISION=0.28.0
# Older torch, the C++ kernels only (their CUDA builds want a CUDA 12 nvcc, which this machine
# lacks): 2.5 is install_requires' minimum; its Triton (3.1) is too old for the kernels (the
# backend says so and its tests skip). 2.8 brings Triton 3.4: everything but float64 Triton.
test-torch25:
	$(MAKE) test-compat COMPAT_TORCH=2.5.1 COMPAT_VISION=0.20.1 COMPAT_CUDA=0
test-torch28:
	$(MAKE) test-compat COMPAT_TORCH=2.8.0 COMPAT_VISION=0.23.0 COMPAT_CUDA=0

COMPAT_NAME = torch$(subst .,,$(basename $(COMPAT_TORCH)))
COMPAT_VENV = .venv-$(COMPAT_NAME)
COMPAT_DIR  = build/compat-$(COMPAT_NAME)
COMPAT_CUDA = 1
test-compat:
	test -n "$(COMPAT_TORCH)" -a -n "$(COMPAT_VISION)" || \
		{ echo "test-compat needs COMPAT_TORCH=2.x.y and COMPAT_VISION=0.x.y" >&2; exit 2; }
	test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/pip install -q --upgrade pip  # a venv's own pip 23 edits installs through setup.py develop
	$(COMPAT_VENV)/bin/pip install -q "torch==$(COMPAT_TORCH),!=$(COMPAT_TORCH)+cpu" \
		"torchvision==$(COMPAT_VISION),!=$(COMPAT_VISION)+cpu" "numpy<2.3" timm pytest ninja \
		setuptools wheel pytorch-metric-learning
	rm -rf $(COMPAT_DIR) && mkdir -p $(COMPAT_DIR)
	git ls-files -z | xargs -0 cp --parents -t $(COMPAT_DIR)
	cd $(COMPAT_DIR) && CT_KERNELS_BUILD_CUDA=$(COMPAT_CUDA) $(abspath $(COMPAT_VENV))/bin/pip install -q --no-build-isolation \
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
