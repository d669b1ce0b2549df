"""Triton patch-majority labels against the one-hot reference (interpreter on CPU, CUDA on GPUs)."""
import pytest
import torch

from ct_kernels import triton_ops as T
from ct_kernels.triton_ops.patch_labels import count_fields
from ct_kernels.reference import patch_labels_reference

pytestmark = pytest.mark.skipif(not T.AVAILABLE, reason=f"triton unavailable: {T.UNAVAILABLE_REASON}")

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def random_mask(b, h, w, num_classes, dtype, ignore, seed, p_ignore=0.2):
    g = torch.Generator().manual_seed(seed)
    # few classes per patch region so that ties and clear majorities both occur
    m = torch.randint(0, num_classes, (b, h, w), generator=g)
    m[torch.rand(b, h, w, generator=g) < p_ignore] = ignore
    return m.to(dtype).to(DEV)


def check(mask, ph, pw, num_classes, ignore):
    labels, purity, bad = T.patch_labels(mask, ph, pw, num_classes, ignore)
    ref_labels, ref_purity = patch_labels_reference(mask.cpu(), ph, pw, num_classes, ignore)
    assert labels.dtype == torch.int64 and purity.dtype == torch.float32 and bad.dtype == torch.int32
    assert bad.shape == (1,) and bad.item() == 0
    assert torch.equal(labels.cpu(), ref_labels)
    assert torch.equal(purity.cpu(), ref_purity)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
@pytest.mark.parametrize("ph,pw", [(4, 4), (3, 5), (8, 2), (3, 1), (2, 33)])
def test_matches_reference(dtype, ph, pw):
    mask = random_mask(2, ph * 3, pw * 5, 4, dtype, 255, seed=ph * 10 + pw)
    check(mask, ph, pw, 4, 255)


@pytest.mark.parametrize("num_classes,ph,pw", [(9, 16, 16), (20, 4, 4), (30, 2, 3)])
def test_many_classes(num_classes, ph, pw):
    """Several count fields per reduction (6 at 16 x 16, 10 at 4 x 4, 15 at 2 x 3: count_fields):
    more classes than one group holds, so the class groups and their boundaries are exercised."""
    mask = random_mask(2, ph * 2, pw * 3, num_classes, torch.int64, 255, seed=num_classes)
    check(mask, ph, pw, num_classes, 255)


PER_16 = count_fields(16, 16)[2]  # classes counted together at 16 x 16 (groups 0 .. PER_16 - 1, ...)


@pytest.mark.parametrize("a,b", [(PER_16 - 1, PER_16), (0, 2 * PER_16 + 1), (PER_16 + 1, PER_16 + 2)])
def test_tie_across_class_groups_goes_to_smaller(a, b):
    """A tie across the boundary of two class groups, across two groups, and inside one."""
    mask = torch.full((1, 16, 16), a, dtype=torch.int64)
    mask[0, 8:] = b
    labels, purity, _bad = T.patch_labels(mask.to(DEV), 16, 16, 16, 255)
    assert labels.item() == min(a, b) and purity.item() == 0.5


def test_bool_mask():
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(2, 8, 12, generator=g) < 0.5).to(DEV)
    check(mask, 4, 4, 2, 255)


def test_ties_go_to_smallest_class_and_all_ignored_patch():
    mask = torch.full((1, 2, 6), 255, dtype=torch.int64)
    mask[0, :, 0:2] = torch.tensor([[3, 1], [1, 3]])  # 2 x class 1, 2 x class 3 -> 1
    mask[0, :, 2:4] = torch.tensor([[2, 255], [0, 255]])  # tie between 0 and 2 -> 0, purity 1/4
    # patch 3 stays all ignored -> ignore_index, purity 0
    labels, purity, bad = T.patch_labels(mask.to(DEV), 2, 2, 4, 255)
    assert labels.cpu().tolist() == [[[1, 0, 255]]]
    assert purity.cpu().tolist() == [[[0.5, 0.25, 0.0]]]
    check(mask.to(DEV), 2, 2, 4, 255)


def test_single_class_and_negative_ignore_index():
    mask = random_mask(3, 6, 6, 1, torch.int32, -1, seed=2, p_ignore=0.5)
    check(mask, 3, 3, 1, -1)


def test_two_hundred_classes():
    mask = random_mask(1, 16, 16, 200, torch.int64, 255, seed=3)
    mask[0, :8, :8] = 199  # one clear majority on the last class
    check(mask, 8, 8, 256, 255)


@pytest.mark.parametrize("gw", [8, 5], ids=["whole-blocks", "ragged"])
@pytest.mark.parametrize("num_classes", [4, 9])  # one class group at 4 x 4 (10 fields), two
def test_whole_and_ragged_blocks(gw, num_classes):
    """Blocks of whole patches load without a mask (EVEN: 8 patches a row fill the interpreter's
    8-patch blocks), ragged ones with it; both with ignored and out-of-range pixels, and with the
    class groups folded at compile time (ONE_GROUP) or looped."""
    mask = random_mask(2, 4 * 3, 4 * gw, num_classes, torch.int64, 255, seed=gw + num_classes)
    mask[0, 0, :3] = num_classes + 1
    mask[1, 5, 7] = -3
    labels, purity, bad = T.patch_labels(mask, 4, 4, num_classes, 255)
    assert bad.item() == 4
    clean = torch.where((mask >= 0) & (mask < num_classes), mask, torch.full_like(mask, 255))  # impure, as ignored
    ref_labels, ref_purity = patch_labels_reference(clean.cpu(), 4, 4, num_classes, 255)
    assert torch.equal(labels.cpu(), ref_labels) and torch.equal(purity.cpu(), ref_purity)


def test_out_of_range_pixels_counted():
    mask = random_mask(2, 8, 8, 3, torch.int64, 255, seed=4)
    mask[0, 0, 0] = 3  # == num_classes
    mask[1, 5, 7] = -2
    mask[1, 6, 1] = 1000
    labels, purity, bad = T.patch_labels(mask, 4, 4, 3, 255)
    assert bad.item() == 3
    # bad pixels count as impure, like ignored ones
    clean = torch.where((mask >= 0) & (mask < 3), mask, torch.full_like(mask, 255))
    ref_labels, ref_purity = patch_labels_reference(clean.cpu(), 4, 4, 3, 255)
    assert torch.equal(labels.cpu(), ref_labels) and torch.equal(purity.cpu(), ref_purity)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8])
def test_wide_and_negative_values_are_out_of_range(dtype):
    """Values equal to a class modulo 2**32 (int64), and negative ones, are bad pixels, not that
    class; every class id goes through int32 inside the kernel."""
    mask = torch.zeros(1, 4, 8, dtype=dtype)
    mask[0, :, 4:] = 2
    wide = [2**32 + 1, 2**32 + 2, -(2**32) + 1] if dtype == torch.int64 else [-127, -1, -128]
    mask[0, 0, :3] = torch.tensor(wide, dtype=dtype)
    labels, purity, bad = T.patch_labels(mask.to(DEV), 4, 4, 3, 100)
    assert bad.item() == 3
    assert labels.cpu().tolist() == [[[0, 2]]] and purity.cpu().tolist() == [[[13 / 16, 1.0]]]


def test_non_contiguous_mask():
    mask = random_mask(2, 8, 16, 3, torch.int64, 255, seed=5)[:, :, ::2]
    check(mask, 4, 4, 3, 255)


def test_bad_arguments():
    mask = torch.zeros(1, 8, 8, dtype=torch.int64, device=DEV)
    with pytest.raises(ValueError, match="divide"):
        T.patch_labels(mask, 3, 3, 2, 255)
    with pytest.raises(ValueError, match="num_classes"):
        T.patch_labels(mask, 4, 4, 100000, 255)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_large_cuda(dtype):
    mask = random_mask(4, 512, 512, 6, dtype, 255, seed=6, p_ignore=0.05)
    check(mask, 16, 16, 6, 255)
    check(mask, 8, 32, 6, 255)
