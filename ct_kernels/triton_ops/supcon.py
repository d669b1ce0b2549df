"""Host wrappers of the fused SupCon / InfoNCE kernels (the KERNEL CONTRACT of backends.py).

saved = (a, q, npos, thr_pos, col_pos, thr_neg, col_neg), all of length M (the thresholds are
1-element placeholders when that side is not mined): see supcon_kernels for what they hold.
"""
from __future__ import annotations

import math

import torch
import triton

from . import tuning
from .supcon_kernels import supcon_bwd_kernel, supcon_fwd_kernel, supcon_mine_kernel

MAX_HARD_K = 256  # on-chip top-k buffer limit per mined side
VARIANTS = ("supcon", "infonce")


def _check_args(u: torch.Tensor, labels: torch.Tensor, variant: str, kp: int, kn: int) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    for name, k in (("hard_positives", kp), ("hard_negatives", kn)):
        if not 0 <= int(k) <= MAX_HARD_K:
            raise ValueError(f"{name}={k}: the triton backend mines at most {MAX_HARD_K} per row "
                             "(use backend='torch' for more)")
    if u.dim() != 2 or labels.shape != (u.shape[0],):
        raise ValueError(f"expected u (M, D) and labels (M,), got {tuple(u.shape)} and {tuple(labels.shape)}")
    if u.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise TypeError(f"unsupported dtype {u.dtype}")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _buffer_width(k: int, block: int) -> int:
    return max(tuning.next_pow2(k), block) if k > 0 else 16


class _Call:
    """Everything one forward or backward launch needs, derived the same way both times."""

    def __init__(self, u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32):
        _check_args(u, labels, variant, kp, kn)
        self.u = u if u.is_contiguous() else u.contiguous()
        self.labels = labels.to(torch.int64).contiguous()
        # int32 class ids (index of the first equal label in sorted order), -1 for ignored rows,
        # and the label-only |P_i| before mining: O(M log M), no host sync
        srt = torch.sort(self.labels).values
        first = torch.searchsorted(srt, self.labels)
        valid = self.labels != int(ignore_index)
        self.cls = torch.where(valid, first, torch.full_like(first, -1)).to(torch.int32)
        self.count = torch.searchsorted(srt, self.labels, right=True) - first
        self.m, self.d = u.shape
        self.ignore_index = int(ignore_index)
        self.infonce = variant == "infonce"
        self.kp, self.kn = int(kp), int(kn)
        self.acc = _acc_dtype(u.dtype)
        self.tl_acc = triton.language.float64 if self.acc == torch.float64 else triton.language.float32
        self.prec = "tf32" if (allow_tf32 and u.dtype == torch.float32) else "ieee"
        # [scale of the tiles (base 2: inv_temp * log2 e), inv_temp]
        self.temp = torch.tensor([float(inv_temp) * math.log2(math.e), float(inv_temp)], dtype=self.acc,
                                 device=u.device)
        mine_width = tuning.next_pow2(max(self.kp, self.kn, 1))
        self.key = (self.d, u.dtype, tuning.next_pow2(self.m), variant, self.kp > 0, self.kn > 0,
                    mine_width, self.prec, u.device)
        self.mine_width = mine_width

    @property
    def mined(self) -> bool:
        return self.kp > 0 or self.kn > 0

    def consts(self, cfg: tuning.Config) -> dict:
        return dict(INFONCE=self.infonce, MINE_P=self.kp > 0, MINE_N=self.kn > 0, BM=cfg.bm,
                    BN=cfg.bm if self.mined else cfg.bn, BD=cfg.bd, SINGLE_D=self.single_d(cfg),
                    PREC=self.prec, ACC=self.tl_acc, num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    def single_d(self, cfg: tuning.Config) -> bool:
        """Row block held across the column loop: tensor-core dots only (fp32 ieee / fp64 dots
        are FMA loops whose register operands then spill by kilobytes on sm_90). The interpreter
        takes it for every dtype, to test the path."""
        tc = self.u.dtype in (torch.bfloat16, torch.float16) or self.prec == "tf32" or tuning.interpreting()
        return cfg.bd >= self.d and tc

    def one_pass(self, cfg: tuning.Config) -> bool:
        return self.single_d(cfg) and cfg.bdo >= self.d

    def config(self) -> tuning.Config:
        def trial(cfg):
            loss, npos, saved = self.forward(cfg)
            self.backward(cfg, saved, torch.ones_like(loss))
        return tuning.pick(self.key, tuning.next_pow2(self.m), self.d, self.u.dtype, self.mine_width, trial,
                           mined=self.mined, tf32=self.prec == "tf32")

    def npos(self) -> torch.Tensor:
        """|P_i| after mining, from the labels alone (O(M log M), no host sync)."""
        npos = torch.where(self.cls >= 0, self.count - 1, torch.zeros_like(self.count))
        if self.kp > 0:
            npos = npos.clamp(max=self.kp)
        return npos.to(torch.int32)

    def forward(self, cfg: tuning.Config):
        m, dev = self.m, self.u.device
        placeholder_t = torch.empty(1, dtype=self.acc, device=dev)
        placeholder_c = torch.empty(1, dtype=torch.int32, device=dev)
        thrp = colp = thrn = coln = None
        if self.kp > 0:
            thrp, colp = torch.empty(m, dtype=self.acc, device=dev), torch.empty(m, dtype=torch.int32, device=dev)
        if self.kn > 0:
            thrn, coln = torch.empty(m, dtype=self.acc, device=dev), torch.empty(m, dtype=torch.int32, device=dev)
        thrp = placeholder_t if thrp is None else thrp
        colp = placeholder_c if colp is None else colp
        thrn = placeholder_t if thrn is None else thrn
        coln = placeholder_c if coln is None else coln
        c = self.consts(cfg)
        if self.mined:
            grid = (triton.cdiv(m, cfg.block),)
            kbp, kbn = _buffer_width(self.kp, cfg.block), _buffer_width(self.kn, cfg.block)
            supcon_mine_kernel[grid](
                self.u, self.cls, self.temp, thrp, colp, thrn, coln, self.kp, self.kn,
                m, self.d, self.u.stride(0),
                MINE_P=c["MINE_P"], MINE_N=c["MINE_N"], KBP=kbp, LOG_KBP=kbp.bit_length() - 1,
                KBN=kbn, LOG_KBN=kbn.bit_length() - 1, BLOCK=cfg.block,
                LOG_BLOCK=cfg.block.bit_length() - 1, BD=cfg.bd, SINGLE_D=c["SINGLE_D"], PREC=self.prec,
                ACC=self.tl_acc, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        loss = torch.empty(m, dtype=self.acc, device=dev)
        npos = self.npos()
        a = torch.empty(m, dtype=self.acc, device=dev)
        q = torch.zeros(m, dtype=self.acc, device=dev) if self.infonce else placeholder_t
        grid = (triton.cdiv(m, cfg.bm),)
        supcon_fwd_kernel[grid](self.u, self.cls, self.temp, thrp, colp, thrn, coln,
                                loss, npos, a, q, m, self.d, self.u.stride(0), **c)
        return loss, npos, (a, q, npos, thrp, colp, thrn, coln)

    def backward(self, cfg: tuning.Config, saved, grad_rows: torch.Tensor) -> torch.Tensor:
        a, q, npos, thrp, colp, thrn, coln = saved
        du = torch.empty_like(self.u)
        grad = grad_rows.to(device=self.u.device, dtype=self.acc)
        has = npos > 0
        g = torch.where(has, grad, torch.zeros_like(grad))
        a_eff = torch.where(has, a, torch.full_like(a, float("inf"))).contiguous()
        gn = (g / npos.clamp(min=1).to(self.acc)).contiguous()
        w1 = (g * q if self.infonce else g).contiguous()
        one = self.one_pass(cfg)
        grid = (triton.cdiv(self.m, cfg.bm), 1 if one else triton.cdiv(self.d, cfg.bdo))
        supcon_bwd_kernel[grid](self.u, self.cls, self.temp, thrp, colp, thrn, coln,
                                a_eff, w1, gn, du, self.m, self.d, self.u.stride(0), BDO=cfg.bdo, ONE_PASS=one, **self.consts(cfg))
        return du


def _empty_result(u: torch.Tensor):
    acc = _acc_dtype(u.dtype)
    z = torch.zeros(0, dtype=acc, device=u.device)
    n = torch.zeros(0, dtype=torch.int32, device=u.device)
    return z, n, (z, z, n, z, n, z, n)


def supcon_forward(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32):
    """-> (loss_rows (M,), npos (M,) int32, saved): see backends.py."""
    call = _Call(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32)
    if call.m == 0:
        return _empty_result(u)
    return call.forward(call.config())


def supcon_backward(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32, saved, grad_rows):
    """-> du (M, D) in u's dtype: d(sum_i grad_rows_i * l_i) / du."""
    call = _Call(u, labels, ignore_index, inv_temp, variant, kp, kn, allow_tf32)
    if call.m == 0:
        return torch.zeros_like(u)
    return call.backward(call.config(), saved, grad_rows)
