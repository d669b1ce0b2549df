"""`make demo`: does ContrastivePatchLoss help a ViT segmenter? Trains the cross-entropy baseline
and the same model + ContrastivePatchLoss on synthetic aerial scenes (same seed, same data, same
batches), then prints per-class IoU for both and the difference, and writes a PNG with loss
curves and predictions beside the ground truth.

    python python/demo.py                 # defaults sized for a 2-core CPU (a few minutes)
    python python/demo.py --seeds 3       # mean and spread over seeds
    python python/demo.py --device cuda --crop 128 --steps 3000 --batch-size 32 --seeds 5 ...

Every option of train.py is accepted (see --help).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train as T  # noqa: E402
from datasets import CLASSES, colorize  # noqa: E402

# Demo defaults: sized so that both runs fit in a few minutes on 2 CPU cores (see README.md for
# the measurements and for a GPU configuration).
DEMO_DEFAULTS = T.TrainConfig(
    backbone="vit_tiny_patch16_224", model_kwargs={"depth": 4}, patch_size=4, crop=64,
    train_size=2000, val_size=256, steps=300, batch_size=8, lr=1e-3, warmup=20,
    contrastive_weight=0.1, temperature=0.1, min_purity=0.75, variant="supcon")


def _stats(vals):
    a = np.asarray(vals, dtype=np.float64)
    return float(np.nanmean(a)), (float(np.nanstd(a, ddof=1)) if len(a) > 1 else float("nan"))


def _fmt(mean, std, scale=100.0, signed=False):
    s = f"{mean * scale:+6.2f}" if signed else f"{mean * scale:6.2f}"
    return s + (f" ± {std * scale:4.2f}" if not np.isnan(std) else "")


def results_table(base: list[dict], con: list[dict]) -> tuple[str, dict]:
    """Per-class IoU and means for both runs, and contrastive - baseline (paired by seed)."""
    n = len(base)
    rows = []
    width = 15 if n > 1 else 8
    head = f"{'IoU %':<12} {'baseline':>{width}} {'contrastive':>{width}} {'difference':>{width}}"
    rows.append(head)
    rows.append("-" * len(head))
    summary = {}

    def line(name, getter):
        b = [getter(r) for r in base]
        c = [getter(r) for r in con]
        d = [ci - bi for bi, ci in zip(b, c)]
        bm, bs = _stats(b)
        cm, cs = _stats(c)
        dm, ds = _stats(d)
        rows.append(f"{name:<12} {_fmt(bm, bs):>{width}} {_fmt(cm, cs):>{width}} {_fmt(dm, ds, signed=True):>{width}}")
        return {"baseline": b, "contrastive": c, "diff": d, "diff_mean": dm, "diff_std": ds}

    for k, name in enumerate(CLASSES):
        summary[name] = line(name, lambda r, k=k: r["metrics"]["iou"][k])
    rows.append("-" * len(head))
    summary["miou"] = line("mIoU (6)", lambda r: r["metrics"]["miou"])
    summary["miou5"] = line("mIoU (5)", lambda r: r["metrics"]["miou5"])
    summary["mf15"] = line("mF1 (5)", lambda r: r["metrics"]["mf15"])
    rows.append("(5): the paper's Potsdam convention, means over the classes without clutter"
                + (f"; mean ± std over {n} seeds" if n > 1 else ""))
    return "\n".join(rows), summary


def verdict(summary: dict, n: int) -> str:
    d = summary["miou5"]["diff"]
    dm, ds = summary["miou5"]["diff_mean"], summary["miou5"]["diff_std"]
    wins = sum(x > 0 for x in d)
    if n == 1:
        if dm > 0:
            return (f"Contrastive run is ahead by {dm * 100:+.2f} mIoU (5 classes) on this single seed. One seed "
                    "is not evidence: run --seeds 3 (or more) to see the spread.")
        return (f"Contrastive run does NOT beat the baseline here: {dm * 100:+.2f} mIoU (5 classes) on a single "
                "seed. Run --seeds 3 (or more) to see the spread.")
    if dm > 0 and wins == n and (np.isnan(ds) or dm > ds):
        return (f"Contrastive run beats the baseline: {dm * 100:+.2f} ± {ds * 100:.2f} mIoU (5 classes), "
                f"ahead in {wins}/{n} seeds.")
    if dm > 0:
        return (f"Contrastive run is ahead on average ({dm * 100:+.2f} ± {ds * 100:.2f} mIoU, 5 classes) but "
                f"only in {wins}/{n} seeds: not a clear improvement at this budget.")
    return (f"Contrastive run does NOT beat the baseline: {dm * 100:+.2f} ± {ds * 100:.2f} mIoU (5 classes), "
            f"ahead in {wins}/{n} seeds.")


def save_figure(path: str, base: dict, con: dict, val_x, val_y, n_show: int = 4, device: str = "cpu") -> None:
    n_show = min(n_show, len(val_x))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    hb, hc = base["history"], con["history"]
    fig = plt.figure(figsize=(3.0 * (n_show + 1), 10.5))
    gs = fig.add_gridspec(5, n_show + 1, height_ratios=[1.4, 1, 1, 1, 1])
    ax = fig.add_subplot(gs[0, :])
    ax.plot(hb["step"], hb["ce"], label="baseline: cross-entropy", color="tab:blue")
    ax.plot(hc["step"], hc["ce"], label="contrastive run: cross-entropy", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    ax2.plot(hc["step"], hc["con"], label="contrastive run: ContrastivePatchLoss", color="tab:green", alpha=0.7)
    ax2.set_ylabel("contrastive loss")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize=8)
    mb, mc = base["metrics"], con["metrics"]
    ax.set_title(f"mIoU (5 classes): baseline {mb['miou5'] * 100:.1f}, contrastive {mc['miou5'] * 100:.1f}")
    # a few validation scenes: image, ground truth, baseline, contrastive (val_y None: a dataset)
    if val_y is None:
        val_x, val_y = T.stack_items(val_x, range(n_show))
    x = val_x[:n_show].to(device)
    preds = []
    for r in (base, con):
        m = r["model"].model
        m.eval()
        with torch.no_grad():
            logits, _ = m(x)
            up = torch.nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        preds.append(up.argmax(1).cpu().numpy())
    titles = ["image", "ground truth", "baseline", "contrastive"]
    for i in range(n_show):
        panels = [val_x[i].permute(1, 2, 0).numpy(), colorize(val_y[i].numpy()), colorize(preds[0][i]),
                  colorize(preds[1][i])]
        for row, (im, t) in enumerate(zip(panels, titles)):
            a = fig.add_subplot(gs[row + 1, i])
            a.imshow(im, interpolation="nearest")
            a.set_xticks([])
            a.set_yticks([])
            if i == 0:
                a.set_ylabel(t)
    # legend of class colours
    a = fig.add_subplot(gs[1:, n_show])
    a.axis("off")
    from datasets import PALETTE
    for k, name in enumerate(CLASSES):
        a.add_patch(plt.Rectangle((0, 1 - (k + 1) * 0.1), 0.15, 0.07, color=PALETTE[k] / 255.0, ec="k"))
        a.text(0.2, 1 - (k + 1) * 0.1 + 0.02, name, fontsize=10)
    a.set_xlim(0, 1)
    a.set_ylim(0, 1)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=T.HelpFormatter)
    T.add_arguments(p, DEMO_DEFAULTS)
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (seed, seed+1, ...)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"),
                   help="folder (or .png path) for the figure and results JSON")
    a = p.parse_args(argv)
    cfg = T.config_from_args(a)
    if cfg.dataset != "synthetic":
        print("note: the demo is meant for synthetic data; using", cfg.dataset)
    if cfg.contrastive_weight <= 0:
        p.error("--contrastive-weight must be > 0 for the contrastive run")
    if a.seeds < 1:
        p.error(f"--seeds must be >= 1, got {a.seeds}")
    try:  # before any training: a bad option or a missing backend must not cost the baseline run
        T.check_config(cfg)
    except ValueError as exc:
        p.error(str(exc))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_png = a.out if a.out.lower().endswith(".png") else os.path.join(a.out, "demo.png")
    out_json = os.path.splitext(out_png)[0] + ".json"

    import ct_kernels as ct
    backend = ct.backend_for(cfg.device, cfg.backend)  # check_config made sure it resolves
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {cfg.device}; "
          f"ct_kernels backends: {ct.available_backends()}")
    print(f"backbone {cfg.backbone} {cfg.model_kwargs} patch {cfg.patch_size}, crops {cfg.crop}x{cfg.crop}, "
          f"{cfg.steps} steps x batch {cfg.batch_size}, lr {cfg.lr}; contrastive: weight {cfg.contrastive_weight}, "
          f"{cfg.variant}, T={cfg.temperature}, min_purity {cfg.min_purity}, mining {cfg.mining}"
          + (f" (k={cfg.hard_k})" if cfg.hard_k else "") + f", backend {cfg.backend} -> {backend}")

    seeds = [cfg.seed + i for i in range(a.seeds)]
    base_runs, con_runs = [], []
    t_start = time.perf_counter()
    bar = T.progress_bar(2 * cfg.steps * len(seeds))
    data = None
    for s in seeds:
        bcfg = dataclasses.replace(cfg, seed=s, contrastive_weight=0.0)
        ccfg = dataclasses.replace(cfg, seed=s)
        data = T.load_data(ccfg)
        bar.set_description(f"seed {s} baseline")
        base_runs.append(T.train(bcfg, data, progress=bar))
        bar.set_description(f"seed {s} contrastive")
        con_runs.append(T.train(ccfg, data, progress=bar))
    bar.close()
    total_s = time.perf_counter() - t_start

    table, summary = results_table(base_runs, con_runs)
    print()
    print(table)
    print()
    c0 = con_runs[0]
    kept = np.mean([r["patches_per_step"] for r in con_runs])
    if cfg.mining == "confidence":
        how = (f"{kept:.0f} kept patches per step (of {c0['rows_per_step']} patch rows), from which the "
               f"confidence selection takes at most 3 x {cfg.max_per_class} rows per class and stage")
    else:
        how = (f"{kept:.0f} patches per step entered the loss (kept by min_purity={cfg.min_purity}, of "
               f"{c0['rows_per_step']} patch rows handed to the kernel)")
    print(f"contrastive loss ran on backend '{c0['backend']}'; {how}")
    tb = np.mean([r["train_s"] for r in base_runs])
    tc = np.mean([r["train_s"] for r in con_runs])
    sb, sc = (np.mean([r["step_ms"] for r in runs]) for runs in (base_runs, con_runs))
    warm = base_runs[0]["warm_steps"]
    after = f" after the first {warm}" if warm else ""
    print(f"training time per run: baseline {tb:.0f} s, contrastive {tc:.0f} s; ms/step{after}: baseline {sb:.0f}, "
          f"contrastive {sc:.0f} ({sc / sb:.2f}x); total {total_s:.0f} s")
    print(verdict(summary, len(seeds)))
    # the numbers first: a figure that fails must not lose the runs
    os.makedirs(os.path.dirname(os.path.abspath(out_json)) or ".", exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(T.json_safe({"config": dataclasses.asdict(cfg), "seeds": seeds, "summary": summary,
                               "total_s": total_s,
                               "runs": [{k: v for k, v in r.items() if k != "model"} for r in base_runs + con_runs]}),
                  f, indent=1, default=float)
    print(f"results: {out_json}")
    save_figure(out_png, base_runs[-1], con_runs[-1], data[2], data[3], device=cfg.device)
    print(f"figure: {out_png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
