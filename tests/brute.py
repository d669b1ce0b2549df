"""Brute-force loss written with Python loops, independent of ct_kernels.reference: the second
oracle for the cases where pytorch-metric-learning's definition differs or does not exist."""

import torch


def _mined(cands, s_row, k, largest):
    """k hardest candidates: smallest (largest) similarity first, ties to the lower column."""
    if k is None:
        return list(cands)
    ordered = sorted(cands, key=lambda j: ((-s_row[j]) if largest else s_row[j], j))
    return ordered[:k]


def brute_rows(z, labels, temperature, variant="supcon", kp=None, kn=None, ignore_index=-1, normalize=True):
    """Per-row losses as a list of float64 autograd scalars (0.0 for rows without positives)."""
    z = z.double()
    m = z.shape[0]
    lab = [int(v) for v in labels]
    valid = [v != ignore_index for v in lab]
    u = [torch.nn.functional.normalize(z[i], dim=0, eps=1e-12) if normalize else z[i] for i in range(m)]
    rows = []
    for i in range(m):
        if not valid[i]:
            rows.append(z.sum() * 0)
            continue
        s = {j: torch.dot(u[i], u[j]) / temperature for j in range(m) if j != i and valid[j]}
        s_val = {j: float(v.detach()) for j, v in s.items()}
        pos = _mined([j for j in s if lab[j] == lab[i]], s_val, kp, largest=False)
        neg = _mined([j for j in s if lab[j] != lab[i]], s_val, kn, largest=True)
        if not pos:
            rows.append(z.sum() * 0)
            continue
        if variant == "supcon":
            lse = torch.logsumexp(torch.stack([s[j] for j in pos + neg]), 0)
            rows.append(lse - sum(s[p] for p in pos) / len(pos))
        else:
            terms = []
            for p in pos:
                lse = torch.logsumexp(torch.stack([s[p]] + [s[n] for n in neg]), 0)
                terms.append(lse - s[p])
            rows.append(sum(terms) / len(pos))
    return rows


def brute_loss(z, labels, temperature, reduction="mean", **kw):
    rows = brute_rows(z, labels, temperature, **kw)
    out = torch.stack(rows)
    if reduction == "none":
        return out
    if reduction == "sum":
        return out.sum()
    # anchors with positives: recomputed from labels (mining keeps >= 1 positive when any exist)
    ig = kw.get("ignore_index", -1)
    lab = [int(v) for v in labels]
    n = sum(1 for i, a in enumerate(lab) if a != ig and any(b == a for j, b in enumerate(lab) if j != i))
    return out.sum() / n if n else out.sum() * 0
