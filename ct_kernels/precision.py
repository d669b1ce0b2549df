"""Read PyTorch's float32 matmul precision setting the same way on every supported torch."""
from __future__ import annotations

import torch


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
