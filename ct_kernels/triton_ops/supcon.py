"""Host wrappers of the fused SupCon / InfoNCE kernels (the KERNEL CONTRACT of backends.py).

saved = (a, q, npos, thr_pos, col_pos, thr_neg, col_neg), one entry per anchor row (q is None
for supcon, the thresholds None on a side that is not mined): see supcon_kernels for what they hold.
"""
from __future__ import annotations

import math
import os
from typing import List, Optional

import torch
import triton

from ..backends import anchor_slice, place_rows
from ..precision import fp32_3xtf32, half_weight_scale
from . import tuning
from ._select import select_sort_kernel
from .supcon_kernels import supcon_bwd_kernel, supcon_fwd_kernel, supcon_mine_kernel, supcon_select_kernel
from .version import fp64_missing_reason

MAX_HARD_K = 256  # per mined side, for the on-chip top-k merge (float64); the counting select has no limit
# float32 mining by counting (see _select): edges per search pass, passes spaced by value before
# the order-key spaced ones, and the collect slots per row and side.
# 8 edges: 16 spilled ~3x more in sm_90 compiles (benchmarks/offline_compile.py)
SELECT_BINS = 8
SELECT_VALUE_PASSES = 2
GATHER_SLOTS = 64  # collect buffer per row and side: 2 * 64 * 8 bytes per row, whatever k
# Developer switches for A/B runs on a GPU (read at each call):
#   CT_KERNELS_TRITON_MINING=merge: float32 too through the top-k merge (the earlier kernel, kept
#     for float64);
#   CT_KERNELS_TRITON_MINED_BWD=reuse: the mined backward reads row j's side of a pair from the
#     tile (i, j) instead of recomputing (j, i) (bitwise the same in bf16 and tf32 on an H200,
#     2 % faster there, within noise; not for split3: see _Call.reuses_tile);
#   CT_KERNELS_TRITON_SELECT_STAGES=n: software-pipelining stages of the select kernel (default: the
#     configuration's; fewer stages, fewer registers). Whether the tile bits (and so the
#     thresholds) stay those of the loss passes across stage counts is what
#     test_counting_select_equals_topk_merge checks when run with it set;
#   CT_KERNELS_TRITON_SELECT_COUNT=packed: the search passes count with two packed column sums
#     per tile instead of one a pair of bins (_select.count_at_or_above_packed; the same counts).
#   CT_KERNELS_TRITON_CLASS_RUNS=0: unmined infonce takes the rows in the caller's order, every
#     tile in its second forward pass (see supcon_kernels, CLASS_RUNS).
#   CT_KERNELS_TRITON_MINED_MASKS=tiebreak: the mined loss pass and backward test every tile with
#     the tie-break, not the one compare that untied thresholds allow (supcon_kernels._mined_side).
VARIANTS = ("supcon", "infonce")


def _merges(dtype: torch.dtype) -> bool:
    """Whether mining takes the on-chip top-k merge (float64 tiles, or the A/B switch)."""
    return dtype == torch.float64 or os.environ.get("CT_KERNELS_TRITON_MINING") == "merge"


def _check_args(u: torch.Tensor, labels: torch.Tensor, variant: str, kp: int, kn: int) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if u.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise TypeError(f"unsupported dtype {u.dtype}")
    if u.dtype == torch.float64 and (reason := fp64_missing_reason()):
        raise RuntimeError(reason)
    for name, k in (("hard_positives", kp), ("hard_negatives", kn)):
        if int(k) < 0:
            raise ValueError(f"{name}={k}: expected a count >= 0 (0: not mined)")
        if int(k) > MAX_HARD_K and _merges(u.dtype):
            raise ValueError(f"{name}={k}: the triton backend mines at most {MAX_HARD_K} per row for float64 "
                             "inputs (float32 / bf16 / fp16 have no limit; or use backend='torch')")
    if u.dim() != 2 or labels.shape != (u.shape[0],):
        raise ValueError(f"expected u (M, D) and labels (M,), got {tuple(u.shape)} and {tuple(labels.shape)}")


def _dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """tl.dot input_precision, or "split3". float32 with tf32 allowed: "tf32". float32 without:
    exact float32 ("ieee", FMA units), or with CT_KERNELS_FP32_3XTF32=1 (precision.fp32_3xtf32)
    "split3": three tf32 tensor-core products of hi / lo parts split once on the host
    (tf32_split), ~4x float32's error per product at several times the speed. Triton's own
    "tf32x3" does the same but splits both operands in registers on every tile: 255 registers
    and 300-900 spilled bytes in sm_90 compiles of the backward, which the pre-split operands
    avoid. float64: "ieee"; bf16 / fp16 ignore it."""
    if dtype == torch.float32:
        return "tf32" if allow_tf32 else "split3" if fp32_3xtf32() else "ieee"
    return "ieee"


def _tf32_nearest(x: torch.Tensor) -> torch.Tensor:
    """x rounded to tf32 (nearest, ties away, as cvt.rna) where that stays finite; Inf, NaN and
    the values that would round up to Inf are left as they are (the tensor core reads only their
    top bits)."""
    r = ((x.view(torch.int32) + 0x1000).bitwise_and_(-0x2000)).view(torch.float32)
    return torch.where(torch.isfinite(r) & torch.isfinite(x), r, x)


def tf32_split(u: torch.Tensor) -> torch.Tensor:
    """float32 (M, D) -> (M, 2D) rows [hi | lo]: hi = u rounded to tf32, lo = u - hi (exact)
    rounded to tf32; hi + lo carries 22 of u's 24 mantissa bits. Written into one buffer (2 M D
    floats, the only extra memory of split3)."""
    m, d = u.shape
    out = torch.empty((m, 2 * d), dtype=torch.float32, device=u.device)
    out[:, :d] = _tf32_nearest(u)
    out[:, d:] = _tf32_nearest(u - out[:, :d])
    return out


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def holds_row_block(dtype: torch.dtype, prec: str, bd: int, d: int) -> bool:
    """SINGLE_D: the row block held across the column loop. Single tensor-core dots only (fp64
    dots are FMA loops; split3 has two row blocks, hi and lo, at four operand tiles a stage).
    The interpreter takes it for the others, to test the path."""
    if prec == "split3":  # its row blocks are two (hi and lo) and stream with the columns
        return False
    tc = dtype in (torch.bfloat16, torch.float16) or prec == "tf32" or tuning.interpreting()
    return bd >= d and tc


def select_passes() -> int:
    """Most search passes: the value-spaced ones, then 32 / log2(NB) key-spaced passes narrow
    any interval to one value; one spare."""
    return SELECT_VALUE_PASSES + -(-32 // (SELECT_BINS.bit_length() - 1)) + 1


def _buffer_width(k: int, block: int) -> int:
    return max(tuning.next_pow2(k), block) if k > 0 else 16


# Input dtypes whose backward rounds the weights H to 16 bits for the dot with U: they get the
# power-of-two weight scale of precision.half_weight_scale (exact; undone in the dU scale).
SCALED_H_DTYPES = (torch.float16, torch.bfloat16)


class _Call:
    """Everything one forward or backward launch needs, derived the same way both times."""

    def __init__(self, u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, start=0, count=None):
        _check_args(u, labels, variant, kp, kn)
        self.prec = _dot_precision(u.dtype, allow_tf32)
        self.m, self.d = u.shape
        labels = labels.to(torch.int64).contiguous()
        self.r0, self.r = int(start), anchor_slice(self.m, start, count)
        self.infonce = variant == "infonce"
        self.kp, self.kn = int(kp), int(kn)
        srt, order = torch.sort(labels, stable=True)
        # class runs: the kernels see the rows ordered by label (see supcon_kernels), and this
        # call puts its outputs back in the caller's order. Unmined infonce over a whole batch
        # only: anchors must stay one contiguous slice, and mining breaks ties by column
        self.order = order if self.class_runs_wanted() else None
        if self.order is not None:
            self.inverse = torch.empty_like(order)
            self.inverse[order] = torch.arange(self.m, device=order.device)
            u, labels = u[order], srt
        # split3: the kernels read rows [hi | lo] (row stride 2D); dU is (R, D), contiguous
        self.u = tf32_split(u) if self.prec == "split3" else u if u.is_contiguous() else u.contiguous()
        # int32 class ids (index of the first equal label in sorted order), -1 for ignored rows,
        # and the label-only |P_i| before mining: O(M log M), no host sync. With class runs the
        # class id is also the column where the row's run starts, and end where it stops
        first = torch.searchsorted(srt, labels)
        valid = labels != int(ignore_index)
        self.cls = torch.where(valid, first, torch.full_like(first, -1)).to(torch.int32)
        self.count = torch.searchsorted(srt, labels, right=True) - first
        self.end = (first + self.count).to(torch.int32) if self.order is not None else None
        self.acc = _acc_dtype(u.dtype)
        self.tl_acc = triton.language.float64 if self.acc == torch.float64 else triton.language.float32
        # [scale of the tiles (base 2: inv_temp * log2 e), inv_temp], written by fill kernels: a
        # host-to-device copy (torch.tensor(..., device=)) would break CUDA graph capture
        # (fill_ on each element: `temp[0] = x` is a host-to-device copy too)
        self.temp = torch.empty((2,), dtype=self.acc, device=u.device)
        self.temp[0:1].fill_(float(inv_temp) * math.log2(math.e))
        self.temp[1:2].fill_(float(inv_temp))
        # A slice (one rank's anchors) is keyed apart from whole batches, and a mined slice is never
        # timed (tuning.pick): every rank must tile the same way for the thresholds to match.
        self.sliced = self.r != self.m
        self.key = (self.d, u.dtype, tuning.next_pow2(self.m), variant, self.kp > 0, self.kn > 0,
                    tuning.next_pow2(max(self.kp, self.kn, 1)), self.prec, u.device, self.sliced,
                    self.order is not None)

    def class_runs_wanted(self) -> bool:
        """Whether the kernels take the rows in class runs (CT_KERNELS_TRITON_CLASS_RUNS=0: never,
        the A/B switch; needs self.r0 / r, infonce, kp, kn)."""
        whole = self.r0 == 0 and self.r == self.m
        return (self.infonce and not self.mined and whole
                and os.environ.get("CT_KERNELS_TRITON_CLASS_RUNS", "1") != "0")

    def to_kernel_order(self, t):
        """A per-row tensor of the caller (M rows) in the order the kernels see (None stays)."""
        return t if t is None or self.order is None else t[self.order]

    def to_caller_order(self, t):
        return t if t is None or self.order is None else t[self.inverse]

    @property
    def mined(self) -> bool:
        return self.kp > 0 or self.kn > 0

    def consts(self, cfg: tuning.Config) -> dict:
        return dict(INFONCE=self.infonce, MINE_P=self.kp > 0, MINE_N=self.kn > 0, BM=cfg.bm,
                    BN=cfg.bm if self.mined else cfg.bn, BD=cfg.bd, SINGLE_D=self.single_d(cfg),
                    PREC=self.prec, ACC=self.tl_acc, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                    **tuning.LAUNCH_OPTIONS)

    def loss_consts(self, cfg: tuning.Config) -> dict:
        """consts of the loss and backward kernels (the mining kernels have no class runs)."""
        one_compare = os.environ.get("CT_KERNELS_TRITON_MINED_MASKS", "fast") != "tiebreak"
        return dict(self.consts(cfg), CLASS_RUNS=self.order is not None, ONE_COMPARE=one_compare)

    def single_d(self, cfg: tuning.Config) -> bool:
        return holds_row_block(self.u.dtype, self.prec, cfg.bd, self.d)

    def one_pass(self, cfg: tuning.Config) -> bool:
        return self.single_d(cfg) and cfg.bdo >= self.d

    def config(self) -> tuning.Config:
        def trial(cfg):
            loss, npos, saved = self.forward(cfg)
            self.backward(cfg, place_rows(saved, self.r0, self.m), loss.new_ones(self.m))
        return tuning.pick(self.key, tuning.next_pow2(self.m), self.d, self.u.dtype, trial,
                           mined=self.mined, prec=self.prec, timed=not (self.sliced and self.mined))

    def grid(self, bm: int, *d_programs: int) -> tuple:
        """Row blocks of the whole-batch grid that meet the anchor slice (see supcon_kernels),
        then the backward's D programs."""
        return (triton.cdiv(self.r0 + self.r, bm) - self.r0 // bm, *d_programs)

    def npos(self) -> torch.Tensor:
        """|P_i| of the anchors after mining, from the labels alone (O(M log M), no host sync),
        in the kernels' order."""
        cls, count = self.cls[self.r0:self.r0 + self.r], self.count[self.r0:self.r0 + self.r]
        npos = torch.where(cls >= 0, count - 1, torch.zeros_like(count))
        if self.kp > 0:
            npos = npos.clamp(max=self.kp)
        return npos.to(torch.int32)

    def forward(self, cfg: tuning.Config):
        r, dev = self.r, self.u.device
        thrp = colp = thrn = coln = q = None
        if self.kp > 0:
            thrp, colp = torch.empty(r, dtype=self.acc, device=dev), torch.empty(r, dtype=torch.int32, device=dev)
        if self.kn > 0:
            thrn, coln = torch.empty(r, dtype=self.acc, device=dev), torch.empty(r, dtype=torch.int32, device=dev)
        if self.infonce:
            q = torch.zeros(r, dtype=self.acc, device=dev)
        loss = torch.zeros(r, dtype=self.acc, device=dev)
        npos = self.npos()
        a = torch.empty(r, dtype=self.acc, device=dev)
        saved = (a, q, npos, thrp, colp, thrn, coln)
        if r == 0:
            return loss, npos, saved
        tp, cp, tn, cn = self._thresholds(thrp, colp, thrn, coln)
        c = self.consts(cfg)
        if self.mined and not _merges(self.u.dtype):
            self._select(cfg, c, tp, cp, tn, cn)
        elif self.mined:
            kbp, kbn = _buffer_width(self.kp, cfg.block), _buffer_width(self.kn, cfg.block)
            supcon_mine_kernel[self.grid(cfg.block)](
                self.u, self.cls, self.temp, tp, cp, tn, cn, self.kp, self.kn,
                self.m, self.r0, r, self.d, self.u.stride(0),
                MINE_P=c["MINE_P"], MINE_N=c["MINE_N"], KBP=kbp, LOG_KBP=kbp.bit_length() - 1,
                KBN=kbn, LOG_KBN=kbn.bit_length() - 1, BLOCK=cfg.block,
                LOG_BLOCK=cfg.block.bit_length() - 1, BD=cfg.bd, SINGLE_D=c["SINGLE_D"], PREC=self.prec,
                ACC=self.tl_acc, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **tuning.LAUNCH_OPTIONS)
        supcon_fwd_kernel[self.grid(cfg.bm)](
            self.u, self.cls, self._or_placeholder(self.end, torch.int32), self.temp, tp, cp, tn, cn, loss,
            npos, a, self._or_placeholder(q),
            self.m, self.r0, r, self.d, self.u.stride(0), **self.loss_consts(cfg))
        loss, npos, a, q = (self.to_caller_order(t) for t in (loss, npos, a, q))
        return loss, npos, (a, q, npos, thrp, colp, thrn, coln)

    def _select(self, cfg: tuning.Config, c: dict, tp, cp, tn, cn) -> None:
        """float32 thresholds by counting: supcon_select_kernel, then the sort of the rows that
        collected (c: the launch constants of consts(cfg)). Collect buffers: GATHER_SLOTS (value,
        column) slots per row and mined side."""
        r, dev, slots = self.r, self.u.device, GATHER_SLOTS

        def buffers(k):  # (keys, columns, counts then ranks), stand-ins for a side not mined
            if k == 0:
                return self._or_placeholder(None), *[self._or_placeholder(None, torch.int32)] * 2
            return (torch.empty((r, slots), dtype=torch.float32, device=dev),
                    torch.empty((r, slots), dtype=torch.int32, device=dev),
                    torch.empty((2, r), dtype=torch.int32, device=dev))

        pos_bufs, neg_bufs = buffers(self.kp), buffers(self.kn)
        # label-only member counts (supcon_kernels: no pass counts them); the number of valid
        # rows stays on the device (no host sync)
        count = self.count.to(torch.int32)
        nvalid = (self.cls >= 0).sum(dtype=torch.int32).reshape(1)
        supcon_select_kernel[self.grid(cfg.block)](
            self.u, self.cls, count, nvalid, self.temp, tp, cp, tn, cn, *pos_bufs, *neg_bufs,
            self.kp, self.kn, self.m, self.r0, r, self.d, self.u.stride(0), MINE_P=c["MINE_P"],
            MINE_N=c["MINE_N"], C=slots, NB=SELECT_BINS, V_PASSES=SELECT_VALUE_PASSES,
            MAX_PASSES=select_passes(), BLOCK=cfg.block, BD=cfg.bd, SINGLE_D=c["SINGLE_D"], PREC=self.prec,
            ACC=self.tl_acc, PACKED=os.environ.get("CT_KERNELS_TRITON_SELECT_COUNT", "edges") == "packed",
            num_warps=cfg.num_warps, num_stages=int(os.environ.get("CT_KERNELS_TRITON_SELECT_STAGES", cfg.num_stages)),
            **tuning.LAUNCH_OPTIONS)
        # 4096 buffer slots per program with 8 warps: spill-free (sm_90 ptxas)
        rows_per_program = max(1, 4096 // slots)
        for k, thr, col, bufs, negate in ((self.kp, tp, cp, pos_bufs, False), (self.kn, tn, cn, neg_bufs, True)):
            if k > 0:
                select_sort_kernel[(triton.cdiv(r, rows_per_program),)](
                    thr, col, *bufs, r, C=slots, LOG_C=slots.bit_length() - 1, SB=rows_per_program,
                    NEGATE=negate, num_warps=8, **tuning.LAUNCH_OPTIONS)

    def _or_placeholder(self, t, dtype=None):
        """Kernels take a pointer for every array; an unused one gets a 1-element stand-in."""
        return torch.empty(1, dtype=dtype or self.acc, device=self.u.device) if t is None else t

    def _thresholds(self, thrp, colp, thrn, coln):
        return (self._or_placeholder(thrp), self._or_placeholder(colp, torch.int32),
                self._or_placeholder(thrn), self._or_placeholder(coln, torch.int32))

    def backward(self, cfg: tuning.Config, saved, grad_rows: torch.Tensor) -> torch.Tensor:
        """saved and grad_rows cover all M rows (backends.place_rows); dU of the anchor slice."""
        a, q, npos, thrp, colp, thrn, coln = saved
        du = torch.empty((self.r, self.d), dtype=self.u.dtype, device=self.u.device)
        if self.r == 0:
            return du
        grad = grad_rows.to(device=self.u.device, dtype=self.acc)
        # (class runs are whole-batch, unmined: the thresholds are None then)
        a, q, npos, grad = (self.to_kernel_order(t) for t in (a, q, npos, grad))
        has = npos > 0
        g = torch.where(has, grad, torch.zeros_like(grad))
        temp = self.temp
        if self.u.dtype in SCALED_H_DTYPES:
            hs = half_weight_scale(g, self.m).to(self.acc)
            g = g * hs
            temp = torch.stack([self.temp[0], self.temp[1] / hs])  # the kernel's dU scale undoes it
        a_eff = torch.where(has, a, torch.full_like(a, float("inf")))
        gn = g / npos.clamp(min=1).to(self.acc)
        w1 = g * q if self.infonce else g
        # 4 values a row (see supcon_kernels._row_stats): the bits of label + 1, a, w1, gn
        lab1 = self.cls + 1
        bits = lab1.view(torch.float32) if self.acc == torch.float32 else lab1.to(torch.int64).view(self.acc)
        stats = torch.stack([bits, a_eff, w1, gn], dim=1)
        one = self.one_pass(cfg)
        consts = dict(self.loss_consts(cfg), num_warps=cfg.bwd_warps or cfg.num_warps)
        supcon_bwd_kernel[self.grid(cfg.bm, 1 if one else triton.cdiv(self.d, cfg.bdo))](
            self.u, stats, self._or_placeholder(self.end, torch.int32), temp,
            *self._thresholds(thrp, colp, thrn, coln), du,
            self.m, self.r0, self.r, self.d, self.u.stride(0), BDO=cfg.bdo, ONE_PASS=one,
            REUSE_TILE=self.reuses_tile(), **consts)
        return self.to_caller_order(du)

    def reuses_tile(self) -> bool:
        """The mined backward's A/B switch (CT_KERNELS_TRITON_MINED_BWD=reuse). Never for split3
        tiles: their two correction products are summed in the opposite order for (j, i), so s_ji
        is not s_ij bit for bit (in the interpreter too, once D spans two chunks)."""
        wanted = self.mined and os.environ.get("CT_KERNELS_TRITON_MINED_BWD") == "reuse"
        return wanted and self.prec != "split3"


# The kernel-contract entry points are torch.library custom ops: torch.compile then treats each
# launch sequence (label relabelling, tuner, kernels) as one opaque node with a fake kernel,
# instead of tracing Triton's launcher (which it cannot do for the interpreter, and which would
# put the tuner's host logic in the graph on GPUs). Outputs must be tensors, so sides that are
# not used travel as 0-element stand-ins and become None again in the wrappers below.

_SAVED = ("a", "q", "npos", "thr_pos", "col_pos", "thr_neg", "col_neg")


def _used(variant: str, kp: int, kn: int) -> tuple[bool, ...]:
    """Which entries of saved a call fills (the others are None)."""
    return (True, variant == "infonce", True, kp > 0, kp > 0, kn > 0, kn > 0)


@torch.library.custom_op("ct_kernels_triton::supcon_forward", mutates_args=())
def _forward_op(u: torch.Tensor, labels: torch.Tensor, ignore_index: int, inv_temp: float, variant: str,
                kp: int, kn: int, allow_tf32: bool, start: int, count: int) -> List[torch.Tensor]:  # noqa: UP006
    with tuning.on_device_of(u):
        call = _Call(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, start, count)
        loss, npos, saved = call.forward(call.config() if call.r > 0 else None)
    stand_in = loss.new_empty(0)
    # npos appears once (outputs may not alias each other): the wrapper puts it back into saved
    return [loss, npos] + [stand_in.clone() if t is None else t
                           for name, t in zip(_SAVED, saved) if name != "npos"]


@_forward_op.register_fake
def _forward_fake(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, start, count):
    acc = _acc_dtype(u.dtype)
    used = _used(variant, kp, kn)
    dtypes = {"a": acc, "q": acc, "thr_pos": acc, "thr_neg": acc, "col_pos": torch.int32, "col_neg": torch.int32}
    out = [u.new_empty(count, dtype=acc), u.new_empty(count, dtype=torch.int32)]
    for name, use in zip(_SAVED, used):
        if name != "npos":
            out.append(u.new_empty(count if use else 0, dtype=dtypes[name]))
    return out


@torch.library.custom_op("ct_kernels_triton::supcon_backward", mutates_args=())
def _backward_op(u: torch.Tensor, labels: torch.Tensor, ignore_index: int, inv_temp: float, variant: str,
                 kp: int, kn: int, allow_tf32: bool, saved: List[Optional[torch.Tensor]],  # noqa: UP006, UP045
                 grad_rows: torch.Tensor,
                 start: int, count: int) -> torch.Tensor:
    with tuning.on_device_of(u):
        call = _Call(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, start, count)
        return call.backward(call.config() if call.r > 0 else None, tuple(saved), grad_rows)


@_backward_op.register_fake
def _backward_fake(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, saved, grad_rows, start, count):
    return u.new_empty((count, u.shape[1]))


def _count(u: torch.Tensor, start: int, count: int | None) -> int:
    return u.shape[0] - int(start) if count is None else int(count)


def _every_candidate(k, m: int) -> int:
    """k, or 0 ("all") where k >= m - 1 keeps every candidate of a row anyway: the same loss without
    the mining passes, and no float64 merge limit for a k that only exceeds the batch."""
    return 0 if int(k) >= m - 1 else int(k)


def supcon_forward(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, start=0, count=None):
    """-> (loss_rows (count,), npos (count,) int32, saved): see backends.py."""
    kp, kn = _every_candidate(kp, u.shape[0]), _every_candidate(kn, u.shape[0])
    _check_args(u, labels, variant, kp, kn)
    # unpacked by name, not list surgery: torch 2.11's dynamo sees the op's output as a tuple
    loss, npos, a, q, thr_pos, col_pos, thr_neg, col_neg = _forward_op(
        u, labels, int(ignore_index), float(inv_temp), variant, int(kp), int(kn), bool(allow_tf32), int(start),
        _count(u, start, count))
    saved = (a, q, npos, thr_pos, col_pos, thr_neg, col_neg)  # the order of _SAVED
    return loss, npos, tuple(t if use else None for t, use in zip(saved, _used(variant, kp, kn)))


def supcon_backward(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, saved, grad_rows,
                    start=0, count=None):
    """-> du (count, D) in u's dtype: rows start .. start + count of d(sum_i grad_rows_i * l_i) / du."""
    kp, kn = _every_candidate(kp, u.shape[0]), _every_candidate(kn, u.shape[0])
    return _backward_op(u, labels, int(ignore_index), float(inv_temp), variant, int(kp), int(kn), bool(allow_tf32),
                        list(saved), grad_rows, int(start), _count(u, start, count))
