"""Backend resolution: which implementation runs an op, and clear errors when one is missing.

Kernel contract shared by every fused backend module (``ct_kernels.triton_ops`` and
``ct_kernels._native``); the autograd Function in ``supcon.py`` is written against it once:

``supcon_forward(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, start=0, count=None)``
    -> ``(loss_rows, npos, saved)``
    u: (M, D) contiguous rows as they enter the similarity (normalised already when requested),
       float32 / bfloat16 / float16 / float64; rows whose label == ignore_index are all zero.
    labels: (M,) int64 contiguous on u's device. kp / kn: hard-mining k, 0 meaning "all".
    Anchors are the rows start .. start + count of u (DESIGN.md: a contiguous slice; count None:
       to the end); every row of u is a column. The work is count x M tiles, not M x M.
    loss_rows: (count,) l_i for anchors with |P_i| > 0, exactly 0 elsewhere; float64 for float64
       input, float32 otherwise. npos: (count,) int32, |P_i| after mining.
    saved: tuple of per-anchor tensors, each with count rows first (or None where unused);
       never M x M.
``supcon_backward(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, saved, grad_rows,
start=0, count=None)`` -> ``du`` (count, D) in u's dtype: rows start .. start + count of
    d(sum_i grad_rows_i * l_i) / du with s_ij = inv_temp <u_i, u_j>, each row both as anchor and
    as column. ``saved`` and ``grad_rows`` cover all M rows: the forward's tensors of every
    anchor slice at their rows (``place_rows``), zeros elsewhere; a row with npos == 0 (and
    grad 0) takes no part as an anchor, so rows that were never anchors (memory-bank rows,
    another rank's padding) are zero-filled.
``patch_labels(mask, ph, pw, num_classes, ignore_index)`` -> ``(labels, purity, bad)``
    labels (B, H/ph, W/pw) int64, purity float32, bad: int32 tensor of one element counting
    pixels outside [0, num_classes) that are not ignore_index (read by the caller afterwards).
"""
from __future__ import annotations

import os
import types

import torch

BACKENDS = ("auto", "torch", "triton", "native")


def place_rows(saved: tuple, start: int, total: int) -> tuple:
    """The forward's per-anchor ``saved`` tensors of rows start .. start + count, placed in
    zero-filled tensors of ``total`` rows (None stays None): what supcon_backward reads."""
    out = []
    for t in saved:
        if t is None or (start == 0 and t.shape[0] == total):
            out.append(t)
            continue
        full = t.new_zeros((total,) + tuple(t.shape[1:]))
        full[start:start + t.shape[0]] = t
        out.append(full)
    return tuple(out)


def first_order_only(grad: torch.Tensor, u_in: torch.Tensor, what: str) -> torch.Tensor:
    """A fused backward's gradient, made to raise if it is differentiated again.

    The kernels compute dU outside autograd: under ``create_graph=True`` (a gradient penalty, say)
    a second derivative would silently miss this loss's part. ``once_differentiable`` raises only
    when the incoming gradient itself requires grad, which a gradient penalty's does not. Here,
    with grad mode on (create_graph), the gradient passes through an error node whose inputs
    include ``u_in``, the Function's input as saved for backward (its graph then reaches z), so
    any second derivative through this loss runs into it; first derivatives are unchanged.
    ``what``: the computation that gives first derivatives only, and what to use instead."""
    if not torch.is_grad_enabled() or not u_in.requires_grad:
        return grad
    err = torch._C._functions.DelayedError(f"ct_kernels: {what}".encode(), 2)
    return err(grad.detach().requires_grad_(), u_in)[0]


def anchor_slice(m: int, start: int, count: int | None) -> int:
    """The number of anchor rows of the slice start .. start + count of u's m rows (count None:
    to the end); ValueError if it does not lie inside them. Every fused backend checks this in
    Python before a kernel runs (the native ops check it again in C++)."""
    start = int(start)
    n = m - start if count is None else int(count)
    if not (0 <= start <= m and 0 <= n <= m - start):
        raise ValueError(f"anchor rows {start}..{start + n} are not inside the {m} rows of u")
    return n


def check_backend_name(backend: str) -> None:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _load_triton() -> types.ModuleType | None:
    try:
        from . import triton_ops
    except ImportError:
        return None
    return triton_ops if getattr(triton_ops, "AVAILABLE", False) else None


def _load_native() -> types.ModuleType | None:
    from . import _native
    return _native if _native.available() else None


def triton_unavailable_reason() -> str:
    try:
        from . import triton_ops
    except ImportError as exc:  # pragma: no cover - depends on the environment
        return f"importing ct_kernels.triton_ops failed ({exc})"
    return getattr(triton_ops, "UNAVAILABLE_REASON", "")


def triton_runs_on(device: torch.device) -> bool:
    """Triton kernels run on CUDA tensors, and on CPU tensors only under TRITON_INTERPRET=1."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


# backend="auto" on CUDA tensors: the faster fused backend per input precision, as measured by
# benchmarks/gpu_bench.py (benchmarks/RESULTS.md, NVIDIA H200, run of 2026-11-27, N = 32768,
# D = 128, forward + backward): bf16 triton 6.4 ms / native 6.5; mined bf16 triton 53 / native
# 116; tf32 triton 13.6 / native 11.3 unmined, but native's mined and D > 128 tiles are ~4x
# slower than Triton's, so tf32 stays on triton; float32 exact: native 66.6 / triton 88.7 (run of
# 2026-11-26). The other fused backend is the fallback when the preferred one is not available.
CUDA_PREFERENCE = {"half": "triton", "tf32": "triton", "fp32": "native", "fp64": "native"}


def precision_key(dtype: torch.dtype | None, tf32: bool) -> str:
    if dtype in (torch.bfloat16, torch.float16):
        return "half"
    if dtype == torch.float64:
        return "fp64"
    return "tf32" if tf32 else "fp32"


def resolve(backend: str, device: torch.device, op: str, dtype: torch.dtype | None = None,
            tf32: bool = False) -> tuple[str, types.ModuleType | None]:
    """Name and kernel module of the backend that runs ``op`` on ``device``.

    ``torch`` has no kernel module (None): the caller uses the dense reference. An explicitly
    requested backend that cannot run raises RuntimeError saying how to get it; only ``auto``
    chooses, and it never hides an explicit request.
    """
    check_backend_name(backend)
    if backend == "auto":
        backend = os.environ.get("CT_KERNELS_BACKEND", "auto")
        check_backend_name(backend)
    if backend == "auto":
        return _auto(device, op, dtype, precision_key(dtype, tf32))
    if backend == "torch":
        return "torch", None
    if backend == "triton":
        mod = _load_triton()
        if mod is None:
            raise RuntimeError(
                f"backend='triton' was requested for {op} but Triton kernels are not available: "
                f"{triton_unavailable_reason()}. Install triton (pip install triton) or use "
                "backend='torch'/'native'.")
        if not triton_runs_on(device):
            raise RuntimeError(
                f"backend='triton' was requested for {op} on a {device.type} tensor: Triton runs on "
                "CUDA tensors (on CPU only under TRITON_INTERPRET=1, for tests). Use backend='native' "
                "or 'torch' for CPU tensors.")
        return "triton", mod
    mod = _load_native()
    if mod is None:
        from . import _native
        raise RuntimeError(
            f"backend='native' was requested for {op} but the compiled extension ct_kernels._C is not "
            f"available: {_native.unavailable_reason()}. Build it against the installed torch with "
            "`pip install --no-build-isolation -e .` (or `make build`) in the ct_kernels checkout, or use "
            "backend='torch'/'triton'.")
    if not mod.supports(op, device):
        raise RuntimeError(
            f"backend='native' has no {device.type} kernel for {op} in this build: "
            f"{mod.missing_reason(op, device)}")
    return "native", mod


def _auto(device: torch.device, op: str, dtype: torch.dtype | None,
          precision: str) -> tuple[str, types.ModuleType | None]:
    native = _load_native()
    native_ok = native is not None and native.supports(op, device)
    if device.type == "cuda":
        triton_mod = _load_triton()
        triton_ok = triton_mod is not None and triton_mod.supports(op, dtype)
        ready = {"triton": (triton_ok, triton_mod), "native": (native_ok, native)}
        first = CUDA_PREFERENCE.get(precision, "triton") if op == "supcon_loss" else "triton"
        for name in (first, "native" if first == "triton" else "triton"):
            ok, mod = ready[name]
            if ok:
                return name, mod
        return "torch", None
    if native_ok:
        return "native", native
    return "torch", None
