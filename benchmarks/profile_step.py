"""Where a forward + backward step's GPU time goes, kernel by kernel (torch.profiler).

    python benchmarks/profile_step.py [--backend triton] [--n 32768] [--d 128] [--dtype bf16]
                                      [--k 0] [--variant supcon] [--steps 3]

Prints the kernels by total GPU time over --steps steps (after two warm-up steps that compile and
autotune), and the sum against the steps' wall time: what RESULTS.md's "what bounds" needs (how
much of the mined step is the threshold search, how much the backward; whether the gap to the
bf16 goal is the kernels or the host). `--dtype fp32` is float32 with tf32 off, `tf32` with it on.
"""
from __future__ import annotations

import argparse
import time

import torch

import ct_kernels as ct
from ct_kernels.precision import fp32_matmul_precision

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="triton", choices=["triton", "native", "auto"])
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--k", type=int, default=0, help="hard_positives = hard_negatives (0: no mining)")
    ap.add_argument("--variant", default="supcon", choices=["supcon", "infonce"])
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(args.n, args.d, device="cuda", generator=g).to(DTYPES[args.dtype]).requires_grad_()
    y = torch.randint(0, 6, (args.n,), device="cuda", generator=g)
    k = args.k or None

    def step():
        z.grad = None
        ct.supcon_loss(z, y, 0.1, variant=args.variant, hard_positives=k, hard_negatives=k,
                       backend=args.backend).backward()

    with fp32_matmul_precision(args.dtype == "tf32"):
        step()
        step()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) * 1e3 / args.steps
    rows = [e for e in prof.key_averages() if e.device_time_total > 0]  # kernels, copies, memsets
    total = sum(e.device_time_total for e in rows) / 1e3 / args.steps
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {args.backend} {args.variant} "
          f"N={args.n} D={args.d} {args.dtype} k={args.k}: kernels {total:.2f} ms a step, wall {wall:.2f} ms")
    for e in sorted(rows, key=lambda e: -e.device_time_total)[:15]:
        ms = e.device_time_total / 1e3 / args.steps
        print(f"{ms:9.3f} ms {100 * ms / max(total, 1e-9):5.1f} % {e.count // args.steps:4d}x  {e.key[:90]}")


if __name__ == "__main__":
    main()
