"""CPU benchmarks (pytest-benchmark): `make bench`.

SupCon forward+backward, D=128, float32, 6 classes: the dense torch reference, the native C++
backend, and the three N x N x D matrix products alone (the floor a fused CPU kernel can approach);
then the native backend's InfoNCE and hard mining (kp = kn = 64) against its SupCon at N = 4096.
"""
import pytest
import torch

import ct_kernels as ct

D = 128


def _inputs(n):
    g = torch.Generator().manual_seed(n)
    return torch.randn(n, D, generator=g), torch.randint(0, 6, (n,), generator=g)


def _fwd_bwd(z, y, **loss_options):
    """One timed step: the loss of a fresh leaf copy of z at temperature 0.1, and its backward."""
    def run():
        zz = z.clone().requires_grad_()
        ct.supcon_loss(zz, y, 0.1, **loss_options).backward()
    return run


def _native_ok():
    try:
        return ct.backend_for("cpu", "native") == "native"
    except RuntimeError:
        return False


@pytest.mark.parametrize("n", [1024, 2048, 4096])
@pytest.mark.parametrize("impl", ["torch", "native", "three_matmuls"])
def test_supcon_fwd_bwd(benchmark, impl, n):
    if impl == "native" and not _native_ok():
        pytest.skip("native CPU supcon kernel not built")
    z, y = _inputs(n)
    benchmark.group = f"supcon fwd+bwd N={n} D={D}"
    if impl == "three_matmuls":
        u = torch.nn.functional.normalize(z, dim=1)
        g = torch.randn(n, n)

        def run():
            u @ u.T         # forward similarity
            u @ u.T         # backward recompute
            return g @ u    # G U
        benchmark.pedantic(run, rounds=3, warmup_rounds=1)
        return

    benchmark.pedantic(_fwd_bwd(z, y, backend=impl), rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("loss", ["supcon", "infonce", "supcon_mined64", "infonce_mined64"])
def test_native_variants_fwd_bwd(benchmark, loss):
    """What InfoNCE (two forward passes) and hard mining (per-row thresholds) cost on top."""
    if not _native_ok():
        pytest.skip("native CPU supcon kernel not built")
    n = 4096
    z, y = _inputs(n)
    variant, _, mined = loss.partition("_")
    k = 64 if mined else None
    benchmark.group = f"native variants fwd+bwd N={n} D={D}"
    benchmark.pedantic(_fwd_bwd(z, y, variant=variant, hard_positives=k, hard_negatives=k, backend="native"),
                       rounds=3, warmup_rounds=1)
