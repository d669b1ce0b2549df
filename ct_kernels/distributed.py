"""Global negatives over ``torch.distributed``: each rank's anchors are its own rows, the contrast
set is every rank's rows (DESIGN.md, "Distributed").

Forward gathers the normalised rows U (O(N·D)) and the labels, and each rank runs the fused
kernels on its own anchor slice against every gathered row: n_rank x N_global tiles. Backward
gathers only O(N) vectors: the upstream row weights and the forward's per-row statistics of
every rank; with them each rank computes the exact gradient of the global weighted loss with
respect to its own rows, as anchors and as columns (the symmetric backward of DESIGN.md), again
n_rank x N_global tiles: no N x D reduce-scatter, no atomics, deterministic.

Ranks may hold different numbers of rows: the gathers are padded to the largest count (one
all_gather of the counts, a host synchronisation) and the padding is dropped, never real rows.
Extra contrast rows (``contrast=``, a memory bank) are appended after the gathered rows on each
rank, as columns only; the number of anchors with positives is then summed over ranks (each
rank's own bank may give its anchors positives).
"""
from __future__ import annotations

import math
import zlib

import torch
import torch.distributed as dist

from . import backends
from .reference import supcon_rows_reference


class ReferenceKernels:
    """The dense torch backend behind the fused-kernel contract of ``backends.py``, so that the
    distributed path has one implementation for every backend. Its backward differentiates the
    whole N x N reference (it is the oracle, not a fast path)."""

    @staticmethod
    def supcon_forward(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, start=0, count=None):
        with torch.no_grad():
            rows, npos = supcon_rows_reference(u, labels, labels != ignore_index, 1.0 / inv_temp, variant,
                                               kp or None, kn or None, start, count)
        return rows, npos.to(torch.int32), ()

    @staticmethod
    def supcon_backward(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, saved, grad_rows,
                        start=0, count=None):
        count = u.shape[0] - start if count is None else count
        with torch.enable_grad():
            leaf = u.detach().requires_grad_()
            rows, _ = supcon_rows_reference(leaf, labels, labels != ignore_index, 1.0 / inv_temp, variant,
                                            kp or None, kn or None)
            (du,) = torch.autograd.grad(rows, leaf, grad_rows.to(rows.dtype))
        return du[start:start + count].to(u.dtype)


def _gather_padded(t: torch.Tensor, sizes: list[int], group, fill) -> torch.Tensor:
    """Concatenation over ranks (rank order) of each rank's first sizes[r] rows of ``t``."""
    n_max = max(max(sizes), 1)
    padded = t.new_full((n_max,) + tuple(t.shape[1:]), fill)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def _gather_rows_packed(tensors: list[torch.Tensor], sizes: list[int], group) -> list[torch.Tensor]:
    """_gather_padded of several per-row tensors in one collective: packed side by side as float64
    columns (exact for the float32/float64 statistics and for integers below 2^53), unpacked after."""
    n = tensors[0].shape[0]
    cols = [t.reshape(n, math.prod(t.shape[1:])) for t in tensors]  # not -1: n may be 0
    packed = torch.cat([c.to(torch.float64) for c in cols], dim=1)
    gathered = _gather_padded(packed, sizes, group, 0.0)
    out, at = [], 0
    for t, c in zip(tensors, cols):
        part = gathered[:, at:at + c.shape[1]]
        at += c.shape[1]
        out.append(part.to(t.dtype).reshape((gathered.shape[0],) + tuple(t.shape[1:])).contiguous())
    return out


def _dtype_code(dtype: torch.dtype) -> int:
    return zlib.crc32(str(dtype).encode())  # the same on every rank (str hashes are salted per process)


_DTYPE_NAMES = {_dtype_code(t): str(t).replace("torch.", "") for t in
                (torch.float32, torch.float64, torch.bfloat16, torch.float16)}


def _gather_rows(z: torch.Tensor, labels: torch.Tensor, group, ignore_index: int, ok: torch.Tensor | None = None):
    """(every rank's rows, their labels, rows per rank, every rank's ``ok`` flag combined), in rank
    order. One small all_gather first, read on the host (one synchronisation): each rank's row
    count (to pad the gathers and drop the padding), width, dtype and ``ok``. Rows of another
    width or dtype would be gathered as raw bytes (a wrong number, or a crash inside the
    collective): every rank raises the same error instead, before any row moves."""
    flag = torch.ones(1, dtype=torch.int64, device=z.device) if ok is None else ok.to(torch.int64).reshape(1)
    shape = torch.tensor([z.shape[0], z.shape[1], _dtype_code(z.dtype)], dtype=torch.int64, device=z.device)
    head = torch.cat([shape, flag])
    heads = [torch.empty_like(head) for _ in range(dist.get_world_size(group))]
    dist.all_gather(heads, head, group=group)
    table = torch.stack(heads).cpu().tolist()
    if len({(d, code) for _, d, code, _ in table}) > 1:
        ranks = [f"({n}, {d}) {_DTYPE_NAMES.get(code, 'other')}" for n, d, code, _ in table]
        raise ValueError(f"process_group: every rank must give rows of the same width and dtype; the ranks "
                         f"give {ranks}")
    sizes = [n for n, _, _, _ in table]
    ok_all = torch.tensor(all(f for _, _, _, f in table), device=z.device)
    return (_gather_padded(z.detach(), sizes, group, 0.0), _gather_padded(labels, sizes, group, ignore_index), sizes,
            ok_all)


def _anchors_with_positives(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Number of valid rows whose class has another row: |P_i| > 0 depends on the labels alone
    (mining keeps at least one positive), so without extra rows every rank counts the global
    anchors locally, with no collective."""
    valid = labels != ignore_index
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return (valid & (counts[inverse] > 1)).sum()


_FIRST_ORDER = ("supcon_loss with process_group gives first derivatives only, on every backend; for a second "
                "derivative (backward with create_graph=True) compute it without process_group, with "
                "backend='torch'")


class _GatheredSupCon(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, labels, uc, yc, ok, kernels, group, ignore_index, inv_temp, variant, kp, kn, allow_tf32):
        u_all, labels_all, sizes, ok_all = _gather_rows(u, labels, group, ignore_index, ok)
        start = sum(sizes[:dist.get_rank(group)])
        if uc is not None:  # this rank's extra contrast rows: columns after every rank's rows
            u_all, labels_all = torch.cat([u_all, uc]), torch.cat([labels_all, yc])
        rows, npos, saved = kernels.supcon_forward(u_all, labels_all, ignore_index, inv_temp, variant,
                                                   kp, kn, allow_tf32, start, u.shape[0])
        ctx.save_for_backward(u_all, labels_all, u, *saved)  # u: for first_order_only
        ctx.args = (kernels, group, sizes, start, ignore_index, inv_temp, variant, kp, kn, allow_tf32)
        if uc is None:
            anchors_all = _anchors_with_positives(labels_all, ignore_index)
        else:
            anchors_all = (npos > 0).sum()
            dist.all_reduce(anchors_all, group=group)
        ctx.mark_non_differentiable(npos, anchors_all, ok_all)
        return rows, npos, anchors_all, ok_all

    @staticmethod
    def backward(ctx, grad_rows, _grad_npos, _grad_anchors, _grad_ok):
        u_all, labels_all, u, *saved = ctx.saved_tensors
        kernels, group, sizes, start, ignore_index, inv_temp, variant, kp, kn, allow_tf32 = ctx.args
        # every rank's row weights and per-row statistics (O(N) each, one collective): the columns'
        # side of G; padding rows arrive as zeros, i.e. npos 0: not anchors
        present = [t for t in saved if t is not None]
        g_all, *gathered = _gather_rows_packed([grad_rows.contiguous()] + present, sizes, group)
        it = iter(gathered)
        # extra contrast rows after the gathered ones: never anchors (zeros, npos 0)
        saved_all = backends.place_rows(tuple(None if t is None else next(it) for t in saved), 0, u_all.shape[0])
        g_all = backends.place_rows((g_all,), 0, u_all.shape[0])[0]
        du = kernels.supcon_backward(u_all, labels_all, ignore_index, inv_temp, variant, kp, kn, allow_tf32,
                                     saved_all, g_all, start, sizes[dist.get_rank(group)])
        du = backends.first_order_only(du, u, _FIRST_ORDER)
        return du, None, None, None, None, None, None, None, None, None, None, None, None


def all_rows(z: torch.Tensor, labels: torch.Tensor, group, ignore_index: int):
    """Every rank's (rows, labels) concatenated in rank order, uneven counts padded and dropped
    (no gradient): what a memory bank takes so that every rank holds the same bank."""
    z_all, labels_all, _, _ = _gather_rows(z, labels, group, ignore_index)
    return z_all, labels_all


def check_group(group) -> None:
    """process_group given to supcon_loss: torch.distributed initialised, and a group of it."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("process_group was given but torch.distributed is not initialised "
                           "(call torch.distributed.init_process_group first)")
    if isinstance(group, int) and not isinstance(group, bool) and group == dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError("process_group: this rank is not a member of the group (dist.new_group returns "
                         "NON_GROUP_MEMBER on the other ranks): call the loss with it only on its members")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"process_group must be None or a torch.distributed.ProcessGroup (e.g. "
                        f"dist.group.WORLD), got {type(group).__name__}")


def gathered_rows(u, labels, uc, yc, ok, kernels, group, ignore_index, inv_temp, variant, kp, kn, allow_tf32):
    """(local row losses, local |P_i|, anchors with positives on all ranks, world size, ``ok``: this
    rank's input check combined with every other rank's)."""
    rows, npos, anchors, ok_all = _GatheredSupCon.apply(u, labels, uc, yc, ok, kernels or ReferenceKernels, group,
                                                        ignore_index, inv_temp, variant, kp, kn, allow_tf32)
    return rows, npos, anchors, dist.get_world_size(group), ok_all
