"""The mma.sync CUDA kernels (csrc/cuda/supcon_mma.cuh) run on the CPU warp emulator (tests/emu).

The same kernel source nvcc compiles is built with the host compiler against tests/emu/warp_emu.h,
which runs one thread per CUDA thread and performs mma.sync / ldmatrix / shuffles as the PTX ISA
specifies them. This checks, without a GPU, the tiling, the fragment bookkeeping, the masks, the
log-sum-exp and the symmetric backward against the dense float64 reference. What it cannot check
(the hardware itself, timing) is the GPU tests' job (tests/test_native_cuda.py with
CT_KERNELS_NATIVE_MMA=1, run by benchmarks/gpu_check.sh).
"""
from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ct_kernels.reference import supcon_rows_reference
from ct_kernels.selfcheck import rel_err

from emu_build import build_emulator

KINDS = {"bf16": 0, "fp16": 1, "tf32": 2, "tf32x3": 3}
IGN = -1


@pytest.fixture(scope="session")
def emu_binary(tmp_path_factory) -> Path:
    return build_emulator(tmp_path_factory, "supcon_mma_emu.cpp")


def _round_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> the tf32 value cvt.rna gives (nearest, ties away from zero, 10 mantissa bits)."""
    bits = x.to(torch.float32).view(torch.int32).to(torch.int64)
    bits = ((bits + 0x1000) & ~0x1FFF) & 0xFFFFFFFF
    return torch.from_numpy(bits.to(torch.int64).numpy().astype(np.uint32).view(np.float32).copy())


def _operands(u: torch.Tensor, kind: str):
    """(bytes the kernel reads, the values it multiplies) for float64 rows u."""
    if kind == "bf16":
        v = u.to(torch.bfloat16)
        return v.view(torch.int16).numpy().tobytes(), v.double()
    if kind == "fp16":
        v = u.to(torch.float16)
        return v.view(torch.int16).numpy().tobytes(), v.double()
    v = u.to(torch.float32)
    if kind == "tf32x3":  # float32 products to within ~2^-21: held to the float32 values
        return v.numpy().tobytes(), v.double()
    return v.numpy().tobytes(), _round_tf32(v).double()


def _run(binary: Path, tmp_path: Path, kind, variant, u, labels, lo, hi, grad, inv_temp, dp, rows=16):
    m, d = u.shape
    raw, used = _operands(u, kind)
    head = struct.pack("<9q", KINDS[kind], 0 if variant == "supcon" else 1, m, d, lo, hi, IGN, dp, rows)
    head += struct.pack("<d", inv_temp)
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    src.write_bytes(head + labels.numpy().astype("<i8").tobytes() + raw + grad.numpy().astype("<f4").tobytes())
    res = subprocess.run([str(binary), str(src), str(dst)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    buf = np.fromfile(dst, dtype=np.uint8)
    r = hi - lo
    sizes = [("loss_f", "<f4", m), ("npos_f", "<i4", m), ("stats_f", "<f4", 2 * m), ("loss_s", "<f4", r),
             ("npos_s", "<i4", r), ("stats_s", "<f4", 2 * r), ("du", "<f4", r * d)]
    out, off = {}, 0
    for name, dt, n in sizes:
        out[name] = torch.from_numpy(buf[off:off + 4 * n].view(dt).copy())
        off += 4 * n
    assert off == buf.size
    out["du"] = out["du"].view(r, d)
    return out, used


def _case(m, d, ncls, seed, p_ignore=0.15):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, ncls, (m,), generator=g)
    labels[torch.rand(m, generator=g) < p_ignore] = IGN
    u = torch.nn.functional.normalize(z, dim=1)
    u[labels == IGN] = 0  # as supcon_loss prepares the rows
    grad = torch.rand(m, generator=g, dtype=torch.float64) / m
    return u, labels, grad


# bf16 / fp16 round H to 16 bits before the dU product (as the WMMA path and Triton do): ~2^-9
# relative per element; tf32 rounds H to 10 mantissa bits. The forward sees the operands exactly
# (products of rounded values, fp32 sums), so it is held to fp32 accuracy.
DU_TOL = {"bf16": 2e-2, "fp16": 4e-3, "tf32": 4e-3, "tf32x3": 1e-5}


SHAPES = [(70, 37, 0, 70), (97, 64, 11, 90), (45, 100, 3, 45), (33, 1, 0, 33), (200, 40, 7, 197)]  # m, d, lo, hi
# forward rows per warp: 16 (one m-tile, the default) on every case; 32 (the A/B alternative,
# CT_KERNELS_NATIVE_MMA_ROWS=32) on some, including one past a 128-row block
# tf32x3 (three products a k-step: the slowest to emulate) on fewer shapes
CASES = ([(kind, variant, shape, 16) for kind in ("bf16", "fp16", "tf32") for variant in ("supcon", "infonce")
          for shape in SHAPES]
         + [("tf32x3", variant, shape, 16) for variant in ("supcon", "infonce") for shape in (SHAPES[0], SHAPES[2])]
         + [(kind, variant, shape, 32) for kind in ("bf16", "tf32") for variant in ("supcon", "infonce")
            for shape in (SHAPES[1], SHAPES[4])]
         + [("tf32x3", "supcon", SHAPES[1], 32)])


@pytest.mark.parametrize("kind,variant,shape,rows", CASES)
def test_mma_kernels_match_reference(emu_binary, tmp_path, kind, variant, shape, rows):
    m, d, lo, hi = shape
    u, labels, grad = _case(m, d, 4, seed=m * 31 + d + KINDS[kind])
    grad[:lo] = 0  # rows outside the slice were never anchors: zero weight, as _FusedSupCon passes
    grad[hi:] = 0
    inv_temp = 1 / 0.1
    dp = 64 if d <= 64 else 128
    out, used = _run(emu_binary, tmp_path, kind, variant, u, labels, lo, hi, grad.float(), inv_temp, dp, rows)
    valid = labels != IGN

    ref_rows, ref_npos = supcon_rows_reference(used, labels, valid, 0.1, variant)
    assert torch.equal(out["npos_f"].long(), ref_npos)
    assert rel_err(out["loss_f"], ref_rows) < 2e-5
    assert torch.equal(out["npos_s"], out["npos_f"][lo:hi])  # the anchor slice is the same rows
    assert rel_err(out["loss_s"], ref_rows[lo:hi]) < 2e-5
    assert torch.all(out["loss_f"][~valid] == 0) and torch.all(out["npos_f"][~valid] == 0)

    x = used.clone().requires_grad_(True)
    rows, _ = supcon_rows_reference(x, labels, valid, 0.1, variant, start=lo, count=hi - lo)
    (rows * grad[lo:hi].float().double()).sum().backward()
    ref_du = x.grad[lo:hi]
    assert rel_err(out["du"] * inv_temp, ref_du) < DU_TOL[kind]
    assert torch.isfinite(out["du"]).all()


@pytest.mark.parametrize("variant", ["supcon", "infonce"])
def test_mma_kernels_edge_batches(emu_binary, tmp_path, variant):
    """One class (no negatives), every row its own class (no positives), and one valid row."""
    m, d = 40, 24
    u, _, grad = _case(m, d, 3, seed=5, p_ignore=0.0)
    for labels in (torch.zeros(m, dtype=torch.long), torch.arange(m), torch.full((m,), IGN).index_fill_(0, torch.tensor([7]), 2)):
        uu = u.clone()
        uu[labels == IGN] = 0
        out, used = _run(emu_binary, tmp_path, "bf16", variant, uu, labels, 0, m, grad.float(), 10.0, 64)
        valid = labels != IGN
        ref_rows, ref_npos = supcon_rows_reference(used, labels, valid, 0.1, variant)
        assert torch.equal(out["npos_f"].long(), ref_npos)
        assert torch.allclose(out["loss_f"].double(), ref_rows, atol=1e-5, rtol=2e-5)
        x = used.clone().requires_grad_(True)
        rows, _ = supcon_rows_reference(x, labels, valid, 0.1, variant)
        (rows * grad.double()).sum().backward()
        if x.grad.abs().max() == 0:
            assert torch.all(out["du"] == 0)
        else:
            assert rel_err(out["du"] * 10.0, x.grad) < DU_TOL["bf16"]


@pytest.mark.parametrize("m", [1, 2, 3])
def test_mma_kernels_tiny_batches(emu_binary, tmp_path, m):
    """Fewer rows than one mma tile: everything past M is padding that must not count."""
    u, _, grad = _case(m, 8, 1, seed=m, p_ignore=0.0)
    labels = torch.zeros(m, dtype=torch.long)
    for variant in ("supcon", "infonce"):
        out, used = _run(emu_binary, tmp_path, "tf32", variant, u, labels, 0, m, grad.float(), 10.0, 64)
        ref_rows, ref_npos = supcon_rows_reference(used, labels, labels != IGN, 0.1, variant)
        assert torch.equal(out["npos_f"].long(), ref_npos)
        assert torch.allclose(out["loss_f"].double(), ref_rows, atol=1e-5, rtol=2e-5)
        x = used.clone().requires_grad_(True)
        rows, _ = supcon_rows_reference(x, labels, labels != IGN, 0.1, variant)
        (rows * grad.double()).sum().backward()
        assert torch.allclose(out["du"].double() * 10.0, x.grad, atol=1e-5, rtol=4e-3)


def test_mma_fp16_backward_keeps_small_weights(emu_binary, tmp_path):
    """Upstream weights far below 1 (mean reduction at large M gives ~1/M, times softmax weights
    ~1/M): without the host's power-of-two weight scale (the driver applies the same rule) H rounds
    to fp16 zeros or subnormals; with it the fp16 backward is as accurate as at any weight."""
    m, d = 96, 32
    u, labels, _ = _case(m, d, 3, seed=9)
    grad = torch.full((m,), 1e-6)
    out, used = _run(emu_binary, tmp_path, "fp16", "supcon", u, labels, 0, m, grad, 10.0, 64)
    x = used.clone().requires_grad_(True)
    rows, _ = supcon_rows_reference(x, labels, labels != IGN, 0.1, "supcon")
    (rows * grad.double()).sum().backward()
    assert rel_err(out["du"] * 10.0, x.grad) < DU_TOL["fp16"]
