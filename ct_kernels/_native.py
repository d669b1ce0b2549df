"""Loader for the compiled extension ``ct_kernels._C``.

The package imports and runs (torch backend) without it; asking for ``backend="native"`` then
raises an error naming what is missing. Ops are registered with ``TORCH_LIBRARY(ct_kernels, ...)``
and reached as ``torch.ops.ct_kernels.*``; this module adds fake (meta) kernels so that
``torch.compile`` traces them, and the wrappers with the kernel-contract signatures of
``ct_kernels.backends``.

``saved`` of :func:`supcon_forward` is ``(npos, stats, thr_val, thr_col)`` (one row per anchor):
``stats`` (M, 2) [log-sum-exp, infonce weight], ``thr_val``/``thr_col`` (M, 2) the per-row
hard-mining thresholds [positive side, negative side] (value and column); see csrc/common.h.
"""
from __future__ import annotations

import sys

import torch

from .backends import anchor_slice

_LOAD_ERROR: str | None = None
try:
    from . import _C  # noqa: F401  (loading the library registers the ops)
except ImportError as exc:  # pragma: no cover - depends on the build
    _LOAD_ERROR = str(exc)
    if not sys.platform.startswith("linux"):  # setup.py skips it there (CT_KERNELS_BUILD_EXT)
        _LOAD_ERROR += f" (setup.py builds it on Linux only; on {sys.platform} set CT_KERNELS_BUILD_EXT=1 to try)"

# Largest num_classes the native patch_labels accepts (per-patch histograms live on chip).
MAX_CLASSES = 1024


def available() -> bool:
    return _LOAD_ERROR is None


def unavailable_reason() -> str:
    return _LOAD_ERROR or ""


# public op name (as passed to backends.resolve) -> the registered operators it needs
_OPS = {
    "patch_labels": ("patch_labels",),
    "supcon_loss": ("supcon_forward", "supcon_backward"),
    "supcon_forward": ("supcon_forward",),
    "supcon_backward": ("supcon_backward",),
}


def _query_kernel(op_name: str, key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"ct_kernels::{op_name}", key)
    except RuntimeError:
        return False


# Read once at import: a plain dict lookup later is traceable by torch.compile, whereas the
# dispatcher query would break the graph.
_KERNELS = {(name, key): available() and _query_kernel(name, key)
            for names in _OPS.values() for name in names for key in ("CPU", "CUDA")}


def _has_kernel(op_name: str, device: torch.device) -> bool:
    return _KERNELS.get((op_name, "CUDA" if device.type == "cuda" else "CPU"), False)


def supports(op: str, device: torch.device) -> bool:
    names = _OPS.get(op)
    device = torch.device(device)
    return available() and names is not None and all(_has_kernel(n, device) for n in names)


def missing_reason(op: str, device: torch.device) -> str:
    device = torch.device(device)
    if not available():
        return f"the extension ct_kernels._C could not be loaded ({unavailable_reason()})"
    if op not in _OPS:
        return f"{op} is not implemented in the native extension"
    if device.type == "cuda":
        return ("the extension was built without CUDA kernels; rebuild on a machine with nvcc and a "
                "GPU, or with CT_KERNELS_BUILD_CUDA=1 (pip install --no-build-isolation -e .)")
    return f"no {device.type} kernel is registered for {op}"


# ---------------------------------------------------------------------------------------------
# fake kernels (shapes/dtypes only) so torch.compile can trace the ops without graph breaks

def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


if available():
    # The fake kernels also serve as the ops' Meta kernels, and Meta outranks CPU in dispatch: one
    # meta tensor among CPU ones would reach them, not the C++ checks, and hand back uninitialised
    # CPU memory as the result. So they check what C++ checks about devices, ranks and the slice.
    def _check_supcon(u, labels, tensors, row_start, row_count):
        torch._check(u.dim() == 2 and labels.dim() == 1 and labels.shape[0] == u.shape[0],
                     lambda: f"ct_kernels: u must be (M, D) and labels (M,), got {tuple(u.shape)}, {tuple(labels.shape)}")
        for t in (labels,) + tuple(tensors):
            torch._check(t.device == u.device,
                         lambda: f"ct_kernels: every tensor must be on u's device ({u.device}), got {t.device}")
        m = u.shape[0] - row_start if row_count < 0 else row_count
        torch._check(0 <= row_start <= u.shape[0] and 0 <= m <= u.shape[0] - row_start,
                     lambda: f"ct_kernels: anchor rows {row_start}..{row_start + m} not inside the {u.shape[0]} rows")
        return m

    @torch.library.register_fake("ct_kernels::patch_labels")
    def _patch_labels_fake(mask, ph, pw, num_classes, ignore_index):
        torch._check(mask.dim() == 3 and ph > 0 and pw > 0 and mask.shape[1] % ph == 0 and mask.shape[2] % pw == 0,
                     lambda: f"ct_kernels: mask must be (B, H, W) with H, W divisible by ({ph}, {pw})")
        b, h, w = mask.shape
        labels = mask.new_empty((b, h // ph, w // pw), dtype=torch.int64)
        purity = mask.new_empty((b, h // ph, w // pw), dtype=torch.float32)
        bad = mask.new_empty((1,), dtype=torch.int32)
        return labels, purity, bad

    @torch.library.register_fake("ct_kernels::supcon_forward")
    def _supcon_forward_fake(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, row_start=0,
                             row_count=-1):
        m = _check_supcon(u, labels, (), row_start, row_count)
        acc = _acc_dtype(u.dtype)
        return (u.new_empty((m,), dtype=acc), u.new_empty((m,), dtype=torch.int32),
                u.new_empty((m, 2), dtype=acc), u.new_empty((m, 2), dtype=acc),
                u.new_empty((m, 2), dtype=torch.int64))

    @torch.library.register_fake("ct_kernels::supcon_backward")
    def _supcon_backward_fake(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32,
                              npos, stats, thr_val, thr_col, grad_rows, row_start=0, row_count=-1):
        saved = tuple(t for t in (npos, stats, thr_val, thr_col, grad_rows) if t is not None)
        m = _check_supcon(u, labels, saved, row_start, row_count)
        return u.new_empty((m, u.shape[1]))


# ---------------------------------------------------------------------------------------------
# wrappers with the kernel-contract signatures (ct_kernels.backends)

def patch_labels(mask: torch.Tensor, ph: int, pw: int, num_classes: int, ignore_index: int):
    if num_classes > MAX_CLASSES:
        raise ValueError(f"num_classes={num_classes} is above the native backend's limit of "
                         f"{MAX_CLASSES}; use backend='torch' (triton has the same limit)")
    # Checked here as well as in C++: on the GPU machine (torch 2.11) a TORCH_CHECK thrown from
    # this op's CPU kernel crashed the process (see tests/test_native_patch_labels.py), so the
    # user-facing path never relies on the C++ throw.
    if mask.dim() != 3 or ph <= 0 or pw <= 0 or mask.shape[1] % ph or mask.shape[2] % pw:
        raise ValueError(f"patch_labels: mask must be 3-D (B, H, W) with H, W divisible by the patch size "
                         f"({ph}, {pw}), got shape {tuple(mask.shape)}")
    return torch.ops.ct_kernels.patch_labels(mask, int(ph), int(pw), int(num_classes), int(ignore_index))


def supcon_forward(u: torch.Tensor, labels: torch.Tensor, ignore_index: int, inv_temp: float,
                   variant: str, kp: int, kn: int, allow_tf32: bool, start: int = 0, count: int | None = None):
    anchor_slice(u.shape[0], start, count)  # before the op: see patch_labels
    loss_rows, npos, stats, thr_val, thr_col = torch.ops.ct_kernels.supcon_forward(
        u, labels, int(ignore_index), float(inv_temp), variant, int(kp), int(kn), bool(allow_tf32),
        int(start), -1 if count is None else int(count))
    return loss_rows, npos, (npos, stats, thr_val, thr_col)


def supcon_backward(u: torch.Tensor, labels: torch.Tensor, ignore_index: int, inv_temp: float,
                    variant: str, kp: int, kn: int, allow_tf32: bool, saved, grad_rows: torch.Tensor,
                    start: int = 0, count: int | None = None):
    anchor_slice(u.shape[0], start, count)
    npos, stats, thr_val, thr_col = saved
    return torch.ops.ct_kernels.supcon_backward(
        u, labels, int(ignore_index), float(inv_temp), variant, int(kp), int(kn), bool(allow_tf32),
        npos, stats, thr_val, thr_col, grad_rows, int(start), -1 if count is None else int(count))
