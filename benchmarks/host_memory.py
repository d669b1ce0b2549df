"""Peak extra memory of one forward + backward step, from the tensors the host allocates: no GPU.

    python benchmarks/host_memory.py [--backend triton] [--variant supcon] [--dtype bf16] [--d 128] [--k 0] N [N ...]

gpu_bench.py's protocol (two warm-up steps, then the peak above what was allocated before the
third, the input's old gradient freed inside it) on CPU tensors, with the Triton kernels launched
as no-ops under the interpreter: what remains are the buffers the host code allocates (U, the
kernels' outputs, saved statistics, the normalisation's temporaries, gradients), whose sizes do
not depend on what the kernels write. The torch profiler's memory timeline gives the live bytes.
Calibration: at the commit the run of 2026-11-27 measured (bf16, D = 128), this gives 96.3 MiB
at N = 32768 and 385 MiB at N = 131072 against 88 and 353 MiB measured on the H200: one bf16
N x D copy more than the CUDA allocator saw, in both. The kernels' own scratch (none today beyond
the tuner's, which the warm-up absorbs) would not show.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from torch.profiler._memory_profiler import Action  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ct_kernels as ct  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def stub_triton_kernels() -> None:
    """Every Triton launch returns at once (the interpreter's kernels are InterpretedFunctions)."""
    from triton.runtime.interpreter import InterpretedFunction
    InterpretedFunction.__getitem__ = lambda self, grid: (lambda *args, **kwargs: None)


def step_peak(n: int, d: int, dtype: torch.dtype, backend: str, k: int | None,
              variant: str = "supcon") -> tuple[int, list[int]]:
    """(peak extra bytes, sizes of the buffers alive at the peak) of the third of three steps."""
    g = torch.Generator().manual_seed(0)
    inputs = [(torch.randn(n, d, generator=g).to(dtype).requires_grad_(), torch.randint(0, 6, (n,), generator=g))
              for _ in range(2)]

    def step(i):
        z, y = inputs[i]
        z.grad = None
        ct.supcon_loss(z, y, 0.1, variant=variant, hard_positives=k, hard_negatives=k, backend=backend).backward()

    step(0)
    step(1)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step(0)
    live = peak = 0
    alive, at_peak = {}, {}
    for _t, action, (key, _version), size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
            alive[key] = size
        elif action == Action.DESTROY:
            live -= size
            alive.pop(key, None)
        if live > peak:
            peak, at_peak = live, dict(alive)
    return peak, sorted(at_peak.values(), reverse=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="+")
    ap.add_argument("--backend", default="triton", choices=["triton", "native", "torch"])
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, default=0, help="hard_positives = hard_negatives (0: unmined)")
    ap.add_argument("--variant", default="supcon", choices=["supcon", "infonce"])
    args = ap.parse_args()
    if args.backend == "triton":
        stub_triton_kernels()
    copy = args.d * DTYPES[args.dtype].itemsize  # bytes of one row of z
    for n in args.n:
        peak, sizes = step_peak(n, args.d, DTYPES[args.dtype], args.backend, args.k or None, args.variant)
        big = ", ".join(f"{s / (n * copy):.2f}" for s in sizes if s >= n * copy // 4)
        print(f"{args.backend} {args.variant} {args.dtype} N={n} D={args.d} k={args.k}: peak extra {peak / 2**20:.1f} MiB "
              f"({peak / (n * copy):.2f} copies of z; alive then, in copies of z: {big})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
