"""Native (C++ CPU) patch_labels against the torch reference."""
import pytest
import torch

from ct_kernels import _native
from ct_kernels.reference import patch_labels_reference

pytestmark = pytest.mark.skipif(not _native.available(), reason="ct_kernels._C not built")

DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]


def _random_mask(b, h, w, num_classes, ignore, dtype, p_ignore=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randint(0, num_classes, (b, h, w), generator=g)
    m[torch.rand((b, h, w), generator=g) < p_ignore] = ignore
    return m.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ph,pw", [(4, 4), (2, 3), (8, 1), (1, 1)])
def test_matches_reference(dtype, ph, pw):
    ignore = 100 if dtype == torch.int8 else 255
    for ncls in (1, 2, 3, 7):
        mask = _random_mask(3, 8 * ph, 5 * pw, ncls, ignore, dtype, seed=ncls)
        mask[0, :ph, :pw] = ignore  # an all-ignored patch
        labels, purity, bad = _native.patch_labels(mask, ph, pw, ncls, ignore)
        rl, rp = patch_labels_reference(mask, ph, pw, ncls, ignore)
        assert labels.dtype == torch.int64 and purity.dtype == torch.float32 and bad.dtype == torch.int32
        assert bad.shape == (1,) and int(bad) == 0
        torch.testing.assert_close(labels, rl, rtol=0, atol=0)
        torch.testing.assert_close(purity, rp, rtol=0, atol=0)
        assert int(labels[0, 0, 0]) == ignore and float(purity[0, 0, 0]) == 0.0


def test_bool_mask():
    g = torch.Generator().manual_seed(1)
    mask = torch.rand((2, 12, 8), generator=g) < 0.5
    labels, purity, bad = _native.patch_labels(mask, 4, 2, 2, 255)
    rl, rp = patch_labels_reference(mask, 4, 2, 2, 255)
    assert torch.equal(labels, rl) and torch.equal(purity, rp) and int(bad) == 0


def test_ties_go_to_smallest_class():
    mask = torch.tensor([[[3, 1], [1, 3]]], dtype=torch.int64)  # 2 x 3, 2 x 1
    labels, purity, _ = _native.patch_labels(mask, 2, 2, 5, 255)
    assert labels.item() == 1 and purity.item() == 0.5
    mask = torch.tensor([[[4, 2, 255, 0]]], dtype=torch.int32)
    labels, purity, _ = _native.patch_labels(mask, 1, 4, 5, 255)
    assert labels.item() == 0 and purity.item() == 0.25


def test_negative_ignore_index_and_bad_count():
    mask = torch.tensor([[[0, -1, 7, 2], [-1, -1, -5, 2]]], dtype=torch.int64)
    labels, purity, bad = _native.patch_labels(mask, 2, 2, 3, -1)
    assert int(bad) == 2  # 7 and -5 are out of range and not ignore_index
    assert labels.tolist() == [[[0, 2]]]
    assert purity.tolist() == [[[0.25, 0.5]]]


def test_large_num_classes_and_limit():
    mask = _random_mask(2, 32, 32, 1024, 255, torch.int64, seed=3)
    mask[mask == 255] = 1023
    labels, purity, bad = _native.patch_labels(mask, 16, 8, 1024, -1)
    rl, rp = patch_labels_reference(mask, 16, 8, 1024, -1)
    assert torch.equal(labels, rl) and torch.equal(purity, rp) and int(bad) == 0
    with pytest.raises(RuntimeError, match="num_classes"):
        torch.ops.ct_kernels.patch_labels(mask, 16, 8, _native.MAX_CLASSES + 1, -1)
    with pytest.raises(ValueError, match="num_classes"):
        _native.patch_labels(mask, 16, 8, _native.MAX_CLASSES + 1, -1)


def test_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        _native.patch_labels(torch.zeros((1, 5, 4), dtype=torch.int64), 2, 2, 3, 255)
    with pytest.raises(ValueError, match="3-D"):
        _native.patch_labels(torch.zeros((5, 4), dtype=torch.int64), 1, 1, 3, 255)
    # the C++ checks behind the Python ones
    with pytest.raises(RuntimeError, match="divisible"):
        torch.ops.ct_kernels.patch_labels(torch.zeros((1, 5, 4), dtype=torch.int64), 2, 2, 3, 255)


def test_noncontiguous_and_fake_kernel():
    mask = _random_mask(2, 8, 12, 4, 255, torch.int64).transpose(1, 2)
    labels, purity, _ = _native.patch_labels(mask, 4, 2, 4, 255)
    rl, rp = patch_labels_reference(mask, 4, 2, 4, 255)
    assert torch.equal(labels, rl) and torch.equal(purity, rp)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        fm = torch.empty((2, 8, 12), dtype=torch.uint8)
        fl, fp, fb = torch.ops.ct_kernels.patch_labels(fm, 4, 2, 4, 255)
        assert fl.shape == (2, 2, 6) and fl.dtype == torch.int64 and fp.dtype == torch.float32
        assert fb.shape == (1,) and fb.dtype == torch.int32


def test_supports():
    assert _native.supports("patch_labels", torch.device("cpu"))
    assert not _native.supports("nope", torch.device("cpu"))
