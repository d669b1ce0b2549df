"""Run every native CUDA op once on small inputs, for compute-sanitizer:

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/sanitize_native.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python benchmarks/sanitize_native.py
"""
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
    # two 64-row tiles; D = 33 (padding, scalar staging), 40 (16-byte staging), 150 (dU in global)
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


if __name__ == "__main__":
    main()
