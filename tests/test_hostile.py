"""Hostile inputs, every backend that runs on CPU here, and the fused backends on CUDA tensors where
a GPU is at hand (benchmarks/gpu_check.sh also runs the CUDA cases under compute-sanitizer): a
finite, correct result (checked against the dense float64 reference on CPU) or a clear error; never
NaN from a masked row, never a crash."""

import pytest
import torch

import ct_kernels as ct
from ct_kernels.selfcheck import errors_and_limit
from cpu_backends import backend_devices


def _check(z, y, backend, device, temperature=0.1, dtype=torch.float64, **kw):
    z1 = z.to(dtype).to(device).requires_grad_()
    z2 = z.double().requires_grad_()
    out = ct.supcon_loss(z1, y.to(device), temperature, backend=backend, **kw).cpu()
    ref = ct.supcon_loss(z2, y, temperature, backend="torch", **kw)
    assert torch.isfinite(out).all()
    out.sum().backward()
    ref.sum().backward()
    assert torch.isfinite(z1.grad).all()
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(z1.grad.double().cpu(), z2.grad, rtol=tol * 10, atol=tol * 10)
    return out


def _rand(m, d, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g), torch.randint(0, classes, (m,), generator=g)


@pytest.mark.parametrize("backend,device", backend_devices(), ids=[f"{b}-{d}" for b, d in backend_devices()])
class TestHostile:
    def test_extreme_temperatures(self, backend, device):
        z, y = _rand(21, 5, 3)
        _check(z, y, backend, device, temperature=0.01)
        _check(z, y, backend, device, temperature=100.0)
        _check(z, y, backend, device, temperature=0.01, variant="infonce", hard_negatives=3)

    def test_identical_embeddings_and_zero_vectors(self, backend, device):
        z = torch.ones(9, 4)
        y = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1, 2])
        _check(z, y, backend, device)
        z[3] = 0.0
        z[5] = 0.0
        _check(z, y, backend, device, hard_positives=1, hard_negatives=2)

    def test_single_and_no_valid_row(self, backend, device):
        z, _ = _rand(6, 3, 2)
        one = torch.tensor([-1, -1, 4, -1, -1, -1])
        assert _check(z, one, backend, device).item() == 0.0
        none = torch.full((6,), -1)
        assert _check(z, none, backend, device).item() == 0.0

    def test_one_class_and_other_negative_labels(self, backend, device):
        z, _ = _rand(10, 4, 1)
        _check(z, torch.zeros(10, dtype=torch.int64), backend, device)
        # labels are arbitrary ids for supcon_loss: -7 is a class like any other, -1 is ignored
        _check(z, torch.tensor([-7, -7, 3, 3, -1, -7, 3, 2, 2, -1]), backend, device, variant="infonce")

    def test_many_rows_odd_count(self, backend, device):
        m = 131 if (backend, device) == ("triton", "cpu") else 300
        z, y = _rand(m, 3, 4, seed=2)
        _check(z, y, backend, device, hard_positives=5, hard_negatives=7)

    def test_feature_widths(self, backend, device):
        z, y = _rand(7, 1, 2, seed=3)
        _check(z, y, backend, device)
        z, y = _rand(6, 1100 if (backend, device) == ("triton", "cpu") else 4096, 2, seed=4)
        _check(z, y, backend, device)

    def test_empty_batch(self, backend, device):
        z = torch.zeros(0, 4, dtype=torch.float64, device=device, requires_grad=True)
        out = ct.supcon_loss(z, torch.zeros(0, dtype=torch.int64, device=device), backend=backend)
        assert out.item() == 0.0
        out.backward()
        assert z.grad.shape == (0, 4)

    def test_inf_in_ignored_row_does_not_leak(self, backend, device):
        z, y = _rand(8, 3, 2, seed=5)
        z[2] = float("inf")
        z[5, 1] = float("nan")
        y[2] = -1
        y[5] = -1
        out = _check(z, y, backend, device)
        assert torch.isfinite(out)
        assert torch.isfinite(_check(z, y, backend, device, hard_positives=1, hard_negatives=2))

    def test_nan_in_a_valid_row_propagates(self, backend, device):
        z, y = _rand(8, 3, 2, seed=6)
        z[1, 0] = float("nan")
        out = ct.supcon_loss(z.double().to(device), y.to(device), backend=backend)
        assert torch.isnan(out)  # like PyTorch: propagated, never hidden as a wrong finite number
        # float32 mining (the counting select on triton) with NaN and Inf similarities: NaN, no hang
        z[4] = float("inf")
        mined = ct.supcon_loss(z.to(device), y.to(device), backend=backend, hard_positives=1, hard_negatives=2)
        assert torch.isnan(mined)
        # a batch without positives, whose loss reads no row: reported all the same, every backend
        lone = torch.arange(8, device=device)
        for kw in (dict(), dict(variant="infonce"), dict(hard_negatives=2)):
            assert torch.isnan(ct.supcon_loss(z.to(device), lone, backend=backend, **kw))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_overflowing_similarities_give_nan(self, backend, device, dtype):
        # normalize=False with finite rows whose similarities pass the float range: NaN as PyTorch's
        # dense loss gives, never a finite number or -inf (triton gave -inf / 0.0 here)
        scale = 1e20 if dtype == torch.float32 else 1e160
        z = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]], dtype=dtype) * scale
        y = torch.tensor([0, 0, 1, 1])
        for kw in (dict(), dict(variant="infonce"), dict(hard_negatives=1)):
            out = ct.supcon_loss(z.to(device), y.to(device), 1.0, normalize=False, backend=backend, **kw)
            assert torch.isnan(out), kw
        # only the largest row's (masked) self-similarity passes the range: NaN in PyTorch's dense
        # loss all the same, and so on every backend
        z = torch.tensor([[3e19, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]], dtype=torch.float32)
        assert torch.isnan(ct.supcon_loss(z.to(device), y.to(device), 1.0, normalize=False, backend=backend))
        z[0, 0] = 1e19  # s_00 = 1e38 / T fits float32 at T = 1: finite and right
        _check(z.double(), y, backend, device, temperature=1.0, dtype=torch.float32, normalize=False)

    def test_half_inputs_low_temperature(self, backend, device):
        if backend == "triton" and device == "cpu":
            pytest.skip("the Triton interpreter mis-computes bf16 tl.dot; bf16 runs on GPUs")
        z, y = _rand(20, 8, 3, seed=7)
        zb = z.to(torch.bfloat16).to(device)
        y = y.to(device)
        out = ct.supcon_loss(zb, y, 0.01, backend=backend)
        assert torch.isfinite(out) and out.dtype == torch.float32
        # loss rows and gradient by the tests' rule: within twice PyTorch's own bf16 error (s up to
        # 100 here) plus 1e-3, against float64 on the same rounded rows
        grad = torch.randn(20, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(device)
        for variant in ("supcon", "infonce"):
            errs, limit = errors_and_limit(zb, y, grad, "bf16", variant, (None, None), backend, temperature=0.01)
            assert max(errs) <= limit, (variant, errs, limit)

    @pytest.mark.parametrize("variant", ["infonce", "supcon"])
    def test_small_losses_keep_their_relative_accuracy(self, backend, device, variant):
        """Well-separated classes: InfoNCE rows ~3e-7 (softplus of far-negative arguments), SupCon
        rows ~log(10) (none small; the case shows both variants are held to float32's 1e-5)."""
        g = torch.Generator().manual_seed(0)
        y = torch.arange(30) % 3
        z = torch.eye(16)[:3][y] + 0.05 * torch.randn(30, 16, generator=g)
        grad = torch.randn(30, generator=g, dtype=torch.float64)
        errs, limit = errors_and_limit(z.to(device), y.to(device), grad.to(device), "fp32", variant, (None, None),
                                       backend, temperature=0.05)
        assert max(errs) <= limit, (errs, limit)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_inputs_with_ignored_rows_and_zero_vectors(self, backend, device, dtype):
        """Ignored rows are zeroed before normalising, and F.normalize's eps (1e-12) is 0 in
        float16: a zero row must still normalise to 0, not 0 / 0 (which made every fused loss NaN).
        A zero vector in a valid row: its gradient through the normalisation is ~1 / eps, which
        overflows float16 (as the true value would), so that row is only in the bfloat16 case."""
        if backend == "triton" and device == "cpu":
            pytest.skip("the Triton interpreter mis-computes 16-bit tl.dot; they run on GPUs")
        z, y = _rand(40, 8, 3, seed=8)
        y[::5] = -1
        if dtype == torch.bfloat16:
            z[7] = 0.0
        zh = z.to(dtype)
        for kw in (dict(), dict(variant="infonce")):
            z1 = zh.clone().to(device).requires_grad_()
            out = ct.supcon_loss(z1, y.to(device), 0.1, backend=backend, **kw).cpu()
            z2 = zh.double().requires_grad_()  # zh itself stays a plain tensor
            ref = ct.supcon_loss(z2, y, 0.1, backend="torch", **kw)
            out.backward()
            ref.backward()
            assert torch.isfinite(out) and torch.isfinite(z1.grad).all()
            assert abs(out.item() - ref.item()) <= 1e-2 * abs(ref.item())
            assert (z1.grad.double().cpu() - z2.grad).norm() <= 5e-2 * z2.grad.norm()



@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_finite_check_sees_nan_and_either_infinity(dtype):
    """The fused backends' non-finite check (min and max of the rows, no N x D temporaries)."""
    from ct_kernels.supcon import _finite
    z = torch.randn(33, 5).to(dtype)
    assert _finite(z) and _finite(z[:0])
    for bad in (float("nan"), float("inf"), -float("inf")):
        w = z.clone()
        w[17, 3] = bad
        assert not _finite(w), bad
