"""Loader for the compiled extension ``ct_kernels._C``.

The package imports and runs (torch backend) without it; asking for ``backend="native"`` then
raises an error naming what is missing. Ops are registered with ``TORCH_LIBRARY(ct_kernels, ...)``
and reached as ``torch.ops.ct_kernels.*``.
"""
from __future__ import annotations

import torch

_LOAD_ERROR: str | None = None
try:
    from . import _C  # noqa: F401  (loading the library registers the ops)
except ImportError as exc:  # pragma: no cover - depends on the build
    _LOAD_ERROR = str(exc)


def available() -> bool:
    return _LOAD_ERROR is None


def unavailable_reason() -> str:
    return _LOAD_ERROR or ""


_OPS = {"patch_labels": "patch_labels"}


def _has_kernel(op_name: str, device: torch.device) -> bool:
    key = "CUDA" if device.type == "cuda" else "CPU"
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"ct_kernels::{op_name}", key)
    except RuntimeError:
        return False


def supports(op: str, device: torch.device) -> bool:
    name = _OPS.get(op)
    return name is not None and _has_kernel(name, device)


def missing_reason(op: str, device: torch.device) -> str:
    if op not in _OPS:
        return f"{op} is not implemented in the native extension yet"
    if device.type == "cuda":
        return ("the extension was built without CUDA kernels; rebuild on a machine with nvcc and a "
                "GPU, or set CT_KERNELS_BUILD_CUDA=1")
    return f"no {device.type} kernel is registered for {op}"


def patch_labels(mask: torch.Tensor, ph: int, pw: int, num_classes: int, ignore_index: int):
    return torch.ops.ct_kernels.patch_labels(mask, ph, pw, num_classes, ignore_index)
