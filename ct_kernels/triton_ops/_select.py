"""Mining thresholds by counting: a per-row select over the tiles of s, for float32 tiles.

Wanted per row and mined side: the k-th element in the order (x descending, column ascending),
with x = s2 for negatives (the hardest are the largest) and x = -s2 for positives (the smallest
s). The top-k merge of _topk.py sorts a tile whenever it can change a row's k-th pair, which on
random data is nearly every tile (21.8x the unmined loss at N = 32768 on an H200). Here the cost
is a fixed number of streaming passes, each one recomputed tile plus a few compares per element:

  stats    per row: smallest x (lo) and largest x (top) (the member counts n are label-only);
  search   a value interval [lo, hi) that holds the k-th x, with glo = #{x >= lo} >= k and
           ghi = #{x >= hi} < k; each pass counts the members at or above NB edges inside it and
           keeps the sub-interval that holds the k-th (NB times narrower). The first V_PASSES
           passes space the edges evenly in value (the bulk of s is narrow, the tail is sparse),
           later ones evenly in the order key of float32 (at most 32 / log2 NB passes more
           reach an interval of one value whatever the values are);
  collect  rows with at most C members inside [lo, hi) write them (column order) to a per-row
           buffer of C slots, sorted afterwards (select_sort_kernel), which picks the
           (k - ghi)-th: the buffer does not grow with k; rows whose interval is a single value
           v with more than C members find the (k - ghi)-th column with x == v in the same pass
           (a running count in column order).

A numpy model of the search (benchmarks/select_passes_model.py: N=32768, D=128 bf16 rows, k=64,
6 classes, NB=8 edges, C=64; random, clustered and 20 %-duplicated embeddings) needs 1-3 search
passes per row (random: 2), so 4-5 streamed passes in all plus the sort. The result is exact and
deterministic (counts, and a gather in column order, do not depend on scheduling). Each search
pass also tracks the smallest and largest member inside the interval and clips to them, so ties
at the top value settle at once. float32 only: the order key of a float64 does not fit the int64
arithmetic of the key-spaced edges, so fp64 calls (gradcheck) keep the top-k merge.
"""
import triton
import triton.language as tl

from ._topk import BIG_COL, _kv_sort, kth_pair_untied

SEARCH = tl.constexpr(0)  # the row's interval still holds more than C members
GATHER = tl.constexpr(1)  # glo - ghi <= C: the collect pass writes the interval's members
COLUMN = tl.constexpr(2)  # [lo, hi) holds the one value lo: the collect pass finds the column
DONE = tl.constexpr(3)    # side not mined, row not an anchor, or k >= n (every member selected)


@triton.jit
def _ord(x):
    """float32 -> int32 with the same order (for x != -0.0: see _canon)."""
    b = x.to(tl.int32, bitcast=True)
    return tl.where(b < 0, b ^ 0x7FFFFFFF, b)


@triton.jit
def _from_ord(o):
    return tl.where(o < 0, o ^ 0x7FFFFFFF, o).to(tl.float32, bitcast=True)


@triton.jit
def _canon(x):
    """-0.0 -> +0.0: equal as floats, so they must share one order key."""
    return tl.where(x == 0, 0.0, x)


@triton.jit
def side_range(x, member, lo, top):
    """Running smallest and largest member x of each row (the member counts come from the
    labels: member_counts)."""
    lo = tl.minimum(lo, tl.min(tl.where(member, x, float("inf")), 1))
    top = tl.maximum(top, tl.max(tl.where(member, x, float("-inf")), 1))
    return lo, top


@triton.jit
def member_counts(count_ptr, nvalid_ptr, rows, ok_r, M):
    """Per row, the candidate positives (its class's other rows) and negatives (the valid rows of
    other classes) before mining: label-only, so no pass counts them (a sum a tile and side cost
    the stats pass 42 % of its sm_90 instructions). count_ptr: each row's class size."""
    count = tl.load(count_ptr + rows, mask=rows < M, other=0)
    nvalid = tl.load(nvalid_ptr)
    return tl.where(ok_r, count - 1, 0), tl.where(ok_r, nvalid - count, 0)


@triton.jit
def next_up(x):
    """The next float32 above x (x canonical)."""
    return _from_ord(_ord(x) + 1)


@triton.jit
def initial_mode(n, lo, top, k, live, C: tl.constexpr):
    """After the stats pass: k >= n selects every member; n <= C collects at once; n members of
    one value need only the column; otherwise search [lo, next_up(top))."""
    mode = tl.where(n <= C, GATHER, tl.where(lo == top, COLUMN, SEARCH))
    return tl.where(live & (k > 0) & (n > k), mode, DONE)


@triton.jit
def edges(lo, hi, searching, key_spaced, NB: tl.constexpr):
    """[rows, NB] non-decreasing edges from lo (edge 0) up to below hi; +inf for rows not
    searching, so nothing counts there."""
    lo = tl.where(searching, lo, 0.0)  # others may hold inf: keep the interpreter's numpy quiet
    hi = tl.where(searching, hi, 1.0)
    b = tl.arange(0, NB)[None, :]
    by_value = lo[:, None] + (hi - lo)[:, None] * (b.to(tl.float32) * (1.0 / NB))
    olo = _ord(lo).to(tl.int64)
    span = _ord(hi).to(tl.int64) - olo
    by_key = _from_ord((olo[:, None] + (span[:, None] * b) // NB).to(tl.int32))
    e = _canon(tl.where(key_spaced, by_key, by_value))
    return tl.where(searching[:, None], e, float("inf"))


@triton.jit
def count_at_or_above(s, pos, neg, ep, en, cnt_p, cnt_n, NB: tl.constexpr):
    """Add, per row and edge, the positives with -s >= ep and the negatives with s >= en of one
    tile to cnt_p / cnt_n ([rows, NB]). Two edges and both sides share one compare each and one
    sum: bytes 0 / 1 count edge b's positives / negatives, bytes 2 / 3 edge b + 1's (a tile row
    has fewer than 256 columns, so no byte carries). One sum a pair of edges, not an edge: with
    8 warps on a 64-row tile the two warpgroups split each tile row, so every row sum crosses
    warps through shared memory (two barriers each). One edge pair at a time on the 2-D tile: a
    [rows, cols, edges] compare spilled 3-10x more (sm_80 / sm_90 compiles)."""
    tl.static_assert(NB % 2 == 0 and s.shape[1] < 256)
    x = tl.where(pos, -s, tl.where(neg, s, float("-inf")))
    w = tl.where(pos, 1, 256)
    edge = tl.arange(0, NB)[None, :]
    acc = tl.zeros(ep.shape, tl.int32)
    for b in tl.static_range(0, NB, 2):
        ep_b = tl.sum(tl.where(edge == b, ep, 0.0), 1)
        en_b = tl.sum(tl.where(edge == b, en, 0.0), 1)
        ep_c = tl.sum(tl.where(edge == b + 1, ep, 0.0), 1)
        en_c = tl.sum(tl.where(edge == b + 1, en, 0.0), 1)
        v = (tl.where(x >= tl.where(pos, ep_b[:, None], en_b[:, None]), w, 0)
             + tl.where(x >= tl.where(pos, ep_c[:, None], en_c[:, None]), w << 16, 0))
        c = tl.sum(v, 1)
        acc += tl.where(edge == b, (c & 0xFFFF)[:, None], 0) + tl.where(edge == b + 1, (c >> 16)[:, None], 0)
    return cnt_p + (acc & 0xFF), cnt_n + (acc >> 8)


@triton.jit
def count_at_or_above_packed(s, pos, neg, ep, en, cnt_p, cnt_n, NB: tl.constexpr):
    """count_at_or_above with two column sums a tile instead of NB / 2 (CT_KERNELS_TRITON_SELECT_COUNT=
    packed, an A/B candidate): an element's bin b = #{k: x >= e_k} (edges do not decrease, so
    x >= e_k exactly for k < b) becomes the byte 1 << (8 (b - 1)) of an int64, summed over the
    tile's columns per side (fewer than 256 columns: no byte carries); the counts at or above
    each edge are the suffix sums of the bytes. Sides as there: positives to cnt_p, the rest to
    cnt_n (non-members have x = -inf, counted only at an edge of -inf)."""
    tl.static_assert(NB * 8 <= 64 and s.shape[1] < 256)
    x = tl.where(pos, -s, tl.where(neg, s, float("-inf")))
    edge = tl.arange(0, NB)[None, :]
    nb = tl.zeros(s.shape, tl.int32)
    for k in tl.static_range(NB):
        ep_k = tl.sum(tl.where(edge == k, ep, 0.0), 1)
        en_k = tl.sum(tl.where(edge == k, en, 0.0), 1)
        nb += (x >= tl.where(pos, ep_k[:, None], en_k[:, None])).to(tl.int32)
    one = tl.where(nb > 0, tl.full(s.shape, 1, tl.int64) << (8 * (nb - 1)).to(tl.int64), 0)
    hp = tl.sum(tl.where(pos, one, 0), 1)
    hn = tl.sum(tl.where(pos, 0, one), 1)
    for f in tl.static_range(NB):
        fp = ((hp >> (8 * f)) & 255).to(tl.int32)
        fn = ((hn >> (8 * f)) & 255).to(tl.int32)
        cnt_p += tl.where(edge <= f, fp[:, None], 0)
        cnt_n += tl.where(edge <= f, fn[:, None], 0)
    return cnt_p, cnt_n


@triton.jit
def inside_range(x, member, lo, hi, mn, mx):
    """Running smallest and largest member of each row's interval [lo, hi)."""
    inside = member & (x >= lo[:, None]) & (x < hi[:, None])
    mn = tl.minimum(mn, tl.min(tl.where(inside, x, float("inf")), 1))
    mx = tl.maximum(mx, tl.max(tl.where(inside, x, float("-inf")), 1))
    return mn, mx


@triton.jit
def narrow(e, counts, mn, mx, lo, hi, glo, ghi, mode, k, C: tl.constexpr, NB: tl.constexpr):
    """Keep the sub-interval [e_b, next greater edge) that holds the k-th: b the highest edge
    with at least k members at or above it (counts fall as edges rise), clipped to the members
    seen in the old interval ([mn, mx]: the counts at the clipped ends are unchanged, no member
    lies between). Then the row collects (at most C members in [lo, hi)), settles for its
    column (one value left in [lo, hi)), or searches on."""
    b = tl.arange(0, NB)[None, :]
    g = tl.where(b == 0, glo[:, None], counts)
    best = tl.sum(((g >= k) & (b > 0)).to(tl.int32), 1)
    pick = b == best[:, None]
    new_lo = tl.sum(tl.where(pick, e, 0.0), 1)
    new_glo = tl.sum(tl.where(pick, g, 0), 1)
    above = (b > best[:, None]) & (e > new_lo[:, None])
    has_above = tl.sum(above.to(tl.int32), 1) > 0
    new_hi = tl.where(has_above, tl.min(tl.where(above, e, float("inf")), 1), hi)
    new_ghi = tl.where(has_above, tl.max(tl.where(above & (e == new_hi[:, None]), g, 0), 1), ghi)
    new_lo = tl.maximum(new_lo, _canon(mn))
    cap = next_up(_canon(mx))
    new_ghi = tl.where(cap < new_hi, ghi, new_ghi)
    new_hi = tl.minimum(new_hi, cap)
    searching = mode == SEARCH
    lo = tl.where(searching, new_lo, lo)
    hi = tl.where(searching, new_hi, hi)
    glo = tl.where(searching, new_glo, glo)
    ghi = tl.where(searching, new_ghi, ghi)
    one_value = next_up(lo) >= hi
    mode = tl.where(searching & (glo - ghi <= C), GATHER, tl.where(searching & one_value, COLUMN, mode))
    return lo, hi, glo, ghi, mode


@triton.jit
def gather_take(x, member, lo, hi, mode):
    """Collect pass, one side (x = -s for positives, s for negatives): the members in [lo, hi) of
    the rows that gather."""
    return member & (mode == GATHER)[:, None] & (x >= lo[:, None]) & (x < hi[:, None])


@triton.jit
def gather_places(take_p, take_n, MINE_P: tl.constexpr, MINE_N: tl.constexpr):
    """(place_p, place_n, count_p, count_n): each taken element's place among its row's taken
    elements of its side in this tile (1-based, column order; no atomics, so the slots do not
    depend on scheduling) and each row's counts. Both sides in one scan and one sum, in 16-bit
    fields (a tile row has fewer than 2**16 columns): with 8 warps on a 64-row tile every row
    scan or sum crosses warps through shared memory."""
    if MINE_P and MINE_N:
        both = take_p.to(tl.int32) + (take_n.to(tl.int32) << 16)
        run = tl.cumsum(both, 1)
        tot = tl.sum(both, 1)
        return run & 0xFFFF, run >> 16, tot & 0xFFFF, tot >> 16
    else:
        one = (take_p if MINE_P else take_n).to(tl.int32)
        run = tl.cumsum(one, 1)
        tot = tl.sum(one, 1)
        return run, run, tot, tot


@triton.jit
def gather_store(x, take, place, cols, out, base, key_ptr, col_ptr, C: tl.constexpr):
    """Write (key -x, column) of the taken elements to the row's slots base + place - 1."""
    slot = base[:, None] + place - 1
    off = out.to(tl.int64)[:, None] * C + slot
    tl.store(key_ptr + off, -x, mask=take & (slot < C))
    tl.store(col_ptr + off, tl.broadcast_to(cols[None, :], x.shape), mask=take & (slot < C))


@triton.jit
def column_find(x, member, cols, lo, mode, rank, seen, col_at):
    """Collect pass, one side, COLUMN rows: count the members equal to lo in column order and note
    the column where the count reaches rank (= k - ghi)."""
    eq = member & (mode == COLUMN)[:, None] & (x == lo[:, None])
    run = seen[:, None] + tl.cumsum(eq.to(tl.int32), 1)
    cols2 = tl.broadcast_to(cols[None, :], x.shape)
    col_at = tl.minimum(col_at, tl.min(tl.where(eq & (run == rank[:, None]), cols2, BIG_COL), 1))
    seen += tl.sum(eq.to(tl.int32), 1)
    return seen, col_at


@triton.jit
def select_sort_kernel(thr_ptr, col_ptr, key_ptr, bcol_ptr, count_ptr, R,
                       C: tl.constexpr, LOG_C: tl.constexpr, SB: tl.constexpr, NEGATE: tl.constexpr):
    """Threshold of each collecting row (count > 0): the rank-th smallest (key, column) of its
    buffer, key = -x (so: rank-th largest x, lower column first), the column BIG_COL if no other
    member has that key; count_ptr holds R counts, then R ranks. NEGATE: store -key (negatives)."""
    idx = tl.program_id(0) * SB + tl.arange(0, SB)
    n = tl.load(count_ptr + idx, mask=idx < R, other=0)
    rank = tl.load(count_ptr + R + idx, mask=idx < R, other=1)
    if tl.max(n) > 0:
        slot = tl.arange(0, C)[None, :]
        full = slot < n[:, None]
        off = idx.to(tl.int64)[:, None] * C + slot
        key = tl.load(key_ptr + off, mask=full, other=float("inf"))
        col = tl.load(bcol_ptr + off, mask=full, other=BIG_COL)
        key, col = _kv_sort(key, col, LOG_C, 0)
        t, c = kth_pair_untied(key, col, rank[:, None], C, True)  # [lo, hi) holds every member equal to t
        if NEGATE:
            t = -t
        tl.store(thr_ptr + idx, t, mask=n > 0)
        tl.store(col_ptr + idx, c, mask=n > 0)
