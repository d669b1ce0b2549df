"""Block configurations: a fixed one under the interpreter, a small measured set on GPUs.

One configuration serves every pass of a call (mining, loss, backward): the tile shape and the
D-loop order decide the bits of s, and the mining thresholds are only exact if all passes
compute the same bits. The choice is cached per (D, dtype, N rounded up to a power of two,
variant, mining buffers, dot precision), never per exact N, and timed forward + backward together.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, NamedTuple

import torch


class Config(NamedTuple):
    bm: int      # rows per program
    bn: int      # columns per streamed tile (mined calls use bm == bn: see supcon_kernels)
    bd: int      # D chunk of the similarity dot; bd >= D: the row block is loaded once
    bdo: int     # D chunk of dU written per backward program; bdo >= D (with bd >= D): one pass
    num_warps: int
    num_stages: int
    # warps of the backward kernel alone (0: num_warps). The tile shape and D order, not the warp
    # count, decide the bits of s, so the thresholds stay exact (test_mined_backward_warps_keep_bits
    # checks it bitwise on GPUs); on sm_90 a 64-row tile with 8 warps has both warpgroups
    # compute the backward's similarity tile.
    bwd_warps: int = 0

    @property
    def block(self) -> int:  # the square tile of the mining kernel
        return self.bm


def parse_config(text: str) -> Config:
    """``"bm,bn,bd,bdo,num_warps,num_stages[,bwd_warps]"`` (CT_KERNELS_TRITON_CONFIG, for tests)."""
    return Config(*(int(x) for x in text.split(",")))


def format_config(cfg: Config) -> str:
    """The form parse_config reads (and CT_KERNELS_TRITON_CONFIG takes)."""
    return ",".join(map(str, cfg))


# A launch option every kernel takes: fused multiply-adds, the default of Triton 3.6 to 3.9. Triton
# 3.9 warns that its default turns to "off" in 3.10; the results (and the mining thresholds, which
# every pass must compute bit for bit alike) should not change with the Triton version.
# benchmarks/offline_compile.py --check fails a launch without it.
LAUNCH_OPTIONS = dict(enable_fp_fusion=True)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def on_device_of(t: torch.Tensor):
    """Triton launches on the current CUDA device, not on the tensor's: a tensor on another GPU
    would be read through the wrong context. The host wrappers launch within this."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def interpreter_config(n_pow2: int) -> Config:
    """Small blocks exercise the multi-block paths at test sizes; large batches take bigger
    ones because every tile costs the interpreter milliseconds of Python."""
    b = 16 if n_pow2 <= 128 else 64
    return Config(bm=b, bn=b, bd=32, bdo=32, num_warps=1, num_stages=1)


def gpu_candidates(d: int, dtype: torch.dtype, mined: bool = False, prec: str = "ieee") -> list[Config]:
    """Candidates timed on a miss; the first that the device launches is the default (no
    tuning, and the GPU tests): on an H100 / H200 the first.
    prec: the dots' precision (supcon._dot_precision: "ieee", "tf32" or "split3")."""
    d2 = max(16, next_pow2(d))
    # chunked configurations (the original set; spill-free on sm_90 with 8 warps)
    legacy = [
        Config(64, 64, min(d2, 64), min(d2, 64), 8, 2),
        Config(64, 64, min(d2, 64), min(d2, 128), 8, 3),
        Config(64, 64, min(d2, 128), min(d2, 128), 8, 2),
        Config(32, 32, min(d2, 64), min(d2, 64), 4, 2),
    ]
    tensor_cores = dtype in (torch.bfloat16, torch.float16) or (dtype == torch.float32 and prec == "tf32")
    fast = []
    # fp32 tiles take twice the shared memory: their held row block fits up to D = 128
    if tensor_cores and d2 <= (128 if dtype == torch.float32 else 256):
        # flash-attention shapes: the row block is loaded once and each tile is one full-D dot.
        # Up to D = 128 the one-pass backward comes first (bdo = D: one program a row block, the
        # column block of U reused for G·U): 64-wide dU programs each recompute the tile of s and
        # its exponentials. sm_90 offline compiles, D = 128 (benchmarks/offline_compile.py,
        # sass_loops.py; warp instructions of a step per element of s, Triton 3.6):
        # - bf16 / fp16: 1.62 against 2.58 for 64-wide programs (2.86 before the packed column
        #   statistics of supcon_kernels._row_stats); spill-free for supcon (infonce: 20 bytes on
        #   Triton 3.6), 227-255 registers, 1 CTA an SM as the 64-wide programs' 209-245.
        # - tf32 (twice the shared memory, so 2 stages): 1.81 against 5.77 for the 64-row tiles of
        #   the old default, whose two warpgroups both compute the backward's whole similarity tile
        #   (bf16 PTX: 20 wgmma a tile against 12 with 4 warps or 128 rows); spills 60-136 bytes.
        # Not yet timed: the tuner times every candidate and gpu_bench.py records its picks.
        bdo = min(d2, 64)
        # mined: one-pass first as well. Its backward trip costs what a 64-wide program's does
        # (bf16, Triton 3.6, before the packed statistics: 1552 against 1576 instructions a tile
        # and thread, untied arm) and runs once instead of twice: 15 % of the mined step's
        # instructions (Triton 3.8). Spill-free in bf16; tf32 spills 96 bytes on Triton 3.6 (0 on
        # 3.8) and still ran 1763 against 2 x 1829. Then the 64-wide programs, and those with the
        # backward at 4 warps (20 wgmma a tile against 36, bf16 PTX).
        if mined:
            fast = [Config(64, 64, d2, bdo, 8, 3), Config(64, 64, d2, bdo, 8, 3, bwd_warps=4)]
            if d2 <= 128:  # at D = 256 the one-pass backward spills 72 bytes (bf16, Triton 3.6)
                fast.insert(0, Config(64, 64, d2, d2, 8, 3))
        elif dtype == torch.float32:
            fast = [Config(128, 64, d2, d2, 8, 2), Config(128, 64, d2, bdo, 8, 3), Config(64, 64, d2, bdo, 8, 3),
                    Config(64, 64, d2, d2, 8, 3)]
        elif d2 <= 128:
            fast = [Config(128, 64, d2, d2, 8, 3), Config(128, 64, d2, bdo, 8, 3), Config(64, 64, d2, d2, 4, 3),
                    Config(64, 64, d2, bdo, 8, 3), Config(64, 64, d2, bdo, 4, 3)]
        else:  # D = 256: the one-pass accumulators hold 64 x 256 or 128 x 256 floats
            fast = [Config(128, 64, d2, bdo, 8, 3), Config(64, 64, d2, bdo, 8, 3), Config(64, 64, d2, d2, 8, 3),
                    Config(128, 64, d2, d2, 8, 3), Config(64, 64, d2, bdo, 4, 3)]
    cands = fast + legacy
    b32, b64 = min(d2, 32), min(d2, 64)  # the float32 lists' D chunks
    if dtype == torch.float32 and prec == "split3":
        # split3 (three tf32 products of host-split hi / lo rows, see supcon._dot_precision): four
        # operand tiles a stage, so 32-wide D chunks. sm_90 offline compiles (Triton 3.6, D = 128):
        # 128 x 32 tiles are spill-free with no tile computed twice by the two warpgroups (fwd 12,
        # bwd 24 wgmma a chunk; 123 KB shared, within an A100's 163 KB); 64 x 64 with 8 warps are
        # spill-free but duplicate (20 / 60); at 64 x 64 x 32 the mined select spills 40 bytes
        # (Triton 3.8: 44, and the mined backward 8).
        if mined:
            cands = [Config(64, 64, b32, b64, 8, 3), Config(64, 64, b64, b64, 8, 2), Config(32, 32, b32, b64, 4, 3)]
        else:
            cands = [Config(128, 32, b32, b64, 8, 3), Config(64, 64, b32, b64, 8, 3), Config(128, 64, b32, b64, 8, 2),
                     Config(64, 64, b64, b64, 8, 2)]
    if dtype == torch.float32 and prec == "ieee":
        # exact float32 (FMA dots). sm_90 offline compiles (Triton 3.8, D = 128): the legacy
        # default spills 4 bytes in the forward, its mined select 296; 64 x 64 x 32-wide chunks are
        # spill-free unmined; at 32 x 32 with 4 warps the mined select spills 32 bytes and the
        # mined backward 16. The mined 64 x 64 x 128 tile (6 KB spilled) is left out.
        if mined:
            cands = [Config(64, 64, b64, b64, 8, 2), Config(32, 32, b32, b64, 4, 2), Config(64, 64, b32, b32, 8, 2)]
        else:
            cands = [Config(64, 64, b64, b64, 8, 2), Config(64, 64, b32, b32, 8, 2), Config(64, 64, b32, b64, 8, 3),
                     Config(32, 32, b32, b64, 4, 2)]
    if dtype == torch.float64:
        # fp64 tiles (and their on-chip top-k mining buffers): 64-row blocks with 8 warps
        bd = min(d2, 32)
        cands = [Config(64, 64, bd, min(d2, 64), 8, 2), Config(32, 32, bd, min(d2, 64), 4, 2)]
    out = []
    for c in cands:
        if c not in out:
            out.append(c)
    return out


_CACHE: dict[tuple, Config] = {}
# What the tuner measured, per key: (candidate, median ms of a forward + backward, or None where
# it did not compile or run). Logged at INFO ("ct_kernels.triton_ops.tuning") and recorded with
# the GPU benchmarks, so that a run shows how the candidates compare, not only which one won.
TIMINGS: dict[tuple, list[tuple[Config, float | None]]] = {}
_log = logging.getLogger(__name__)


def pick(key: tuple, n_pow2: int, d: int, dtype: torch.dtype,
         run_fwd_bwd: Callable[[Config], None], mined: bool = False, prec: str = "ieee",
         timed: bool = True) -> Config:
    """Config for ``key``; on a GPU miss, time ``run_fwd_bwd`` for each candidate once
    (``timed=False``: the first candidate the device can launch, the same on every process of
    the same GPU model; see _first_that_launches).
    CT_KERNELS_TRITON_CONFIG="bm,bn,bd,bdo,warps,stages" forces one (tests); mined calls
    then use bn = bm."""
    forced = os.environ.get("CT_KERNELS_TRITON_CONFIG")
    if forced:
        cfg = parse_config(forced)
        return cfg._replace(bn=cfg.bm) if mined else cfg
    if interpreting():
        return interpreter_config(n_pow2)
    cfg = _CACHE.get(key)
    if cfg is not None:
        return cfg
    cands = gpu_candidates(d, dtype, mined, prec)
    if _capturing():
        cfg = cands[0]  # nothing may run inside a capture (a warm-up call before it fills the cache)
    elif not timed or os.environ.get("CT_KERNELS_TRITON_AUTOTUNE", "1") == "0" or len(cands) == 1:
        cfg = _first_that_launches(key, cands, run_fwd_bwd)
    else:
        import triton.testing
        best, best_ms, last_err, times = None, float("inf"), None, []
        for c in cands:
            try:
                ms = triton.testing.do_bench(lambda: run_fwd_bwd(c), warmup=5, rep=20)
            except Exception as exc:  # out of registers / shared memory for this shape
                last_err = exc
                times.append((c, None))
                continue
            times.append((c, ms))
            if ms < best_ms:
                best, best_ms = c, ms
        TIMINGS[key] = times
        _log.info("tuned %s: %s", key, "; ".join(f"{format_config(c)} {'failed' if ms is None else f'{ms:.3f} ms'}"
                                                  for c, ms in times))
        if best is None:
            raise RuntimeError(f"no Triton configuration ran for {key}") from last_err
        cfg = best
    _CACHE[key] = cfg
    return cfg


def _capturing() -> bool:
    # (asked only where CUDA is there: without a driver the question itself raises)
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _first_that_launches(key: tuple, cands: list[Config], run_fwd_bwd: Callable[[Config], None]) -> Config:
    """The first candidate whose forward + backward launches on this device, untimed. The
    candidates are ordered for an H100 / H200 (227 KB of shared memory a block); on an A100
    (163 KB) or a card with 99 KB (RTX 3090 / 4090 / 5090, A10, L4, L40S) the first ones can need
    more than the card has (benchmarks/offline_compile.py --arch 89 shows which), and Triton
    refuses the launch with OutOfResources before it runs: take the next one. One trial call on the
    first miss of a key; every kernel of the step must fit, since one configuration serves every
    pass (the mining thresholds)."""
    from triton.runtime.errors import OutOfResources
    refused = []
    for c in cands:
        try:
            run_fwd_bwd(c)
        except OutOfResources as exc:
            refused.append(f"{format_config(c)}: {exc}")
            continue
        if refused:
            _log.info("%s: took %s; refused by the device: %s", key, format_config(c), "; ".join(refused))
        return c
    raise RuntimeError(f"no Triton configuration of {key} fits this GPU: " + "; ".join(refused))
