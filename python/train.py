"""Train a timm segmenter with cross-entropy (+ Dice) and, optionally, ct_kernels'
ContrastivePatchLoss on its patch features.

    python python/train.py --backbone vit_tiny_patch16_224 --model-kwargs depth=4 \\
        --patch-size 4 --crop 64 --steps 400 --contrastive-weight 0.1          # synthetic data
    python python/train.py --dataset /data/potsdam --crop 512 --patch-size 16 ...  # ISPRS Potsdam
    python python/train.py --backbone resnet18 --con-stages=-2,-1 ...         # hierarchical

Backbones (random init; nothing is downloaded unless --pretrained):
  * ViT family (vit_*, deit_*, eva*, ...): built with img_size = crop and the given patch size;
    --stages picks transformer blocks (default: the last) whose token grids feed the decoder;
  * anything else: ``features_only=True`` (resnet*, convnext*, efficientnet*, swin* with
    --model-kwargs window_size=...); --stages picks feature levels (default: all).
Decoder: per stage 1x1 conv -> upsample to the finest stage -> sum -> 3x3 conv-BN-ReLU -> 1x1
classifier (logits at the finest stage's resolution, upsampled bilinearly for the loss).
Contrastive: one ProjectionHead (Linear-GELU-Linear, 128-d) per stage in --con-stages; the
loss is ContrastivePatchLoss over those stages (the mean of the per-stage losses).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ct_kernels as ct  # noqa: E402
from datasets import CLASSES, IGNORE_INDEX, NUM_CLASSES, PotsdamDataset, SyntheticAerial  # noqa: E402
from metrics import POTSDAM_EVAL_CLASSES, ConfusionMatrix  # noqa: E402

VIT_PREFIXES = ("vit_", "deit", "eva", "beit", "flexivit", "vit")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    # model
    backbone: str = "vit_tiny_patch16_224"
    model_kwargs: dict = field(default_factory=lambda: {"depth": 4})
    patch_size: int = 4            # ViT patch size (ignored for hierarchical backbones)
    stages: list | None = None     # ViT: block indices (default [-1]); hierarchical: levels (default all)
    con_stages: list | None = None  # indices into the stage list for the contrastive loss (default all)
    pretrained: bool = False
    decoder_dim: int = 128
    proj_dim: int = 128
    # data
    dataset: str = "synthetic"     # "synthetic" or a Potsdam-layout folder
    crop: int = 64
    train_size: int = 2000         # synthetic scenes in the training set
    val_size: int = 256            # synthetic scenes in the validation set (fixed seed)
    val_tiles: list | None = None  # Potsdam: tiles held out for validation (default: the last)
    boundary_ignore: int = 0
    # optimisation
    steps: int = 400
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 20
    seed: int = 0
    dice_weight: float = 0.0
    # contrastive
    contrastive_weight: float = 0.0  # 0: the cross-entropy baseline
    temperature: float = 0.1
    variant: str = "supcon"
    min_purity: float = 1.0
    hard_k: int | None = None       # hard positives = hard negatives = k (None: all)
    mining: str = "similarity"      # "similarity" (kernel mining by hard_k) | "confidence" (the paper's)
    confidence_fraction: float = 0.4
    max_per_class: int = 128
    min_per_class: int = 10
    memory_bank: int = 0           # slots per class of a MemoryBank (0: none); one contrastive stage
    backend: str = "auto"
    # runtime
    device: str = "cpu"
    threads: int = 0               # 0: all cores
    eval_batch: int = 64
    log_every: int = 10


def parse_kwargs(text: str | None) -> dict:
    """"depth=4,embed_dim=96" -> {"depth": 4, "embed_dim": 96} (values parsed as Python literals)."""
    out = {}
    if not text:
        return out
    for part in text.split(","):
        if not part.strip():
            continue
        k, eq, v = part.partition("=")
        if not eq or not k.strip():
            raise ValueError(f"--model-kwargs: expected key=value pairs separated by commas, got {part.strip()!r}")
        try:
            out[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            out[k.strip()] = v.strip()
    return out


def _int_list(text: str):
    """--stages / --con-stages: "1,-1" -> [1, -1]; "" -> None (the default stages)."""
    if not text:
        return None
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints (negative counts from the end), "
                                         f"got {text!r}") from None


def _kwargs_arg(text: str) -> dict:
    """--model-kwargs: parse_kwargs, its error as argparse's (argparse would replace a ValueError's text)."""
    try:
        return parse_kwargs(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_config(cfg: TrainConfig) -> None:
    """Reject option values that would fail (or silently mean something else) only after the data
    is built or the baseline is trained: a ValueError naming the option."""
    for name in ("steps", "batch_size", "train_size", "val_size", "eval_batch", "crop", "patch_size",
                 "decoder_dim", "proj_dim"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    for name in ("warmup", "memory_bank", "threads", "boundary_ignore"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if cfg.dataset == "synthetic" and cfg.batch_size > cfg.train_size:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than --train-size {cfg.train_size}")
    if cfg.contrastive_weight < 0:
        raise ValueError(f"--contrastive-weight must be >= 0 (0: the baseline), got {cfg.contrastive_weight}")
    try:
        torch.device(cfg.device)
    except RuntimeError as exc:
        raise ValueError(f"--device: {exc}") from None
    if cfg.contrastive_weight == 0:
        return
    if cfg.mining == "confidence" and cfg.hard_k is not None:
        raise ValueError("--hard-k mines by similarity; --mining confidence selects its own hard rows: leave it out")
    if cfg.memory_bank and cfg.mining != "similarity":
        raise ValueError("--memory-bank takes --mining similarity")
    try:
        build_criterion(cfg)  # the library's own checks of temperature, min_purity, k, ...
        ct.backend_for(cfg.device, cfg.backend)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ValueError(f"contrastive options: {exc}") from None


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default in --help."""


def add_arguments(p: argparse.ArgumentParser, defaults: TrainConfig | None = None) -> None:
    d = defaults or TrainConfig()
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default=d.backbone, help="any timm model name")
    g.add_argument("--model-kwargs", type=_kwargs_arg, default=",".join(f"{k}={v}" for k, v in d.model_kwargs.items()),
                   help="extra timm.create_model kwargs, e.g. depth=4,embed_dim=96 ('' for none)")
    g.add_argument("--patch-size", type=int, default=d.patch_size, help="ViT patch size")
    g.add_argument("--stages", type=_int_list, default=None,
                   help="ViT block indices / hierarchical levels, e.g. 1,2,3 or --stages=-1 (use = before a negative)")
    g.add_argument("--con-stages", type=_int_list, default=None,
                   help="indices into --stages for the contrastive loss (default all), e.g. --con-stages=-2,-1")
    g.add_argument("--pretrained", action="store_true", help="load timm weights (needs a download)")
    g.add_argument("--decoder-dim", type=int, default=d.decoder_dim)
    g.add_argument("--proj-dim", type=int, default=d.proj_dim)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, help="'synthetic' or a Potsdam-layout folder")
    g.add_argument("--crop", type=int, default=d.crop, help="crop / scene size")
    g.add_argument("--train-size", type=int, default=d.train_size)
    g.add_argument("--val-size", type=int, default=d.val_size)
    g.add_argument("--val-tiles", default=None, help="Potsdam tiles for validation, comma separated")
    g.add_argument("--boundary-ignore", type=int, default=d.boundary_ignore,
                   help="synthetic: mark pixels this close to a class border as ignore")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--warmup", type=int, default=d.warmup)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--dice-weight", type=float, default=d.dice_weight)
    g = p.add_argument_group("contrastive")
    g.add_argument("--contrastive-weight", type=float, default=d.contrastive_weight, help="0: baseline")
    g.add_argument("--temperature", type=float, default=d.temperature)
    g.add_argument("--variant", choices=("supcon", "infonce"), default=d.variant)
    g.add_argument("--min-purity", type=float, default=d.min_purity)
    g.add_argument("--hard-k", type=int, default=d.hard_k, help="hard positives/negatives per anchor")
    g.add_argument("--mining", choices=("similarity", "confidence"), default=d.mining)
    g.add_argument("--confidence-fraction", type=float, default=d.confidence_fraction)
    g.add_argument("--max-per-class", type=int, default=d.max_per_class)
    g.add_argument("--min-per-class", type=int, default=d.min_per_class)
    g.add_argument("--memory-bank", type=int, default=d.memory_bank,
                   help="rows kept per class from past steps as extra contrast columns (0: none)")
    g.add_argument("--backend", choices=("auto", "torch", "triton", "native"), default=d.backend)
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default=d.device)
    g.add_argument("--threads", type=int, default=d.threads)
    g.add_argument("--eval-batch", type=int, default=d.eval_batch)
    for action in p._actions:  # so that HelpFormatter shows every default, not only the described ones
        if action.help is None and action.default not in (None, argparse.SUPPRESS):
            action.help = "(default: %(default)s)"


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        backbone=a.backbone, model_kwargs=a.model_kwargs, patch_size=a.patch_size,
        stages=a.stages, con_stages=a.con_stages, pretrained=a.pretrained,
        decoder_dim=a.decoder_dim, proj_dim=a.proj_dim, dataset=a.dataset, crop=a.crop,
        train_size=a.train_size, val_size=a.val_size,
        val_tiles=a.val_tiles.split(",") if a.val_tiles else None, boundary_ignore=a.boundary_ignore,
        steps=a.steps, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay, warmup=a.warmup,
        seed=a.seed, dice_weight=a.dice_weight, contrastive_weight=a.contrastive_weight,
        temperature=a.temperature, variant=a.variant, min_purity=a.min_purity, hard_k=a.hard_k,
        mining=a.mining, confidence_fraction=a.confidence_fraction, max_per_class=a.max_per_class,
        min_per_class=a.min_per_class, memory_bank=a.memory_bank, backend=a.backend, device=a.device,
        threads=a.threads, eval_batch=a.eval_batch)


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------

def is_vit_name(name: str) -> bool:
    return name.lower().startswith(VIT_PREFIXES)


def _index(option: str, i: int, n: int) -> int:
    """A Python index into n things (negative from the end), or a ValueError naming the option."""
    if not -n <= i < n:
        raise ValueError(f"{option}: index {i} is out of range for {n} "
                         f"{'blocks' if option == '--stages' else 'stages'} (use 0..{n - 1} or -{n}..-1)")
    return i % n


class SegModel(nn.Module):
    """timm backbone + light decoder; ``forward`` returns (logits at the finest stage's
    resolution, list of stage feature maps (B, D_s, h_s, w_s))."""

    def __init__(self, backbone: str, num_classes: int, img_size: int, patch_size: int = 16,
                 stages: list | None = None, decoder_dim: int = 128, pretrained: bool = False,
                 model_kwargs: dict | None = None):
        super().__init__()
        import timm
        kw = dict(model_kwargs or {})
        self.is_vit = is_vit_name(backbone)
        if self.is_vit:
            self.body = timm.create_model(backbone, pretrained=pretrained, num_classes=0, img_size=img_size,
                                          patch_size=patch_size, **kw)
            depth = len(self.body.blocks)
            idx = stages if stages is not None else [-1]
            self.stage_ids = sorted({_index("--stages", i, depth) for i in idx})
            dims = [self.body.embed_dim] * len(self.stage_ids)
            self.reductions = [patch_size] * len(self.stage_ids)
            self.channels_last = False
        else:
            self.body = timm.create_model(backbone, pretrained=pretrained, features_only=True, **kw)
            n = len(self.body.feature_info.channels())
            idx = stages if stages is not None else list(range(n))
            self.stage_ids = sorted({_index("--stages", i, n) for i in idx})
            dims = [self.body.feature_info.channels()[i] for i in self.stage_ids]
            self.reductions = [self.body.feature_info.reduction()[i] for i in self.stage_ids]
            fmt = getattr(self.body, "output_fmt", None)
            self.channels_last = str(getattr(fmt, "value", fmt)).upper() == "NHWC"
        self.dims = dims
        self.lateral = nn.ModuleList(nn.Conv2d(d, decoder_dim, 1) for d in dims)
        self.fuse = nn.Sequential(nn.BatchNorm2d(decoder_dim), nn.ReLU(inplace=True),
                                  nn.Conv2d(decoder_dim, decoder_dim, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(decoder_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(decoder_dim, num_classes, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        if self.is_vit:
            return self.body.forward_intermediates(x, indices=self.stage_ids, norm=True, output_fmt="NCHW",
                                                   intermediates_only=True)
        feats = self.body(x)
        feats = [feats[i] for i in self.stage_ids]
        if self.channels_last:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.features(x)
        size = max((f.shape[-2:] for f in feats), key=lambda s: s[0] * s[1])
        y = None
        for f, lat in zip(feats, self.lateral):
            t = lat(f)
            if t.shape[-2:] != size:
                t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
            y = t if y is None else y + t
        return self.classifier(self.fuse(y)), feats


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Soft multi-class Dice (1 - mean over classes present in the batch), ignore pixels excluded."""
    c = logits.shape[1]
    valid = (target != ignore_index)
    prob = logits.softmax(1) * valid[:, None]
    onehot = F.one_hot(torch.where(valid, target, 0), c).permute(0, 3, 1, 2).to(prob.dtype) * valid[:, None]
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return 1.0 - dice[present].mean() if present.any() else logits.sum() * 0.0


def build_criterion(cfg: TrainConfig) -> nn.Module:
    common = dict(temperature=cfg.temperature, ignore_index=IGNORE_INDEX, min_purity=cfg.min_purity,
                  variant=cfg.variant, backend=cfg.backend)
    if cfg.mining == "confidence":
        return ct.ContrastivePatchLoss(NUM_CLASSES, mining="confidence", confidence_fraction=cfg.confidence_fraction,
                                       max_per_class=cfg.max_per_class, min_per_class=cfg.min_per_class, **common)
    bank = ct.MemoryBank(NUM_CLASSES, cfg.memory_bank, cfg.proj_dim) if cfg.memory_bank > 0 else None
    return ct.ContrastivePatchLoss(NUM_CLASSES, hard_positives=cfg.hard_k, hard_negatives=cfg.hard_k,
                                   memory_bank=bank, **common)


class Segmenter(nn.Module):
    """SegModel + one ProjectionHead per contrastive stage + the losses."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.cfg = cfg
        self.model = SegModel(cfg.backbone, NUM_CLASSES, cfg.crop, cfg.patch_size, cfg.stages, cfg.decoder_dim,
                              cfg.pretrained, cfg.model_kwargs)
        n = len(self.model.dims)
        self.con_ids = sorted({_index("--con-stages", i, n)
                               for i in (cfg.con_stages if cfg.con_stages is not None else range(n))})
        # Built after the model, so the backbone/decoder initialisation is the same with or
        # without the contrastive term (same seed).
        self.heads = nn.ModuleList()
        self.criterion = None
        if cfg.contrastive_weight > 0:
            if cfg.memory_bank > 0 and (len(self.con_ids) > 1 or cfg.mining != "similarity"):
                raise ValueError("--memory-bank takes one contrastive stage (--con-stages) and --mining similarity")
            self.heads = nn.ModuleList(ct.ProjectionHead(self.model.dims[i], cfg.proj_dim) for i in self.con_ids)
            self.criterion = build_criterion(cfg)

    def forward(self, x):
        return self.model(x)

    def losses(self, image: torch.Tensor, mask: torch.Tensor) -> dict:
        logits, feats = self.model(image)
        up = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        out = {"ce": F.cross_entropy(up, mask, ignore_index=IGNORE_INDEX)}
        total = out["ce"]
        if self.cfg.dice_weight > 0:
            out["dice"] = dice_loss(up, mask)
            total = total + self.cfg.dice_weight * out["dice"]
        if self.criterion is not None:
            proj = [head(feats[i]) for head, i in zip(self.heads, self.con_ids)]
            if self.cfg.mining == "confidence":
                out["con"] = self.criterion(proj, mask, logits=logits)
            else:
                out["con"] = self.criterion(proj, mask)
            total = total + self.cfg.contrastive_weight * out["con"]
        out["total"] = total
        return out


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

def stack_items(ds, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, masks) of the dataset items at ``indices``, stacked."""
    items = [ds[int(i)] for i in indices]
    return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])


def load_data(cfg: TrainConfig):
    """(train_images, train_masks, val_images, val_masks) as in-memory tensors for synthetic data,
    or (train_dataset, None, val_dataset, None) for Potsdam (read lazily)."""
    if cfg.dataset == "synthetic":
        train = SyntheticAerial(cfg.train_size, cfg.crop, seed=1000 + cfg.seed, boundary_ignore=cfg.boundary_ignore)
        # The validation scenes do not depend on the run seed: every run is scored on the same set.
        val = SyntheticAerial(cfg.val_size, cfg.crop, seed=987654321, boundary_ignore=cfg.boundary_ignore)
        return (*stack_items(train, range(len(train))), *stack_items(val, range(len(val))))
    from datasets import _tile_key, find_potsdam_pairs
    keys = sorted(_tile_key(p) for p, _ in find_potsdam_pairs(cfg.dataset))
    unknown = sorted(set(cfg.val_tiles or ()) - set(keys))
    if unknown:
        raise ValueError(f"--val-tiles: {unknown} not in {cfg.dataset}, which holds {keys}")
    if len(keys) < 2:
        raise ValueError(f"{cfg.dataset} holds one tile ({keys}): training and validation need two or more")
    val_keys = cfg.val_tiles or [keys[-1]]
    train_keys = [k for k in keys if k not in set(val_keys)]
    if not train_keys:
        raise ValueError(f"--val-tiles takes every tile of {cfg.dataset}: none is left for training")
    train = PotsdamDataset(cfg.dataset, cfg.crop, tiles=train_keys, cache_tiles=len(train_keys))
    val = PotsdamDataset(cfg.dataset, cfg.crop, tiles=val_keys, cache_tiles=len(val_keys))
    return train, None, val, None


def _batch(train_x, train_y, idx: torch.Tensor, flips: torch.Tensor):
    if train_y is None:
        x, y = stack_items(train_x, idx.tolist())
    else:
        x, y = train_x[idx], train_y[idx]
    # flips (same random draws in every run of a seed)
    hf, vf = flips[:, 0], flips[:, 1]
    x = torch.where(hf[:, None, None, None], x.flip(-1), x)
    y = torch.where(hf[:, None, None], y.flip(-1), y)
    x = torch.where(vf[:, None, None, None], x.flip(-2), x)
    y = torch.where(vf[:, None, None], y.flip(-2), y)
    return x, y


# ----------------------------------------------------------------------------------------------
# training / evaluation
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: nn.Module, val_x, val_y, device: str = "cpu", batch: int = 64) -> dict:
    """Per-class IoU/F1 and means, all classes and the Potsdam 5-class convention."""
    model.eval()
    cm = ConfusionMatrix(NUM_CLASSES, IGNORE_INDEX)
    n = len(val_x)
    for s in range(0, n, batch):
        if val_y is None:
            x, y = stack_items(val_x, range(s, min(n, s + batch)))
        else:
            x, y = val_x[s:s + batch], val_y[s:s + batch]
        logits, _ = model(x.to(device))
        up = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        cm.update(up.argmax(1).cpu(), y)
    model.train()
    m_all = cm.compute()
    m5 = cm.compute(POTSDAM_EVAL_CLASSES)
    return {"iou": m_all["iou"].tolist(), "f1": m_all["f1"].tolist(), "miou": m_all["miou"], "mf1": m_all["mf1"],
            "miou5": m5["miou"], "mf15": m5["mf1"], "oa": m_all["oa"], "confusion": cm.mat.tolist()}


def progress_bar(total: int, desc: str = ""):
    """A tqdm bar; redrawn every 30 s instead of every step when stderr is not a terminal (a log
    file or CI would otherwise collect one line per step)."""
    from tqdm import tqdm
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, dynamic_ncols=interactive, smoothing=0.1,
                mininterval=0.1 if interactive else 30.0)


def train(cfg: TrainConfig, data=None, progress=None, desc: str = "train") -> dict:
    """Train one run; returns history, final metrics and the model.

    ``data``: the tuple from ``load_data`` (pass it to share data between runs). ``progress``: a
    tqdm instance to update per step (the caller owns it), or None for a bar of its own.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = data if data is not None else load_data(cfg)
    train_x, train_y, val_x, val_y = data
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    net = Segmenter(cfg).to(cfg.device)
    decay = [p for n, p in net.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)

    def lr_at(step):
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(cfg.seed)  # batch order and flips: same in every run of a seed
    n_train = len(train_x)
    if cfg.batch_size > n_train:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the training set ({n_train} crops)")
    hist = {"step": [], "total": [], "ce": [], "con": [], "patches": []}
    own_bar = progress is None
    if own_bar:
        progress = progress_bar(cfg.steps, desc)
    backend_ran = None
    # ms/step from the steps after the first few: those carry one-off costs (allocator and thread
    # pool warm-up, on a GPU the Triton tuner's timing of its candidates) that would otherwise
    # read as the contrastive loss's cost in a short run
    warm_steps = min(10, cfg.steps // 10)
    t0 = t_warm = time.perf_counter()
    perm = torch.randperm(n_train, generator=gen)
    pos = 0
    for step in range(cfg.steps):
        if pos + cfg.batch_size > n_train:
            perm, pos = torch.randperm(n_train, generator=gen), 0
        idx = perm[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        flips = torch.rand(len(idx), 2, generator=gen) < 0.5
        x, y = _batch(train_x, train_y, idx, flips)
        x, y = x.to(cfg.device, non_blocking=True), y.to(cfg.device, non_blocking=True)
        out = net.losses(x, y)
        opt.zero_grad(set_to_none=True)
        out["total"].backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            hist["step"].append(step)
            hist["total"].append(float(out["total"].detach()))
            hist["ce"].append(float(out["ce"].detach()))
            hist["con"].append(float(out["con"].detach()) if "con" in out else float("nan"))
            crit = net.criterion
            if crit is not None and getattr(crit, "last_num_patches", None) is not None:
                hist["patches"].append(int(crit.last_num_patches))
                backend_ran = getattr(crit, "last_backend", None) or backend_ran
            progress.set_postfix(ce=f"{hist['ce'][-1]:.3f}",
                                 con=("-" if "con" not in out else f"{hist['con'][-1]:.3f}"), refresh=False)
        progress.update(1)
        if step + 1 == warm_steps:
            _sync(cfg.device)
            t_warm = time.perf_counter()
    _sync(cfg.device)
    t_end = time.perf_counter()
    train_s = t_end - t0
    step_ms = (t_end - t_warm) * 1000 / (cfg.steps - warm_steps)
    if own_bar:
        progress.close()
    t1 = time.perf_counter()
    metrics = evaluate(net.model, val_x, val_y, cfg.device, cfg.eval_batch)
    return {"config": dataclasses.asdict(cfg), "history": hist, "metrics": metrics, "train_s": train_s,
            "step_ms": step_ms, "warm_steps": warm_steps,
            "eval_s": time.perf_counter() - t1, "backend": backend_ran,
            "patches_per_step": float(np.mean(hist["patches"])) if hist["patches"] else 0.0,
            "rows_per_step": _rows_per_step(net, cfg), "model": net}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _rows_per_step(net: Segmenter, cfg: TrainConfig) -> int:
    """Rows (patches of every image, kept or not) handed to the contrastive loss per step."""
    if net.criterion is None:
        return 0
    return sum(cfg.batch_size * (cfg.crop // net.model.reductions[i]) ** 2 for i in net.con_ids)


def json_safe(obj):
    """obj with non-finite floats as None: JSON has no NaN (json.dump would write a bare NaN,
    which strict parsers reject)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj


def format_metrics(m: dict) -> str:
    lines = [f"{'class':<12} {'IoU':>7} {'F1':>7}"]
    for c, name in enumerate(CLASSES):
        lines.append(f"{name:<12} {m['iou'][c] * 100:7.2f} {m['f1'][c] * 100:7.2f}")
    lines.append(f"{'mean (6)':<12} {m['miou'] * 100:7.2f} {m['mf1'] * 100:7.2f}")
    lines.append(f"{'mean (5)':<12} {m['miou5'] * 100:7.2f} {m['mf15'] * 100:7.2f}   (Potsdam convention, no clutter)")
    lines.append(f"overall accuracy {m['oa'] * 100:.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_arguments(p)
    p.add_argument("--out", default=None, help="write metrics and loss history as JSON here")
    a = p.parse_args(argv)
    cfg = config_from_args(a)
    try:
        check_config(cfg)
    except ValueError as exc:
        p.error(str(exc))
    res = train(cfg)
    print(f"trained {cfg.steps} steps in {res['train_s']:.1f} s ({res['step_ms']:.0f} ms/step after the first "
          f"{res['warm_steps']}; eval {res['eval_s']:.1f} s)")
    if cfg.contrastive_weight > 0:
        what = ("kept patches per step, before the confidence selection" if cfg.mining == "confidence"
                else "patches in the loss per step")
        print(f"contrastive backend: {res['backend']}; {what}: "
              f"{res['patches_per_step']:.0f} of {res['rows_per_step']} rows")
    print(format_metrics(res["metrics"]))
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(json_safe({k: v for k, v in res.items() if k != "model"}), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
