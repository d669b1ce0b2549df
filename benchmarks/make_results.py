"""Generate benchmarks/RESULTS.md and a log-log plot from the newest GPU records.

    python benchmarks/make_results.py [records.json ...]   # default: every file in results/

Ratios are taken only between rows of the same run (same file, same card).
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
# DESIGN.md's floors on an H100 at N=32768, D=128, supcon forward+backward (bf16 matrix work and
# exponentials from peak rates): 1.1 ms (compute-bound lower estimate).
FLOOR_MS_32768 = 1.1
PEERS = ("naive", "pml_supcon", "chunked_ckpt", "infcl_1pos")


def load(paths):
    rows = []
    for p in paths:
        rows += json.loads(Path(p).read_text())
    return rows


def by_run(rows):
    """Records grouped by run, newest first; within a run the last record of each key wins.
    Ratios are only ever taken inside one run."""
    runs = defaultdict(dict)
    for r in rows:
        key = (r["op"], r["impl"], r.get("n"), r.get("d"), r.get("dtype"), r.get("precision"), r.get("anchors"))
        runs[r.get("run") or r.get("time", "")][key] = r
    return [(run, list(recs.values())) for run, recs in sorted(runs.items(), reverse=True)]


def fmt(r):
    if r is None:
        return "—"
    if r.get("ms") is None:
        status = r.get("status", "")
        if "out of memory" in status:
            return "OOM"
        if "estimate exceeds memory" in status:
            return "skipped (N x N > card)"
        return "skipped" if "skipped" in status else "error"

    mem = r["peak_mib"]
    mem_s = f"{mem / 1024:.2f} GiB" if mem >= 1024 else f"{mem:.0f} MiB"
    return f"{r['ms']:.2f} ms, {mem_s}"


def headline_table(rows, d=128):
    sup = [r for r in rows if r["op"] == "supcon" and r.get("d") == d]
    by = defaultdict(dict)
    for r in sup:
        by[(r["precision"], r["n"])][r["impl"]] = r
    impls = sorted({r["impl"] for r in sup}, key=lambda s: (s.startswith("ct_"), s))
    lines = ["| precision | N | " + " | ".join(impls) + " | best ct vs naive | best ct vs best peer |",
             "|---|---|" + "---|" * len(impls) + "---|---|"]
    for (prec, n) in sorted(by, key=lambda k: (k[0], k[1])):
        cells = by[(prec, n)]
        ct_ms = [cells[k]["ms"] for k in cells if k.startswith("ct_") and cells[k].get("ms")]
        peer_ms = [cells[k]["ms"] for k in cells if k in PEERS and cells[k].get("ms")]
        best = min(ct_ms) if ct_ms else None
        naive = cells.get("naive", {}).get("ms")
        r_naive = f"{naive / best:.1f}x" if best and naive else "—"
        r_peer = f"{min(peer_ms) / best:.1f}x" if best and peer_ms else "—"
        lines.append(f"| {prec} | {n} | " + " | ".join(fmt(cells.get(k)) for k in impls) + f" | {r_naive} | {r_peer} |")
    return "\n".join(lines)


def simple_table(rows, op):
    sel = sorted([r for r in rows if r["op"] == op], key=lambda r: (r.get("dtype"), r.get("n"), r["impl"]))
    lines = ["| impl | N | dtype | precision | time, peak extra memory |", "|---|---|---|---|---|"]
    lines += [f"| {r['impl']} | {r.get('n')} | {r.get('dtype')} | {r.get('precision')} | {fmt(r)} |" for r in sel]
    return "\n".join(lines)


def slice_table(rows):
    """One rank's anchor slice (process_group) against the whole batch, per backend."""
    sel = [r for r in rows if r["op"] == "supcon_rank_slice"]
    if not sel:
        return "(not measured in this run)"
    lines = ["| impl | N | anchors | time, peak extra memory | time / whole batch |", "|---|---|---|---|---|"]
    whole = {r["impl"]: r.get("ms") for r in sel if r.get("anchors") == r.get("n")}
    for r in sorted(sel, key=lambda r: (r["impl"], -r["anchors"])):
        ratio = f"{r['ms'] / whole[r['impl']]:.2f}" if r.get("ms") and whole.get(r["impl"]) else "—"
        lines.append(f"| {r['impl']} | {r['n']} | {r['anchors']} | {fmt(r)} | {ratio} |")
    return "\n".join(lines)


def tuner_table(rows):
    """The Triton tuner's candidates per ct_triton row (gpu_bench.py records them since
    2026-11-27): which configuration each measurement ran, and what the others timed."""
    sel = [r for r in rows if r.get("tune_ms")]
    if not sel:
        return "(not recorded in this run)"
    lines = ["| op | impl | N | precision | ran | candidates (bm,bn,bd,bdo,warps,stages,bwd_warps: ms a fwd+bwd) |",
             "|---|---|---|---|---|---|"]
    for r in sorted(sel, key=lambda r: (r["op"], r["impl"], r.get("precision"), r.get("n"))):
        cands = "; ".join(f"{c}: {'failed' if ms is None else f'{ms:.2f}'}" for c, ms in r["tune_ms"].items())
        lines.append(f"| {r['op']} | {r['impl']} | {r.get('n')} | {r.get('precision')} | {r['triton_config']} "
                     f"| {cands} |")
    return "\n".join(lines)


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sup = [r for r in rows if r["op"] == "supcon" and r.get("d") == 128 and r.get("ms")]
    precs = sorted({r["precision"] for r in sup})
    if not precs:
        return False
    fig, axes = plt.subplots(2, len(precs), figsize=(5 * len(precs), 8), squeeze=False)
    for j, prec in enumerate(precs):
        for impl in sorted({r["impl"] for r in sup}):
            pts = sorted((r["n"], r["ms"], r["peak_mib"]) for r in sup if r["impl"] == impl and r["precision"] == prec)
            if not pts:
                continue
            ns, ms, mem = zip(*pts)
            axes[0][j].loglog(ns, ms, "o-", label=impl)
            axes[1][j].loglog(ns, mem, "o-", label=impl)
        axes[0][j].set_title(f"supcon fwd+bwd, D=128, {prec}")
        axes[0][j].set_ylabel("ms")
        axes[1][j].set_ylabel("peak extra MiB")
        axes[1][j].set_xlabel("N patches")
        axes[0][j].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def _ms(rows, op, impl, n, prec, dtype=None):
    for r in rows:
        if (r["op"], r["impl"], r.get("n"), r.get("precision")) == (op, impl, n, prec) and r.get("ms") \
                and (dtype is None or r.get("dtype") == dtype):
            return r
    return None


def goals_table(rows):
    """The GPU performance goals of the Triton and native issues, read off one run."""
    out = ["| goal | measured | met |", "|---|---|---|"]

    def line(text, value, limit, unit="ms"):
        if value is None:
            out.append(f"| {text} | not measured in this run | — |")
        else:
            out.append(f"| {text} | {value:.2f} {unit} | {'yes' if value <= limit else f'no ({value / limit:.1f}x the goal)'} |")

    for prec, limit in (("bf16", 4.0), ("tf32", 8.0), ("fp32", 30.0)):
        # fp32: the exact default, then the 3xTF32 opt-ins (CT_KERNELS_FP32_3XTF32=1: faster, not
        # float32's accuracy), each on its own line
        impls = ("ct_triton", "ct_native") + (("ct_triton_3xtf32", "ct_native_3xtf32") if prec == "fp32" else ())
        for impl in impls:
            r = _ms(rows, "supcon", impl, 32768, prec)
            if r or impl == "ct_triton":
                line(f"supcon N=32768 {prec} <= {limit:g} ms ({impl})", r and r["ms"], limit)
    r = _ms(rows, "supcon", "ct_triton", 131072, "bf16")
    line("supcon N=131072 bf16 <= 70 ms", r and r["ms"], 70.0)
    line("supcon N=131072 bf16 extra memory < 256 MB", r and r["peak_mib"] * 2**20 / 1e6, 256.0, "MB")
    sup = _ms(rows, "supcon", "ct_triton", 32768, "bf16")
    inf = _ms(rows, "infonce", "ct_triton", 32768, "bf16")
    line("infonce / supcon (bf16, N=32768) <= 1.33", inf and sup and inf["ms"] / sup["ms"], 4 / 3, "x")
    for n in (8192, 32768):
        mined, plain = _ms(rows, "supcon_mined64", "ct_triton", n, "bf16"), _ms(rows, "supcon", "ct_triton", n, "bf16")
        line(f"mined (kp=kn=64) / unmined (bf16, N={n}) <= 2.5", mined and plain and mined["ms"] / plain["ms"], 2.5, "x")
    # the native issue: within 1.5x of Triton; ct_native is the default path (the mma.sync kernels
    # where they apply), ct_native_wmma the WMMA tiles they replaced, 3xtf32 against 3xtf32
    pairs = [(p, "ct_native", "ct_triton") for p in ("bf16", "tf32", "fp32")] + \
            [("bf16", "ct_native_wmma", "ct_triton"), ("tf32", "ct_native_wmma", "ct_triton"),
             ("fp32", "ct_native_3xtf32", "ct_triton_3xtf32")]
    for prec, nat_impl, tri_impl in pairs:
        nat, tri = _ms(rows, "supcon", nat_impl, 32768, prec), _ms(rows, "supcon", tri_impl, 32768, prec)
        if nat or nat_impl == "ct_native":
            line(f"{nat_impl} / {tri_impl}, supcon N=32768 {prec} <= 1.5 (native issue)",
                 nat and tri and nat["ms"] / tri["ms"], 1.5, "x")
    for dt in ("uint8", "int64"):
        pl, cp = (_ms(rows, "patch_labels", i, 16777216, "-", dt) for i in ("ct_triton", "mask_copy"))
        line(f"patch labels {dt} <= 1.5x one mask copy", pl and cp and pl["ms"] / cp["ms"], 1.5, "x")
    return "\n".join(out)


def run_section(run, rows, title):
    meta = rows[0]
    ct32 = [r for r in rows if r["op"] == "supcon" and r.get("n") == 32768 and r.get("d") == 128
            and r["impl"].startswith("ct_") and r.get("ms") and r["precision"] == "bf16"]
    floor = (f"Best ct bf16 at N=32768: {min(r['ms'] for r in ct32):.2f} ms = "
             f"{min(r['ms'] for r in ct32) / FLOOR_MS_32768:.1f}x the {FLOOR_MS_32768} ms floor of DESIGN.md "
             "(computed there for an H100).") if ct32 else ""
    return f"""## {title}: run {run}

{meta['device']}, torch {meta['torch']}, Triton {meta.get('triton')}.

### SupCon, D = 128, forward + backward

{headline_table(rows)}

{floor}

### Goals (issues "Triton kernels" and "Native extension")

{goals_table(rows)}

### InfoNCE (per-positive) and hard mining (kp = kn = 64), bf16

{simple_table(rows, "infonce")}

{simple_table(rows, "supcon_mined64")}

### Patch labels, 16 x 1024 x 1024 masks, patch 16, 6 classes (CUDA graphs)

{simple_table(rows, "patch_labels")}

### One rank of eight under process_group: N/8 anchors against all N rows, bf16, fwd+bwd

{slice_table(rows)}

### Triton tuner: the configuration each row ran, and its candidates' times

{tuner_table(rows)}
"""


# Hand-written: what bounds the missed goals, from the newest run's numbers, the kernels' structure
# and offline sm_90 compile reports (registers / spills). Not profiled yet: benchmarks/profile_step.py
# (gpu_check.sh's "profile" phase) is prepared for the next GPU session.
BOUNDS = """## What bounds the missed goals (run of 2026-11-27 on an H200; analysis, not yet profiled)

- **Timing floor of that run:** at N = 8192 every implementation, the peers included, measured
  3.3-4.0 ms (naive bf16 4.0 ms, Inf-CL 3.3 ms, against 55 and 30 ms at 4x the rows): the harness
  synchronised after every step, so each step also paid the host's launch latency. The N = 8192
  rows (and the mined / unmined ratio there, 1.31x) say little; gpu_bench.py now enqueues the
  steps back to back.
- **bf16 SupCon (Triton 6.39 ms, native 6.54 ms, goal 4 ms; 5.8x DESIGN.md's 1.1 ms floor):** which
  tuner candidate that run took was not recorded (gpu_bench.py records it since, with every
  candidate's time: the "Triton tuner" table). The default then split the backward's D = 128 into
  two 64-wide programs that each recompute the similarity tile and its exponentials, so the step
  did 4 N·N·D products instead of 3; tiles are not shared between (i, j) and (j, i). The one-pass
  backward (one program a row block) then spilled 72-432 bytes in sm_90 offline compiles; today
  it is spill-free for bf16 / fp16 supcon on Triton 3.6 and 3.8 (255 registers; one CTA an SM as
  with 64-wide programs), and it is the first candidate since 2026-11-27: by the sm_90 SASS
  (benchmarks/sass_loops.py, Triton 3.6, D = 128) a step costs 1.73 warp instructions an element
  of s against 2.86, and 1.62 since the backward loads the columns' statistics (label, a, w1,
  gn) as one [64, 4] tile: Triton 3.6 pipelined each per-column vector as a 4-byte cp.async a
  thread and column, 64 a tile and thread with their predicates (backward trip 1087 -> 976
  instructions; Triton 3.8: 886 -> 807). On sm_90 a 64-row tile with 8 warps has both
  warpgroups compute the backward's whole similarity tile (bf16 PTX: 20 wgmma a tile against
  12). The Triton bf16 step took 5.37 ms in the run of 2026-11-26 and 6.39 ms in this one,
  unexplained so far: since then 16-bit rows are normalised in float32 (the fix for float16's
  NaN; extra memory at N = 32768 went from 40 to 88 MiB) and the tuner has new candidates. Not
  issue-bound either way: 2.86 warp instructions an element is 2.9 ms at the H200's full issue
  rate (132 SMs x 4 a cycle, 1.98 GHz), against 6.39 measured. The likely bound is latency at
  low occupancy: the backward holds a 128 x 128 (or 128 x 64) float32 accumulator and needs
  209-255 registers, so one CTA of 8 warps an SM, 2 warps a scheduler to cover the wgmma waits,
  the exponentials' latency and the barriers; Triton 3.6 has no warp specialisation on Hopper
  to overlap them, and issuing the next tile's dot before this tile's exponentials by hand gave
  the same SASS order (Triton 3.8 sinks the dot to its wait).
- **tf32 (Triton 13.6 ms, native 11.3 ms, goal 8 ms):** the same structure, with tf32 tiles at
  twice bf16's shared memory and half its tensor-core rate. The old first candidate (64-row
  tiles, 8 warps, 64-wide dU programs) costs 6.41 warp instructions an element in the SASS
  (Triton 3.6); the 128-row one-pass tiles that lead the list since 2026-11-27 cost 2.03, 1.81
  with the packed column statistics (they spill 60-136 bytes). Not timed yet.
- **float32, tf32 off (native 66.6 ms exact, goal 30 ms):** exact float32 runs on the FMA units:
  4 products of 2·N²·D are 1.1 TFLOP, >= 16 ms at the H200's ~67 TFLOP/s before any
  elementwise work (3 products: >= 12 ms); cuBLAS's one Z·Zᵀ takes 7.5 ms (DESIGN.md, H100). The
  Triton "ieee" step took 88.7 ms on 2026-11-26 (not re-measured). With CT_KERNELS_FP32_3XTF32=1
  (three tf32 products) native takes 24.2 ms and Triton 27.4 ms, inside the goal, but their error
  is not float32's (dU 2.6e-5 of float64's norm at M = 4099, growing with M, where 1e-5 is the
  rule): opt-in, not the default.
- **N = 131072, bf16 (68.8 ms: goal met; 353 MiB extra against 256 MB):** Inf-CL measured the same
  354 MiB there; 353 MiB is 2.8 KB a row, about 5.5 float32 values per element of U. The 16-bit
  rows are normalised in float32 (their float32 copy and its gradient are N x D float32 each),
  next to dU and z.grad in bf16. Since this run the normalisation works row chunk by row chunk
  (ct_kernels/normalize.py; on the CPU the peak of normalize forward + backward went from 11.1
  to 2.2 bf16 copies of z), which should leave about 4 bf16 copies (~130 MiB); not re-measured.
  Since 2026-11-27 (session 9) `benchmarks/host_memory.py` replays gpu_bench's step on the CPU
  with the Triton kernels launched as no-ops and reads the live bytes from the profiler's memory
  timeline. At the commit this run measured it gives 385 MiB (96.3 at N = 32768) against 353
  (88) measured: one bf16 N x D copy more than the CUDA allocator saw, in both. It found two more
  N x D transients and removed them: the check that every row is finite (torch.isfinite(u).all()
  made |u| and three bool masks, 80 MiB; now the min and max of u) and the normalisation's
  backward (five float32 row chunks alive at once, three now: in place, the previous chunk freed
  before the next, 8 MiB chunks). Today: 120.8 MiB at N = 131072 (3.8 copies of z; 177 before
  the two fixes) and 48.3 at N = 32768 (104 before), so about 89 and 40 MiB on the GPU by that
  calibration; not measured on a GPU yet.
- **InfoNCE (1.60x SupCon in Triton, goal 1.33x; native 17.7 ms, 2.7x):** its second forward
  pass needs three special-function operations per element (softplus and sigmoid of lseN - s)
  on top of the recomputed tile; the log2 among them is taken once per row and tile. Since this
  run the Triton kernels take the rows of an unmined whole-batch infonce call in class runs
  (ordered by label on the host, outputs put back): the second pass visits only the tiles of a
  row block's runs, and the backward computes the positives' reciprocals only there. With 6
  random classes at N = 32768 that is 17 % of the tiles (exact count, 128 x 64 and 64 x 64
  tiles); not timed (`ct_triton_unsorted` is the A/B row, CT_KERNELS_TRITON_CLASS_RUNS=0).
  In sm_90 SASS (`benchmarks/sass_loops.py`, bf16, D = 128, Triton 3.8, instructions a thread
  runs per 128 x 64 tile; the backward trip counted twice, as the then default ran two 64-wide
  dU programs a row block): supcon 612 + 2 x 906 = 2424; infonce 560 + 1213 (second pass) +
  2 x 1355 (backward, of which 503 are the positives' terms) = 4483, 1.85x supcon's, against
  1.6x measured; with the runs, 560 + 0.17 x 1213 + 2 x (852 + 0.17 x 503) = 2640, 1.09x. With
  the one-pass backward, the first candidate since 2026-11-27: supcon 612 + 886 = 1498, infonce
  in runs 560 + 0.17 x 1213 + 816 + 0.17 x 498 = 1667, 1.11x; with the backward's packed column
  statistics, 612 + 807 = 1419 and 560 + 0.17 x 1213 + 751 + 0.17 x 496 = 1601, 1.13x.
- **Mining, kp = kn = 64 (53.2 ms = 8.3x unmined at N = 32768, goal 2.5x):** the counting select
  (stats pass, 1-3 search passes counting members above 8 edges per row, a collect pass, a small
  sort) halved the per-tile top-k merge (118.5 ms, `ct_triton_merge`); reading s_ji from the tile
  (i, j) in the backward (`ct_triton_reuse`, 52.2 ms) and a one-stage select (54.8 ms) change
  little, so the time is neither the backward's third product nor the select's pipelining. Each
  streamed pass over the N x N tiles costs about an unmined forward; 53 ms is more than the 6-7
  passes explain: the per-kernel split is the next measurement (profile_step.py --k 64). An A/B
  candidate is in since (`ct_triton_packed`, CT_KERNELS_TRITON_SELECT_COUNT=packed): each
  search pass sums one int64 of per-bin bytes per side and tile instead of one column sum per
  bin (sm_90 select kernel, bf16, Triton 3.8: 12 fewer barriers and 24 fewer shuffles in the
  SASS, 243 registers against 255; not timed; but 1636 instructions a search tile against 1343).
  Against today's default, which sums two bins at a time: 12 barriers a search tile against 16,
  1637 instructions against 1332.
  Since this run, the SASS of each pass's column loop (`benchmarks/sass_loops.py`: sm_90, bf16,
  D = 128, Triton 3.8, instructions a thread runs per tile) says where the time goes: the
  unmined step's 128 x 64 tiles cost 612 (forward) + 2 x 906 (two 64-wide backward programs a
  row block, the default then) for 32 elements of s a thread, 76 an element; the mined step's
  64 x 64 tiles, 16 elements a thread, cost 728 (stats) + 1343 per search pass + 1986 (collect)
  + 650 (loss) + 2 x 3005 (backward), 754 an element with two search passes, 10x the unmined
  (8.3x measured). (Until 2026-11-27 these notes counted the backward once: 47 and 566.) At the
  H200's issue rate (132 SMs x 4 warp instructions a cycle, 1.98 GHz) those counts take 24 ms
  (mined) and 2.4 ms (unmined) against 53 and 6.4 measured: neither runs at full issue (45 %
  and 38 %), so the counts rank the parts of a step rather than predict its time. The mined
  backward, with the tie-break test (`_keep_low` / `_keep_high`) for both sides and both
  orientations of every tile, was the largest single part. Since this run, none of it timed:
  - thresholds say whether they are tied (the column is BIG_COL when no other member shares the
    k-th value), and the loss pass and the backward take one-compare masks on tiles where none
    is: 514 and 1273 instructions (Triton 3.6: 660 -> 522, 3604 -> 1576), 529 an element in all;
  - the stats pass no longer counts the members of each side (they are label-only:
    _select.member_counts): 728 -> 417 a tile, 509 an element;
  - the one-pass backward is the first candidate: one trip of 1238 a tile instead of two of
    1273, 428 an element (-43 % since this run; 9.1x the unmined one-pass step's 47);
  - the backward loads its columns' statistics as one [64, 4] tile: 1197 a tile, 425 an element
    (9.6x the unmined step's 44);
  - barriers: with 8 warps on a 64-row tile the two warpgroups split each tile row, so every
    row sum or min of the select crosses warps through shared memory, two barriers each: a
    search tile had 24 (Triton 3.6: 36), the stats tile 8 (12), the collect tile 44 (54). The
    search pass now sums two edges' counts in one int32 (a byte per edge and side): 16 (24)
    barriers, about as many instructions (1329 against 1302; 3.6: 1429 against 1449). 4 warps
    would need 2 barriers a search tile but spill 600 bytes. The collect pass scans and sums
    both sides' taken members in one int32 (16-bit fields): 2695 -> 2503 instructions a tile
    (3.6: 2761 -> 2501), 44 -> 40 barriers in its code (those of the rare COLUMN rows included;
    without them the tile runs 1775 instructions, against 1986). The mined step: 420 (stats)
    + 2 x 1332 (search) + 1775 (collect) + 514 (loss) + 1197 (backward) = 6570 a tile, 411 an
    element, 9.3x the unmined step's 44 (Triton 3.8).
  The select's passes (stats, search, collect: 74 % of what is left) are the next lever. At
  9.3x the unmined step's instructions no trimming of the passes reaches 2.5x: that needs fewer
  sweeps over s (today a stats, two search and a collect sweep come before the loss pass and the
  backward, against the unmined step's two), and timings to say whether barriers or issue bound
  each sweep. A design for fewer sweeps, modelled, not built (`select_passes_model.py --blocks`,
  per 64-row block, since a block sweeps while any of its rows searches; N = 32768, k = 64):
  today a block takes the stats sweep and 2 (random rows) to 4 (tight clusters) search sweeps
  before the collect; with first-pass edges from a sample of N / 8 strided columns (its order
  statistics every 4 sample ranks around where the k-th is expected) there is no stats sweep and
  2 search sweeps in every distribution modelled. That is 420 (random) to 3084 instructions (tight
  clusters) a tile fewer, out of 6570 + 1332 a tile for each extra search sweep: 6-33 %, not the
  2.5x, before the sample's own cost (an eighth of a sweep's products and a top-16 per row). At
  k = 256 the fixed spacing of 4 sample ranks is too narrow (random rows: 4 sweeps either way).
  pytorch-metric-learning's BatchHardMiner + SupConLoss: 101 ms and 23 GiB.
- **Native CUDA:** the `mma.sync` kernels (flash-attention-2 layout: U fragments, the tile of s
  and of the gradient weights in registers; cp.async double-buffered column tiles) replaced the
  WMMA tiles as the default for the unmined loss with D <= 128: 6.54 ms against 41.5 ms (bf16),
  11.3 against 60.6 (tf32). 32 rows a warp (`ct_native_mma32`) is slower in bf16 (7.08 ms) and
  equal in tf32. Mining (115.9 ms) and D > 128 still run on the WMMA tiles, which store every
  64 x 64 tile of s through shared memory and restage the row block for every tile.
- **Patch labels, uint8 (19 us against 8.6 us for one copy of the 16 MiB mask; 2.26x, goal 1.5x):**
  0.9 TB/s of mask read: the kernel is bound by its per-pixel instructions (about 23 a pixel in
  the PTX of the 6-class kernel), not by memory. int64 masks (8x the bytes) meet the goal (0.82x
  a copy). Since this run, blocks of whole patches load without a mask and a single class group
  is folded at compile time: sm_90 SASS (Triton 3.6) 1024 -> 928 instructions a program (uint8),
  1328 -> 1192 (int64); about 10 %, short of the 1.5x goal even if time follows; not timed.
  Since 2026-11-27 (session 9), none of it timed:
  - byte masks (uint8, int8, bool) whose patch rows are 2, 4, 8, ... words, with at most 16
    classes, take a word kernel: four pixels to an int32, a thread a patch, its 64 words in
    registers, so no shuffle, barrier or shared memory (in the general kernel 16 threads share a
    16 x 16 patch, and each repeats its label choice). Counts are cumulative: a class threshold
    costs three instructions a word (an add and a logic op give each byte's ">= t" bit, one
    multiply-high adds the four bits into a running sum), so 7 counts (6 classes and the bad
    pixels) are about 6 instructions a pixel. sm_90 SASS, 16 x 16, 6 classes: 1744
    instructions a thread for 256 pixels (Triton 3.8; 1760 on 3.6; a power-of-two area's purity
    is a multiply), against the general kernel's 928 for 32 on Triton 3.6: 6.9 a pixel against
    29 counting every instruction of the code, 6.8 against 17.6 on the path a clean mask runs
    (Triton 3.8). Whether the time follows is a GPU check still owed;
  - both kernels take the batch's patch row from the grid's first axis (no division of the
    program id): int64 1376 -> 1256 instructions a program (Triton 3.8; 3.6: 1192 -> 1176);
  - the native CUDA op (0.169 ms in this run, 20x a copy: a block a patch, a shared-memory
    atomic a pixel) takes the same word kernel for byte masks (csrc/cuda/patch_labels_words.cuh:
    16-byte loads where rows allow, 168 registers, no spill on sm_90), checked on the CPU warp
    emulator;
  - (session 10) the ignored bytes are taken out of the bad count only where a block (Triton) or
    a patch (CUDA) holds bytes >= the class count: the last class count already is the count of
    those bytes, so a clean block skips the second count. The Triton kernel reads the block's
    words again for it (from L2) rather than keep them in registers across the class loop.
    sm_90 SASS, 16 x 16, 6 classes, instructions a thread on a clean block: 1744 -> 1583 (Triton
    3.8, 94 -> 96 registers), 1760 -> 1566 (3.6, 82 -> 168 registers: 3.6 places the branch before
    the rest of the class loop), 1888 -> 1639 (3.9); 6.2 a pixel on 3.8. The benchmark's masks
    hold one ignored 32 x 32 corner an image, so nearly every block is clean; masks with ignored
    boundaries everywhere (ISPRS's eroded labels) keep the second count. The CUDA kernel: 168
    registers, no spill, as before.
"""


def main(argv):
    paths = argv or sorted((HERE / "results").glob("*.json"))
    runs = by_run(load(paths))
    # the plot takes the run with the most SupCon sizes measured (a run cut by its time budget
    # may hold only the headline N)
    plot_run, plot_rows = max(runs, key=lambda rr: len({r["n"] for r in rr[1] if r["op"] == "supcon" and r.get("ms")}))
    png = HERE / "results" / "supcon_time_memory.png"
    have_plot = plot(plot_rows, png)
    sections = [run_section(run, rows, "Newest run" if i == 0 else "Earlier run") for i, (run, rows) in enumerate(runs)]
    text = f"""# Benchmark results

Generated by `benchmarks/make_results.py` from {', '.join(Path(p).name for p in paths)}, one section per
run, newest first. Every number was measured by `benchmarks/gpu_bench.py`; ratios are taken only
between rows of the same run. Time: forward+backward median over repeats (CUDA events, rotating
inputs, after warm-up and autotuning); memory: peak allocator memory above what the inputs hold,
during one step after warm-up. Labels: 6 classes (many positives per row), temperature 0.1.
`infcl_1pos` is Inf-CL's `cal_flash_loss`, which handles one positive per row (the diagonal) and
computes in fp32 whatever the input: an easier loss than SupCon, shown as the fastest peer for scale.
`fp32` is float32 with tf32 off, `tf32` with `torch.backends.cuda.matmul.fp32_precision = "tf32"`.
`ct_*_3xtf32`: float32 with tf32 off under CT_KERNELS_FP32_3XTF32=1 (three tf32 products, not
float32's accuracy; opt-in). `ct_native` is the native default of today (the `mma.sync` kernels for
the unmined loss with D <= 128), `ct_native_wmma` the WMMA tiles it replaced: records made under
other defaults were renamed to today's names (their `renamed_from` field says from what).
"skipped (N x N > card)": the dense implementation's estimated N x N buffers exceed the card, not
run; "skipped": over the run's time budget. The run of 2026-11-26T14:20:05 measured peak memory
including the first call's autotuning (Triton's timing buffer, ~256 MiB, shows in its ct_triton
rows and in the plot); later runs measure one step after warm-up. That run also predates the
Triton kernel rework (base-2 tiles, row block loaded once), and its Inf-CL rows failed on a wrong
`head_dim` argument of ours.

""" + "\n".join(sections) + "\n" + BOUNDS + (f"""
## Time and memory against N

Run {plot_run} (the run with the most sizes measured):

![time and memory against N](results/supcon_time_memory.png)
""" if have_plot else "")
    (HERE / "RESULTS.md").write_text(text)
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
