"""Data-parallel training with global negatives: every rank's patches are negatives for every anchor.

    torchrun --nproc_per_node 2 python/ddp_train.py            # CPU (gloo) or one GPU per rank (NCCL)
    torchrun --nproc_per_node 8 python/ddp_train.py --steps 1000 --batch-size 32

Each rank computes the loss of its own patches (anchors) against the patches of all ranks;
ContrastivePatchLoss(process_group=...) scales it so that DDP's gradient averaging gives exactly
the gradient of the loss over the concatenated batch. The value to log is the mean over ranks of
the returned losses (all_reduce AVG below), which equals that global loss.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import timm  # noqa: E402

import ct_kernels as ct  # noqa: E402
from datasets import NUM_CLASSES, SyntheticAerial  # noqa: E402


class Model(torch.nn.Module):
    def __init__(self, size: int, patch: int):
        super().__init__()
        self.vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=size, patch_size=patch,
                                     depth=4, num_classes=0)
        self.head = ct.ProjectionHead(self.vit.embed_dim, 128)
        self.seg = torch.nn.Linear(self.vit.embed_dim, NUM_CLASSES)
        self.grid = size // patch

    def forward(self, images):
        tokens = self.vit.forward_features(images)
        patch_tokens = tokens[:, self.vit.num_prefix_tokens:]
        b = images.shape[0]
        logits = self.seg(patch_tokens).transpose(1, 2).reshape(b, NUM_CLASSES, self.grid, self.grid)
        return tokens, self.head(tokens), logits


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4, help="images per rank")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--backend", choices=("auto", "torch", "triton", "native"), default="auto")
    a = p.parse_args(argv)
    if "RANK" not in os.environ:  # init_process_group would only say "environment variable RANK expected"
        p.error("start it with torchrun, which sets RANK and WORLD_SIZE: "
                "torchrun --nproc_per_node 2 python/ddp_train.py ...")

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # same initial weights on every rank
    model = DDP(Model(a.size, a.patch).to(device), device_ids=[device.index] if cuda else None)
    criterion = ct.ContrastivePatchLoss.from_timm(model.module.vit, NUM_CLASSES, temperature=0.1, min_purity=0.75,
                                                  backend=a.backend, process_group=dist.group.WORLD)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = SyntheticAerial(10_000, size=a.size, seed=0)

    for step in range(a.steps):
        idx = range((step * world + rank) * a.batch_size, (step * world + rank + 1) * a.batch_size)
        images, masks = (t.to(device) for t in data.batch(idx))  # each rank its own images
        _, proj, logits = model(images)
        ce = F.cross_entropy(F.interpolate(logits, size=masks.shape[-2:], mode="bilinear"), masks, ignore_index=255)
        con = criterion(proj, masks)
        loss = ce + 0.1 * con
        opt.zero_grad()
        loss.backward()
        opt.step()
        logged = torch.stack([ce.detach(), con.detach()])
        dist.all_reduce(logged, op=dist.ReduceOp.AVG)  # the global losses: what to log
        n_patches = criterion.last_num_patches.clone()
        dist.all_reduce(n_patches)
        if rank == 0:
            print(f"step {step}: cross-entropy {logged[0]:.4f}  contrastive (global) {logged[1]:.4f}  "
                  f"patches in the loss, all ranks: {int(n_patches)}  backend {criterion.last_backend}")
    dist.barrier()  # no rank tears down while a peer's last sends are in flight
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
