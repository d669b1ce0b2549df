"""GPU benchmark: ct_kernels against the peers, forward+backward time and peak extra memory.

    python benchmarks/gpu_bench.py --mode headline     # < 5 minutes on an H100/H200
    python benchmarks/gpu_bench.py --mode full         # N 4096..131072, D 64/128/256

Peers (installed from wheels on a machine without network, see benchmarks/README.md):
naive PyTorch SupCon (DESIGN.md's formula, dense), pytorch-metric-learning ``SupConLoss``, a
row-chunked PyTorch SupCon with activation checkpointing, Inf-CL ``cal_flash_loss`` (one positive
per row: a different, easier loss, labelled so), and ct_kernels' triton and native backends.
Each measurement appends one JSON object to benchmarks/results/<card>-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ct_kernels as ct  # noqa: E402
from ct_kernels.precision import fp32_matmul_allows_tf32  # noqa: E402

TEMP = 0.1
NUM_CLASSES = 6  # segmentation-like labels: many positives per row


# ----------------------------------------------------------------------------- implementations
def naive_supcon(z, y):
    """DESIGN.md's loss with the full N x N matrix (what the research code does)."""
    u = F.normalize(z, dim=1)
    s = (u @ u.T).float() / TEMP
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    pos = (y[:, None] == y[None, :]) & ~eye
    lse = torch.logsumexp(s.masked_fill(eye, float("-inf")), dim=1)
    npos = pos.sum(1)
    rows = lse - (s * pos).sum(1) / npos.clamp(min=1)
    has = npos > 0
    return (rows * has).sum() / has.sum().clamp(min=1)


def chunked_supcon(z, y, chunk=4096):
    """Row chunks, each recomputed in backward (activation checkpointing): O(chunk x N) memory."""
    u = F.normalize(z, dim=1)
    n = z.shape[0]

    def block(ub, yb, start, u_all, y_all):
        s = (ub @ u_all.T).float() / TEMP
        cols = torch.arange(n, device=z.device)
        self_mask = cols[None, :] == (start + torch.arange(ub.shape[0], device=z.device))[:, None]
        pos = (yb[:, None] == y_all[None, :]) & ~self_mask
        lse = torch.logsumexp(s.masked_fill(self_mask, float("-inf")), dim=1)
        npos = pos.sum(1)
        rows = lse - (s * pos).sum(1) / npos.clamp(min=1)
        return (rows * (npos > 0)).sum(), (npos > 0).sum()

    total, count = 0.0, 0
    for start in range(0, n, chunk):
        s_, c_ = checkpoint(block, u[start:start + chunk], y[start:start + chunk], start, u, y,
                            use_reentrant=False)
        total = total + s_
        count = count + c_
    return total / count.clamp(min=1)


def make_impls(have_pml, have_infcl):
    impls = {"naive": naive_supcon, "chunked_ckpt": chunked_supcon}
    if have_pml:
        from pytorch_metric_learning.losses import SupConLoss
        pml = SupConLoss(temperature=TEMP)
        impls["pml_supcon"] = lambda z, y: pml(z, y)
    if have_infcl:
        from inf_cl import cal_flash_loss

        def infcl(z, y):
            u = F.normalize(z, dim=1)
            labels = torch.arange(z.shape[0], device=z.device)  # one positive per row (the diagonal)
            # head_dim must divide D (its default, 256, does not divide 128); it computes in fp32
            # (tf32 dots) whatever the input dtype.
            return cal_flash_loss(u, u, labels, scale=1.0 / TEMP, head_dim=z.shape[1]).mean()
        impls["infcl_1pos"] = infcl
    avail = ct.available_backends()
    for b in ("triton", "native"):
        if avail[b] == "ok":
            try:
                ct.backend_for("cuda", b)
                impls[f"ct_{b}"] = (lambda bb: lambda z, y: ct.supcon_loss(z, y, TEMP, backend=bb))(b)
            except RuntimeError as exc:
                print(f"ct_{b}: {exc}")
        else:
            print(f"ct_{b}: not available ({avail[b]})")
    if "ct_native" in impls:  # A/B: the WMMA tiles that the mma.sync kernels replaced (unmined,
        # D <= 128); the mma.sync forward at 32 rows per warp
        impls["ct_native_wmma"] = _mma_only(_with_env("CT_KERNELS_NATIVE_MMA", "0", impls["ct_native"]))
        impls["ct_native_mma32"] = _mma_only(_with_env("CT_KERNELS_NATIVE_MMA_ROWS", "32", impls["ct_native"]))
    # float32 without tf32 as 3xTF32 (opt-in: CT_KERNELS_FP32_3XTF32=1, not float32's accuracy)
    for name in ("ct_triton", "ct_native"):
        if name in impls:
            impls[name + "_3xtf32"] = _fp32_only(_with_env("CT_KERNELS_FP32_3XTF32", "1", impls[name]))
    if "ct_native" in impls:
        rows32 = _with_env("CT_KERNELS_NATIVE_MMA_ROWS", "32", impls["ct_native"])
        impls["ct_native_3xtf32_rows32"] = _fp32_only(_mma_only(_with_env("CT_KERNELS_FP32_3XTF32", "1", rows32),
                                                                fp32_3xtf32=True))
    return impls


# variants timed against the defaults (A/B), not implementations a user would pick
AB_IMPLS = ("ct_native_wmma", "ct_native_mma32", "ct_native_3xtf32_rows32")


class NotApplicable(Exception):
    """An implementation that does not run on this input (recorded as skipped, not as an error)."""


def _mma_only(fn, fp32_3xtf32=False):
    """The mma.sync path runs D <= 128 (bf16, fp16, tf32; float32 without tf32 as 3xTF32 where
    fn asks for it); elsewhere ct_native is the WMMA / FMA tiles anyway."""
    def call(z, y):
        if z.shape[1] > 128 or (z.dtype == torch.float32 and not fp32_matmul_allows_tf32() and not fp32_3xtf32):
            raise NotApplicable("the mma.sync path takes D <= 128 and tensor-core inputs")
        return fn(z, y)
    return call


def _fp32_only(fn):
    """3xTF32 applies to float32 without tf32 only."""
    def call(z, y):
        if z.dtype != torch.float32 or fp32_matmul_allows_tf32():
            raise NotApplicable("3xTF32 is float32 without tf32 only")
        return fn(z, y)
    return call


# ----------------------------------------------------------------------------- measurement
DEADLINE = [float("inf")]  # wall-clock time after which the remaining measurements are skipped


def measure(fn, inputs, mode, min_reps=3, max_reps=30, budget_s=0.75):
    """Median ms a step over repeats, rotating inputs; peak extra allocator MiB.

    The steps are enqueued back to back (CUDA events around each, no synchronisation between
    them, as triton.testing.do_bench does): a step's time is then the GPU's unless the host
    cannot launch as fast as the GPU runs. The run of 2026-11-27 synchronised after every step,
    so each step also paid the host's launch latency: at N = 8192 every implementation, the peers
    included, measured 3.3-4.0 ms."""
    def step(i):
        z, y = inputs[i % len(inputs)]
        if mode == "fwd":
            with torch.no_grad():
                fn(z, y)
        else:
            z.grad = None
            fn(z, y).backward()

    step(0)
    step(1)  # warm-up: compilation, autotuning (its timing buffers are not the op's memory)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(0)
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    def timed(first, reps):
        events = []
        for i in range(first, first + reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step(i)
            b.record()
            events.append((a, b))
        torch.cuda.synchronize()
        return [a.elapsed_time(b) for a, b in events]

    times = timed(0, min_reps)  # then as many more as fit in budget_s
    more = min(max_reps - min_reps, int(budget_s * 1e3 / max(sorted(times)[len(times) // 2], 1e-3)))
    times = sorted(times + (timed(min_reps, more) if more > 0 else []))
    return times[len(times) // 2], peak


class TunerPicks:
    """Which Triton configuration a measurement ran, and how the tuner's candidates timed.

    supcon._Call asks tuning.pick through the module, so a wrapper put there sees every call; a
    record then gets the last pick's config (in CT_KERNELS_TRITON_CONFIG's form) and, where that
    key was tuned in this process, every candidate's median ms (tuning.TIMINGS)."""

    def __init__(self):
        self.last = None
        try:
            from ct_kernels.triton_ops import tuning
        except Exception:  # no Triton: no ct_triton rows either
            self.tuning = None
            return
        self.tuning, pick = tuning, tuning.pick

        def spy(key, *args, **kwargs):
            cfg = pick(key, *args, **kwargs)
            self.last = (key, cfg)
            return cfg
        tuning.pick = spy

    def fields(self) -> dict:
        if self.last is None:
            return {}
        key, cfg = self.last
        fmt = self.tuning.format_config
        out = {"triton_config": fmt(cfg)}
        times = self.tuning.TIMINGS.get(key)
        if times:
            out["tune_ms"] = {fmt(c): None if ms is None else round(ms, 4) for c, ms in times}
        return out


PICKS: list[TunerPicks] = []  # main() installs one


def tuner_fields(impl: str) -> dict:
    return PICKS[0].fields() if PICKS and impl.startswith("ct_triton") else {}


def tuner_reset() -> None:
    if PICKS:
        PICKS[0].last = None


def est_dense_gib(n, bytes_per=4, copies=6):
    return n * n * bytes_per * copies / 2**30


class Recorder:
    def __init__(self, path):
        self.path = path
        self.device = torch.cuda.get_device_name()
        try:
            import triton
            self.triton = triton.__version__
        except ImportError:
            self.triton = None
        self.rows = json.loads(path.read_text()) if path.exists() else []
        self.run = _dt.datetime.now().isoformat(timespec="seconds")  # groups one run's records

    def add(self, **kw):
        rec = dict(device=self.device, torch=torch.__version__, triton=self.triton, run=self.run,
                   time=_dt.datetime.now().isoformat(timespec="seconds"), **kw)
        self.rows.append(rec)
        self.path.write_text(json.dumps(self.rows, indent=1))
        ms = rec.get("ms")
        print(f"{rec['op']:>12} {rec['impl']:>14} n={rec.get('n', '-'):>7} d={rec.get('d', '-'):>4} "
              f"{rec.get('dtype', ''):>9} {rec.get('precision', ''):>5} {rec.get('mode', ''):>7} "
              + (f"{ms:9.3f} ms {rec['peak_mib']:10.1f} MiB" if ms is not None else rec.get("status", "")),
              flush=True)


def set_tf32(on: bool):
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = "tf32" if on else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = on
    assert fp32_matmul_allows_tf32() == on


def run_loss_grid(rec, impls, ns, ds, precisions, mode="fwd+bwd", op="supcon", extra=None, budget_skip=True):
    card_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    for prec in precisions:
        dtype = torch.bfloat16 if prec == "bf16" else torch.float32
        set_tf32(prec == "tf32")
        for d in ds:
            for n in ns:
                g = torch.Generator(device="cuda").manual_seed(n + d)
                inputs = []
                for _ in range(2):
                    z = torch.randn(n, d, device="cuda", generator=g).to(dtype).requires_grad_()
                    y = torch.randint(0, NUM_CLASSES, (n,), device="cuda", generator=g)
                    inputs.append((z, y))
                for name, fn in impls.items():
                    meta = dict(op=op, impl=name, n=n, d=d, dtype=str(dtype).replace("torch.", ""),
                                precision=prec, mode=mode, **(extra or {}))
                    if time.time() > DEADLINE[0]:
                        rec.add(**meta, ms=None, peak_mib=None, status="skipped: over --time-budget")
                        continue
                    if name == "chunked_ckpt" and n > 65536 and budget_skip:
                        rec.add(**meta, ms=None, peak_mib=None, status="skipped: over the headline time budget")
                        continue
                    dense = name in ("naive", "pml_supcon", "pml_batchhard")
                    if dense and est_dense_gib(n) > 0.9 * card_gib:
                        rec.add(**meta, ms=None, peak_mib=None, status="skipped: dense N x N estimate exceeds memory")
                        continue
                    try:
                        tuner_reset()
                        ms, peak = measure(fn, inputs, "fwd" if mode == "fwd" else "fwd+bwd")
                        rec.add(**meta, ms=ms, peak_mib=peak, **tuner_fields(name))
                    except torch.OutOfMemoryError:
                        rec.add(**meta, ms=None, peak_mib=None, status="out of memory")
                    except NotApplicable as exc:
                        rec.add(**meta, ms=None, peak_mib=None, status=f"skipped: {exc}")
                    except Exception as exc:  # a peer that does not support a dtype, say
                        rec.add(**meta, ms=None, peak_mib=None, status=f"error: {type(exc).__name__}: {exc}"[:300])
                    torch.cuda.empty_cache()
                del inputs
                torch.cuda.empty_cache()
    set_tf32(False)


def bench_patch_labels(rec):
    """16 x 1024 x 1024 masks, patch 16, 6 classes: ct vs one_hot + avg_pool vs one copy of the mask.
    Timed with CUDA graphs so that launch overhead is not what is measured, and over several masks
    in turn (at least 256 MiB together) so that no implementation reads its mask from L2: a 16 MiB
    uint8 mask replayed alone stays in the 50 MiB L2 and the copy baseline would time L2, not HBM."""
    for dtype in (torch.uint8, torch.int64):
        one = 16 * 1024 * 1024 * torch.empty((), dtype=dtype).element_size()
        masks = []
        for _ in range(max(2, -(-256 * 2**20 // one))):
            mask = torch.randint(0, NUM_CLASSES, (16, 1024, 1024), device="cuda").to(dtype)
            mask[:, :32, :32] = 255
            masks.append(mask)

        def onehot_pool(m):
            keep = m != 255
            oh = F.one_hot(torch.where(keep, m, 0).long(), NUM_CLASSES) * keep[..., None]
            pooled = F.avg_pool2d(oh.permute(0, 3, 1, 2).float(), 16)
            return pooled.max(1)

        out = torch.empty_like(masks[0])
        impls = {"mask_copy": lambda m: out.copy_(m), "onehot_avgpool": onehot_pool}
        for b in ("triton", "native"):
            try:
                ct.backend_for("cuda", b, "patch_labels")
                from ct_kernels.patch import patch_labels_unchecked
                impls[f"ct_{b}"] = (lambda bb: lambda m: patch_labels_unchecked(m, 16, 16, NUM_CLASSES, 255, bb))(b)
            except RuntimeError:
                pass
        for name, per_mask in impls.items():
            def fn(per_mask=per_mask):
                for m in masks:
                    per_mask(m)
            try:
                fn()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    fn()
                graph.replay()
                torch.cuda.synchronize()
                times = []
                for _ in range(20):
                    a, b2 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    for _ in range(10):
                        graph.replay()
                    b2.record()
                    b2.synchronize()
                    times.append(a.elapsed_time(b2) / 10 / len(masks))  # per mask
                times.sort()
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20
                rec.add(op="patch_labels", impl=name, n=masks[0].numel(), d=16, dtype=str(dtype).replace("torch.", ""),
                        precision="-", mode="fwd", ms=times[len(times) // 2], peak_mib=peak,
                        notes=f"per mask, {len(masks)} masks in turn (not L2-resident)")
            except Exception as exc:
                rec.add(op="patch_labels", impl=name, n=masks[0].numel(), d=16, dtype=str(dtype).replace("torch.", ""),
                        precision="-", mode="fwd", ms=None, peak_mib=None,
                        status=f"error: {type(exc).__name__}: {exc}"[:300])


def bench_anchor_slice(rec, backend_names, n=32768, d=128, world=8):
    """One rank's share under process_group: its n/world anchors against all n rows (kernel
    contract, start/count), next to the whole batch, bf16, fwd+bwd. Ideal ratio 1/world."""
    from ct_kernels import backends
    g = torch.Generator(device="cuda").manual_seed(7)
    u = F.normalize(torch.randn(n, d, device="cuda", generator=g), dim=1).to(torch.bfloat16)
    y = torch.randint(0, NUM_CLASSES, (n,), device="cuda", generator=g)
    grad = torch.ones(n, device="cuda")
    for b in backend_names:
        try:
            kernels = backends.resolve(b, u.device, "supcon_loss", u.dtype)[1]
        except RuntimeError as exc:
            print(f"ct_{b}: {exc}")
            continue
        for count in (n, n // world):
            def fwd_bwd(z, labels, count=count, kernels=kernels):
                _, _, saved = kernels.supcon_forward(z, labels, -1, 1.0 / TEMP, "supcon", 0, 0, False, 0, count)
                return kernels.supcon_backward(z, labels, -1, 1.0 / TEMP, "supcon", 0, 0, False,
                                               backends.place_rows(saved, 0, n), grad, 0, count)
            meta = dict(op="supcon_rank_slice", impl=f"ct_{b}", n=n, d=d, dtype="bfloat16", precision="bf16",
                        mode="fwd+bwd", anchors=count)
            if time.time() > DEADLINE[0]:
                rec.add(**meta, ms=None, peak_mib=None, status="skipped: over --time-budget")
                continue
            try:
                tuner_reset()
                ms, peak = measure(fwd_bwd, [(u, y)], "fwd")
                rec.add(**meta, ms=ms, peak_mib=peak, **tuner_fields(meta["impl"]))
            except Exception as exc:
                rec.add(**meta, ms=None, peak_mib=None, status=f"error: {type(exc).__name__}: {exc}"[:300])


def _with_env(name, value, fn):
    """fn with the environment variable name set to value during its forward AND backward (both
    run inside; the caller's .backward() then acts on a stand-in leaf): fwd+bwd timings only."""
    def call(z, y):
        with mock.patch.dict(os.environ, {name: value}):
            fn(z, y).backward()
        return torch.zeros((), device=z.device, requires_grad=True)
    return call


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["headline", "full", "smoke"], default="headline")
    ap.add_argument("--out", default=None, help="records file (default benchmarks/results/<card>-<date>.json)")
    ap.add_argument("--only", default=None, help="comma list of sections: supcon,variants,mining,patch,slice")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds; measurements past it are recorded as skipped")
    args = ap.parse_args()
    if args.time_budget:
        DEADLINE[0] = time.time() + args.time_budget
    if not torch.cuda.is_available():
        sys.exit("gpu_bench.py needs a CUDA GPU; CPU benchmarks: make bench")
    card = torch.cuda.get_device_name().replace(" ", "_")
    out = Path(args.out) if args.out else (Path(__file__).parent / "results" /
                                           f"{card}-{_dt.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    rec = Recorder(out)
    PICKS.append(TunerPicks())
    try:
        import pytorch_metric_learning  # noqa: F401
        have_pml = True
    except ImportError:
        have_pml = False
        print("pytorch-metric-learning missing: its rows are left out")
    try:
        import inf_cl  # noqa: F401
        have_infcl = True
    except ImportError:
        have_infcl = False
        print("inf-cl missing: its rows are left out")
    impls = make_impls(have_pml, have_infcl)
    sections = set((args.only or "supcon,variants,mining,patch,slice").split(","))
    t0 = time.time()
    if args.mode == "smoke":
        ns, ds, precs = [4096], [128], ["bf16", "fp32"]
    elif args.mode == "headline":
        ns, ds, precs = [8192, 32768, 131072], [128], ["bf16", "fp32", "tf32"]
    else:
        ns, ds, precs = [4096, 8192, 16384, 32768, 65536, 131072], [64, 128, 256], ["bf16", "fp32", "tf32"]
    # The headline N first, then the sections that need it, then the other sizes: a run cut by
    # --time-budget keeps what matters most.
    first, rest = ns[:1] if 32768 not in ns else [32768], [n for n in ns if n != 32768]
    if "supcon" in sections:
        run_loss_grid(rec, impls, first, ds, precs)
    ct_impls = {k: v for k, v in impls.items() if k in ("ct_triton", "ct_native")}  # the backends themselves
    if "variants" in sections:
        for name, b in [(k, k[3:]) for k in ct_impls]:
            variant_impls = {name: (lambda bb: lambda z, y: ct.supcon_loss(z, y, TEMP, variant="infonce", backend=bb))(b)}
            if name == "ct_native":
                variant_impls["ct_native_wmma"] = _with_env("CT_KERNELS_NATIVE_MMA", "0", variant_impls[name])
            else:  # A/B: rows in the caller's order (every tile in infonce's second pass)
                variant_impls["ct_triton_unsorted"] = _with_env("CT_KERNELS_TRITON_CLASS_RUNS", "0",
                                                                variant_impls[name])
            run_loss_grid(rec, variant_impls, [32768], [128], ["bf16"], op="infonce")
    if "mining" in sections:
        mined = {k: (lambda bb: lambda z, y: ct.supcon_loss(z, y, TEMP, hard_positives=64, hard_negatives=64,
                                                            backend=bb))(k[3:]) for k in ct_impls}
        if "ct_triton" in ct_impls:  # A/B: the top-k merge; the tile-reuse backward; a 1-stage select;
            # the search passes' counts in two packed column sums instead of one a bin
            mined["ct_triton_merge"] = _with_env("CT_KERNELS_TRITON_MINING", "merge", mined["ct_triton"])
            mined["ct_triton_reuse"] = _with_env("CT_KERNELS_TRITON_MINED_BWD", "reuse", mined["ct_triton"])
            mined["ct_triton_select1"] = _with_env("CT_KERNELS_TRITON_SELECT_STAGES", "1", mined["ct_triton"])
            mined["ct_triton_packed"] = _with_env("CT_KERNELS_TRITON_SELECT_COUNT", "packed", mined["ct_triton"])
            # the tie-break test on every tile (before the one-compare masks of untied thresholds)
            mined["ct_triton_tiebreak"] = _with_env("CT_KERNELS_TRITON_MINED_MASKS", "tiebreak", mined["ct_triton"])
        if have_pml:
            from pytorch_metric_learning.losses import SupConLoss
            from pytorch_metric_learning.miners import BatchHardMiner
            miner, loss = BatchHardMiner(), SupConLoss(temperature=TEMP)
            mined["pml_batchhard"] = lambda z, y: loss(z, y, miner(z, y))
        run_loss_grid(rec, mined, [8192, 32768], [128], ["bf16"], op="supcon_mined64")
    if "patch" in sections:
        bench_patch_labels(rec)
    if "slice" in sections:
        bench_anchor_slice(rec, [k[3:] for k in ct_impls])
    if "supcon" in sections:
        # the A/B variants (WMMA tiles, 32 rows a warp) at the headline N only, in headline mode
        main_impls = impls if args.mode == "full" else {k: v for k, v in impls.items() if k not in AB_IMPLS}
        for n in rest:
            run_loss_grid(rec, main_impls, [n], ds, precs)
    print(f"records in {out}; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
