"""ct_kernels: fused supervised patch-level contrastive losses for vision transformers.

Public API (see DESIGN.md): ``patch_labels``, ``supcon_loss``, ``ContrastivePatchLoss``,
``ProjectionHead``, and ``available_backends`` / ``backend_for`` to see what runs where.
"""
from __future__ import annotations


from . import backends as _backends
from .memory_bank import MemoryBank
from .module import ContrastivePatchLoss, ProjectionHead
from .patch import patch_labels
from .supcon import backend_for, supcon_loss

__version__ = "0.1.0"


def available_backends() -> dict[str, str]:
    """Each backend and whether it is installed ('ok', or why not). Where it runs is another
    question: triton takes CUDA tensors (CPU ones only under TRITON_INTERPRET=1), native what the
    build holds; ``backend_for(device, backend)`` answers for a device, with the reason if not."""
    out = {"torch": "ok"}
    out["triton"] = "ok" if _backends._load_triton() is not None else _backends.triton_unavailable_reason()
    from . import _native
    out["native"] = "ok" if _native.available() else _native.unavailable_reason()
    return out


__all__ = ["patch_labels", "supcon_loss", "ContrastivePatchLoss", "ProjectionHead", "MemoryBank",
           "backend_for", "available_backends"]
