"""On-chip key/column bitonic sorting, for the per-row top-k buffers of hard mining.

``tl.sort`` sorts values only; mining needs the column of every kept value (ties go to the lower
column, and the threshold column makes membership an O(1) test). These helpers sort (key, col)
pairs lexicographically along the last axis of a 2-D block whose width is a power of two.
They use only reshape / where / sum, which every Triton from 3.0 on (and the interpreter)
compiles. Keys are float32 or float64; +inf keys with column ``BIG_COL`` are empty slots.
"""
import triton
import triton.language as tl

BIG_COL = tl.constexpr(2147483647)  # column of an empty buffer slot: after every real column


@triton.jit
def _kv_bitonic_merge(k, c, stage: tl.constexpr, order: tl.constexpr, n_dims: tl.constexpr):
    """order 0: ascending, 1: descending, 2: alternating runs of 2**stage (inner sort steps).

    The compare-and-swap is written inline: every nested @jit call costs the interpreter
    about a millisecond, and this is the innermost loop of mining.
    """
    n_outer: tl.constexpr = k.numel >> n_dims
    if order == 2:
        fshape: tl.constexpr = [n_outer * 2**(n_dims - 1 - stage), 2, 2**stage]
        flip = tl.reshape(tl.broadcast_to(tl.arange(0, 2)[None, :, None], fshape), k.shape) != 0
    else:
        flip = tl.full(k.shape, order, tl.int32) != 0
    side = tl.arange(0, 2)[None, :, None]
    for j in tl.static_range(stage):
        # Pairs 2**(stage - 1 - j) apart along the (flattened) last axis. The shape is spelled
        # out in each call: a constexpr cannot be reassigned inside an unrolled loop.
        k3 = tl.reshape(k, [n_outer * 2**(j + n_dims - stage), 2, 2**(stage - j - 1)])
        c3 = tl.reshape(c, [n_outer * 2**(j + n_dims - stage), 2, 2**(stage - j - 1)])
        # where + sum picks one element of each pair exactly (x + 0 == x, also for +-inf)
        kl = tl.reshape(tl.broadcast_to(tl.sum(tl.where(side == 0, k3, 0.0), 1)[:, None, :], k3.shape), k.shape)
        kr = tl.reshape(tl.broadcast_to(tl.sum(tl.where(side == 1, k3, 0.0), 1)[:, None, :], k3.shape), k.shape)
        cl = tl.reshape(tl.broadcast_to(tl.sum(tl.where(side == 0, c3, 0), 1)[:, None, :], k3.shape), k.shape)
        cr = tl.reshape(tl.broadcast_to(tl.sum(tl.where(side == 1, c3, 0), 1)[:, None, :], k3.shape), k.shape)
        is_left = tl.reshape(tl.broadcast_to(side == 0, k3.shape), k.shape)
        gt = (kl > kr) | ((kl == kr) & (cl > cr))
        swap = gt != flip
        k = tl.where(swap, tl.where(is_left, kr, kl), k)
        c = tl.where(swap, tl.where(is_left, cr, cl), c)
    return k, c


@triton.jit
def _kv_sort(k, c, n_dims: tl.constexpr, descending: tl.constexpr):
    """Sort (key, col) pairs along the last axis (width 2**n_dims)."""
    for stage in tl.static_range(1, n_dims + 1):
        k, c = _kv_bitonic_merge(k, c, stage, 2 if stage < n_dims else descending, n_dims)
    return k, c


@triton.jit
def topk_merge(buf_k, buf_c, key, col, BLOCK: tl.constexpr, LOG_BLOCK: tl.constexpr,
               KB: tl.constexpr, LOG_KB: tl.constexpr):
    """Keep, per row, the KB smallest (key, col) pairs of an ascending buffer and a new tile.

    The tile is sorted descending and padded with empty slots up to KB; the elementwise
    minimum of an ascending and a descending sequence holds the KB smallest of both and is
    bitonic, so one bitonic merge sorts it again (no sort over 2*KB).
    """
    tk, tc = _kv_sort(key, col, LOG_BLOCK, 1)
    if KB > BLOCK:
        R: tl.constexpr = KB // BLOCK
        slot = tl.arange(0, R)[None, :, None]
        # empty slots (the largest pairs) first keeps the padded tile descending
        tk = tl.reshape(tl.where(slot == R - 1, tk[:, None, :], float("inf")), [BLOCK, KB])
        tc = tl.reshape(tl.where(slot == R - 1, tc[:, None, :], BIG_COL), [BLOCK, KB])
    take = (buf_k > tk) | ((buf_k == tk) & (buf_c > tc))
    nk = tl.where(take, tk, buf_k)
    nc = tl.where(take, tc, buf_c)
    return _kv_bitonic_merge(nk, nc, LOG_KB, 0, LOG_KB)


@triton.jit
def kth_pair(buf_k, buf_c, k, KB: tl.constexpr):
    """The k-th smallest pair (1-based) of each ascending buffer row."""
    pick = tl.arange(0, KB)[None, :] == (k - 1)
    return tl.sum(tl.where(pick, buf_k, 0.0), 1), tl.sum(tl.where(pick, buf_c, 0), 1)


@triton.jit
def kth_pair_untied(buf_k, buf_c, k, KB: tl.constexpr, COMPLETE: tl.constexpr):
    """kth_pair, its column replaced by BIG_COL where no other pair of the buffer has the k-th key
    (COMPLETE: the buffer holds every pair of that key; otherwise a last slot with that key
    counts as a tie too, since pairs beyond the buffer may share it). Membership "x < t, or
    x == t at a column <= c" is then "x <= t", one compare (supcon_kernels._mined_side)."""
    t, c = kth_pair(buf_k, buf_c, k, KB)
    eq = buf_k == t[:, None]
    tied = tl.sum(eq.to(tl.int32), 1) > 1
    if not COMPLETE:
        tied |= tl.sum((eq & (tl.arange(0, KB)[None, :] == KB - 1)).to(tl.int32), 1) > 0
    return t, tl.where(tied, c, BIG_COL)
