"""The dense torch backend against the outside oracle (pytorch-metric-learning) and a brute-force
loop; float64 gradcheck; reductions; the no-positive batch."""
import pytest
import torch

import ct_kernels as ct
from brute import brute_loss

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")


def _batch(m, d, classes, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, d, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (m,), generator=g)
    return z, y


@pytest.mark.parametrize("m,d,classes,temp", [(17, 5, 3, 0.1), (40, 13, 5, 0.5), (9, 3, 2, 1.0)])
def test_supcon_equals_pytorch_metric_learning(m, d, classes, temp):
    z, y = _batch(m, d, classes, seed=m * 7 + d)
    assert (y[:, None] != y[None, :]).any(), "the batch must hold a negative pair for PML to agree"
    z1 = z.clone().requires_grad_()
    z2 = z.clone().requires_grad_()
    ours = ct.supcon_loss(z1, y, temp, backend="torch")
    theirs = pml_losses.SupConLoss(temperature=temp)(z2, y)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-9, atol=1e-12)


CASES = [
    dict(variant="supcon"),
    dict(variant="infonce"),
    dict(variant="supcon", hard_positives=2, hard_negatives=3),
    dict(variant="infonce", hard_positives=1, hard_negatives=2),
    dict(variant="supcon", hard_positives=50),   # k above every row's candidates: all selected
    dict(variant="infonce", hard_negatives=1),
    dict(variant="supcon", normalize=False),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_against_brute_force(kw, reduction):
    z, y = _batch(19, 6, 3, seed=3)
    y[[2, 5, 11]] = -1  # ignored rows
    y[7] = 9            # a singleton class: an anchor without positives
    z1 = z.clone().requires_grad_()
    z2 = z.clone().requires_grad_()
    opts = {k: v for k, v in kw.items() if k in ("variant", "normalize")}
    ours = ct.supcon_loss(z1, y, 0.3, hard_positives=kw.get("hard_positives"),
                          hard_negatives=kw.get("hard_negatives"), reduction=reduction, backend="torch", **opts)
    ref = brute_loss(z2, y, 0.3, reduction=reduction, kp=kw.get("hard_positives"),
                     kn=kw.get("hard_negatives"), **opts)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    w = torch.randn_like(ours)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-9, atol=1e-12)
    assert z1.grad[[2, 5, 11]].abs().max() == 0


def test_mining_ties_go_to_lower_column():
    # rows 1..4 are identical, so every similarity tie is exact; label 0 for all but the last two.
    base = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8], [0.6, 0.8], [0.6, 0.8], [0.0, 1.0]],
                        dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    z1, z2 = base.clone().requires_grad_(), base.clone().requires_grad_()
    rows = ct.supcon_loss(z1, y, 0.5, hard_positives=1, hard_negatives=1, reduction="none", backend="torch")
    ref = torch.stack(brute_rows_local(z2, y))
    torch.testing.assert_close(rows, ref)
    # tied candidates give the same loss whichever is taken: only the gradient shows which one
    w = torch.arange(1.0, 7.0, dtype=torch.float64)
    (rows * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-9, atol=1e-12)


def brute_rows_local(z, y):
    from brute import brute_rows
    return brute_rows(z, y, 0.5, kp=1, kn=1)


@pytest.mark.parametrize("variant", ["supcon", "infonce"])
@pytest.mark.parametrize("mined", [False, True])
def test_gradcheck_float64(variant, mined):
    z, y = _batch(11, 4, 3, seed=11)
    y[3] = -1
    z.requires_grad_()
    kw = dict(hard_positives=2, hard_negatives=2) if mined else {}
    assert torch.autograd.gradcheck(
        lambda t: ct.supcon_loss(t, y, 0.4, variant=variant, backend="torch", **kw), (z,))


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [-1, -1, -1, -1], [5, -1, -1, -1]])
def test_no_positive_pair_gives_connected_zero(labels):
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(labels)
    loss = ct.supcon_loss(z, y, 0.1, backend="torch")
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_no_positive_pair_with_a_non_finite_row():
    """An Inf in an ignored row must not leak: 0.0 and a zero gradient. In a valid row it is
    reported, as the fused backends do (tests/test_hostile.py), even though no anchor's loss
    reads it: NaN, not 0.0 over a NaN gradient."""
    z = torch.randn(4, 3, dtype=torch.float64)
    z[1] = float("inf")
    z.requires_grad_()
    loss = ct.supcon_loss(z, torch.tensor([5, -1, 3, -1]), 0.1, backend="torch")
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros_like(z))
    assert torch.isnan(ct.supcon_loss(z, torch.tensor([0, 1, 2, 3]), 0.1, backend="torch"))


def test_single_class_has_no_negatives_but_a_loss():
    # PML returns 0 for a batch without negatives; DESIGN.md's loss does not.
    z, _ = _batch(8, 4, 1, seed=1)
    y = torch.zeros(8, dtype=torch.int64)
    loss = ct.supcon_loss(z, y, 0.2, backend="torch")
    torch.testing.assert_close(loss, brute_loss(z, y, 0.2))
    assert loss.item() > 0


def test_half_inputs_give_float32_loss():
    z, y = _batch(12, 8, 3, seed=5, dtype=torch.float32)
    for dt in (torch.bfloat16, torch.float16):
        out = ct.supcon_loss(z.to(dt), y, 0.1, backend="torch")
        assert out.dtype == torch.float32
        ref = brute_loss(z.to(dt).double(), y, 0.1)
        # bf16 / fp16 rounding of the normalised rows, not a loose oracle: fp32 input is exact.
        assert abs(out.item() - ref.item()) / ref.item() < (3e-2 if dt == torch.bfloat16 else 4e-3)
    exact = ct.supcon_loss(z, y, 0.1, backend="torch")
    torch.testing.assert_close(exact.double(), brute_loss(z.double(), y, 0.1), rtol=1e-5, atol=0)


def test_infonce_keeps_precision_when_the_positive_dominates():
    # One positive 20 above its negative: l = log(1 + e^-20) ~ 2e-9, and its gradient the
    # sigmoid of -20. Written as -s + log(exp(s) + S) both cancel to ~1e-7 relative in float64;
    # the reference (like the kernels) uses softplus(log S - s). Closed form: rows 0 and 1 are
    # anchors with one positive (each other) and one negative (row 2).
    z = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1])
    loss = ct.supcon_loss(z, y, 0.1, variant="infonce", normalize=False, backend="torch")
    loss.backward()
    z2 = z.detach().clone().requires_grad_(True)
    s = z2 @ z2.T / 0.1
    expected = (torch.nn.functional.softplus(s[0, 2] - s[0, 1]) + torch.nn.functional.softplus(s[1, 2] - s[1, 0])) / 2
    expected.backward()
    assert 1e-9 < expected.item() < 1e-8
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(z.grad, z2.grad, rtol=1e-12, atol=0)
