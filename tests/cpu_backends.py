"""The backends that can run in this test session (shared by the test files)."""
import os

import pytest
import torch

import ct_kernels as ct


def _triton_fp64_dot() -> bool:
    try:
        from ct_kernels.triton_ops import version
    except Exception:  # no Triton: the Triton tests skip for that reason
        return True
    return version.HAS_FP64_DOT


TRITON_FP64_DOT = _triton_fp64_dot()
# Triton 3.4 (torch 2.8's) has no float64 tl.dot: the backend raises for float64 (tested in
# test_triton_version.py) and these tests of its float64 results skip
needs_fp64_dot = pytest.mark.skipif(not TRITON_FP64_DOT, reason="Triton before 3.5 has no float64 tl.dot")


def cpu_backends(with_triton: bool = True) -> list[str]:
    """torch always; native when the extension has CPU kernels; triton only under the interpreter,
    with a Triton that computes float64 (the precision the shared tests compare in)."""
    names = ["torch"]
    avail = ct.available_backends()
    if avail["native"] == "ok" and ct.backend_for("cpu", "native") == "native":
        names.append("native")
    if with_triton and avail["triton"] == "ok" and os.environ.get("TRITON_INTERPRET") == "1" and TRITON_FP64_DOT:
        names.append("triton")
    return names


def backend_devices() -> list[tuple[str, str]]:
    """(backend, device) pairs: every CPU backend on "cpu", and native / triton on "cuda" where a
    GPU is visible and the backend has CUDA kernels."""
    cases = [(b, "cpu") for b in cpu_backends()]
    if torch.cuda.is_available():
        for b in ("native", "triton"):
            try:
                if ct.backend_for("cuda", b) == b:
                    cases.append((b, "cuda"))
            except RuntimeError:
                pass
    return cases
