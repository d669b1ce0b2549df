"""Quickstart: ContrastivePatchLoss on a timm ViT in a few lines (CPU, random init, < 1 minute).

    python python/quickstart.py [--backend auto|torch|native|triton] [--steps 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import timm  # noqa: E402

import ct_kernels as ct  # noqa: E402
from datasets import NUM_CLASSES, SyntheticAerial  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "native", "triton"))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    torch.manual_seed(0)

    # 1. A batch of generated aerial images (B, 3, 64, 64) and masks (B, 64, 64), classes 0..5.
    images, masks = SyntheticAerial(a.batch_size, size=64, seed=0).batch(range(a.batch_size))
    images, masks = images.to(a.device), masks.to(a.device)

    # 2. A timm ViT (random init: nothing is downloaded), patch 4 -> a 16 x 16 token grid.
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=4, depth=4,
                            num_classes=0).to(a.device)
    head = ct.ProjectionHead(vit.embed_dim, 128).to(a.device)          # the paper's projection head
    seg = torch.nn.Linear(vit.embed_dim, NUM_CLASSES).to(a.device)     # a linear segmentation head

    # 3. The loss: from_timm reads the patch size and the prefix (class) token count.
    criterion = ct.ContrastivePatchLoss.from_timm(vit, NUM_CLASSES, temperature=0.1, min_purity=0.75,
                                                  backend=a.backend)
    opt = torch.optim.AdamW([*vit.parameters(), *head.parameters(), *seg.parameters()], lr=1e-3)

    for step in range(a.steps):
        t0 = time.perf_counter()
        tokens = vit.forward_features(images)                  # (B, 1 + 256, 192), class token first
        patch_tokens = tokens[:, vit.num_prefix_tokens:]
        logits = seg(patch_tokens).transpose(1, 2).reshape(a.batch_size, NUM_CLASSES, 16, 16)
        ce = F.cross_entropy(F.interpolate(logits, size=masks.shape[-2:], mode="bilinear"), masks,
                             ignore_index=255)
        con = criterion(head(tokens), masks)                   # all B*16*16 patches, prefix skipped
        loss = ce + 0.1 * con
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step}: cross-entropy {ce.item():.4f}  contrastive {con.item():.4f}  "
              f"({time.perf_counter() - t0:.2f} s)")

    n_rows = a.batch_size * 16 * 16
    print(f"backend requested: {a.backend}; ran: {criterion.last_backend}")
    print(f"patches in the contrastive loss per step: {int(criterion.last_num_patches)} of {n_rows} "
          f"(the rest are below min_purity=0.75)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
