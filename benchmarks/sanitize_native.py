"""Run every native CUDA op once on small inputs, for compute-sanitizer:

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/sanitize_native.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python benchmarks/sanitize_native.py

`python benchmarks/sanitize_native.py --bench [N]` instead times the native CUDA supcon forward and
backward (D=128, default N=32768) per dtype, with and without mining (CUDA events, median of 5).
"""
import os
import sys

import torch

from ct_kernels import _native


def main() -> None:
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    assert _native.supports("supcon_loss", torch.device("cuda")), _native.missing_reason("supcon_loss", "cuda")
    dev = "cuda"
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.uint8, torch.int64, torch.bool):
        mask = torch.randint(0, 2 if dtype == torch.bool else 7, (2, 24, 40), generator=g).to(dtype).to(dev)
        for ph, pw in ((8, 8), (3, 5), (24, 40)):
            _native.patch_labels(mask, ph, pw, 6, 255)
    # two 64-row tiles; D = 33 (padding, scalar staging), 40 (16-byte staging), 150 (dU in global);
    # first with the mma.sync kernels off (CT_KERNELS_NATIVE_MMA=0: WMMA and FMA tiles only), then
    # on (the default for the unmined cases with D <= 128; float32 without tf32 as 3xTF32 too, by
    # CT_KERNELS_FP32_3XTF32=1), with 16 and 32 forward rows a warp
    for mma, rows in (("0", "16"), ("1", "16"), ("1", "32")):
        os.environ["CT_KERNELS_NATIVE_MMA"], os.environ["CT_KERNELS_NATIVE_MMA_ROWS"] = mma, rows
        os.environ["CT_KERNELS_FP32_3XTF32"] = mma
        for m, d in ((75, 33), (75, 40), (70, 150)):
            run_supcon(m, d, g, dev)
    torch.cuda.synchronize()
    print("sanitize_native: OK")


def run_supcon(m, d, g, dev):
    z = torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, 4, (m,), generator=g)
    y[::7] = -1
    z[y == -1] = 0
    z, y = z.to(dev), y.to(dev)
    grad = torch.randn(m, generator=g).to(dev)
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        u = z.to(dtype)
        for variant in ("supcon", "infonce"):
            for kp, kn in ((0, 0), (2, 5), (100, 100)):
                for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
                    rows, npos, saved = _native.supcon_forward(u, y, -1, 10.0, variant, kp, kn, tf32)
                    du = _native.supcon_backward(u, y, -1, 10.0, variant, kp, kn, tf32, saved, grad.to(rows.dtype))
                    assert torch.isfinite(rows).all() and torch.isfinite(du.float()).all()
                    # an anchor slice that starts and ends inside row blocks (one rank's rows)
                    lo, n = m // 3, m // 2
                    r, _, _ = _native.supcon_forward(u, y, -1, 10.0, variant, kp, kn, tf32, lo, n)
                    d = _native.supcon_backward(u, y, -1, 10.0, variant, kp, kn, tf32, saved,
                                                grad.to(rows.dtype), lo, n)
                    assert d.shape == (n, u.shape[1])
                    if os.environ["CT_KERNELS_NATIVE_MMA"] == "1":  # row blocks start at the slice
                        torch.testing.assert_close(r, rows[lo:lo + n], rtol=1e-6, atol=1e-6)
                    else:  # the same whole-batch row blocks: the same bits
                        assert torch.equal(r, rows[lo:lo + n])
                    torch.testing.assert_close(d.float(), du[lo:lo + n].float(), rtol=1e-5, atol=1e-5)


def bench(m: int = 32768, d: int = 128) -> None:
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(m, d, device=dev, generator=g), dim=1)
    y = torch.randint(0, 20, (m,), device=dev, generator=g)
    grad = torch.ones(m, device=dev)

    def timed(fn):
        times = []
        for _ in range(6):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            out = fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        return sorted(times[1:])[2], out

    for dtype, tf32 in ((torch.bfloat16, False), (torch.float16, False), (torch.float32, True), (torch.float32, False)):
        u = z.to(dtype)
        for variant, kp, kn in (("supcon", 0, 0), ("infonce", 0, 0), ("supcon", 16, 256)):
            tf, (rows, npos, saved) = timed(lambda: _native.supcon_forward(u, y, -1, 10.0, variant, kp, kn, tf32))
            tb, _ = timed(lambda: _native.supcon_backward(u, y, -1, 10.0, variant, kp, kn, tf32, saved, grad))
            name = f"{str(dtype).replace('torch.', '')}{'+tf32' if tf32 else ''}"
            print(f"native cuda N={m} D={d} {name:14s} {variant:7s} kp={kp:<3d} kn={kn:<4d} "
                  f"fwd {tf:8.2f} ms  bwd {tb:8.2f} ms  total {tf + tb:8.2f} ms")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bench":
        bench(int(sys.argv[2]) if len(sys.argv) > 2 else 32768)
    else:
        main()
