"""``ContrastivePatchLoss``: the drop-in module for ViT / hierarchical segmentation training, and
the paper's ``ProjectionHead``."""
from __future__ import annotations

import torch
from torch import nn

from .confidence import confidence_supcon, patch_confidence
from .memory_bank import MemoryBank
from .patch import (as_patch_size, check_label_value, check_mask, check_num_classes, is_int, kept_row_labels,
                    patch_labels_unchecked, purity_ratio)
from .supcon import backend_for, check_loss_options, supcon_loss

_ROW_IGNORE = -1  # label carried by left-out patches into supcon_loss
_MAP_FORMATS = ("NCHW", "NHWC")  # layouts of 4-D feature maps (timm's output_fmt names)


def _check_feature_format(feature_format) -> None:
    if feature_format not in _MAP_FORMATS:
        raise ValueError(f"feature_format must be 'NCHW' ((B, D, h, w) maps) or 'NHWC' ((B, h, w, D) maps, as "
                         f"timm's Swin and MambaOut give), got {feature_format!r}")


class ProjectionHead(nn.Module):
    """Linear, GELU, Linear (the paper's projection head), applied to the last dimension.

    A 4-D input is a feature map projected per pixel: (B, D, h, w) by default, (B, h, w, D) with
    ``feature_format="NHWC"`` (timm's Swin and MambaOut), as ``ContrastivePatchLoss`` reads them.
    """

    def __init__(self, in_dim: int, out_dim: int = 128, hidden_dim: int | None = None, *,
                 feature_format: str = "NCHW"):
        super().__init__()
        _check_feature_format(feature_format)
        hidden_dim = hidden_dim or in_dim
        self.feature_format = feature_format
        self.in_dim = in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1] if x.dim() == 4 and self.feature_format == "NCHW" else x.shape[-1]
        if channels != self.in_dim:
            hint = ""
            if x.dim() == 4:
                other = "NHWC" if self.feature_format == "NCHW" else "NCHW"
                if (x.shape[-1] if other == "NHWC" else x.shape[1]) == self.in_dim:
                    hint = f" (a {other} map: pass feature_format={other!r}, as from_timm set on the loss)"
            raise ValueError(f"ProjectionHead(in_dim={self.in_dim}, feature_format={self.feature_format!r}) got "
                             f"{channels} features in shape {tuple(x.shape)}{hint}")
        if x.dim() == 4 and self.feature_format == "NCHW":
            return self.net(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.net(x)


def _grid_candidates(n: int, h_img: int, w_img: int) -> list[tuple[int, int]]:
    return [(h, n // h) for h in range(1, n + 1) if n % h == 0 and h_img % h == 0 and w_img % (n // h) == 0]


def _check_grid(grid):
    """None, or (h, w) as a tuple of ints (NumPy ints and a torch.Size accepted)."""
    ok = grid is None or (isinstance(grid, (tuple, list)) and len(grid) == 2
                          and all(is_int(v) and v > 0 for v in grid))
    if not ok:
        raise ValueError(f"grid must be None or (h, w), two positive ints (one pair per stage for a list "
                         f"of stages), got {grid!r}")
    return None if grid is None else (int(grid[0]), int(grid[1]))


def _check_stage(feat, mask: torch.Tensor) -> None:
    """One stage of features: a 3-D or 4-D tensor of the mask's batch, on its device."""
    if not isinstance(feat, torch.Tensor):
        raise TypeError(f"features must be a tensor or a list/tuple of tensors, got {type(feat).__name__}")
    if feat.dim() not in (3, 4):  # before the batch: (M, D) rows would read as a batch of M
        raise ValueError(f"features must be (B, N, D) tokens or a 4-D map ((B, D, h, w), or (B, h, w, D) "
                         f"with feature_format='NHWC'), got shape {tuple(feat.shape)}; rows already "
                         f"flattened to (M, D) go to ct_kernels.supcon_loss with their labels")
    if feat.shape[0] != mask.shape[0]:
        raise ValueError(f"features have batch size {feat.shape[0]} but mask has {mask.shape[0]}")
    if feat.device != mask.device:
        raise ValueError(f"features are on {feat.device} but mask is on {mask.device}")


def infer_grid(n: int, h_img: int, w_img: int) -> tuple[int, int]:
    """The (h, w) token grid of ``n`` patches over an (H, W) mask when h/w == H/W leaves one answer."""
    cands = _grid_candidates(n, h_img, w_img)
    same_aspect = [(h, w) for h, w in cands if h * w_img == w * h_img]
    if len(same_aspect) == 1:
        return same_aspect[0]
    if not cands:
        raise ValueError(f"features hold {n} patch tokens, which match no grid (h, w) dividing the mask's "
                         f"({h_img}, {w_img}); check num_prefix_tokens and the mask size (a model that pads "
                         f"images to whole patches, such as timm's dynamic_img_pad, needs the mask padded "
                         f"with ignore_index to the same size)")
    raise ValueError(f"cannot infer the patch grid of {n} tokens over a ({h_img}, {w_img}) mask: candidates "
                     f"{cands}; pass grid=(h, w)")


class ContrastivePatchLoss(nn.Module):
    """Supervised patch-level contrastive loss on ViT tokens or feature maps.

    Each patch is labelled by the majority class of the mask under it (``patch_labels``); patches
    whose majority covers less than ``min_purity`` of the patch, or that have no valid pixel, carry
    the ignore label. All B*h*w rows go to the fused loss: no compaction, no host synchronisation.

    ``mining="similarity"`` (default) is the kernels' hard mining (``hard_positives`` /
    ``hard_negatives``). ``mining="confidence"`` is the paper's selection by the segmentation head's
    confidence (``ct_kernels.confidence``): ``forward`` then needs ``logits``, and selecting per
    class reads counts on the host.

    4-D feature maps are (B, D, h, w); ``feature_format="NHWC"`` reads (B, h, w, D), the layout of
    timm's Swin and MambaOut (``from_timm`` sets it from the model's ``output_fmt``).

    ``memory_bank=ct.MemoryBank(num_classes, size, D)`` (one feature stage): each forward adds the
    bank's rows to the contrast set (columns only) and then, in training mode (``.train()``, as
    BatchNorm updates its statistics; ``.eval()`` leaves the bank as it is, for validation
    losses), pushes the step's kept patch rows into it, detached. It is a submodule: ``.to(device)`` moves it, the state dict holds it. With
    ``process_group`` the kept rows of every rank are gathered into it (one more all_gather of
    N x D), so every rank holds the same bank, as ContrastiveSeg's queues do, and the loss stays
    the single-process loss of the concatenated batch.

    Args:
        num_classes: classes of the mask (values 0 .. num_classes - 1).
        temperature, variant, hard_positives, hard_negatives, backend, process_group: as in
            ``ct_kernels.supcon_loss``.
        ignore_index: mask value of unlabelled pixels.
        min_purity: a patch takes part when its majority class covers at least this fraction of
            its pixels (1.0: pure patches only, the paper's rule); compared as
            count >= ceil(min_purity * ph * pw).
        num_prefix_tokens: tokens before the patch grid (class, distillation, register tokens).
        mining: ``"similarity"`` or ``"confidence"`` (see above).
        confidence_fraction, max_per_class, min_per_class: the confidence selection takes, per
            class, k = min(floor(n_c * confidence_fraction), max_per_class) anchors, hard
            positives and hard negatives, and skips the class when k < min_per_class
            (``ct_kernels.confidence``).
        memory_bank: a ``ct_kernels.MemoryBank`` (see above).
        feature_format: ``"NCHW"`` or ``"NHWC"``, the layout of 4-D feature maps.

    ``forward(features, mask, grid=None, logits=None)``: ``features`` (B, N, D) tokens, a 4-D
    map, or a list of them (the mean of the per-stage losses); ``mask`` (B, H, W) integer or bool;
    ``grid`` the (h, w) of each stage when it cannot be inferred from N and H/W. Returns the
    scalar loss; ``last_num_patches`` holds how many patches took part (a device tensor).
    """

    def __init__(self, num_classes: int, temperature: float = 0.1, ignore_index: int = 255,
                 min_purity: float = 1.0, variant: str = "supcon", hard_positives: int | None = None,
                 hard_negatives: int | None = None, num_prefix_tokens: int = 0, backend: str = "auto",
                 process_group=None, *, mining: str = "similarity", confidence_fraction: float = 0.4,
                 max_per_class: int = 128, min_per_class: int = 10, memory_bank: MemoryBank | None = None,
                 feature_format: str = "NCHW"):
        super().__init__()
        num_classes = check_num_classes(num_classes)
        check_loss_options(temperature, variant, hard_positives, hard_negatives, "mean", backend)
        if isinstance(min_purity, bool) or not isinstance(min_purity, (int, float)) or not 0.0 <= min_purity <= 1.0:
            raise ValueError(f"min_purity must be a number in [0, 1], got {min_purity!r}")
        if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be an int >= 0, got {num_prefix_tokens!r}")
        _check_feature_format(feature_format)
        if mining not in ("similarity", "confidence"):
            raise ValueError(f"mining must be 'similarity' or 'confidence', got {mining!r}")
        if mining == "confidence":
            if process_group is not None:
                raise ValueError("mining='confidence' selects rows per rank on the host; it does not combine "
                                 "with process_group")
            if hard_positives is not None or hard_negatives is not None:
                raise ValueError("hard_positives/hard_negatives select by similarity; mining='confidence' "
                                 "selects its own hard positives and negatives: leave them None")
            if not 0.0 < confidence_fraction <= 1.0:
                raise ValueError(f"confidence_fraction must be in (0, 1], got {confidence_fraction!r}")
            for name, v in (("max_per_class", max_per_class), ("min_per_class", min_per_class)):
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"{name} must be an int >= 1, got {v!r}")
            if min_per_class > max_per_class:
                raise ValueError(f"min_per_class={min_per_class} > max_per_class={max_per_class} would skip every "
                                 f"class (k = min(n_c * confidence_fraction, max_per_class) never reaches it)")
        if memory_bank is not None:
            if not isinstance(memory_bank, MemoryBank):
                raise TypeError(f"memory_bank must be a ct_kernels.MemoryBank, got {type(memory_bank).__name__}")
            if memory_bank.num_classes != num_classes:
                raise ValueError(f"memory_bank holds {memory_bank.num_classes} classes, the loss {num_classes}")
            if mining == "confidence":
                raise ValueError("memory_bank works with mining='similarity'; the confidence selection does "
                                 "not take extra contrast rows")
        self.memory_bank = memory_bank
        self.mining = mining
        self.confidence_fraction = confidence_fraction
        self.max_per_class = max_per_class
        self.min_per_class = min_per_class
        self.num_classes = num_classes
        self.temperature = float(temperature)
        self.ignore_index = check_label_value("ignore_index", ignore_index)
        self.min_purity = min_purity
        self.variant = variant
        self.hard_positives = hard_positives
        self.hard_negatives = hard_negatives
        self.num_prefix_tokens = num_prefix_tokens
        self.feature_format = feature_format
        self.backend = backend
        self.process_group = process_group
        # Stage reductions (patch sizes) known from a timm model; empty means "infer from shapes".
        self.reductions: list[tuple[int, int]] = []
        # Set by forward, for logging: the backend that ran and the number of patches that took
        # part, the latter a device tensor (reading it is the caller's choice of synchronisation).
        # With mining="confidence" it counts the kept patches the selection draws from.
        self.last_backend: str | None = None
        self.last_num_patches: torch.Tensor | None = None

    @property
    def min_purity(self) -> float:
        return self._min_purity

    @min_purity.setter
    def min_purity(self, value: float) -> None:
        self._min_purity = float(value)
        self._purity_ratio = purity_ratio(value)  # ints: no float formatting inside a compiled step

    def extra_repr(self) -> str:
        """What print(criterion) shows: the settings that change the loss (defaults left out)."""
        parts = [f"num_classes={self.num_classes}", f"temperature={self.temperature}",
                 f"variant={self.variant!r}", f"min_purity={self.min_purity}", f"backend={self.backend!r}"]
        optional = [("ignore_index", self.ignore_index, 255), ("hard_positives", self.hard_positives, None),
                    ("hard_negatives", self.hard_negatives, None), ("num_prefix_tokens", self.num_prefix_tokens, 0),
                    ("feature_format", self.feature_format, "NCHW"), ("mining", self.mining, "similarity"),
                    ("reductions", self.reductions, [])]
        parts += [f"{name}={value!r}" for name, value, default in optional if value != default]
        if self.process_group is not None:
            parts.append("process_group=<set>")
        return ", ".join(parts)

    @classmethod
    def from_timm(cls, model: nn.Module, num_classes: int, **kwargs) -> "ContrastivePatchLoss":
        """Build the loss for a timm model: patch size and prefix tokens of a ViT, or the stage
        reductions (``feature_info``) of a hierarchical / ``features_only`` model, and the layout
        of its feature maps (``output_fmt``: Swin and MambaOut give (B, h, w, D))."""
        reductions: list[tuple[int, int]] = []
        fmt = getattr(model, "output_fmt", None)
        fmt = str(getattr(fmt, "value", fmt))  # a str, or timm's Format enum
        if fmt in _MAP_FORMATS:
            kwargs.setdefault("feature_format", fmt)
        if hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed"):
            kwargs.setdefault("num_prefix_tokens", int(model.num_prefix_tokens))
            size = model.patch_embed.patch_size  # a pair, or one int (XCiT's ConvPatchEmbed)
            reductions = [as_patch_size(int(size) if isinstance(size, int) else tuple(int(p) for p in size))]
        else:
            info = getattr(model, "feature_info", None)
            if info is None:
                raise TypeError("from_timm needs a timm model with patch_embed/num_prefix_tokens (ViT) or "
                                f"feature_info (hierarchical), got {type(model).__name__}")
            steps = info.reduction() if hasattr(info, "reduction") else [f["reduction"] for f in info]
            reductions = [as_patch_size(int(r)) for r in steps]
        crit = cls(num_classes, **kwargs)
        crit.reductions = reductions
        return crit

    # -- shapes ---------------------------------------------------------------------------------
    def _stage_rows(self, feat: torch.Tensor, h_img: int, w_img: int, grid) -> tuple[torch.Tensor, int, int]:
        """(rows (B*h*w, D), h, w) of one stage (checked by _check_stage), rows in (batch, row, column)
        order."""
        if feat.dim() == 4:
            if self.feature_format == "NHWC":
                b, h, w, d = feat.shape
                rows = feat.reshape(b * h * w, d)
            else:
                b, d, h, w = feat.shape
                rows = feat.permute(0, 2, 3, 1).reshape(b * h * w, d)
            if grid is not None and tuple(grid) != (h, w):
                raise ValueError(f"grid={tuple(grid)} does not match the feature map's (h, w)=({h}, {w})")
        else:
            b, n_tok, d = feat.shape
            n = n_tok - self.num_prefix_tokens
            if n <= 0:
                raise ValueError(f"features have {n_tok} tokens, not more than num_prefix_tokens="
                                 f"{self.num_prefix_tokens}")
            if grid is not None:
                h, w = grid
                if h * w != n:
                    raise ValueError(f"grid={tuple(grid)} gives {h * w} patches but features hold {n} "
                                     f"(after {self.num_prefix_tokens} prefix tokens)")
            else:
                known = [(h_img // rh, w_img // rw) for rh, rw in self.reductions
                         if (h_img // rh) * (w_img // rw) == n]
                if not known and self.num_prefix_tokens and any(
                        (h_img // rh) * (w_img // rw) == n_tok for rh, rw in self.reductions):
                    raise ValueError(f"features hold {n_tok} tokens, the model's patch grid without prefix tokens, "
                                     f"but the loss skips num_prefix_tokens={self.num_prefix_tokens} (timm's "
                                     f"forward_intermediates returns the patch tokens only): use a loss with "
                                     f"num_prefix_tokens=0 for them")
                h, w = known[0] if known else infer_grid(n, h_img, w_img)
            rows = feat[:, self.num_prefix_tokens:, :].reshape(b * n, d)
        if h <= 0 or w <= 0 or h_img % h or w_img % w:
            raise ValueError(f"the patch grid ({h}, {w}) does not divide the mask's ({h_img}, {w_img})"
                             f"{self._grid_hint(feat, h_img, w_img)}")
        if feat.dim() == 4 and self.reductions:
            ph, pw = h_img // h, w_img // w
            if not any(ph * rw == pw * rh for rh, rw in self.reductions):
                raise ValueError(f"the feature map's grid ({h}, {w}) gives {ph} x {pw} pixel patches of the "
                                 f"({h_img}, {w_img}) mask, not the shape of the model's reductions "
                                 f"{self.reductions}{self._grid_hint(feat, h_img, w_img, other_layout_only=True)}")
        return rows, h, w

    def _grid_hint(self, feat: torch.Tensor, h_img: int, w_img: int, other_layout_only: bool = False) -> str:
        """Why a grid may not fit: the map read in the wrong layout (said only where the other
        layout's grid would divide the mask), or an image that is not a whole number of patches."""
        if feat.dim() == 3:
            return " (pad the mask with ignore_index to a whole number of patches)"
        other = "NCHW" if self.feature_format == "NHWC" else "NHWC"
        h2, w2 = (feat.shape[2], feat.shape[3]) if other == "NCHW" else (feat.shape[1], feat.shape[2])
        if h2 > 0 and w2 > 0 and h_img % h2 == 0 and w_img % w2 == 0:
            return (f" (read as feature_format={self.feature_format!r}; with feature_format={other!r} its grid "
                    f"would be ({h2}, {w2}): timm's Swin and MambaOut give NHWC from forward_features, while "
                    f"forward_intermediates and features_only give NCHW)")
        if other_layout_only:
            return ""
        return (" (an image that is not a multiple of the model's stride gives such a grid: crop or pad the "
                "image, and pad the mask with ignore_index)")

    def _row_labels(self, mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
        ph, pw = mask.shape[1] // h, mask.shape[2] // w
        labels, purity, bad = patch_labels_unchecked(mask, ph, pw, self.num_classes, self.ignore_index, self.backend)
        msg = (f"mask holds values outside [0, num_classes={self.num_classes}) that are not "
               f"ignore_index={self.ignore_index}")
        if bad.is_cuda or torch.compiler.is_compiling():
            # No host sync in a training step (and no graph break under torch.compile): the check
            # raises when the device reaches it.
            torch._assert_async(bad[0] == 0, msg)
        elif int(bad[0]) != 0:
            raise ValueError(msg)
        return kept_row_labels(labels, purity, ph, pw, self.ignore_index, self._purity_ratio, _ROW_IGNORE)

    # -- forward --------------------------------------------------------------------------------
    def _bank_contrast(self, rows: torch.Tensor):
        bank = self.memory_bank
        if rows.shape[1] != bank.dim:
            raise ValueError(f"memory_bank holds ({bank.dim},) rows, the features are ({rows.shape[1]},): give the "
                             f"bank the projection's width")
        if rows.device != bank.store.device:
            raise ValueError(f"memory_bank is on {bank.store.device}, the features on {rows.device} (move the loss "
                             f"with .to(): the bank is a submodule)")
        zc, yc = bank.contrast()
        return zc, torch.where(yc == bank.ignore_index, torch.full_like(yc, _ROW_IGNORE), yc)

    def _stage_loss(self, rows, row_labels, mask, h, w, logits):
        contrast = self._bank_contrast(rows) if self.memory_bank is not None else None

        def loss_fn(z, y, reduction="mean"):
            return supcon_loss(z, y, self.temperature, variant=self.variant,
                               hard_positives=self.hard_positives, hard_negatives=self.hard_negatives,
                               ignore_index=_ROW_IGNORE, reduction=reduction, backend=self.backend,
                               process_group=self.process_group, contrast=contrast)
        if self.mining == "similarity":
            loss = loss_fn(rows, row_labels)
            # after the loss (a row is never its own positive), and in training mode only: like
            # BatchNorm's running statistics, a validation pass under .eval() leaves the bank as it was
            if self.memory_bank is not None and self.training:
                new_rows, new_labels = rows.detach(), row_labels
                if self.process_group is not None:
                    from .distributed import all_rows
                    new_rows, new_labels = all_rows(new_rows, new_labels, self.process_group, _ROW_IGNORE)
                self.memory_bank.update(new_rows, new_labels)
            return loss
        ph, pw = mask.shape[1] // h, mask.shape[2] // w
        conf = patch_confidence(logits, tuple(mask.shape[1:]), ph, pw)
        return confidence_supcon(rows, row_labels, conf, self.num_classes, loss_fn, self.confidence_fraction,
                                 self.max_per_class, self.min_per_class)

    def forward(self, features, mask: torch.Tensor, grid=None, logits: torch.Tensor | None = None) -> torch.Tensor:
        if self.mining == "confidence" and logits is None:
            raise ValueError("mining='confidence' needs logits=(B, C, H', W') from the segmentation head")
        if self.mining != "confidence" and logits is not None:
            raise ValueError("logits are read only with mining='confidence'; this loss mines by similarity "
                             "(hard_positives / hard_negatives): leave logits out")
        stages = list(features) if isinstance(features, (list, tuple)) else [features]
        if not stages:
            raise ValueError("features must hold at least one stage")
        if self.memory_bank is not None and len(stages) > 1:
            raise ValueError(f"memory_bank serves one feature stage, got {len(stages)}: use one loss per stage")
        check_mask(mask, 1, 1)
        if logits is not None and (not isinstance(logits, torch.Tensor) or logits.dim() != 4
                                   or logits.shape[:2] != (mask.shape[0], self.num_classes)
                                   or logits.device != mask.device):
            raise ValueError(f"logits must be (B, num_classes, H', W') = ({mask.shape[0]}, {self.num_classes}, "
                             f"H', W') on the mask's device ({mask.device}), got "
                             f"{tuple(getattr(logits, 'shape', ()))} on {getattr(logits, 'device', None)}")
        grids = grid if (grid is not None and len(stages) > 1) else [grid] * len(stages)
        if len(grids) != len(stages):
            raise ValueError(f"grid must give one (h, w) per stage ({len(stages)}), got {len(grids)}")
        _, h_img, w_img = mask.shape
        losses, n_patches = [], []
        for feat, g in zip(stages, grids):
            g = _check_grid(g)
            _check_stage(feat, mask)
            rows, h, w = self._stage_rows(feat, h_img, w_img, g)
            row_labels = self._row_labels(mask, h, w)
            losses.append(self._stage_loss(rows, row_labels, mask, h, w, logits))
            n_patches.append((row_labels != _ROW_IGNORE).sum())
        self.last_backend = backend_for(mask.device, self.backend, "supcon_loss", stages[-1].dtype)
        self.last_num_patches = torch.stack(n_patches).sum()
        return torch.stack(losses).mean() if len(losses) > 1 else losses[0]
