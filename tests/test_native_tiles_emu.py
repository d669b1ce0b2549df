"""The FMA / WMMA CUDA kernels (csrc/cuda/supcon_passes.cuh and the parts it includes: hard mining
by radix select, anchor slices) run through their own launch sequences on the CPU warp emulator
(tests/emu).

What the GPU tests of tests/test_native_cuda.py check on a card, checked here without one: loss rows,
|P_i| after mining and dU against the dense float64 reference, mined and unmined, whole batches and
anchor slices that start and end inside row blocks (one rank's rows under process_group). The
emulated WMMA fragments use a layout of their own (the kernels only load, store, multiply and map
fragments element-wise, which any layout serves); the hardware and the timing stay the GPU's job.
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

KINDS = {"bf16": 0, "fp16": 1, "tf32": 2, "fp32": 3, "fp64": 4}
IGN = -1


@pytest.fixture(scope="session")
def tiles_binary(tmp_path_factory) -> Path:
    return build_emulator(tmp_path_factory, "supcon_tiles_emu.cpp")


def _operands(u: torch.Tensor, kind: str):
    """(bytes the kernels read, the float64 values they multiply)."""
    if kind in ("bf16", "fp16"):
        v = u.to(torch.bfloat16 if kind == "bf16" else torch.float16)
        return v.view(torch.int16).numpy().tobytes(), v.double()
    if kind == "fp64":
        return u.numpy().tobytes(), u.clone()
    v = u.to(torch.float32)
    if kind == "fp32":
        return v.numpy().tobytes(), v.double()
    bits = v.view(torch.int32).to(torch.int64)  # tf32 operands: cvt.rna to 10 mantissa bits
    bits = ((bits + 0x1000) & ~0x1FFF) & 0xFFFFFFFF
    return v.numpy().tobytes(), torch.from_numpy(bits.numpy().astype(np.uint32).view(np.float32).copy()).double()


def _run(binary, tmp_path, kind, variant, u, labels, lo, hi, kp, kn, grad, inv_temp):
    m, d = u.shape
    raw, used = _operands(u, kind)
    head = struct.pack("<9q", KINDS[kind], 0 if variant == "supcon" else 1, m, d, lo, hi, IGN, kp, kn)
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    src.write_bytes(head + struct.pack("<d", inv_temp) + labels.numpy().astype("<i8").tobytes() + raw
                    + grad.numpy().astype("<f8").tobytes())
    res = subprocess.run([str(binary), str(src), str(dst)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    buf = np.fromfile(dst, dtype="<f8")
    r = hi - lo
    names = [("loss_f", m), ("npos_f", m), ("stats_f", 2 * m), ("thr_val_f", 2 * m), ("thr_col_f", 2 * m),
             ("loss_s", r), ("npos_s", r), ("stats_s", 2 * r), ("du", r * d)]
    out, off = {}, 0
    for name, n in names:
        chunk = buf[off:off + n]
        if name.startswith(("npos", "thr_col")):
            chunk = np.frombuffer(chunk.tobytes(), dtype="<i8")
        out[name] = torch.from_numpy(chunk.copy())
        off += n
    assert off == buf.size
    out["du"] = out["du"].view(r, d)
    return out, used


def _tie_case(m, d, seed):
    """Entries in {-1, -0.5, 0, 0.5, 1}, few columns: every similarity is exact in any precision and
    summation order, so the mining selection (ties included) is the reference's."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(-2, 3, (m, d), generator=g).double() / 2
    labels = torch.randint(0, 3, (m,), generator=g)
    labels[::11] = IGN
    u[labels == IGN] = 0
    grad = torch.rand(m, generator=g, dtype=torch.float64) + 0.5
    return u, labels, grad


def _random_case(m, d, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 4, (m,), generator=g)
    labels[torch.rand(m, generator=g) < 0.15] = IGN
    u[labels == IGN] = 0
    grad = torch.rand(m, generator=g, dtype=torch.float64) + 0.5
    return u, labels, grad


# H is rounded to the 16-bit type on the tensor-core paths (tf32: 10 mantissa bits)
DU_TOL = {"bf16": 2e-2, "fp16": 4e-3, "tf32": 4e-3, "fp32": 1e-5, "fp64": 1e-10}
LOSS_TOL = {"fp64": 1e-12}


@pytest.mark.parametrize("kind", ["fp64", "fp32", "bf16", "fp16", "tf32"])
@pytest.mark.parametrize("variant", ["supcon", "infonce"])
@pytest.mark.parametrize("kp,kn", [(0, 0), (3, 7), (2, 10_000)])
def test_tile_kernels_match_reference(tiles_binary, tmp_path, kind, variant, kp, kn):
    # exact similarities for the tensor-core kinds (mining ties); random unit rows for the FMA ones
    m, d, lo, hi = 83, 20, 21, 70  # two 64-row blocks (three of 32 in float64); the slice cuts both
    if kind in ("fp64", "fp32"):
        u, labels, grad = _random_case(m, d, seed=7 + kp)
    else:
        u, labels, grad = _tie_case(m, d, seed=7 + kp)
    grad[:lo] = 0  # rows outside the slice were never anchors
    grad[hi:] = 0
    temp = 0.5
    out, used = _run(tiles_binary, tmp_path, kind, variant, u, labels, lo, hi, kp, kn, grad, 1 / temp)
    valid = labels != IGN
    ref_rows, ref_npos = supcon_rows_reference(used, labels, valid, temp, variant, kp or None, kn or None)
    assert torch.equal(out["npos_f"], ref_npos)
    assert rel_err(out["loss_f"], ref_rows) < LOSS_TOL.get(kind, 2e-6)
    # the slice's rows are the whole batch's rows, to the bit (same tiles, same selection)
    assert torch.equal(out["loss_s"], out["loss_f"][lo:hi]) and torch.equal(out["npos_s"], out["npos_f"][lo:hi])
    assert torch.equal(out["stats_s"], out["stats_f"][2 * lo:2 * hi])

    x = used.clone().requires_grad_(True)
    rows, _ = supcon_rows_reference(x, labels, valid, temp, variant, kp or None, kn or None, lo, hi - lo)
    (rows * grad[lo:hi]).sum().backward()
    assert rel_err(out["du"] * (1 / temp), x.grad[lo:hi]) < DU_TOL[kind]
    assert torch.all(out["du"][~valid[lo:hi]] == 0)
