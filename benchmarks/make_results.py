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


def latest(rows):
    """The newest run's records (ratios never mix runs), the last of each (op, impl, n, d, precision)."""
    newest = max((r.get("run") or r.get("time", "")) for r in rows)
    out = {}
    for r in rows:
        if (r.get("run") or r.get("time", "")) != newest and "run" in r:
            continue
        out[(r["op"], r["impl"], r.get("n"), r.get("d"), r.get("precision"))] = r
    return list(out.values())


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


def main(argv):
    paths = argv or [max((HERE / "results").glob("*.json"), key=lambda p: p.stat().st_mtime)]
    rows = latest(load(paths))
    meta = rows[0]
    png = HERE / "results" / "supcon_time_memory.png"
    have_plot = plot(rows, png)
    ct32 = [r for r in rows if r["op"] == "supcon" and r.get("n") == 32768 and r.get("d") == 128
            and r["impl"].startswith("ct_") and r.get("ms") and r["precision"] == "bf16"]
    floor = (f"Best ct bf16 at N=32768: {min(r['ms'] for r in ct32):.2f} ms = "
             f"{min(r['ms'] for r in ct32) / FLOOR_MS_32768:.1f}x the {FLOOR_MS_32768} ms floor of DESIGN.md "
             "(computed there for an H100).") if ct32 else ""
    text = f"""# Benchmark results

Generated by `benchmarks/make_results.py` from {', '.join(Path(p).name for p in paths)}.
Card: **{meta['device']}**, torch {meta['torch']}, Triton {meta.get('triton')}. Every number below
was measured in that one run: forward+backward median over repeats (CUDA events, rotating inputs),
and peak allocator memory above what the inputs hold. Labels: 6 classes (many positives per row),
temperature 0.1. `infcl_1pos` is Inf-CL's `cal_flash_loss`, which handles one positive per row (the
diagonal): an easier loss than SupCon, shown as the fastest peer for scale. `fp32` is float32 with
tf32 off, `tf32` with `torch.backends.cuda.matmul.fp32_precision = "tf32"`.

## SupCon, D = 128

{headline_table(rows)}

{floor}

{"![time and memory against N](results/supcon_time_memory.png)" if have_plot else ""}

## InfoNCE (per-positive) and hard mining (kp = kn = 64)

{simple_table(rows, "infonce")}

{simple_table(rows, "supcon_mined64")}

## Patch labels, 16 x 1024 x 1024 masks, patch 16, 6 classes (CUDA graphs)

{simple_table(rows, "patch_labels")}
"""
    (HERE / "RESULTS.md").write_text(text)
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
