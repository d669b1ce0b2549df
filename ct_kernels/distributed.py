"""Global negatives over ``torch.distributed``: each rank's anchors are its own rows, the contrast
set is every rank's rows (DESIGN.md, "Distributed").

Forward gathers the normalised rows U (O(N·D)) and the labels; backward gathers only the O(N)
upstream row weights. Every rank runs the fused kernels over the whole gathered batch, so the
per-row statistics the backward needs are already local, and each rank's backward yields the exact
gradient of the global weighted loss with respect to its own rows, as anchors and as columns: no
N x D reduce-scatter, no atomics, deterministic. The price is compute: each rank does the whole
N_global^2·D work rather than its n_rank x N_global share (anchor-slice kernels would remove it).

Ranks may hold different numbers of rows: the gathers are padded to the largest count (one
all_gather of the counts, a host synchronisation) and the padding is dropped, never real rows.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .reference import supcon_rows_reference


class ReferenceKernels:
    """The dense torch backend behind the fused-kernel contract of ``backends.py``, so that the
    distributed path has one implementation for every backend."""

    @staticmethod
    def supcon_forward(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32):
        with torch.no_grad():
            rows, npos = supcon_rows_reference(u, labels, labels != ignore_index, 1.0 / inv_temp, variant,
                                               kp or None, kn or None)
        return rows, npos.to(torch.int32), ()

    @staticmethod
    def supcon_backward(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, saved, grad_rows):
        with torch.enable_grad():
            leaf = u.detach().requires_grad_()
            rows, _ = supcon_rows_reference(leaf, labels, labels != ignore_index, 1.0 / inv_temp, variant,
                                            kp or None, kn or None)
            (du,) = torch.autograd.grad(rows, leaf, grad_rows.to(rows.dtype))
        return du.to(u.dtype)


def _gather_padded(t: torch.Tensor, sizes: list[int], group, fill) -> torch.Tensor:
    """Concatenation over ranks (rank order) of each rank's first sizes[r] rows of ``t``."""
    n_max = max(max(sizes), 1)
    padded = t.new_full((n_max,) + tuple(t.shape[1:]), fill)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatheredSupCon(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, labels, kernels, group, ignore_index, inv_temp, variant, kp, kn, allow_tf32):
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        count = torch.tensor([u.shape[0]], dtype=torch.int64, device=u.device)
        counts = [torch.empty_like(count) for _ in range(world)]
        dist.all_gather(counts, count, group=group)
        sizes = [int(c.item()) for c in counts]
        u_all = _gather_padded(u.detach(), sizes, group, 0.0)
        labels_all = _gather_padded(labels, sizes, group, ignore_index)
        rows_all, npos_all, saved = kernels.supcon_forward(u_all, labels_all, ignore_index, inv_temp, variant,
                                                           kp, kn, allow_tf32)
        start = sum(sizes[:rank])
        ctx.save_for_backward(u_all, labels_all, *saved)
        ctx.args = (kernels, group, sizes, start, ignore_index, inv_temp, variant, kp, kn, allow_tf32)
        anchors_all = (npos_all > 0).sum()  # every rank sees the whole batch: no extra collective
        npos = npos_all[start:start + u.shape[0]]
        ctx.mark_non_differentiable(npos, anchors_all)
        return rows_all[start:start + u.shape[0]], npos, anchors_all

    @staticmethod
    def backward(ctx, grad_rows, _grad_npos, _grad_anchors):
        u_all, labels_all, *saved = ctx.saved_tensors
        kernels, group, sizes, start, ignore_index, inv_temp, variant, kp, kn, allow_tf32 = ctx.args
        g_all = _gather_padded(grad_rows.contiguous(), sizes, group, 0.0)
        du_all = kernels.supcon_backward(u_all, labels_all, ignore_index, inv_temp, variant, kp, kn, allow_tf32,
                                         tuple(saved), g_all.contiguous())
        n = sizes[dist.get_rank(group)]
        return du_all[start:start + n], None, None, None, None, None, None, None, None, None


def gathered_rows(u, labels, kernels, group, ignore_index, inv_temp, variant, kp, kn, allow_tf32):
    """(local row losses, local |P_i|, anchors with positives on all ranks, world size)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("process_group was given but torch.distributed is not initialised "
                           "(call torch.distributed.init_process_group first)")
    rows, npos, anchors = _GatheredSupCon.apply(u, labels, kernels or ReferenceKernels, group, ignore_index,
                                                inv_temp, variant, kp, kn, allow_tf32)
    return rows, npos, anchors, dist.get_world_size(group)
