"""Row normalisation before the loss: ``F.normalize(z, dim=1)``, with 16-bit rows done in float32.

In float16 F.normalize's eps (1e-12) is 0, so a zero row (every ignored row is one) gives 0 / 0 =
NaN: 16-bit rows are normalised in float32 and rounded once. Done as ``F.normalize(z.float())``,
autograd keeps N x D float32 copies for the backward, and those are the largest buffers of a
16-bit step (N = 131072, D = 128: 64 MiB each, next to 32 MiB for U in bf16). So in eager mode the
float32 work goes row chunk by row chunk, saving only z and one float32 norm per row.
"""
from __future__ import annotations

import torch

NORM_EPS = 1e-12  # as torch.nn.functional.normalize
# float32 temporaries of at most 2^21 elements (8 MiB) at a time, three at once: N = 32768, D = 128
# is two chunks (a step adds ~20 small launches at most per 2^21 elements, against ~6 ms of loss)
CHUNK_ELEMENTS = 1 << 21


def _row_chunks(z: torch.Tensor):
    step = max(1, CHUNK_ELEMENTS // max(z.shape[1], 1))
    for start in range(0, z.shape[0], step):
        yield slice(start, min(start + step, z.shape[0]))


class _Normalize16(torch.autograd.Function):
    """z / max(||z||, eps) per row in float32, rounded once to z's dtype; float32 gradient."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        norm = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
        u = torch.empty_like(z)
        for rows in _row_chunks(z):
            zf = z[rows].float()
            norm[rows] = torch.linalg.vector_norm(zf, dim=1)
            u[rows] = zf.div_(norm[rows].clamp_min(NORM_EPS)[:, None])  # rounded by the copy
            del zf  # before the next chunk's is made, not after
        ctx.save_for_backward(z, norm)
        return u

    @staticmethod
    def backward(ctx, grad_u: torch.Tensor) -> torch.Tensor:
        z, norm = ctx.saved_tensors
        grad_z = torch.empty_like(z)
        for rows in _row_chunks(z):
            n = norm[rows, None]
            scale = 1.0 / n.clamp_min(NORM_EPS)
            # two float32 chunks, in place, and u * g for a moment (a batched matrix product would
            # avoid it, but would follow the matmul precision setting: tf32 where users allow it)
            uf = z[rows].to(torch.float32, copy=True).mul_(scale)
            gf = grad_u[rows].to(torch.float32, copy=True)
            dot = (uf * gf).sum(1, keepdim=True)
            # d(z / max(||z||, eps)): (g - u (u . g)) / ||z|| where the norm is at least eps (as
            # clamp_min's gradient flows at equality), g / eps where the clamp holds
            proj = uf.mul_(torch.where(n >= NORM_EPS, dot, 0.0))
            grad_z[rows] = gf.sub_(proj).mul_(scale)  # rounded by the copy
            del uf, gf, proj  # before the next chunk's are made, not after
        return grad_z


def normalize_rows(z: torch.Tensor) -> torch.Tensor:
    """F.normalize(z, dim=1) with eps 1e-12; 16-bit rows in float32, rounded once."""
    if z.dtype not in (torch.float16, torch.bfloat16):
        return torch.nn.functional.normalize(z, dim=1, eps=NORM_EPS)
    if torch.compiler.is_compiling():  # inductor fuses the plain form without the N x D copies
        return torch.nn.functional.normalize(z.float(), dim=1, eps=NORM_EPS).to(z.dtype)
    return _Normalize16.apply(z)
