"""process_group: 2 and 3 gloo processes on CPU, uneven row counts, every backend that runs on CPU.

The mean over ranks of the returned losses must equal the single-process loss of the concatenated
batch, and each rank's gradient divided by the world size (what DDP's averaging does to the
parameters' gradients) must equal the single-process gradient of its rows.
"""
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ct_kernels as ct
from cpu_backends import cpu_backends

CASES = [dict(variant="supcon"), dict(variant="infonce"),
         dict(variant="supcon", hard_positives=2, hard_negatives=3),
         # the same memory bank on every rank (columns only): class 3 has positives only there
         dict(variant="infonce", hard_negatives=4, bank=True)]
SPLITS = {2: [9, 14], 3: [7, 0, 16]}  # uneven, and one rank without rows


def _batch():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(23, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (23,), generator=g)
    y[[1, 10, 20]] = -1
    y[5] = 3  # its only positives are in the memory bank of the last case
    return z, y


def _bank():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 5, generator=g, dtype=torch.float64), torch.tensor([3, 0, 3, -1, 1, 2])


def _kwargs(kw):
    kw = dict(kw)
    return dict(kw, contrast=_bank()) if kw.pop("bank", False) else kw


def _worker(rank, world, init_file, backend, out_dir):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        z, y = _batch()
        bounds = [0]
        for n in SPLITS[world]:
            bounds.append(bounds[-1] + n)
        lo, hi = bounds[rank], bounds[rank + 1]
        results = []
        for kw in CASES:
            zr = z[lo:hi].clone().requires_grad_()
            loss = ct.supcon_loss(zr, y[lo:hi], 0.2, backend=backend, process_group=dist.group.WORLD, **_kwargs(kw))
            loss.backward()
            results.append((loss.detach(), zr.grad))
        # a second derivative through the gathered loss: an error, not a silently partial result
        zr = z[lo:hi].clone().requires_grad_()
        grad, = torch.autograd.grad(ct.supcon_loss(zr, y[lo:hi], 0.2, backend=backend,
                                                   process_group=dist.group.WORLD), zr, create_graph=True)
        try:
            torch.autograd.grad(grad.square().sum(), zr, allow_unused=True)
            results.append("second derivative")
        except RuntimeError as exc:
            results.append(str(exc))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        # every rank done before any tears down: a rank leaving while a peer's gloo sends are in
        # flight aborted the process now and then ("terminate called without an active exception")
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    _leave()


def _leave():
    """Every rank saved its results and passed the barrier: exit without running the process
    group's destructors, where torch 2.11's gloo still aborted now and then (the same message)
    with nothing in flight."""
    os._exit(0)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("backend", cpu_backends())
def test_gloo_matches_single_process(tmp_path, world, backend):
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), backend, str(tmp_path)), nprocs=world, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    z, y = _batch()
    bounds = [0]
    for n in SPLITS[world]:
        bounds.append(bounds[-1] + n)
    for r in range(world):  # every backend: the gathered loss's dU is computed outside autograd
        if SPLITS[world][r]:
            assert "process_group gives first derivatives only" in per_rank[r][-1]
    for c, kw in enumerate(CASES):
        zz = z.clone().requires_grad_()
        ref = ct.supcon_loss(zz, y, 0.2, backend=backend, **_kwargs(kw))
        ref.backward()
        losses = torch.stack([per_rank[r][c][0] for r in range(world)])
        torch.testing.assert_close(losses.mean(), ref.detach(), rtol=1e-9, atol=1e-12)
        for r in range(world):
            grad = per_rank[r][c][1]
            want = zz.grad[bounds[r]:bounds[r + 1]]
            if grad is None:  # a rank without rows
                assert want.numel() == 0
                continue
            torch.testing.assert_close(grad / world, want, rtol=1e-9, atol=1e-12)


def _edge_worker(rank, world, init_file, backend, scenario, out_dir):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    z, y = _batch()
    z, y = z[rank * 11:(rank + 1) * 11].clone(), y[rank * 11:(rank + 1) * 11]
    if scenario == "dtype" and rank == 1:
        z = z.float()  # the other rank sends float64 rows of the same width
    if scenario == "width" and rank == 1:
        z = z[:, :4]
    if scenario == "nan" and rank == 0:
        z[2, 0] = float("nan")  # a valid row (label != -1)
    if scenario == "overflow" and rank == 0:
        z[3] *= 1e200
    try:
        if scenario == "subgroup":
            g = dist.new_group([1])
            out = ct.supcon_loss(z, y, 0.2, backend=backend, process_group=g) if rank == 1 else None
            if rank == 0:
                ct.supcon_loss(z, y, 0.2, backend=backend, process_group=g)
        else:
            out = ct.supcon_loss(z.requires_grad_(), y, 0.2, backend=backend, process_group=dist.group.WORLD,
                                 normalize=scenario != "overflow")
        result = ("loss", None if out is None else float(out))
    except ValueError as exc:
        result = ("error", str(exc))
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    _leave()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("scenario", ["dtype", "width", "nan", "overflow", "subgroup"])
@pytest.mark.parametrize("backend", cpu_backends(with_triton=False))
def test_ranks_agree_on_bad_rows(tmp_path, backend, scenario):
    """Rows of another dtype or width on one rank were all-gathered as raw bytes (a wrong loss, or
    gloo aborting); a NaN or an overflowing row on one rank left the other ranks' losses finite
    (DDP then averaged finite gradients of a NaN step); a rank outside a subgroup got a TypeError
    about an int. Every rank now raises the same error, or every loss is NaN."""
    mp.spawn(_edge_worker, args=(2, str(tmp_path / "init"), backend, scenario, str(tmp_path)), nprocs=2, join=True)
    kind = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    if scenario in ("dtype", "width"):
        for what, msg in kind:
            assert what == "error" and "every rank must give rows of the same width and dtype" in msg, msg
    elif scenario == "subgroup":
        assert kind[0][0] == "error" and "not a member of the group" in kind[0][1]
        assert kind[1][0] == "loss"
    else:
        assert all(what == "loss" and math.isnan(value) for what, value in kind), kind


def test_process_group_without_init_is_an_error():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised")
    with pytest.raises(RuntimeError, match="init_process_group"):
        ct.supcon_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), process_group=object())


def test_ddp_example_runs_with_torchrun():
    pytest.importorskip("timm")  # the example trains a timm ViT
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, CT_KERNELS_BACKEND="torch", PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517", str(root / "python" / "ddp_train.py"), "--steps", "1",
                          "--batch-size", "2"], capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "contrastive (global)" in out.stdout and "backend torch" in out.stdout


def _module_bank_worker(rank, world, init_file, out_dir):
    """Two steps of ContrastivePatchLoss(memory_bank=..., process_group=...) on this rank's images."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        crit = ct.ContrastivePatchLoss(3, min_purity=0.5, backend="torch", process_group=dist.group.WORLD,
                                       memory_bank=ct.MemoryBank(3, 6, 5, dtype=torch.float64))
        losses = []
        for step in range(2):
            fmaps, masks = _module_batch(step)
            lo, hi = (0, 1) if rank == 0 else (1, 3)  # uneven: one image, two images
            losses.append(crit(fmaps[lo:hi], masks[lo:hi]).detach())
        torch.save((losses, crit.memory_bank.state_dict()), os.path.join(out_dir, f"bank{rank}.pt"))
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    _leave()


def _module_batch(step):
    g = torch.Generator().manual_seed(10 + step)
    fmaps = torch.randn(3, 5, 4, 4, generator=g, dtype=torch.float64)
    masks = torch.randint(0, 3, (3, 4, 4), generator=g).repeat_interleave(2, 1).repeat_interleave(2, 2)
    return fmaps, masks


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_module_memory_bank_is_the_same_on_every_rank(tmp_path):
    """The kept rows of all ranks go into every rank's bank: the banks agree, and each step's mean
    loss over ranks is the single-process loss of the concatenated batch with that bank."""
    mp.spawn(_module_bank_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    (loss0, bank0), (loss1, bank1) = [torch.load(tmp_path / f"bank{r}.pt") for r in range(2)]
    single = ct.ContrastivePatchLoss(3, min_purity=0.5, backend="torch",
                                     memory_bank=ct.MemoryBank(3, 6, 5, dtype=torch.float64))
    for step in range(2):
        fmaps, masks = _module_batch(step)
        ref = single(fmaps, masks)
        torch.testing.assert_close((loss0[step] + loss1[step]) / 2, ref.detach(), rtol=1e-9, atol=1e-12)
    for key, value in single.memory_bank.state_dict().items():
        torch.testing.assert_close(bank0[key], value)
        torch.testing.assert_close(bank1[key], value)
