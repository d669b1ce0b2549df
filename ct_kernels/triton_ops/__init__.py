"""Triton backend: fused patch labels and fused SupCon / InfoNCE forward and backward.

Implements the KERNEL CONTRACT of ``ct_kernels.backends``. Runs on CUDA tensors, and on CPU
tensors only under ``TRITON_INTERPRET=1`` (set before triton is first imported; for tests).
"""
from __future__ import annotations

import torch

try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401
except Exception as exc:  # pragma: no cover - depends on the environment
    AVAILABLE = False
    UNAVAILABLE_REASON = f"triton cannot be imported ({type(exc).__name__}: {exc})"
else:
    from .version import too_old_reason
    UNAVAILABLE_REASON = too_old_reason()
    AVAILABLE = not UNAVAILABLE_REASON

_OPS = ("supcon_loss", "supcon", "supcon_forward", "supcon_backward", "patch_labels")


def supports(op: str, dtype=None) -> bool:
    """Whether this backend has a kernel for ``op`` on ``dtype`` inputs (all of them, when a
    Triton it supports imports; float64 needs Triton 3.5)."""
    if not AVAILABLE or op not in _OPS:
        return False
    from .version import HAS_FP64_DOT
    return HAS_FP64_DOT or dtype != torch.float64


if AVAILABLE:
    from .patch_labels import patch_labels
    from .supcon import MAX_HARD_K, supcon_backward, supcon_forward
else:  # pragma: no cover
    MAX_HARD_K = 0

    def _missing(*args, **kwargs):
        raise RuntimeError(UNAVAILABLE_REASON)

    patch_labels = supcon_forward = supcon_backward = _missing

__all__ = ["AVAILABLE", "UNAVAILABLE_REASON", "MAX_HARD_K", "supports", "supcon_forward",
           "supcon_backward", "patch_labels"]
