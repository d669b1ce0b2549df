"""Generate benchmarks/RESULTS.md and a log-log plot from the newest GPU records.

    python benchmarks/make_results.py [records.json ...]   # default: the newest file in results/

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
        r = _ms(rows, "supcon", "ct_triton", 32768, prec)
        line(f"supcon N=32768 {prec} <= {limit:g} ms", r and r["ms"], limit)
    r = _ms(rows, "supcon", "ct_triton", 131072, "bf16")
    line("supcon N=131072 bf16 <= 70 ms", r and r["ms"], 70.0)
    line("supcon N=131072 bf16 extra memory < 256 MB", r and r["peak_mib"] * 2**20 / 1e6, 256.0, "MB")
    sup = _ms(rows, "supcon", "ct_triton", 32768, "bf16")
    inf = _ms(rows, "infonce", "ct_triton", 32768, "bf16")
    line("infonce / supcon (bf16, N=32768) <= 1.33", inf and sup and inf["ms"] / sup["ms"], 4 / 3, "x")
    for n in (8192, 32768):
        mined, plain = _ms(rows, "supcon_mined64", "ct_triton", n, "bf16"), _ms(rows, "supcon", "ct_triton", n, "bf16")
        line(f"mined (kp=kn=64) / unmined (bf16, N={n}) <= 2.5", mined and plain and mined["ms"] / plain["ms"], 2.5, "x")
    for prec in ("bf16", "tf32", "fp32"):
        nat, tri = (_ms(rows, "supcon", i, 32768, prec) for i in ("ct_native", "ct_triton"))
        line(f"native CUDA / triton, supcon N=32768 {prec} <= 1.5 (native issue)", nat and tri and nat["ms"] / tri["ms"],
             1.5, "x")
        for impl, rows_per_warp in (("ct_native_mma", 16), ("ct_native_mma32", 32)):
            mma = _ms(rows, "supcon", impl, 32768, prec)
            if mma:  # runs since the mma.sync kernels exist (fp32: their 3xTF32 products)
                line(f"native CUDA mma.sync path ({rows_per_warp} rows a warp) / triton, N=32768 {prec} <= 1.5",
                     tri and mma["ms"] / tri["ms"], 1.5, "x")
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
"""


# Hand-written: what bounds the missed goals, from the kernels' structure and offline sm_90 compile
# reports (registers / spills). Not yet profiled with ncu; the next GPU session should confirm.
BOUNDS = """## What bounds the missed goals (analysis, not yet profiled)

- **bf16 / tf32 SupCon (5.4 ms / 12.8 ms at N=32768 vs 4 / 8 ms):** the backward tile loop splits
  D = 128 into two 64-wide programs, each recomputing the similarity tile, so the backward does
  3 instead of 2 N·N·D products (4 in all instead of 3). The one-pass backward that avoids it spills
  (255 registers, 72-432 spill bytes in sm_90 offline compiles), and the tuner did not pick it. Tiles
  are not shared between (i, j) and (j, i) (the upper-triangle saving of DESIGN.md is not used).
  On sm_90, a 64-row tile with 8 warps (two warpgroups) has both warpgroups compute the backward's
  whole similarity tile (PTX, D = 128: bf16 20 wgmma a tile against 12 with 4 warps or 128 rows;
  tf32 40 against 24; mined bf16 36 against 20), which hits the tf32 default tile and every mined
  one; a 4-warp 64-row candidate is now timed too (bf16 247 registers spill-free, tf32 52 bytes
  spilled), and a mined candidate runs only its backward at 4 warps (20 wgmma; 24 bytes spilled
  as at 8 warps on Triton 3.6, 60 on 3.8; exact only if the warp count leaves every bit of s as
  it was, which test_mined_backward_warps_keep_bits checks on the GPU). Not yet timed.
- **fp32 without tf32 (88.7 ms vs 30 ms):** `tl.dot(..., input_precision="ieee")` runs on the FMA
  units, not tensor cores: about 1.1 TFLOP of FMA work (4 products of 2·N²·D) at the H200's ~67
  TFLOP/s fp32 peak is >= 16 ms before any elementwise work; the chunked-D path for fp32 keeps
  255 registers with spills in the backward. The native CUDA FMA kernel (66 ms) is faster here, so
  `auto` routes fp32 there. Since then (not yet timed) the Triton fp32 dots are three tf32
  tensor-core products of hi / lo parts, with the error of an fp32 dot (~1e-7 relative): first
  Triton's "tf32x3", which splits both operands in registers on every tile (sm_90, Triton 3.6,
  D = 128: 255 registers in every pass, 40-900 bytes spilled in the backward and InfoNCE
  forward, 960 in the mined select); now "split3", with U split once on the host into [hi | lo]
  rows and every operand read from memory: the default 128 x 32 tile at 116 / 147 / 207
  registers (forward, InfoNCE forward, backward), spill-free, no tile computed twice by the two
  warpgroups; the mined select 40 bytes. `auto` keeps routing fp32 to native until a run shows
  Triton faster.
- **InfoNCE (1.9x SupCon vs 1.33x):** its second forward pass needs three special-function
  operations per element (softplus and sigmoid of lseN - s) on top of the recomputed tile; the
  log2 among them (a ~12-FMA polynomial in the PTX) is now taken once per row and tile, of the
  product of the (1 + e) factors (not yet timed).
- **Mining (21.8x at N=32768):** the threshold pass merges per-row top-k buffers (k = 64) with
  bitonic sorting networks whenever a tile can change a row's k-th value; with random data that is
  nearly every tile early on, so the pass is bound by compare-exchange work, not by the matrix unit.
  Since then (not yet measured on a GPU) float32 tiles find the thresholds by counting instead
  (triton_ops/_select.py): a stats pass, search passes that count members above 8 edges per row,
  one collect pass into 64 slots per row (1 KiB a row, any k), and a small sort; the merge stays for float64
  and as `ct_triton_merge` in the bench. A numpy model of the search (select_passes_model.py) on
  N=32768, D=128 bf16 rows (k=64, 6 classes; random, clustered and 20 %-duplicated embeddings)
  needs 1-3 search passes per row, so 4-5 streamed passes of the tile in all (the merge: one pass, but a bitonic sort of
  nearly every tile); sm_90 compile at the default mined tile: 255 registers, 0 / 24 bytes
  spilled (Triton 3.8 / 3.6).
  The mined backward also recomputes each tile transposed, for row j's side of a pair (three tile
  products instead of two); `ct_triton_reuse` (CT_KERNELS_TRITON_MINED_BWD=reuse) reads it from
  the tile (i, j), exact when the GPU's dot gives s_ij and s_ji the same bits, which
  test_mined_backward_tile_reuse_is_bitwise_the_recompute checks there.
- **Native CUDA (7.7x / 4.7x the Triton time in bf16 / tf32):** the WMMA kernels store every
  64 x 64 tile of s through shared memory and do the masked log-sum-exp from there, one thread per
  row quarter, with `expf`; the backward reloads the tile into shared memory again as H, and the
  row block's U is restaged for every tile. Since then (not yet run on a GPU; `ct_native_mma`, opt-in
  with CT_KERNELS_NATIVE_MMA=1) `mma.sync` kernels in the flash-attention-2 layout: each warp keeps
  its 16 rows' U fragments and its 16 x 64 tile of s (backward: of H, reused as the A operand of
  H·U) in registers, ex2.approx with a per-lane running max, int32 class ids (host relabelling)
  and the self pair found by one compare with a per-tile constant, cp.async double-buffered column
  tiles. sm_90 compile (D = 128): forward 91-94 registers (bf16 / fp16) and 118-123 (tf32),
  backward 194 and 213-216, all spill-free; float32 without tf32 runs there as three tf32 products
  of hi / lo splits (forward 125-128, backward 212-223 registers, spill-free). `ct_native_mma32`
  (CT_KERNELS_NATIVE_MMA_ROWS=32) gives each warp 32 rows, so each staged B fragment serves two
  m-tiles (255 registers, 4-32 bytes spilled). Expected bound: four warps share each staged tile,
  so the B operand is read from shared memory once per 16 rows (about 16 FLOP per shared byte); more rows
  per warp is the next lever if the run shows it.
- **Patch labels (uint8 6.3x, int64 1.5x a copy):** the copy of a 16 MiB uint8 mask replays from L2
  under CUDA graphs (7 us = 4.6 TB/s); the kernel loops over classes per patch, so its cost grows
  with num_classes while the copy's does not. From the next run on, the bench cycles through at
  least 256 MiB of masks, so neither side reads its mask from L2, and the Triton kernel counts up
  to 7 classes per cross-warp reduction (int64 bit fields) instead of one (not yet timed). Then
  (not yet timed either) the per-pixel work moved to int32: one add of 1 << (5 j) per pixel into
  row fields (a pixel of no class shifts into spare bits, so no compare or select per class
  group), widened to int64 once per row; out-of-range pixels found by a min, counted only when
  present; 4K pixels a program for byte masks. PTX of the 16 x 16, 6-class uint8 kernel (Triton
  3.6, the path a mask without bad pixels takes): about 23 instructions a pixel, from 33.
"""


def main(argv):
    paths = argv or [max((HERE / "results").glob("*.json"), key=lambda p: p.stat().st_mtime)]
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
