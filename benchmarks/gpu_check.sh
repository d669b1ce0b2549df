#!/usr/bin/env bash
# The one prepared device run: build the extension, GPU tests, sanitizer, headline benchmark.
# Usage on the GPU machine, from the repo root: OUT=/some/dir bash benchmarks/gpu_check.sh [bench-mode]
# PHASES (default "tests sanitize bench") picks what runs after the build. All three need more than
# one 600 s device call (build ~30 s, selfcheck ~30 s (<= 120 + 60 s), tests <= 240 s, select test
# <= 90 s, sanitizer <= 40 + 90 s, bench <= BENCH_BUDGET + 60 s),
# so a session with 15 device minutes makes two calls, the second right after the first (warm machine):
#   PHASES="tests sanitize" bash benchmarks/gpu_check.sh
#   PHASES=bench BENCH_BUDGET=300 bash benchmarks/gpu_check.sh headline
# TESTS, WORKERS, TEST_TIMEOUT, SELECT_TIMEOUT, SAN_TIMEOUT, SAN_HOSTILE_TIMEOUT and BENCH_BUDGET override the other
# defaults.
# Peers that the machine lacks travel as wheels in .whl/ (see benchmarks/README.md).
set -u
OUT=${OUT:-/tmp/ct_gpu_out}
MODE=${1:-headline}
PHASES=${PHASES:-tests sanitize bench}
has_phase() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } | tee "$OUT/env.txt"

start=$(date +%s)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1; echo "build rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
python3 -c "import ct_kernels as ct; print(ct.available_backends())" | tee -a "$OUT/env.txt"

# The files with CUDA cases (the CPU-only files ran in CI); Triton compiles dominate the time.
GPU_TESTS="tests/test_triton_supcon.py tests/test_triton_patch_labels.py tests/test_native_cuda.py \
tests/test_native_patch_labels.py tests/test_hostile.py tests/test_supcon_errors.py tests/test_anchor_slice.py \
tests/test_compile_cuda.py tests/test_cuda_graphs.py"
if has_phase tests; then
# the quick overview first (seconds): every fused backend and precision against float64, then the
# opt-in native mma.sync path the same way
timeout 120 python3 -m ct_kernels.selfcheck > "$OUT/selfcheck.log" 2>&1
echo "selfcheck rc=$? at $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
CT_KERNELS_NATIVE_MMA=1 timeout 60 python3 -m ct_kernels.selfcheck >> "$OUT/selfcheck.log" 2>&1
echo "selfcheck (native mma) rc=$? at $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
grep -E "FAILED|checks," "$OUT/selfcheck.log"
# SIGINT at the limit: pytest then still prints its summary (which tests failed), as it did not when
# a run was cut by SIGTERM; SIGKILL 20 s later if it hangs.
timeout -s INT -k 20 ${TEST_TIMEOUT:-240} python3 -m pytest ${TESTS:-$GPU_TESTS} -q -ra -p no:cacheprovider \
  --durations=15 -n ${WORKERS:-16} > "$OUT/tests.log" 2>&1
echo "tests rc=$? at $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
tail -30 "$OUT/tests.log"
# the select kernel at one pipelining stage (fewer spills on Triton 3.6) must pick the same bits
CT_KERNELS_TRITON_SELECT_STAGES=1 timeout -s INT -k 10 ${SELECT_TIMEOUT:-90} python3 -m pytest \
  tests/test_triton_supcon.py -k counting_select -q -p no:cacheprovider -n ${WORKERS:-16} > "$OUT/tests_select1.log" 2>&1
echo "select stages=1 tests rc=$? at $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
tail -3 "$OUT/tests_select1.log"
fi

if has_phase sanitize && [ -f benchmarks/sanitize_native.py ] && command -v compute-sanitizer >/dev/null; then
  timeout ${SAN_TIMEOUT:-40} compute-sanitizer --tool memcheck --error-exitcode 9 python3 benchmarks/sanitize_native.py > "$OUT/sanitizer.log" 2>&1
  echo "sanitizer rc=$? at $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
  tail -5 "$OUT/sanitizer.log"
  # the hostile-input catalogue on the native CUDA kernels (issue 7)
  timeout ${SAN_HOSTILE_TIMEOUT:-90} compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest tests/test_hostile.py \
    -k "native-cuda" -q -p no:cacheprovider > "$OUT/sanitizer_hostile.log" 2>&1
  echo "sanitizer hostile rc=$? at $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
  tail -5 "$OUT/sanitizer_hostile.log"
fi

if has_phase bench; then
timeout $(( ${BENCH_BUDGET:-180} + 60 )) python3 benchmarks/gpu_bench.py --mode "$MODE" --time-budget ${BENCH_BUDGET:-180} --out "$OUT/records.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$? at $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
cat "$OUT/bench.log" | cut -c1-160 | tail -80
fi
