"""The paper's confidence-based sample selection (``mining="confidence"``).

Instead of mining by feature similarity, the Contrastive Transformer paper picks, per class, the
patches the segmentation head is most and least sure about. With conf_c(patch) the mean over the
patch's pixels of softmax(logits)[c] (logits resized bilinearly to the mask), for each class c
among the kept patches (label != -1):

* n_c = number of kept patches labelled c; k = min(floor(n_c * confidence_fraction), max_per_class);
  the class is skipped when k < min_per_class;
* anchors = the k patches labelled c with the highest conf_c;
* hard positives = the k patches labelled c with the lowest conf_c;
* hard negatives = the k kept patches with another label and the highest conf_c
  (all of them when fewer than k exist);
* ties go to the lower row index (stable sorts);
* the class-c loss is ``loss_fn`` (per-row, ``reduction="none"``) over the rows
  anchors ∪ hard positives ∪ hard negatives with their own labels, averaged over the anchor rows.

The result is the mean over the classes that were not skipped, or a 0.0 connected to ``z`` when
none qualifies. Choice documented here: the union is a set -- a row that is both an anchor and a
hard positive (possible only when confidence_fraction > 0.5) enters the loss once, in ascending
row order; it is counted as an anchor. The selection is a constant for autograd (computed under
``no_grad`` from detached confidences).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[..., torch.Tensor]


def patch_confidence(logits: torch.Tensor, mask_hw: tuple[int, int], ph: int, pw: int) -> torch.Tensor:
    """Per-patch class confidence, (B*h*w, C) float32, rows ordered (batch, row, column).

    ``logits`` (B, C, H', W') are resized bilinearly (align_corners=False) to ``mask_hw`` = (H, W),
    soft-maxed over C, and averaged over each ph x pw patch (h = H // ph, w = W // pw). Computed
    without gradient: it only selects rows.
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be (B, C, H', W'), got shape {tuple(logits.shape)}")
    h_img, w_img = int(mask_hw[0]), int(mask_hw[1])
    if ph <= 0 or pw <= 0 or h_img % ph or w_img % pw:
        raise ValueError(f"patch size ({ph}, {pw}) must divide the mask size ({h_img}, {w_img})")
    with torch.no_grad():
        x = logits.detach().float()
        if x.shape[-2:] != (h_img, w_img):
            x = F.interpolate(x, size=(h_img, w_img), mode="bilinear", align_corners=False)
        prob = x.softmax(dim=1)
        pooled = F.avg_pool2d(prob, kernel_size=(ph, pw), stride=(ph, pw))  # (B, C, h, w)
        b, c = pooled.shape[:2]
        return pooled.permute(0, 2, 3, 1).reshape(-1, c).contiguous()


def select_confidence_rows(labels: torch.Tensor, conf: torch.Tensor, num_classes: int,
                           confidence_fraction: float = 0.4, max_per_class: int = 128,
                           min_per_class: int = 10) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The selection alone: a list of (class, anchors, hard_positives, hard_negatives) row-index
    tensors (int64, in selection order) for every class that is not skipped."""
    if labels.dim() != 1 or conf.dim() != 2 or conf.shape[0] != labels.shape[0]:
        raise ValueError(f"labels must be (R,) and conf (R, C) with the same R, got {tuple(labels.shape)} "
                         f"and {tuple(conf.shape)}")
    if conf.shape[1] < num_classes:
        raise ValueError(f"conf has {conf.shape[1]} classes, fewer than num_classes={num_classes}")
    if not 0.0 < confidence_fraction <= 1.0:
        raise ValueError(f"confidence_fraction must be in (0, 1], got {confidence_fraction}")
    if max_per_class < 1 or min_per_class < 1:
        raise ValueError("max_per_class and min_per_class must be >= 1")
    if min_per_class > max_per_class:
        raise ValueError(f"min_per_class={min_per_class} > max_per_class={max_per_class} would skip every class")
    out = []
    with torch.no_grad():
        labels = labels.to(torch.int64)
        kept = labels != -1
        # one host sync: the counts, and with them whether every label is -1 or a class
        counts = torch.bincount(torch.where(kept & (labels >= 0) & (labels < num_classes), labels, num_classes),
                                minlength=num_classes + 1).tolist()
        if counts[num_classes] != int((~kept).sum()):
            raise ValueError(f"labels must be -1 (left out) or a class in [0, num_classes={num_classes})")
        counts = counts[:num_classes]
        for c in range(num_classes):
            n_c = int(counts[c])
            # floor(n * f), the product rounded to 9 significant digits first so that float noise
            # (0.29 * 100 = 28.999999999999996) does not drop a row (as patch.min_count does).
            k = min(int(math.floor(float(f"{n_c * confidence_fraction:.9g}"))), int(max_per_class))
            if k < min_per_class:
                continue
            conf_c = conf[:, c].detach()
            is_c = labels == c
            idx_c = torch.nonzero(is_c, as_tuple=False).squeeze(1)  # ascending row index
            vals = conf_c[idx_c]
            desc = torch.sort(vals, descending=True, stable=True).indices
            asc = torch.sort(vals, descending=False, stable=True).indices
            anchors = idx_c[desc[:k]]
            hard_pos = idx_c[asc[:k]]
            idx_o = torch.nonzero(kept & ~is_c, as_tuple=False).squeeze(1)
            desc_o = torch.sort(conf_c[idx_o], descending=True, stable=True).indices
            hard_neg = idx_o[desc_o[:k]]
            out.append((c, anchors, hard_pos, hard_neg))
    return out


def confidence_supcon(z: torch.Tensor, labels: torch.Tensor, conf: torch.Tensor, num_classes: int,
                      loss_fn: LossFn, confidence_fraction: float = 0.4, max_per_class: int = 128,
                      min_per_class: int = 10) -> torch.Tensor:
    """Confidence-selected supervised contrastive loss (see the module docstring for the rule).

    z: (R, D) patch rows; labels: (R,) int64, -1 for left-out patches; conf: (R, C) per-patch
    class confidence (``patch_confidence``). ``loss_fn(z_rows, labels_rows, reduction="none")``
    returns the per-row losses, e.g.
    ``lambda z, y, reduction: ct_kernels.supcon_loss(z, y, T, variant=..., backend=..., reduction=reduction)``.
    """
    if z.dim() != 2 or z.shape[0] != labels.shape[0]:
        raise ValueError(f"z must be (R, D) with R = len(labels), got {tuple(z.shape)} and {tuple(labels.shape)}")
    selection = select_confidence_rows(labels, conf, num_classes, confidence_fraction, max_per_class,
                                       min_per_class)
    if not selection:  # 0.0 connected to z, in the dtype the loss has otherwise (float32 for 16-bit z)
        return z.sum().to(torch.float64 if z.dtype == torch.float64 else torch.float32) * 0.0
    per_class = []
    for _c, anchors, hard_pos, hard_neg in selection:
        rows = torch.unique(torch.cat([anchors, hard_pos, hard_neg]))  # sorted, each row once
        row_loss = loss_fn(z[rows], labels[rows], reduction="none")
        is_anchor = torch.isin(rows, anchors)
        per_class.append(row_loss[is_anchor].mean())
    return torch.stack(per_class).mean()


def kept_patch_labels(mask: torch.Tensor, ph: int, pw: int, num_classes: int, ignore_index: int = 255,
                      min_purity: float = 1.0, backend: str = "auto") -> torch.Tensor:
    """(B*h*w,) int64 row labels as ContrastivePatchLoss builds them: the majority class, or -1
    for patches below ``min_purity`` (count >= ceil(min_purity * ph * pw), in integers) or
    without a valid pixel. Rows ordered (batch, row, column)."""
    from .patch import kept_row_labels, patch_labels
    labels, purity = patch_labels(mask, (ph, pw), num_classes, ignore_index=ignore_index, backend=backend)
    return kept_row_labels(labels, purity, ph, pw, ignore_index, min_purity)
