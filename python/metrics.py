"""Segmentation metrics from a confusion matrix: per-class IoU, F1, precision, recall, overall
accuracy, and their means -- over all classes, or with the paper's Potsdam convention (the five
classes without clutter, ``POTSDAM_EVAL_CLASSES``).

A class that appears neither in the ground truth nor in the prediction has an undefined IoU/F1
(NaN); means skip NaN. Pixels labelled ``ignore_index`` are not counted.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

POTSDAM_EVAL_CLASSES = (0, 1, 2, 3, 4)  # impervious, building, low vegetation, tree, car


class ConfusionMatrix:
    """Accumulates a (C, C) confusion matrix: rows ground truth, columns prediction."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: integer tensors of the same shape (class ids; pred may be logits
        (B, C, H, W), then argmax over C is taken)."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        p = pred.reshape(-1).to(torch.int64).cpu()
        t = target.reshape(-1).to(torch.int64).cpu()
        keep = t != self.ignore_index
        p, t = p[keep], t[keep]
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_classes):
            raise ValueError(f"target holds values outside [0, {self.num_classes}) other than ignore")
        p = p.clamp(0, self.num_classes - 1)
        self.mat += torch.bincount(t * self.num_classes + p, minlength=self.num_classes ** 2).view(
            self.num_classes, self.num_classes)

    def compute(self, classes: Sequence[int] | None = None) -> dict:
        return segmentation_metrics(self.mat.numpy(), classes)


def segmentation_metrics(conf: np.ndarray, classes: Sequence[int] | None = None) -> dict:
    """Metrics from a confusion matrix (rows: truth, columns: prediction).

    ``classes``: the class ids the means run over (None: all). Returns per-class arrays
    ``iou``, ``f1``, ``precision``, ``recall`` (all classes, NaN where undefined), the means
    ``miou``, ``mf1`` over ``classes``, and overall accuracy ``oa`` (over all non-ignored pixels).
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    fp = conf.sum(0) - tp
    fn = conf.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
    idx = list(range(conf.shape[0])) if classes is None else list(classes)
    total = conf.sum()

    def _mean(a):
        v = a[idx]
        v = v[~np.isnan(v)]
        return float(v.mean()) if v.size else float("nan")

    return {"iou": iou, "f1": f1, "precision": precision, "recall": recall,
            "miou": _mean(iou), "mf1": _mean(f1),
            "oa": float(tp.sum() / total) if total > 0 else float("nan"), "classes": idx}
