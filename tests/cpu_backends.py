"""The backends that can run on CPU tensors in this test session (shared by the test files)."""
import os

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
