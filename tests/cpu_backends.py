"""The backends that can run in this test session (shared by the test files)."""
import os

import torch

import ct_kernels as ct


def cpu_backends(with_triton: bool = True) -> list[str]:
    """torch always; native when the extension has CPU kernels; triton only under the interpreter."""
    names = ["torch"]
    avail = ct.available_backends()
    if avail["native"] == "ok" and ct.backend_for("cpu", "native") == "native":
        names.append("native")
    if with_triton and avail["triton"] == "ok" and os.environ.get("TRITON_INTERPRET") == "1":
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
