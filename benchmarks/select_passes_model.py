"""How many search passes the counting select (ct_kernels/triton_ops/_select.py) needs, per row.

A numpy model of the search for one row and side, on bf16-rounded embeddings of a few kinds
(random, clustered with several spreads, 20 % duplicated rows): the evidence behind the pass
counts quoted in _select.py and RESULTS.md. It mirrors the kernel's rules (value-spaced edges
for the first passes, then order-key spaced; clipping to the members inside; collect once at
most C members are inside, or one value is left), not its code; a block of rows takes the
largest count among its rows. CPU only, a few seconds:

    python benchmarks/select_passes_model.py [--n 32768] [--k 64] [--temperature 0.1]
    python benchmarks/select_passes_model.py --blocks 4      # per 64-row block, and a design not built

--blocks: sweeps before the collect pass per block of 64 rows (a block sweeps while any of its
rows, either side, still searches), today's (the stats sweep, then the search) against first
edges taken from a column sample (no stats sweep: a sample of N / 8 strided columns, its order
statistics every 4 sample ranks around the k-th's expected rank, then today's rules). That design
is not built: the model says what it would save (RESULTS.md, mining).
"""
from __future__ import annotations

import argparse
import math

import numpy as np

F32 = np.float32


def _ord(v):
    b = np.asarray(v, dtype=np.float32).view(np.int32)
    return np.where(b < 0, b ^ 0x7FFFFFFF, b).astype(np.int64)


def _from_ord(o):
    o = np.asarray(o, dtype=np.int64).astype(np.int32)
    return np.where(o < 0, o ^ 0x7FFFFFFF, o).astype(np.int32).view(np.float32)


def _canon(x):
    return np.where(x == 0, F32(0), x).astype(np.float32)


def _next_up(x):
    return _from_ord(_ord(_canon(x)) + 1)[()]


def search_passes(x, k, slots=64, edges=8, value_passes=2, max_passes=16, first=None):
    """Search passes before the row collects (or settles on one value), for the k-th largest x.
    first: the design without a stats pass (--blocks): the first pass counts at -inf and these
    NB - 1 ascending edges, the interval starting as every value."""
    x = np.sort(x.astype(np.float32))
    n = len(x)
    if n <= k or n <= slots or (first is None and x[0] == x[-1]):
        return 0
    if first is None:
        lo, hi = _canon(F32(x[0]))[()], _next_up(F32(x[-1]))
    else:
        lo, hi = F32(-np.inf), F32(np.inf)
    glo, ghi = n, 0
    b = np.arange(edges)
    for it in range(max_passes):
        if it == 0 and first is not None:
            e = np.concatenate([[-np.inf], np.sort(first)]).astype(np.float32)
        elif it >= value_passes:
            e = _canon(_from_ord(_ord(lo) + ((_ord(hi) - _ord(lo)) * b) // edges))
        else:
            e = _canon((lo + F32(hi - lo) * (b.astype(np.float32) * F32(1.0 / edges))).astype(np.float32))
        g = n - np.searchsorted(x, e, side="left")
        inside = x[(x >= lo) & (x < hi)]
        best = int(((g >= k) & (b > 0)).sum())
        new_lo, new_glo = e[best], g[best]
        above = (b > best) & (e > new_lo)
        new_hi, new_ghi = (e[above].min(), g[above & (e == e[above].min())].max()) if above.any() else (hi, ghi)
        new_lo = max(new_lo, _canon(F32(inside.min()))[()])
        cap = _next_up(F32(inside.max()))
        if cap < new_hi:
            new_ghi = ghi
        lo, hi, glo, ghi = F32(new_lo), F32(min(new_hi, cap)), new_glo, new_ghi
        assert glo >= k > ghi
        if glo - ghi <= slots or _next_up(lo) >= hi:
            return it + 1
    return max_passes


def sample_edges(xs, n, k, step=4, edges=8):
    """NB - 1 edges from a sample's values xs of a side with n members: its order statistics every
    `step` ranks around the rank where the k-th largest is expected."""
    xs = np.sort(xs)[::-1]
    if len(xs) == 0:
        return np.full(edges - 1, -np.inf, np.float32)
    centre = k * len(xs) / n
    half = (edges - 2) // 2
    ranks = np.clip(np.round(centre + step * np.arange(half, half - edges + 1, -1)).astype(int), 1, len(xs))
    return xs[ranks - 1]


def _bf16(a):
    a = a.astype(np.float32).view(np.uint32)
    return ((a + 0x7FFF + ((a >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def block_sweeps(u, y, k, scale, blocks, every, rng, bm=64):
    """Per 64-row block, the sweeps before the collect pass: today's (1 stats + search passes) and
    with sample-guided first edges (search passes), each the largest over the block's rows and sides."""
    n = len(y)
    cols = np.arange(0, n, every)
    today, sampled = [], []
    for b0 in rng.choice(n // bm, blocks, replace=False):
        rows = np.arange(b0 * bm, (b0 + 1) * bm)
        s = (u[rows] @ u.T).astype(np.float32) * scale
        t = g = 0
        for r, i in enumerate(rows):
            for positive in (True, False):
                member = (y == y[i]) if positive else (y != y[i])
                member[i] = False
                x = -s[r] if positive else s[r]
                t = max(t, 1 + search_passes(x[member], k))
                g = max(g, search_passes(x[member], k, first=sample_edges(x[cols][member[cols]], member.sum(), k)))
        today.append(t)
        sampled.append(g)
    return today, sampled


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--rows", type=int, default=128, help="anchor rows sampled per kind")
    ap.add_argument("--blocks", type=int, default=0,
                    help="model this many 64-row blocks instead: today's sweeps against sample-guided first edges")
    ap.add_argument("--sample", type=int, default=8, help="--blocks: one column in this many is sampled")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    scale = F32(math.log2(math.e) / args.temperature)  # the kernels' base-2 tiles
    print(f"N={args.n} D={args.d} k={args.k} T={args.temperature}: search passes per row and side "
          "(the stats and collect passes come on top)")
    for name, spread, dup in [("random", None, 0.0), ("clusters 0.5", 0.5, 0.0), ("clusters 0.1", 0.1, 0.0),
                              ("clusters 0.03", 0.03, 0.0), ("20% duplicated", 0.3, 0.2)]:
        y = rng.integers(0, args.classes, args.n)
        if spread is None:
            z = rng.standard_normal((args.n, args.d))
        else:
            centres = rng.standard_normal((args.classes, args.d)) / math.sqrt(args.d)
            z = centres[y] + spread * rng.standard_normal((args.n, args.d)) / math.sqrt(args.d)
        if dup:
            idx = rng.integers(0, args.n, int(dup * args.n))
            z[idx], y[idx] = z[0], y[0]
        u = _bf16(z / np.linalg.norm(z, axis=1, keepdims=True))
        if args.blocks:
            today, sampled = block_sweeps(u, y, args.k, scale, args.blocks, args.sample, rng)
            print(f"  {name:15s} sweeps before collect, per block: today (stats + search) {today}, "
                  f"sample-guided (search only) {sampled}")
            continue
        rows = rng.choice(args.n, args.rows, replace=False)
        s = (u[rows] @ u.T).astype(np.float32) * scale
        passes = []
        for r, i in enumerate(rows):
            for positive in (True, False):
                member = (y == y[i]) if positive else (y != y[i])
                member[i] = False
                passes.append(search_passes(-s[r][member] if positive else s[r][member], args.k))
        passes = np.array(passes)
        print(f"  {name:15s} max {passes.max()}  mean {passes.mean():.2f}  histogram {np.bincount(passes).tolist()}")


if __name__ == "__main__":
    main()
