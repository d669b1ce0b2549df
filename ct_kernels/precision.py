"""Read PyTorch's float32 matmul precision setting the same way on every supported torch."""
from __future__ import annotations

import contextlib
import os

import torch


# Read at trace time under torch.compile (dynamo cannot trace the fp32_precision getter, a pybind
# builtin: a graph break, an error with fullgraph=True); like PyTorch's own matmul precision, the
# setting in force when the graph was compiled is the one it keeps.
# Call it as an attribute of this module (precision.fp32_matmul_allows_tf32()): torch 2.5's dynamo
# stores the constant it read in the caller's globals under the name the caller used, so a caller
# that imported the function by name finds a bool there afterwards ('bool' object is not callable).
@torch.compiler.assume_constant_result
def fp32_matmul_allows_tf32() -> bool:
    """True when PyTorch itself would run a CUDA float32 matmul in tf32.

    torch >= 2.9 has ``torch.backends.cuda.matmul.fp32_precision`` ("ieee" | "tf32" | "none",
    "none" deferring to the global ``torch.backends.fp32_precision``). On those versions reading
    the legacy ``allow_tf32`` after the new API was used raises, so the new API is read first.
    """
    matmul = torch.backends.cuda.matmul
    prec = getattr(matmul, "fp32_precision", None)
    if prec is not None:
        if prec == "none":
            prec = getattr(torch.backends, "fp32_precision", "ieee")
        return prec == "tf32"
    return bool(matmul.allow_tf32)


FP32_3XTF32_ENV = "CT_KERNELS_FP32_3XTF32"
# what the tests and the selfcheck hold 3xTF32 to (norm-wise, against float64): exact float32 is
# held to 1e-5; dropping one correction product gives ~1e-3
FP32_3XTF32_TOLERANCE = 5e-5


def fp32_3xtf32() -> bool:
    """float32 without tf32 as three tf32 tensor-core products (hi*hi + hi*lo + lo*hi of tf32
    splits) instead of exact float32 FMA: CT_KERNELS_FP32_3XTF32=1 (opt-in, read at each call).

    About 2.5x faster on an H200 (N = 32768, D = 128: 23-27 ms against 67 ms), but not float32's
    accuracy: the dropped lo*lo term, lo's own rounding and the tensor cores' truncating
    accumulation leave ~4x float32's error per product, and measured gradient errors grew with
    the batch (1e-5 to 2.6e-5 of the float64 norm from M = 1000 to 4099), where exact float32 stays
    near 1e-6. So it is not what PyTorch's "highest" precision promises, and not the default.
    Since then the Triton backward sums each column tile's products in a fresh accumulator and
    adds it to dU in IEEE float32, so that growth should be gone there (not yet measured; the
    native mma backward keeps one accumulator: a second would cost 64 registers a thread)."""
    return os.environ.get(FP32_3XTF32_ENV, "") == "1"


@contextlib.contextmanager
def fp32_matmul_precision(tf32: bool):
    """Within: CUDA float32 matmuls in tf32 (True) or full float32 (False), restored after; the
    same new-API-first rule as fp32_matmul_allows_tf32."""
    matmul = torch.backends.cuda.matmul
    attr, value = (("fp32_precision", "tf32" if tf32 else "ieee") if hasattr(matmul, "fp32_precision")
                   else ("allow_tf32", bool(tf32)))
    old = getattr(matmul, attr)
    setattr(matmul, attr, value)
    try:
        yield
    finally:
        setattr(matmul, attr, old)


# The backward multiplies the gradient weights H (n x n, never stored) by U in the input dtype. With
# reduction="mean" the upstream weights g are ~1 / N and the softmax weights ~1 / N, so H ~ 1 / N^2:
# at N = 32768 that is 1e-9, below fp16's smallest subnormal (6e-8). A power of two applied to g
# (so to H) before that product and divided out of dU after is exact and keeps H in range.
HALF_H_TARGET_LOG2 = 14


def half_weight_scale(grad_rows: torch.Tensor, m: int) -> torch.Tensor:
    """Device scalar (no host sync): 2**floor(log2(min(m, 2**14) / max|g|)), the exponent clamped
    to [-100, 100]; 1 where g is all zero or not finite. H's largest entries are then below
    2 * 2**14 (fp16's max is 65504), its typical ones (~ max|g| / m) near 1.

    The native CUDA extension applies the same rule (csrc/cuda/supcon.cpp, half_weight_scale)."""
    gmax = grad_rows.detach().abs().max().to(torch.float32)
    lim = float(min(max(int(m), 1), 2 ** HALF_H_TARGET_LOG2))
    e = torch.floor(torch.log2(lim / gmax)).clamp(-100, 100)
    ok = torch.isfinite(gmax) & (gmax > 0)
    return torch.where(ok, torch.exp2(e), torch.ones_like(e))
