"""supcon_loss(contrast=(zc, yc)) and MemoryBank, every backend that runs on CPU."""

import pytest
import torch

import ct_kernels as ct
from cpu_backends import cpu_backends
from brute import brute_rows


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("kw", [dict(variant="supcon"), dict(variant="infonce"),
                                dict(variant="supcon", hard_positives=2, hard_negatives=3)],
                         ids=["supcon", "infonce", "mined"])
def test_contrast_rows_are_columns_only(backend, kw):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(11, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1, -1, 4, 1, 0, 2])      # class 3 and 4: positives only in the bank
    zc = torch.randn(9, 6, generator=g, dtype=torch.float64)
    yc = torch.tensor([3, 0, 1, 2, 4, -1, 0, 5, 1])
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    loss = ct.supcon_loss(z1, y, 0.3, backend=backend, contrast=(zc, yc), **kw)
    rows = brute_rows(torch.cat([z2, zc]), torch.cat([y, yc]), 0.3, kp=kw.get("hard_positives"),
                      kn=kw.get("hard_negatives"), variant=kw["variant"])[:11]
    labels_all = torch.cat([y, yc]).tolist()
    n_anchor = sum(1 for i in range(11) if y[i] != -1 and any(
        labels_all[j] == int(y[i]) for j in range(20) if j != i))
    ref = torch.stack(rows).sum() / n_anchor
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-12)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-8, atol=1e-12)
    none = ct.supcon_loss(z, y, 0.3, backend=backend, contrast=(zc, yc), reduction="none", **kw)
    assert none.shape == (11,)


def test_contrast_bad_input():
    z, y = torch.randn(4, 3), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(TypeError, match="contrast"):
        ct.supcon_loss(z, y, contrast=torch.randn(2, 3))
    with pytest.raises(ValueError, match="contrast"):
        ct.supcon_loss(z, y, contrast=(torch.randn(2, 5), torch.zeros(2, dtype=torch.int64)))
    with pytest.raises(ValueError, match="contrast"):
        ct.supcon_loss(z, y, contrast=(torch.randn(2, 3), torch.zeros(3, dtype=torch.int64)))


def _filled(bank):
    zc, yc = bank.contrast()
    keep = yc != bank.ignore_index
    return zc[keep], yc[keep]


def test_memory_bank_ring():
    bank = ct.MemoryBank(num_classes=3, size_per_class=2, dim=2)
    zc, yc = bank.contrast()
    assert zc.shape == (6, 2) and yc.tolist() == [-1] * 6  # fixed shape: every slot, empty ones ignored
    z = torch.arange(12.0).reshape(6, 2)
    bank.update(z, torch.tensor([0, 1, 0, 0, -1, 7]))   # class 0 gets rows 0, 2, 3 (ring of 2: 2 and 3)
    zc, yc = _filled(bank)
    assert yc.tolist() == [0, 0, 1]
    assert sorted(map(tuple, zc[:2].tolist())) == [(4.0, 5.0), (6.0, 7.0)]
    assert zc[2].tolist() == [2.0, 3.0]
    bank.update(torch.tensor([[100.0, 101.0]]), torch.tensor([0]))  # overwrites the oldest slot of class 0
    zc, yc = _filled(bank)
    assert sorted(map(tuple, zc[:2].tolist())) == [(6.0, 7.0), (100.0, 101.0)]
    w = torch.randn(3, 2, requires_grad=True)
    bank.update(w, torch.tensor([2, 2, 2]))
    assert not bank.contrast()[0].requires_grad
    with pytest.raises(ValueError, match="dim"):
        ct.MemoryBank(3, 2, 0)
    with pytest.raises(ValueError, match="ignore_index"):
        ct.MemoryBank(3, 2, 4, ignore_index=1)
    with pytest.raises(ValueError, match="z must be"):
        bank.update(torch.randn(2, 5), torch.zeros(2, dtype=torch.int64))


def test_memory_bank_matches_a_python_ring():
    """Random batches (classes over- and under-filling the ring, ignored and out-of-range labels)
    against a plain per-class deque."""
    from collections import deque
    g = torch.Generator().manual_seed(5)
    bank = ct.MemoryBank(num_classes=4, size_per_class=3, dim=2)
    rings = [deque(maxlen=3) for _ in range(4)]
    for step in range(12):
        m = int(torch.randint(0, 9, (1,), generator=g))
        z = torch.randn(m, 2, generator=g)
        y = torch.randint(-2, 6, (m,), generator=g)
        bank.update(z, y)
        for row, label in zip(z.tolist(), y.tolist()):
            if 0 <= label < 4:
                rings[label].append(tuple(row))
        zc, yc = _filled(bank)
        for c in range(4):
            assert sorted(map(tuple, zc[yc == c].tolist())) == sorted(rings[c])


def test_memory_bank_update_is_deterministic():
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        bank = ct.MemoryBank(num_classes=2, size_per_class=2, dim=3)
        bank.update(torch.randn(7, 3), torch.tensor([0, 0, 0, 1, -1, -1, 9]))
    finally:
        torch.use_deterministic_algorithms(prev)
    assert _filled(bank)[1].tolist() == [0, 0, 1]


@pytest.mark.parametrize("backend", cpu_backends())
def test_memory_bank_feeds_the_loss(backend):
    """The loss with bank.contrast() is the loss with the rows the bank should hold (each class's
    last 4 of the updates, class 3 never seen), given by hand; and not the loss without them."""
    bank = ct.MemoryBank(num_classes=4, size_per_class=4, dim=5)
    g = torch.Generator().manual_seed(2)
    pushed, pushed_labels = [], []
    for _ in range(3):
        zb, yb = torch.randn(8, 5, generator=g), torch.randint(-1, 3, (8,), generator=g)
        bank.update(zb, yb)
        pushed.append(zb)
        pushed_labels.append(yb)
    pushed, pushed_labels = torch.cat(pushed), torch.cat(pushed_labels)
    held = torch.cat([torch.nonzero(pushed_labels == c).flatten()[-4:] for c in range(3)])
    z = torch.randn(6, 5, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 3])
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    loss = ct.supcon_loss(z1, y, contrast=bank.contrast(), backend=backend)
    ref = ct.supcon_loss(z2, y, contrast=(pushed[held], pushed_labels[held]), backend="torch")
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-5, atol=1e-6)
    assert (loss - ct.supcon_loss(z, y, backend=backend)).abs() > 1e-2


def test_memory_bank_rejects_what_the_loss_would():
    # float labels would be truncated into classes, integer storage would truncate the rows
    with pytest.raises(TypeError, match="dtype must be a floating"):
        ct.MemoryBank(2, 2, 2, dtype=torch.int64)
    bank = ct.MemoryBank(2, 2, 2)
    with pytest.raises(TypeError, match="labels must be an integer"):
        bank.update(torch.randn(2, 2), torch.tensor([0.9, 1.9]))
    with pytest.raises(TypeError, match="z must be floating"):
        bank.update(torch.ones(2, 2, dtype=torch.int64), torch.tensor([0, 1]))
    np = pytest.importorskip("numpy")
    assert ct.MemoryBank(np.int64(3), np.int64(2), np.int64(4), ignore_index=np.int64(-1)).store.shape == (7, 4)
