#!/usr/bin/env bash
# Why does a TORCH_CHECK thrown from ct_kernels._C kill the process on the GPU machine?
#
# Seen there (H200, torch 2.11, 2026-11-26 and -27): every raw-op call that should raise (an anchor
# slice outside the rows, num_classes over the limit, a bad mask shape) ended in "Fatal Python
# error: Segmentation fault" inside torch/_ops.py, CPU tensors included; here (torch 2.11 and 2.14,
# gcc 12) the same calls raise. The Python wrappers now check first, so only raw ops reach it.
# This script narrows it down in one short device call (needs the extension built in place):
#   OUT=/some/dir bash benchmarks/debug_native_throw.sh
# 1. toolchain and link facts; 2. a minimal extension that throws, built with torch's own
# flags, without and with -fopenmp (our only extra link flag); 3. our op, in a subprocess;
# 4. cuda-gdb's backtrace of the crash (the machine has no gdb).
set -u
OUT=${OUT:-/tmp/ct_debug_out}
mkdir -p "$OUT"
log="$OUT/throw.log"
exec > >(tee -a "$log") 2>&1
so=$(ls ct_kernels/_C*.so 2>/dev/null | head -1)
echo "== toolchain"; g++ --version | head -1; nvcc --version | tail -1
python3 -c "import torch; print('torch', torch.__version__, 'cxx11 abi', torch._C._GLIBCXX_USE_CXX11_ABI); print(torch.__config__.show())" | head -12
echo "== $so"; ldd "$so" | grep -E "gomp|stdc|gcc_s|c10|torch" ; readelf -d "$so" | grep -E "NEEDED|RPATH|RUNPATH"
nm -D --defined-only "$so" | grep -E " (_Unwind|__gxx_personality|__cxa_throw|_ZTI.*c10)" | head
echo "== LD_BIND_NOW import"; LD_BIND_NOW=1 python3 -c "import ct_kernels._C; print('import ok')"

cat > /tmp/throw_ext.cpp <<'EOF'
#include <ATen/core/Tensor.h>
#include <torch/library.h>
at::Tensor throwing(const at::Tensor& x) { TORCH_CHECK(x.dim() == 99, "throwing: expected 99 dims"); return x; }
TORCH_LIBRARY(ct_throw_probe, m) { m.def("throwing(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(ct_throw_probe, CompositeExplicitAutograd, m) { m.impl("throwing", &throwing); }
EOF
for flags in "" "-fopenmp"; do
  echo "== minimal extension, extra flags: '${flags}'"
  FLAGS="$flags" timeout 120 python3 - <<'EOF'
import os, torch
from torch.utils.cpp_extension import load
flags = os.environ["FLAGS"].split()
name = "ct_throw_probe" + ("_omp" if flags else "")
load(name=name, sources=["/tmp/throw_ext.cpp"], extra_cflags=["-O3"] + flags, extra_ldflags=flags,
     is_python_module=False, verbose=False)
try:
    torch.ops.ct_throw_probe.throwing(torch.zeros(2))
except RuntimeError as e:
    print("raised as it should:", str(e).splitlines()[0])
EOF
  echo "rc=$?"
done

echo "== our op (subprocess)"
cat > /tmp/throw_ours.py <<'EOF'
import torch, ct_kernels._C  # noqa: F401
try:
    torch.ops.ct_kernels.patch_labels(torch.zeros((1, 5, 4), dtype=torch.int64), 2, 2, 3, 255)
except RuntimeError as e:
    print("raised as it should:", str(e).splitlines()[0])
EOF
timeout 60 python3 /tmp/throw_ours.py; echo "rc=$?"
if command -v cuda-gdb >/dev/null; then
  echo "== cuda-gdb backtrace"
  timeout 120 cuda-gdb -batch -ex run -ex bt -ex "info sharedlibrary" --args python3 /tmp/throw_ours.py 2>&1 | tail -60
fi
