"""Dense PyTorch reference (``backend="torch"``): the oracle every kernel is tested against.

It builds the full M x M similarity matrix, so it is O(M^2) in memory; it is meant for
checking, for CPU use on small batches, and for float64 ``gradcheck``. Autograd differentiates
it directly: nothing here is hand-written backward.
"""
from __future__ import annotations

import torch


def _stable_rank_select(keys: torch.Tensor, member: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Keep, per row, the ``k`` members with the smallest (or largest) key.

    Ties go to the lower column index: a stable sort keeps equal keys in column order.
    ``torch.topk`` does not promise that, so it is not used here.
    """
    fill = float("-inf") if largest else float("inf")
    order = torch.sort(keys.masked_fill(~member, fill), dim=1, descending=largest, stable=True).indices
    member_sorted = member.gather(1, order)
    rank_sorted = member_sorted.to(torch.int64).cumsum(1) - 1
    keep_sorted = member_sorted & (rank_sorted < k)
    return torch.zeros_like(member).scatter(1, order, keep_sorted)


def pair_masks(s: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
               hard_positives: int | None, hard_negatives: int | None, start: int = 0):
    """Positive and negative masks (count x M, bool) after hard mining; a constant for autograd.
    ``s`` holds the rows start .. start + count of the similarity (anchors), every column."""
    with torch.no_grad():
        count = s.shape[0]
        rows = torch.arange(start, start + count, device=labels.device)
        self_pair = rows[:, None] == torch.arange(labels.shape[0], device=labels.device)[None, :]
        pair_ok = valid[rows][:, None] & valid[None, :] & ~self_pair
        same = labels[rows][:, None] == labels[None, :]
        pos = pair_ok & same
        neg = pair_ok & ~same
        if hard_positives is not None:
            pos = _stable_rank_select(s.detach(), pos, hard_positives, largest=False)
        if hard_negatives is not None:
            neg = _stable_rank_select(s.detach(), neg, hard_negatives, largest=True)
    return pos, neg


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)) to the dtype's precision for every x, 0 at -inf (F.softplus returns x above
    its threshold, off by exp(-x))."""
    # each branch sees only its own side, so both stay finite (their gradients too) at +-inf; a
    # where, not a clamp, so that x = 0 takes the gradient 1/2 (a clamp passes none at its bound)
    up = x > 0
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    above, below = torch.where(up, x, zero), torch.where(up, zero, x)
    return torch.where(up, above + torch.log1p(torch.exp(-above)), torch.log1p(torch.exp(below)))


def _masked_logsumexp(s: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """log sum_{j in member_i} exp(s_ij), -inf for an empty row, with finite gradients.

    An empty row would give logsumexp(-inf, ...) whose backward is NaN even when the caller
    later masks the row out; such rows are computed on a dummy entry and masked by the caller.
    """
    empty = ~member.any(1)
    if member.shape[1] == 0:  # an empty batch
        return torch.full(member.shape[:1], float("-inf"), dtype=s.dtype, device=s.device)
    dummy = torch.zeros_like(member)
    dummy[:, 0] = True
    safe_member = torch.where(empty[:, None], dummy, member)
    lse = torch.logsumexp(s.masked_fill(~safe_member, float("-inf")), dim=1)
    return torch.where(empty, torch.full_like(lse, float("-inf")), lse)


def supcon_rows_reference(u: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                          temperature: float, variant: str = "supcon",
                          hard_positives: int | None = None, hard_negatives: int | None = None,
                          start: int = 0, count: int | None = None, half_matmul: bool = False):
    """Per-row losses l_i (0 for rows without positives) and |P_i| after mining, for the anchor
    rows start .. start + count (default: all) against every row of ``u`` as a column.

    ``u`` are the rows as they enter the similarity (already normalised if requested);
    computation is in ``u``'s dtype for float32/float64 and in float32 for half types.
    ``half_matmul``: half types multiply in their own dtype (then float32), as PyTorch's own
    matmul would: the baseline of the reduced-precision error rule, not the oracle.
    """
    count = u.shape[0] - start if count is None else count
    half = u.dtype not in (torch.float32, torch.float64)
    work = u.float() if half and not half_matmul else u
    s = work[start:start + count] @ work.T
    s = (s.float() if half else s) / temperature
    pos, neg = pair_masks(s, labels, valid, hard_positives, hard_negatives, start)
    npos = pos.sum(1)
    has_pos = npos > 0
    pos_count = npos.clamp(min=1).to(s.dtype)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    if variant == "supcon":
        lse_all = _masked_logsumexp(s, pos | neg)
        pos_mean = torch.where(pos, s, zero).sum(1) / pos_count
        rows = torch.where(has_pos, lse_all - pos_mean, zero)
    elif variant == "infonce":
        lse_neg = _masked_logsumexp(s, neg)
        # -s + log(exp(s) + exp(lse_neg)) as softplus(lse_neg - s): the difference form cancels
        # to ~1e-7 relative when the negatives are far below the positive (loss ~exp(-20)), and
        # its gradient -1 + p too; the fused kernels take the softplus form
        per_pair = _softplus(lse_neg[:, None] - s)
        rows = torch.where(has_pos, torch.where(pos, per_pair, zero).sum(1) / pos_count, zero)
    else:
        raise ValueError(f"variant must be 'supcon' or 'infonce', got {variant!r}")
    return rows, npos


def patch_labels_reference(mask: torch.Tensor, ph: int, pw: int, num_classes: int, ignore_index: int):
    """Majority label and purity per patch by counting one-hot pixels (torch backend)."""
    b, h, w = mask.shape
    gh, gw = h // ph, w // pw
    m = mask.to(torch.int64)
    keep = m != ignore_index
    cls = torch.where(keep, m, torch.zeros_like(m))
    onehot = torch.nn.functional.one_hot(cls, num_classes) & keep[..., None]
    counts = onehot.view(b, gh, ph, gw, pw, num_classes).sum(dim=(2, 4))  # (B, gh, gw, C)
    # max over classes returns the first maximal index: ties go to the smallest class id.
    best, label = counts.max(dim=-1)
    label = torch.where(best > 0, label, torch.full_like(label, ignore_index))
    purity = best.to(torch.float32) / float(ph * pw)
    return label, purity
