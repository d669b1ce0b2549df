"""``MemoryBank``: a per-class ring buffer of past embeddings, to feed ``supcon_loss(contrast=...)``
(ContrastiveSeg's memory variant): more positives and negatives than one batch holds, at the cost
of rows that are a few steps stale (they are detached: no gradient reaches them)."""
from __future__ import annotations

import torch
from torch import nn


class MemoryBank(nn.Module):
    """``size_per_class`` most recent rows of each class, stored detached in ``dtype``.

    ``update(z, labels)`` pushes a batch (rows whose label is ``ignore_index`` or outside
    [0, num_classes) are skipped, as patches left out of the loss are); ``contrast()`` returns
    ``(zc, yc)`` of every filled slot. Buffers are module buffers: they follow ``.to(device)`` and
    the state dict. ``update`` reads per-class counts on the host (one synchronisation).
    """

    def __init__(self, num_classes: int, size_per_class: int, dim: int, dtype=torch.float32, ignore_index: int = -1):
        super().__init__()
        for name, v in (("num_classes", num_classes), ("size_per_class", size_per_class), ("dim", dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.num_classes, self.size_per_class, self.dim = num_classes, size_per_class, dim
        self.ignore_index = ignore_index
        self.register_buffer("rows", torch.zeros(num_classes, size_per_class, dim, dtype=dtype))
        self.register_buffer("next_slot", torch.zeros(num_classes, dtype=torch.int64))
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.int64))

    @torch.no_grad()
    def update(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must be (M, {self.dim}), got {tuple(z.shape)}")
        if labels.shape != z.shape[:1]:
            raise ValueError(f"labels must be (M,) = ({z.shape[0]},), got {tuple(labels.shape)}")
        z = z.detach().to(self.rows.dtype)
        labels = labels.to(torch.int64)
        counts = torch.bincount(torch.where((labels >= 0) & (labels < self.num_classes), labels, self.num_classes),
                                minlength=self.num_classes + 1)[: self.num_classes].tolist()
        for c, n in enumerate(counts):
            if n == 0:
                continue
            new = z[labels == c][-self.size_per_class:]  # the newest rows when a batch overflows the ring
            k = new.shape[0]
            slots = (int(self.next_slot[c]) + torch.arange(k, device=z.device)) % self.size_per_class
            self.rows[c, slots] = new
            self.next_slot[c] = (self.next_slot[c] + k) % self.size_per_class
            self.filled[c] = torch.clamp(self.filled[c] + k, max=self.size_per_class)

    def contrast(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(zc (K, dim), yc (K,)) of the filled slots, class by class."""
        slot = torch.arange(self.size_per_class, device=self.rows.device)
        used = slot[None, :] < self.filled[:, None]  # ring slots fill in order until full
        labels = torch.arange(self.num_classes, device=self.rows.device)[:, None].expand_as(used)
        return self.rows[used], labels[used]
