"""``MemoryBank``: a per-class ring buffer of past embeddings, to feed ``supcon_loss(contrast=...)``
(ContrastiveSeg's memory variant): more positives and negatives than one batch holds, at the cost
of rows that are a few steps stale (they are detached: no gradient reaches them).

Everything stays on the device, with fixed shapes: ``update`` places the rows with one
deterministic ``index_put_`` and ``contrast`` returns every slot, the empty ones labelled
``ignore_index``, so neither reads anything back to the host (no synchronisation in a training
step, as ``ContrastivePatchLoss`` promises)."""
from __future__ import annotations

import torch
from torch import nn

from .patch import check_integer_labels, is_int


class MemoryBank(nn.Module):
    """``size_per_class`` most recent rows of each class, ``dim`` features each, stored detached
    in ``dtype``, a ring buffer per class for ``num_classes`` classes.

    ``update(z, labels)`` pushes a batch (rows whose label is outside [0, num_classes), such as
    ``ignore_index``, are skipped, as patches left out of the loss are; when a batch holds more
    rows of a class than the ring, its last ones are kept). ``contrast()`` returns ``(zc, yc)``
    of all num_classes x size_per_class slots, ``yc = ignore_index`` where a slot is still empty:
    give the loss the same ``ignore_index``; ``zc`` is a view of the store (no copy per step), so
    use the pair before the next ``update``, as ``supcon_loss`` does (it copies what it keeps).
    Buffers follow ``.to(device)`` and the state dict.
    """

    def __init__(self, num_classes: int, size_per_class: int, dim: int, dtype=torch.float32, ignore_index: int = -1):
        super().__init__()
        for name, v in (("num_classes", num_classes), ("size_per_class", size_per_class), ("dim", dim)):
            if not is_int(v) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        num_classes, size_per_class, dim = int(num_classes), int(size_per_class), int(dim)
        if not is_int(ignore_index) or 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index must be an int outside [0, num_classes={num_classes}), "
                             f"got {ignore_index!r}")
        ignore_index = int(ignore_index)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype (the rows' storage), got {dtype!r}")
        self.num_classes, self.size_per_class, self.dim = num_classes, size_per_class, dim
        self.ignore_index = ignore_index
        # all slots, class-major, plus one scratch row that receives the rows a batch does not keep
        # (so that the update needs no boolean indexing, which would read a count on the host)
        self.register_buffer("store", torch.zeros(num_classes * size_per_class + 1, dim, dtype=dtype))
        self.register_buffer("next_slot", torch.zeros(num_classes, dtype=torch.int64))
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.int64))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, size_per_class={self.size_per_class}, dim={self.dim}, "
                f"dtype={self.store.dtype}, ignore_index={self.ignore_index}")

    @property
    def rows(self) -> torch.Tensor:
        """(num_classes, size_per_class, dim) view of the slots."""
        return self.store[:-1].view(self.num_classes, self.size_per_class, self.dim)

    @torch.no_grad()
    def update(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must be (M, {self.dim}), got {tuple(getattr(z, 'shape', ()))}")
        if not z.dtype.is_floating_point:
            raise TypeError(f"z must be floating point rows, got {z.dtype}")
        if not isinstance(labels, torch.Tensor) or labels.shape != z.shape[:1]:
            raise ValueError(f"labels must be (M,) = ({z.shape[0]},), got {tuple(getattr(labels, 'shape', ()))}")
        check_integer_labels(labels)
        if z.device != self.store.device or labels.device != self.store.device:
            raise ValueError(f"z and labels must be on the bank's device ({self.store.device}), got "
                             f"{z.device} and {labels.device}")
        c, size = self.num_classes, self.size_per_class
        m = z.shape[0]
        labels = labels.to(torch.int64)
        cls = torch.where((labels >= 0) & (labels < c), labels, torch.full_like(labels, c))  # c: not stored
        counts = torch.zeros(c + 1, dtype=torch.int64, device=z.device).scatter_add_(0, cls, torch.ones_like(cls))
        # rank of each row among its class's rows, in batch order (a stable sort groups the classes)
        sorted_cls, order = torch.sort(cls, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(m, device=z.device) - starts[sorted_cls]
        kept = counts.clamp(max=size)
        r = rank - (counts - kept)[sorted_cls]  # among the kept (the last `size`) rows; < 0: dropped
        next_slot = torch.cat([self.next_slot, self.next_slot.new_zeros(1)])
        slot = (next_slot[sorted_cls] + r) % size
        target = torch.where((sorted_cls < c) & (r >= 0), sorted_cls * size + slot,
                             torch.full_like(slot, c * size))  # the scratch row
        # unique targets apart from the scratch row; index_put_ is deterministic where asked
        self.store.index_put_((target,), z.detach()[order].to(self.store.dtype))
        self.next_slot.copy_((self.next_slot + kept[:c]) % size)
        self.filled.copy_(torch.clamp(self.filled + kept[:c], max=size))

    def contrast(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(zc (num_classes * size_per_class, dim), yc): every slot, class by class; empty slots
        (ring slots fill in order until full) carry ignore_index."""
        slot = torch.arange(self.size_per_class, device=self.store.device)
        used = slot[None, :] < self.filled[:, None]
        labels = torch.arange(self.num_classes, device=self.store.device)[:, None].expand_as(used)
        yc = torch.where(used, labels, torch.full_like(labels, self.ignore_index))
        return self.store[:-1], yc.reshape(-1)
