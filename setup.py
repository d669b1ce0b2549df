"""Build ct_kernels and its compiled extension ct_kernels._C.

C++ (CPU kernels) is built on Linux (elsewhere only with CT_KERNELS_BUILD_EXT=1;
CT_KERNELS_BUILD_EXT=0 skips it: the package then runs the torch backend). CUDA kernels are added
when torch was built with CUDA, nvcc is found, and either a GPU is visible or
CT_KERNELS_BUILD_CUDA=1 (CI sets it on GPU-less machines). CT_KERNELS_BUILD_CUDA=0 forces a
CPU-only build. TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0+PTX" when unset (torch's build fails
with no GPU and no list).

Device code lives in csrc/cuda/*.cu files that include CUDA headers only (fast to compile);
thin csrc/**/*.cpp files include ATen and register the ops with TORCH_LIBRARY.
"""
from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _guess_cuda_home() -> None:
    """Point CUDA_HOME at a real toolkit when only a wrapper nvcc is on PATH.

    torch.utils.cpp_extension derives CUDA_HOME from `which nvcc` at import time; a wrapper script
    in /usr/local/bin would give /usr/local, which has no lib64/ or include/cuda_runtime.h.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:  # a shell wrapper that execs the real nvcc: read its target
            with open(nvcc, "r", errors="ignore") as f:
                for tok in f.read(4096).split():
                    if tok.endswith("/bin/nvcc") and os.path.exists(tok):
                        candidates.append(os.path.dirname(os.path.dirname(tok)))
        except OSError:
            pass
    candidates.append("/usr/local/cuda")
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        if os.path.exists(os.path.join(c, "include", "cuda_runtime.h")) and os.path.exists(
                os.path.join(c, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = c
            return


_guess_cuda_home()

try:
    import torch  # noqa: E402
except ImportError:  # pip's build isolation hides the user's torch: the extension must match it
    sys.exit("ct_kernels: building the extension needs the torch it will run with, and none was "
             "found. Install torch first, then build against it with "
             "`pip install --no-build-isolation .` (pip's isolated build environment has no torch).")
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda() -> tuple[bool, str]:
    flag = os.environ.get("CT_KERNELS_BUILD_CUDA", "")
    if flag == "0":
        return False, "CT_KERNELS_BUILD_CUDA=0"
    if torch.version.cuda is None:
        return False, "torch has no CUDA"
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return False, "nvcc not found (set CUDA_HOME)"
    if flag == "1":
        return True, "CT_KERNELS_BUILD_CUDA=1"
    if torch.cuda.is_available():
        return True, "a GPU is visible"
    return False, "no GPU visible and CT_KERNELS_BUILD_CUDA is not 1"


def _nvidia_includes() -> list[str]:
    """Headers of the pip `nvidia-*` packages (cusparse.h etc.) that torch's headers include."""
    out = []
    for p in sys.path:
        out += glob.glob(os.path.join(p, "nvidia", "*", "include"))
    seen, res = set(), []
    for d in out:
        d = os.path.realpath(d)
        if d not in seen and os.path.isdir(d):
            seen.add(d)
            res.append(d)
    return res


def _want_extension() -> tuple[bool, str]:
    flag = os.environ.get("CT_KERNELS_BUILD_EXT", "")
    if flag in ("0", "1"):
        return flag == "1", f"CT_KERNELS_BUILD_EXT={flag}"
    if sys.platform.startswith("linux"):
        return True, "Linux"
    # The C++ sources use GCC / Clang attributes, ELF's ifunc and OpenMP (Apple's clang has none):
    # elsewhere the package installs without them and runs the torch backend (triton where Triton runs).
    return False, f"built on Linux only, this is {sys.platform}; CT_KERNELS_BUILD_EXT=1 tries anyway"


def _extensions():
    want, why = _want_extension()
    if not want:
        print(f"ct_kernels: building the extension ct_kernels._C: False ({why})", flush=True)
        return []
    with_cuda, why = _want_cuda()
    print(f"ct_kernels: building CUDA kernels: {with_cuda} ({why})", flush=True)
    rel = lambda paths: sorted(os.path.relpath(p, ROOT) for p in paths)  # noqa: E731
    sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) +
                  glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    # -fno-trapping-math: no code here reads floating-point exception flags; without it GCC
    # will not if-convert the masked exp of the CPU row loops for AVX2 (an FP op under a mask
    # "could trap"), and those loops stay scalar outside AVX-512 (tests/test_native_cpu.py).
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    define_macros = []
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        sources += rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")) +
                       glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
        return [CUDAExtension(
            "ct_kernels._C", sources, include_dirs=include_dirs + _nvidia_includes(),
            define_macros=define_macros + [("CT_KERNELS_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"])]
    return [CppExtension("ct_kernels._C", sources, include_dirs=include_dirs,
                         define_macros=define_macros,
                         extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]


os.environ.setdefault("MAX_JOBS", "2")

setup(
    name="ct_kernels",
    version="0.1.0",
    description="Fused supervised patch-level contrastive loss kernels for PyTorch (O(N*D) memory)",
    packages=find_packages(include=["ct_kernels", "ct_kernels.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.5"],  # the oldest checked (make test-torch25: C++ kernels, CPU)
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
