"""Build a tests/emu driver with the host C++ compiler, once per session and source digest."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

EMU = Path(__file__).resolve().parent / "emu"
KERNELS = Path(__file__).resolve().parents[1] / "csrc" / "cuda"


def build_emulator(tmp_path_factory, driver: str) -> Path:
    """Compile tests/emu/<driver> (C++20, threads); skip when no compiler is at hand."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("needs a C++20 host compiler (g++) to build the warp emulator")
    # the binary's name carries a digest of every file it may include
    sources = [EMU / driver, *sorted(EMU.glob("*.h")), *sorted(KERNELS.glob("*.cuh")), *sorted(KERNELS.glob("*.h"))]
    digest = hashlib.sha1(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    out = tmp_path_factory.mktemp("emu") / f"{Path(driver).stem}_{digest}"
    # -fno-strict-aliasing: the kernels read 16-byte pieces through uint4 pointers, as CUDA allows
    cmd = [cxx, "-std=c++20", "-O2", "-pthread", "-fno-strict-aliasing", "-Wall", "-Wno-unknown-pragmas",
           "-o", str(out), str(EMU / driver)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    return out
