"""Fused SupCon / InfoNCE kernels: row blocks stream column blocks, tiles of s stay on chip.

Every pass computes a tile of s with the same code path, tile shape and D-loop order (one
configuration per call), so s_ij is bitwise the same in the mining pass, the loss pass and the
backward recompute: that is what makes the stored per-row thresholds (value, column) an exact
O(1) membership test. Mined calls use square tiles (BM == BN) so that the transposed tile of
the backward is the very tile row j's own program computed.

Base 2 throughout: a tile holds s2 = s * log2(e) (the scale 1/T * log2(e) is folded into the
dot's epilogue), exponentials are exp2 and log-sum-exps are in base 2; the loss is scaled back
by ln 2 at the end. Mining thresholds are s2 values (monotone in s, so the same selection).

SINGLE_D (BD >= D): the row block of U is loaded once per program, before the column loop,
and each tile is one dot over the whole (padded) D, as flash attention keeps its Q block; the
backward then also reuses the column block of the similarity for the G·U product (ONE_PASS,
BDO >= D). Otherwise D is streamed in BD chunks and dU in BDO-wide programs.

Anchor slice: the anchors are the rows R0 .. R0 + R of U (one rank's rows, or a batch before
its memory-bank rows), every row of U is a column. Programs take the row blocks of the
single-process grid (multiples of BM) that meet the slice and store only the slice's rows, so
every tile, and hence every s_ij bit, is the one a whole-batch call computes: the thresholds
found by one rank's forward are exact in another rank's backward. Outputs of the forward and
dU are indexed from R0; the backward reads the per-row statistics of all M rows.

Class runs (CLASS_RUNS, unmined infonce over a whole batch): the host orders the rows by label
(supcon._Call), so each class's rows are one run of columns, [cls_i, end_i) for row i (cls is
then the run's first row). A row block's positives lie in the columns [lo, hi) that span its
rows' runs: infonce's second forward pass visits only those tiles, and the backward computes
the positive terms (a reciprocal per element and orientation) only on tiles that meet them.
Skipped tiles hold no positive, so every sum is the one a full sweep gives, bit for bit.

Mining thresholds: supcon_select_kernel for float32 tiles (counting passes, see _select) and
supcon_mine_kernel for float64 (per-row top-k buffers merged on chip, see _topk). A threshold is
(value, column) of the k-th member, its column BIG_COL when no other member shares the value
(untied): membership is then one compare, and the loss pass and backward take that form on the
sweeps and tiles whose thresholds are all untied (_mined_side), the tie-break test elsewhere.

Per-row statistics (what the backward needs):
  supcon : a = log2 sum over A_i of 2^s2,            q unused
  infonce: a = log2 sum_{n in N_i} 2^s2 (lseN, base 2), q = (1/|P_i|) sum_p sigmoid(lseN - s_ip)
  npos   : |P_i| after mining, computed on the host from the labels (it is label-only).
Gradient of l_i with respect to s_ij (g_i = upstream weight, 0 for rows without positives):
  supcon : g_i * ([j in A_i] exp(s_ij - lse_i) - [j in P_i] / |P_i|)
  infonce: g_i * ([j in N_i] exp(s_ij - lseN_i) q_i - [j in P_i] sigmoid(lseN_i - s_ij) / |P_i|)
NaN inputs are not propagated here: the caller turns the result NaN when a valid row is
non-finite (ct_kernels/supcon.py).
"""
import triton
import triton.language as tl

from ._select import (COLUMN, GATHER, SEARCH, _canon, column_find, count_at_or_above, count_at_or_above_packed,
                      edges, gather_places, gather_store, gather_take, initial_mode, inside_range, member_counts,
                      narrow, next_up, side_range)
from ._topk import BIG_COL, kth_pair, kth_pair_untied, topk_merge

LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _load_block(u_ptr, stride, idx, M, D, d0, BD: tl.constexpr):
    offs_d = d0 + tl.arange(0, BD)
    return tl.load(u_ptr + idx.to(tl.int64)[:, None] * stride + offs_d[None, :],
                   mask=(idx[:, None] < M) & (offs_d[None, :] < D), other=0.0)


@triton.jit
def _sim_tile(u_ptr, stride, rows, cols, ur, uc, M, D, scale,
              BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, SINGLE_D: tl.constexpr,
              PREC: tl.constexpr, ACC: tl.constexpr):
    """s2 = scale * U[rows] U[cols]^T for one BM x BN tile (padded rows give 0). SINGLE_D:
    ur / uc are the preloaded [BM, BD] / [BN, BD] blocks; otherwise they are unused.
    PREC "split3": each row of U holds [hi | lo], float32 split on the host into two tf32 values
    (see supcon.tf32_split), and the tile is lo.hi + hi.lo + hi.hi in three tf32 products (small
    terms first), an fp32 dot's accuracy on tensor cores with every operand read from memory."""
    if SINGLE_D:
        acc = tl.dot(ur, tl.trans(uc), input_precision=PREC, out_dtype=ACC)
    else:
        acc = tl.zeros([BM, BN], ACC)
        for d0 in range(0, D, BD):
            a = _load_block(u_ptr, stride, rows, M, D, d0, BD)
            b = _load_block(u_ptr, stride, cols, M, D, d0, BD)
            if PREC == "split3":
                a_lo = _load_block(u_ptr + D, stride, rows, M, D, d0, BD)
                b_lo = _load_block(u_ptr + D, stride, cols, M, D, d0, BD)
                acc = tl.dot(a_lo, tl.trans(b), acc, input_precision="tf32", out_dtype=ACC)
                acc = tl.dot(a, tl.trans(b_lo), acc, input_precision="tf32", out_dtype=ACC)
                acc = tl.dot(a, tl.trans(b), acc, input_precision="tf32", out_dtype=ACC)
            else:
                acc = tl.dot(a, tl.trans(b), acc, input_precision=PREC, out_dtype=ACC)
    return acc * scale


@triton.jit
def _pair_masks(rows, cols, lab_r, lab_c, ok_r, ok_c):
    """Candidate positives / negatives before mining: self and ignored rows excluded."""
    pair = ok_r[:, None] & ok_c[None, :] & (rows[:, None] != cols[None, :])
    same = lab_r[:, None] == lab_c[None, :]
    return pair & same, pair & (~same)


@triton.jit
def _load_rows(lab_ptr, idx, M):
    """Class ids relabelled on the host to int32 in [0, M), -1 for ignored rows: half the
    registers of int64 labels for the per-column vectors, and validity is a sign test."""
    lab = tl.load(lab_ptr + idx, mask=idx < M, other=-1)
    return lab, lab >= 0


@triton.jit
def _column_tile(u_ptr, stride, lab_ptr, rows, cols, ur, lab_r, ok_r, M, D, scale,
                 BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, SINGLE_D: tl.constexpr,
                 PREC: tl.constexpr, ACC: tl.constexpr):
    """What every pass does per column block: (the block of U when SINGLE_D, the tile of s2,
    candidate positives, candidate negatives), the same code everywhere so s2 is bitwise equal."""
    lab_c, ok_c = _load_rows(lab_ptr, cols, M)
    return _labelled_column_tile(u_ptr, stride, rows, cols, ur, lab_r, ok_r, lab_c, ok_c, M, D, scale,
                                 BM, BN, BD, SINGLE_D, PREC, ACC)


@triton.jit
def _labelled_column_tile(u_ptr, stride, rows, cols, ur, lab_r, ok_r, lab_c, ok_c, M, D, scale,
                          BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, SINGLE_D: tl.constexpr,
                          PREC: tl.constexpr, ACC: tl.constexpr):
    """_column_tile with the columns' labels given (the backward has them from _row_stats)."""
    uc = 0.0
    if SINGLE_D:
        uc = _load_block(u_ptr, stride, cols, M, D, 0, BD)
    s = _sim_tile(u_ptr, stride, rows, cols, ur, uc, M, D, scale, BM, BN, BD, SINGLE_D, PREC, ACC)
    pos, neg = _pair_masks(rows, cols, lab_r, lab_c, ok_r, ok_c)
    return uc, s, pos, neg


@triton.jit
def _keep_low(s, idx, thr, col):
    """Mined positive: below the row's threshold, or tied with it at a column not after it.
    ``idx == col`` keeps the threshold element itself whatever rounding did (belt and braces)."""
    return (s < thr) | ((s == thr) & (idx <= col)) | (idx == col)


@triton.jit
def _keep_high(s, idx, thr, col):
    """Mined negative: above the row's threshold, or tied at a column not after it."""
    return (s > thr) | ((s == thr) & (idx <= col)) | (idx == col)


@triton.jit
def _online_lse2(m, l, s, member):
    """One step of a streaming base-2 log-sum-exp over the members of each row (online max:
    inputs with normalize=False are unbounded, so a fixed shift is not safe)."""
    sm = tl.where(member, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(sm, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    l = l * tl.exp2(m - m_safe) + tl.sum(tl.exp2(sm - m_safe[:, None]), 1)
    return m_new, l


@triton.jit
def _mul_minus_one(a, b):
    """(1 + a)(1 + b) - 1: products of factors near 1 kept relative to their distance from 1."""
    return a + b + a * b


@triton.jit
def _log2_1p(x):
    """log2(1 + x), x >= 0, to a few ulp of the result also where x is below float32's ulp of 1:
    1 + x rounds, and x / ((1 + x) - 1) undoes that rounding (the classic log1p identity)."""
    w = 1.0 + x
    d = w - 1.0
    return tl.where(d == 0.0, x * 1.4426950408889634, tl.log2(w) * (x / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def _sum_log2_1p(e, member, BN: tl.constexpr):
    """Per row, the sum of log2(1 + e) over members, for e in [0, 1]: one log2 per row (a tile row
    of at most 64 factors stays below 2**64), not one per element: log2 is a software polynomial
    of ~12 FMAs on NVIDIA GPUs (no lg2 in the PTX of tl.log2). The product is carried as
    prod(1 + e) - 1: a plain product of the rounded 1 + e lost every e below 2**-24 and the
    relative accuracy of a small InfoNCE loss (2.3e-3 at a loss of 3.4e-7)."""
    if BN <= 64:
        return _log2_1p(tl.reduce(tl.where(member, e, 0.0), 1, _mul_minus_one))
    else:
        return tl.sum(tl.where(member, _log2_1p(e), 0.0), 1)


@triton.jit
def _slice_rows(R0, R, BM: tl.constexpr):
    """Rows of this program (a block of the whole-batch grid) and which of them are anchors."""
    rows = (R0 // BM + tl.program_id(0)) * BM + tl.arange(0, BM)
    return rows, (rows >= R0) & (rows < R0 + R)


@triton.jit
def _positive_columns(end_ptr, rows, lab_r, ok_r, M, BN: tl.constexpr, CLASS_RUNS: tl.constexpr):
    """[lo, hi): lo rounded down to a tile, the columns that can hold a positive of the block's
    rows (every column without CLASS_RUNS; lo >= hi when no row of the block is valid)."""
    if CLASS_RUNS:
        end = tl.load(end_ptr + rows, mask=rows < M, other=0)
        lo = tl.min(tl.where(ok_r, lab_r, M))
        hi = tl.max(tl.where(ok_r, end, 0))
        return (lo // BN) * BN, hi
    else:
        return 0, M


@triton.jit(do_not_specialize=["M", "R0", "R"])
def supcon_mine_kernel(u_ptr, lab_ptr, temp_ptr, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr,
                       kp, kn, M, R0, R, D, stride,
                       MINE_P: tl.constexpr, MINE_N: tl.constexpr,
                       KBP: tl.constexpr, LOG_KBP: tl.constexpr, KBN: tl.constexpr, LOG_KBN: tl.constexpr,
                       BLOCK: tl.constexpr, LOG_BLOCK: tl.constexpr, BD: tl.constexpr,
                       SINGLE_D: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    """Per row: the kp-th smallest positive (value, column) and the kn-th largest negative.

    Top-k buffers of (key, column) live on chip, negatives keyed by -s so both sides keep the
    smallest keys; ties go to the lower column. A tile is merged only if it can change the k-th
    pair of some row in the block. Rows with fewer than k candidates keep an empty slot
    (+inf, BIG_COL) as their threshold, which selects all of them.
    """
    rows, live = _slice_rows(R0, R, BLOCK)
    lab_r, ok_r = _load_rows(lab_ptr, rows, M)
    scale = tl.load(temp_ptr)
    ur = 0.0
    if SINGLE_D:
        ur = _load_block(u_ptr, stride, rows, M, D, 0, BD)
    bkp = tl.full([BLOCK, KBP], float("inf"), ACC)
    bcp = tl.full([BLOCK, KBP], BIG_COL, tl.int32)
    kth_p = tl.full([BLOCK], float("inf"), ACC)
    bkn = tl.full([BLOCK, KBN], float("inf"), ACC)
    bcn = tl.full([BLOCK, KBN], BIG_COL, tl.int32)
    kth_n = tl.full([BLOCK], float("inf"), ACC)
    for c0 in range(0, M, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        _uc, s, pos, neg = _column_tile(u_ptr, stride, lab_ptr, rows, cols, ur, lab_r, ok_r, M, D, scale,
                                        BLOCK, BLOCK, BD, SINGLE_D, PREC, ACC)
        col2 = tl.broadcast_to(cols[None, :], [BLOCK, BLOCK])
        if MINE_P:
            key = tl.where(pos, s, float("inf"))
            if tl.sum((pos & (key <= kth_p[:, None])).to(tl.int32)) > 0:
                bkp, bcp = topk_merge(bkp, bcp, key, tl.where(pos, col2, BIG_COL),
                                      BLOCK, LOG_BLOCK, KBP, LOG_KBP)
                kth_p, _cp = kth_pair(bkp, bcp, kp, KBP)
        if MINE_N:
            key = tl.where(neg, -s, float("inf"))
            if tl.sum((neg & (key <= kth_n[:, None])).to(tl.int32)) > 0:
                bkn, bcn = topk_merge(bkn, bcn, key, tl.where(neg, col2, BIG_COL),
                                      BLOCK, LOG_BLOCK, KBN, LOG_KBN)
                kth_n, _cn = kth_pair(bkn, bcn, kn, KBN)
    out = rows - R0
    if MINE_P:
        tp, cp = kth_pair_untied(bkp, bcp, kp, KBP, False)
        tl.store(thrp_ptr + out, tp, mask=live)
        tl.store(colp_ptr + out, cp, mask=live)
    if MINE_N:
        tn, cn = kth_pair_untied(bkn, bcn, kn, KBN, False)
        tl.store(thrn_ptr + out, -tn, mask=live)
        tl.store(coln_ptr + out, cn, mask=live)


@triton.jit(do_not_specialize=["M", "R0", "R"])
def supcon_select_kernel(u_ptr, lab_ptr, count_ptr, nvalid_ptr, temp_ptr, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr,
                         keyp_ptr, bcolp_ptr, cntp_ptr, keyn_ptr, bcoln_ptr, cntn_ptr,
                         kp, kn, M, R0, R, D, stride, MINE_P: tl.constexpr, MINE_N: tl.constexpr,
                         C: tl.constexpr, NB: tl.constexpr,
                         V_PASSES: tl.constexpr, MAX_PASSES: tl.constexpr, BLOCK: tl.constexpr,
                         BD: tl.constexpr, SINGLE_D: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr,
                         PACKED: tl.constexpr = False):
    """The thresholds of supcon_mine_kernel by counting (see _select): the stats pass, search
    passes while a row of the block searches, the collect pass. Writes the thresholds of rows
    that do not collect (DONE: every member, +inf / -inf and BIG_COL as supcon_mine_kernel;
    COLUMN: (lo, its column)) and, for the others, the buffer counts and ranks (cnt*_ptr: R
    counts, then R ranks) that select_sort_kernel turns into thresholds. A side that is not
    mined has k = 0. One kernel keeps the per-row state in registers across the passes (a
    kernel per pass, with the state in global memory, spilled more in sm_90 compiles)."""
    rows, live = _slice_rows(R0, R, BLOCK)
    out = (rows - R0).to(tl.int64)
    lab_r, ok_r = _load_rows(lab_ptr, rows, M)
    scale = tl.load(temp_ptr)
    ur = 0.0
    if SINGLE_D:
        ur = _load_block(u_ptr, stride, rows, M, D, 0, BD)
    # stats: x = -s2 for positives (hardest: smallest s), s2 for negatives: "k-th largest x"
    n_p, n_n = member_counts(count_ptr, nvalid_ptr, rows, ok_r, M)
    lo_p = tl.full([BLOCK], float("inf"), tl.float32)
    top_p = tl.full([BLOCK], float("-inf"), tl.float32)
    lo_n = tl.full([BLOCK], float("inf"), tl.float32)
    top_n = tl.full([BLOCK], float("-inf"), tl.float32)
    for c0 in range(0, M, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        _uc, s, pos, neg = _column_tile(u_ptr, stride, lab_ptr, rows, cols, ur, lab_r, ok_r, M, D, scale,
                                        BLOCK, BLOCK, BD, SINGLE_D, PREC, ACC)
        lo_p, top_p = side_range(-s, pos, lo_p, top_p)
        lo_n, top_n = side_range(s, neg, lo_n, top_n)
    lo_p, top_p, lo_n, top_n = _canon(lo_p), _canon(top_p), _canon(lo_n), _canon(top_n)
    mode_p = initial_mode(n_p, lo_p, top_p, kp, live, C)
    mode_n = initial_mode(n_n, lo_n, top_n, kn, live, C)
    hi_p, hi_n = next_up(top_p), next_up(top_n)
    glo_p, glo_n = n_p, n_n
    ghi_p = tl.zeros([BLOCK], tl.int32)
    ghi_n = tl.zeros([BLOCK], tl.int32)
    # search
    for it in range(0, MAX_PASSES):
        sp = mode_p == SEARCH
        sn = mode_n == SEARCH
        if tl.sum(sp.to(tl.int32)) + tl.sum(sn.to(tl.int32)) > 0:
            ep = edges(lo_p, hi_p, sp, it >= V_PASSES, NB)
            en = edges(lo_n, hi_n, sn, it >= V_PASSES, NB)
            cnt_p = tl.zeros([BLOCK, NB], tl.int32)
            cnt_n = tl.zeros([BLOCK, NB], tl.int32)
            mn_p = tl.full([BLOCK], float("inf"), tl.float32)
            mx_p = tl.full([BLOCK], float("-inf"), tl.float32)
            mn_n = tl.full([BLOCK], float("inf"), tl.float32)
            mx_n = tl.full([BLOCK], float("-inf"), tl.float32)
            for c0 in range(0, M, BLOCK):
                cols = c0 + tl.arange(0, BLOCK)
                _uc, s, pos, neg = _column_tile(u_ptr, stride, lab_ptr, rows, cols, ur, lab_r, ok_r, M, D,
                                                scale, BLOCK, BLOCK, BD, SINGLE_D, PREC, ACC)
                if PACKED:
                    cnt_p, cnt_n = count_at_or_above_packed(s, pos, neg, ep, en, cnt_p, cnt_n, NB)
                else:
                    cnt_p, cnt_n = count_at_or_above(s, pos, neg, ep, en, cnt_p, cnt_n, NB)
                mn_p, mx_p = inside_range(-s, pos, lo_p, hi_p, mn_p, mx_p)
                mn_n, mx_n = inside_range(s, neg, lo_n, hi_n, mn_n, mx_n)
            lo_p, hi_p, glo_p, ghi_p, mode_p = narrow(ep, cnt_p, mn_p, mx_p, lo_p, hi_p, glo_p, ghi_p, mode_p,
                                                      kp, C, NB)
            lo_n, hi_n, glo_n, ghi_n, mode_n = narrow(en, cnt_n, mn_n, mx_n, lo_n, hi_n, glo_n, ghi_n, mode_n,
                                                      kn, C, NB)
    # collect; rows still searching can only hold non-finite values (the caller returns NaN)
    mode_p = tl.where(mode_p == SEARCH, COLUMN, mode_p)
    mode_n = tl.where(mode_n == SEARCH, COLUMN, mode_n)
    rank_p, rank_n = kp - ghi_p, kn - ghi_n
    base_p = tl.zeros([BLOCK], tl.int32)
    seen_p = tl.zeros([BLOCK], tl.int32)
    at_p = tl.full([BLOCK], BIG_COL, tl.int32)
    base_n = tl.zeros([BLOCK], tl.int32)
    seen_n = tl.zeros([BLOCK], tl.int32)
    at_n = tl.full([BLOCK], BIG_COL, tl.int32)
    col_p = tl.sum((mode_p == COLUMN).to(tl.int32)) > 0
    col_n = tl.sum((mode_n == COLUMN).to(tl.int32)) > 0
    busy = tl.sum(((mode_p == GATHER) | (mode_n == GATHER)).to(tl.int32))
    busy += col_p.to(tl.int32) + col_n.to(tl.int32)
    if busy > 0:  # (written as a count: `gather | col_p | col_n` spilled 3x more on Triton 3.6)
        for c0 in range(0, M, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            _uc, s, pos, neg = _column_tile(u_ptr, stride, lab_ptr, rows, cols, ur, lab_r, ok_r, M, D, scale,
                                            BLOCK, BLOCK, BD, SINGLE_D, PREC, ACC)
            take_p = pos
            take_n = neg
            if MINE_P:
                take_p = gather_take(-s, pos, lo_p, hi_p, mode_p)
            if MINE_N:
                take_n = gather_take(s, neg, lo_n, hi_n, mode_n)
            place_p, place_n, tot_p, tot_n = gather_places(take_p, take_n, MINE_P, MINE_N)
            if MINE_P:
                gather_store(-s, take_p, place_p, cols, out, base_p, keyp_ptr, bcolp_ptr, C)
                base_p += tot_p
                if col_p:
                    seen_p, at_p = column_find(-s, pos, cols, lo_p, mode_p, rank_p, seen_p, at_p)
            if MINE_N:
                gather_store(s, take_n, place_n, cols, out, base_n, keyn_ptr, bcoln_ptr, C)
                base_n += tot_n
                if col_n:
                    seen_n, at_n = column_find(s, neg, cols, lo_n, mode_n, rank_n, seen_n, at_n)
    if MINE_P:
        tl.store(thrp_ptr + out, tl.where(mode_p == COLUMN, -lo_p, float("inf")), mask=live & (mode_p != GATHER))
        tl.store(colp_ptr + out, tl.where(mode_p == COLUMN, at_p, BIG_COL), mask=live & (mode_p != GATHER))
        tl.store(cntp_ptr + out, tl.where(mode_p == GATHER, base_p, 0), mask=live)
        tl.store(cntp_ptr + R + out, rank_p, mask=live)
    if MINE_N:
        tl.store(thrn_ptr + out, tl.where(mode_n == COLUMN, lo_n, float("-inf")), mask=live & (mode_n != GATHER))
        tl.store(coln_ptr + out, tl.where(mode_n == COLUMN, at_n, BIG_COL), mask=live & (mode_n != GATHER))
        tl.store(cntn_ptr + out, tl.where(mode_n == GATHER, base_n, 0), mask=live)
        tl.store(cntn_ptr + R + out, rank_n, mask=live)


@triton.jit
def _mined_side(member, s, idx, thr, col, LOW: tl.constexpr, UNTIED: tl.constexpr):
    """member & the mined side's test (LOW: positives, _keep_low; else negatives, _keep_high),
    thr / col broadcast against s. A threshold whose column is BIG_COL has no tie (the selection
    found no other member of its value: _topk.kth_pair_untied), and then either test is one
    compare. UNTIED: the caller checked that every threshold of the tile is (_untied), and the
    kernels branch on that per tile or sweep so that the common case runs the compare alone."""
    if UNTIED:
        if LOW:
            keep = s <= thr
        else:
            keep = s >= thr
    else:
        if LOW:
            keep = _keep_low(s, idx, thr, col)
        else:
            keep = _keep_high(s, idx, thr, col)
    return member & keep


@triton.jit
def _untied(colp_ptr, coln_ptr, idx, live, MINE_P: tl.constexpr, MINE_N: tl.constexpr,
            ONE_COMPARE: tl.constexpr):
    """Whether no mined threshold of the rows idx (where live) has a tie (column BIG_COL);
    never without ONE_COMPARE (the A/B switch: the tie-break test on every tile)."""
    untied = ONE_COMPARE
    if MINE_P:
        untied = untied & (tl.min(tl.load(colp_ptr + idx, mask=live, other=BIG_COL)) == BIG_COL)
    if MINE_N:
        untied = untied & (tl.min(tl.load(coln_ptr + idx, mask=live, other=BIG_COL)) == BIG_COL)
    return untied


@triton.jit
def _mined_masks(s, rows, cols, pos, neg, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, base, n,
                 MINE_P: tl.constexpr, MINE_N: tl.constexpr, UNTIED: tl.constexpr):
    """Apply the anchor rows' thresholds to a [rows, cols] tile; row r's threshold is entry
    r - base of arrays of n entries (forward: the slice's own, base R0; backward: all rows).
    Rows outside them read an untied stand-in (their masks are not used)."""
    idx = rows - base
    live = (idx >= 0) & (idx < n)
    if MINE_P:
        thr = tl.load(thrp_ptr + idx, mask=live, other=0.0)
        col = tl.load(colp_ptr + idx, mask=live, other=BIG_COL)
        pos = _mined_side(pos, s, cols[None, :], thr[:, None], col[:, None], True, UNTIED)
    if MINE_N:
        thr = tl.load(thrn_ptr + idx, mask=live, other=0.0)
        col = tl.load(coln_ptr + idx, mask=live, other=BIG_COL)
        neg = _mined_side(neg, s, cols[None, :], thr[:, None], col[:, None], False, UNTIED)
    return pos, neg


@triton.jit
def _mined_masks_of_cols(s, rows, cols, pos, neg, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, M,
                         MINE_P: tl.constexpr, MINE_N: tl.constexpr, UNTIED: tl.constexpr):
    """_mined_masks with the roles swapped, on the tile (i, j): whether row i is among column
    j's mined positives / negatives (s_ji read as s_ij; pos / neg before mining are symmetric)."""
    live = cols < M
    if MINE_P:
        thr = tl.load(thrp_ptr + cols, mask=live, other=0.0)
        col = tl.load(colp_ptr + cols, mask=live, other=BIG_COL)
        pos = _mined_side(pos, s, rows[:, None], thr[None, :], col[None, :], True, UNTIED)
    if MINE_N:
        thr = tl.load(thrn_ptr + cols, mask=live, other=0.0)
        col = tl.load(coln_ptr + cols, mask=live, other=BIG_COL)
        neg = _mined_side(neg, s, rows[:, None], thr[None, :], col[None, :], False, UNTIED)
    return pos, neg


@triton.jit
def _loss_tile(u_ptr, stride, lab_ptr, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, rows, c0, ur, lab_r, ok_r,
               M, R0, R, D, scale, MINE_P: tl.constexpr, MINE_N: tl.constexpr, UNTIED: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, SINGLE_D: tl.constexpr,
               PREC: tl.constexpr, ACC: tl.constexpr):
    """The forward passes' tile at column block c0: s2 and the anchors' (mined) P / N masks."""
    cols = c0 + tl.arange(0, BN)
    _uc, s, pos, neg = _column_tile(u_ptr, stride, lab_ptr, rows, cols, ur, lab_r, ok_r, M, D, scale,
                                    BM, BN, BD, SINGLE_D, PREC, ACC)
    pos, neg = _mined_masks(s, rows, cols, pos, neg, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, R0, R,
                            MINE_P, MINE_N, UNTIED)
    return s, pos, neg


@triton.jit
def _lse_sweep(u_ptr, stride, lab_ptr, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, rows, ur, lab_r, ok_r,
               M, R0, R, D, scale, INFONCE: tl.constexpr, MINE_P: tl.constexpr, MINE_N: tl.constexpr,
               UNTIED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
               SINGLE_D: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    """The first forward pass: per row the running (max, sum) of the base-2 log-sum-exp over A
    (supcon) or N (infonce), and the positives' sum of s2 (supcon)."""
    m = tl.full([BM], float("-inf"), ACC)
    l = tl.zeros([BM], ACC)
    psum = tl.zeros([BM], ACC)
    for c0 in range(0, M, BN):
        s, pos, neg = _loss_tile(u_ptr, stride, lab_ptr, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, rows, c0, ur,
                                 lab_r, ok_r, M, R0, R, D, scale, MINE_P, MINE_N, UNTIED, BM, BN, BD, SINGLE_D,
                                 PREC, ACC)
        if INFONCE:
            m, l = _online_lse2(m, l, s, neg)
        else:
            m, l = _online_lse2(m, l, s, pos | neg)
            psum += tl.sum(tl.where(pos, s, 0.0), 1)
    return m, l, psum


@triton.jit
def _infonce_sweep(u_ptr, stride, lab_ptr, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, rows, ur, lab_r, ok_r,
                   lse, c_lo, c_hi, M, R0, R, D, scale, MINE_P: tl.constexpr, MINE_N: tl.constexpr,
                   UNTIED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                   SINGLE_D: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    """infonce's second pass over the columns c_lo .. c_hi: per row the sums over positives of
    softplus(lseN - s2) (its log2 taken per row and tile) and of sigmoid(lseN - s2)."""
    sp_sum = tl.zeros([BM], ACC)
    sg_sum = tl.zeros([BM], ACC)
    for c0 in range(c_lo, c_hi, BN):
        s, pos, neg = _loss_tile(u_ptr, stride, lab_ptr, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, rows, c0,
                                 ur, lab_r, ok_r, M, R0, R, D, scale, MINE_P, MINE_N, UNTIED, BM, BN, BD,
                                 SINGLE_D, PREC, ACC)
        # -s + log(exp(s) + S) = softplus(lseN - s); its s-derivative is -sigmoid(lseN - s)
        t = lse[:, None] - s  # base 2
        e = tl.exp2(-tl.abs(t))
        one_e = 1.0 + e
        sp_sum += tl.sum(tl.where(pos, tl.maximum(t, 0.0), 0.0), 1) + _sum_log2_1p(e, pos, BN)
        sg_sum += tl.sum(tl.where(pos, tl.where(t >= 0, 1.0, e) / one_e, 0.0), 1)
    return sp_sum, sg_sum


@triton.jit(do_not_specialize=["M", "R0", "R"])
def supcon_fwd_kernel(u_ptr, lab_ptr, end_ptr, temp_ptr, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr,
                      loss_ptr, npos_ptr, a_ptr, q_ptr,
                      M, R0, R, D, stride,
                      INFONCE: tl.constexpr, MINE_P: tl.constexpr, MINE_N: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, SINGLE_D: tl.constexpr,
                      PREC: tl.constexpr, ACC: tl.constexpr, CLASS_RUNS: tl.constexpr = False,
                      ONE_COMPARE: tl.constexpr = True):
    """Loss rows and per-row statistics. supcon: one pass (lse over A and the positive sum).
    infonce: pass 1 the negative lse, pass 2 the per-positive terms that need it (CLASS_RUNS:
    over the tiles of the block's class runs only). npos is an input (counted on the host).
    Mined: each pass is compiled twice, and the block's rows take the one-compare masks when
    none of their thresholds is tied (_mined_side)."""
    rows, live = _slice_rows(R0, R, BM)
    out = rows - R0
    lab_r, ok_r = _load_rows(lab_ptr, rows, M)
    scale = tl.load(temp_ptr)
    ur = 0.0
    if SINGLE_D:
        ur = _load_block(u_ptr, stride, rows, M, D, 0, BD)
    MINED: tl.constexpr = MINE_P or MINE_N
    untied = False  # a constant unless mined: then only the second arm below is compiled
    if MINED:
        untied = _untied(colp_ptr, coln_ptr, out, live, MINE_P, MINE_N, ONE_COMPARE)
    if untied:
        m, l, psum = _lse_sweep(u_ptr, stride, lab_ptr, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, rows, ur, lab_r,
                                ok_r, M, R0, R, D, scale, INFONCE, MINE_P, MINE_N, True, BM, BN, BD, SINGLE_D,
                                PREC, ACC)
    else:
        m, l, psum = _lse_sweep(u_ptr, stride, lab_ptr, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, rows, ur, lab_r,
                                ok_r, M, R0, R, D, scale, INFONCE, MINE_P, MINE_N, False, BM, BN, BD, SINGLE_D,
                                PREC, ACC)
    lse = tl.where(l > 0, m + tl.log2(tl.where(l > 0, l, 1.0)), float("-inf"))  # -inf: empty set
    npos = tl.load(npos_ptr + out, mask=live, other=0)
    has = npos > 0
    cnt = tl.maximum(npos, 1).to(ACC)
    if INFONCE:
        c_lo, c_hi = _positive_columns(end_ptr, rows, lab_r, ok_r, M, BN, CLASS_RUNS)
        if untied:
            sp_sum, sg_sum = _infonce_sweep(u_ptr, stride, lab_ptr, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, rows, ur,
                                            lab_r, ok_r, lse, c_lo, c_hi, M, R0, R, D, scale, MINE_P, MINE_N, True,
                                            BM, BN, BD, SINGLE_D, PREC, ACC)
        else:
            sp_sum, sg_sum = _infonce_sweep(u_ptr, stride, lab_ptr, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, rows, ur,
                                            lab_r, ok_r, lse, c_lo, c_hi, M, R0, R, D, scale, MINE_P, MINE_N, False,
                                            BM, BN, BD, SINGLE_D, PREC, ACC)
        loss = tl.where(has, sp_sum / cnt * LN2, 0.0)
        tl.store(q_ptr + out, tl.where(has, sg_sum / cnt, 0.0), mask=live)
    else:
        loss = tl.where(has, (lse - psum / cnt) * LN2, 0.0)
    tl.store(loss_ptr + out, loss, mask=live)
    tl.store(a_ptr + out, tl.where(has, lse, 0.0), mask=live)


@triton.jit
def _dl_ds(s, pos, neg, a, w1, gn, INFONCE: tl.constexpr):
    """g * dl/ds for a tile (see the module docstring); `where` keeps inf out of masked lanes."""
    if INFONCE:
        return tl.where(neg, tl.exp2(s - a) * w1, 0.0) - tl.where(pos, gn / (1.0 + tl.exp2(s - a)), 0.0)
    else:
        return tl.where(pos | neg, tl.exp2(s - a) * w1, 0.0) - tl.where(pos, gn, 0.0)


@triton.jit
def _infonce_positive_terms(w, pos, e_r, e_c, gn_r, gn_c):
    """Unmined infonce backward: the positives' weights of a tile whose negatives are in w."""
    return tl.where(pos, -(gn_r[:, None] / (1.0 + e_r) + gn_c[None, :] / (1.0 + e_c)), w)


@triton.jit
def _row_stats(stats_ptr, idx, M, ACC: tl.constexpr):
    """Host-prepared per-row statistics (supcon._Call.backward), one row of 4 ACC values each:
    the bits of label + 1 (0 where masked off: label -1; only moved, never computed on, so the
    denormal bit patterns survive), a (+inf for rows without positives, so exp is 0), w1 = g
    (supcon) or g * q (infonce), gn = g / |P|; g is 0 for rows without positives. Returns
    (label, valid, a, w1, gn). One [n, 4] tile, not a vector per array: the MMA layout of the
    column vectors replicates them over the threads, and Triton 3.6 pipelined each as one 4-byte
    cp.async a thread, column and array (sm_90 SASS of the bf16 backward: 64 a tile and thread,
    each with its own predicate), where the tile is one 16-byte copy a column."""
    live = idx < M
    k = tl.arange(0, 4)[None, :]
    x = tl.load(stats_ptr + idx.to(tl.int64)[:, None] * 4 + k, mask=live[:, None],
                other=tl.where(k == 1, float("inf"), 0.0).to(ACC))
    # [n, 4] -> [n, 2, 2]: split takes the last axis, so (0, 2) and (1, 3) first
    even, odd = tl.split(tl.reshape(x, [x.shape[0], 2, 2]))
    bits, w1 = tl.split(even)
    a, gn = tl.split(odd)
    if ACC == tl.float64:
        lab = bits.to(tl.int64, bitcast=True).to(tl.int32) - 1
    else:
        lab = bits.to(tl.int32, bitcast=True) - 1
    return lab, lab >= 0, a, w1, gn


@triton.jit
def _mined_weights(u_ptr, stride, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, rows, cols, ur, uc, s, pos, neg,
                   a_r, w1_r, gn_r, a_c, w1_c, gn_c, M, D, scale, INFONCE: tl.constexpr, MINE_P: tl.constexpr,
                   MINE_N: tl.constexpr, UNTIED: tl.constexpr, REUSE_TILE: tl.constexpr, BM: tl.constexpr,
                   BN: tl.constexpr, BD: tl.constexpr, SINGLE_D: tl.constexpr, PREC: tl.constexpr,
                   ACC: tl.constexpr):
    """The mined backward's weights of the tile (rows, cols): row i's side from its thresholds on
    s, column j's from its own on the recomputed s_ji (REUSE_TILE: on s_ij). UNTIED: every
    threshold involved is untied (see _mined_side)."""
    pos_r, neg_r = _mined_masks(s, rows, cols, pos, neg, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, 0, M,
                                MINE_P, MINE_N, UNTIED)
    w = _dl_ds(s, pos_r, neg_r, a_r[:, None], w1_r[:, None], gn_r[:, None], INFONCE)
    if REUSE_TILE:
        pos_c, neg_c = _mined_masks_of_cols(s, rows, cols, pos, neg, thrp_ptr, colp_ptr, thrn_ptr,
                                            coln_ptr, M, MINE_P, MINE_N, UNTIED)
        w += _dl_ds(s, pos_c, neg_c, a_c[None, :], w1_c[None, :], gn_c[None, :], INFONCE)
    else:
        st = _sim_tile(u_ptr, stride, cols, rows, uc, ur, M, D, scale, BN, BM, BD, SINGLE_D, PREC, ACC)
        pos_c, neg_c = _mined_masks(st, cols, rows, tl.trans(pos), tl.trans(neg),
                                    thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, 0, M, MINE_P, MINE_N, UNTIED)
        wt = _dl_ds(st, pos_c, neg_c, a_c[:, None], w1_c[:, None], gn_c[:, None], INFONCE)
        w += tl.trans(wt)
    return w


@triton.jit(do_not_specialize=["M", "R0", "R"])
def supcon_bwd_kernel(u_ptr, stats_ptr, end_ptr, temp_ptr, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, du_ptr,
                      M, R0, R, D, stride,
                      INFONCE: tl.constexpr, MINE_P: tl.constexpr, MINE_N: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, SINGLE_D: tl.constexpr,
                      BDO: tl.constexpr, ONE_PASS: tl.constexpr, REUSE_TILE: tl.constexpr,
                      PREC: tl.constexpr, ACC: tl.constexpr, CLASS_RUNS: tl.constexpr = False,
                      ONE_COMPARE: tl.constexpr = True):
    """dU_I = inv_temp * sum_J (G_IJ + G_JI^T) U_J for one row block of the anchor slice and one
    BDO-wide chunk of D (ONE_PASS: all of D, reusing the column block of the similarity).

    Row-stationary and symmetric: G_ji is formed from row j's saved statistics, so nothing
    is accumulated across programs (no atomics, deterministic). With mining, the transposed
    tile is recomputed in row j's own orientation so that row j's thresholds are tested on the
    very bits the forward saw; REUSE_TILE takes them from the tile (i, j) instead, which is exact
    if tl.dot gives s_ij and s_ji the same bits (the same products summed in the same k order:
    tests/test_triton_supcon.py checks it on the GPU) and saves one tile product in three.
    """
    pid_d = tl.program_id(1)
    rows, live = _slice_rows(R0, R, BM)
    lab_r, ok_r, a_r, w1_r, gn_r = _row_stats(stats_ptr, rows, M, ACC)
    scale = tl.load(temp_ptr)
    inv_temp = tl.load(temp_ptr + 1)
    ur = 0.0
    if SINGLE_D:
        ur = _load_block(u_ptr, stride, rows, M, D, 0, BD)
    if ONE_PASS:
        offs_do = tl.arange(0, BD)
        acc = tl.zeros([BM, BD], ACC)
    else:
        offs_do = pid_d * BDO + tl.arange(0, BDO)
        acc = tl.zeros([BM, BDO], ACC)
    MINED: tl.constexpr = MINE_P or MINE_N
    untied_r = False
    if MINED:
        untied_r = _untied(colp_ptr, coln_ptr, rows, rows < M, MINE_P, MINE_N, ONE_COMPARE)
    c_lo, c_hi = _positive_columns(end_ptr, rows, lab_r, ok_r, M, BN, CLASS_RUNS)
    for c0 in range(0, M, BN):
        cols = c0 + tl.arange(0, BN)
        lab_c, ok_c, a_c, w1_c, gn_c = _row_stats(stats_ptr, cols, M, ACC)
        # pos / neg before mining are symmetric in (i, j)
        uc, s, pos, neg = _labelled_column_tile(u_ptr, stride, rows, cols, ur, lab_r, ok_r, lab_c, ok_c, M, D,
                                                scale, BM, BN, BD, SINGLE_D, PREC, ACC)
        if MINED:
            # one-compare masks where no threshold of the tile's rows or columns is tied
            if untied_r & _untied(colp_ptr, coln_ptr, cols, cols < M, MINE_P, MINE_N, ONE_COMPARE):
                w = _mined_weights(u_ptr, stride, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, rows, cols, ur, uc, s,
                                   pos, neg, a_r, w1_r, gn_r, a_c, w1_c, gn_c, M, D, scale, INFONCE, MINE_P,
                                   MINE_N, True, REUSE_TILE, BM, BN, BD, SINGLE_D, PREC, ACC)
            else:
                w = _mined_weights(u_ptr, stride, thrp_ptr, colp_ptr, thrn_ptr, coln_ptr, rows, cols, ur, uc, s,
                                   pos, neg, a_r, w1_r, gn_r, a_c, w1_c, gn_c, M, D, scale, INFONCE, MINE_P,
                                   MINE_N, False, REUSE_TILE, BM, BN, BD, SINGLE_D, PREC, ACC)
        else:
            # both orientations of the unmined (symmetric) tile at once
            e_r = tl.exp2(s - a_r[:, None])
            e_c = tl.exp2(s - a_c[None, :])
            if INFONCE:
                w = tl.where(neg, e_r * w1_r[:, None] + e_c * w1_c[None, :], 0.0)
                # positives in both orientations (their sigmoids); pos and neg are disjoint
                if CLASS_RUNS:
                    if (c0 < c_hi) & (c0 + BN > c_lo):
                        w = _infonce_positive_terms(w, pos, e_r, e_c, gn_r, gn_c)
                else:
                    w = _infonce_positive_terms(w, pos, e_r, e_c, gn_r, gn_c)
            else:
                w = tl.where(pos | neg, e_r * w1_r[:, None] + e_c * w1_c[None, :]
                             - tl.where(pos, gn_r[:, None] + gn_c[None, :], 0.0), 0.0)
        if ONE_PASS:
            acc = tl.dot(w.to(uc.dtype), uc, acc, input_precision=PREC, out_dtype=ACC)
        else:
            at = cols.to(tl.int64)[:, None] * stride + offs_do[None, :]
            inside = (cols[:, None] < M) & (offs_do[None, :] < D)
            uo = tl.load(u_ptr + at, mask=inside, other=0.0)
            if PREC == "split3":  # w split in registers: hi rounded to tf32, lo the exact rest
                uo_lo = tl.load(u_ptr + D + at, mask=inside, other=0.0)
                w_hi = ((w.to(tl.int32, bitcast=True) + 4096) & -8192).to(tl.float32, bitcast=True)
                w_lo = w - w_hi
                # this tile's three products in a fresh accumulator, added to the running dU by
                # an IEEE add: the tensor cores truncate as they accumulate, and over all N
                # columns that grew dU's error with N (2.6e-5 at N = 4099 on an H200)
                part = tl.dot(w_lo, uo, input_precision="tf32", out_dtype=ACC)
                part = tl.dot(w_hi, uo_lo, part, input_precision="tf32", out_dtype=ACC)
                part = tl.dot(w_hi, uo, part, input_precision="tf32", out_dtype=ACC)
                acc += part
            else:
                acc = tl.dot(w.to(uo.dtype), uo, acc, input_precision=PREC, out_dtype=ACC)
    du = acc * inv_temp
    out = (rows - R0).to(tl.int64)  # du holds the slice's rows, contiguous (row stride D)
    tl.store(du_ptr + out[:, None] * D + offs_do[None, :], du.to(du_ptr.dtype.element_ty),
             mask=live[:, None] & (offs_do[None, :] < D))
