"""Triton patch-majority labels against the one-hot reference (interpreter on CPU, CUDA on GPUs)."""
import importlib

import pytest
import torch

from byte_masks import BYTE_CASES, assert_matches_reference, byte_mask
from ct_kernels import triton_ops as T
from ct_kernels.reference import patch_labels_reference
from ct_kernels.triton_ops.patch_labels import count_fields

pytestmark = pytest.mark.skipif(not T.AVAILABLE, reason=f"triton unavailable: {T.UNAVAILABLE_REASON}")
# the module (the package's attribute of that name is the function)
P = importlib.import_module("ct_kernels.triton_ops.patch_labels") if T.AVAILABLE else None

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


def check_with_bad(mask, ph, pw, num_classes, ignore):
    labels, purity, bad = T.patch_labels(mask, ph, pw, num_classes, ignore)
    assert_matches_reference(labels, purity, bad.item(), mask, ph, pw, num_classes, ignore)


@pytest.mark.parametrize("gw", [8, 3], ids=["whole-blocks", "ragged"])
@pytest.mark.parametrize("dtype,ph,pw,num_classes,ignore", BYTE_CASES)
def test_byte_masks_as_words(dtype, ph, pw, num_classes, ignore, gw):
    """uint8 / int8 masks whose patch rows are whole words take the word kernel (four pixels to an
    int32, a compare a class): labels, purity and the bad count as the reference's."""
    mask = byte_mask(dtype, (2, 2 * ph, gw * pw), num_classes, ignore, seed=ph * 100 + pw + gw).to(DEV)
    assert P._takes_words(mask, ph, pw, num_classes)
    check_with_bad(mask, ph, pw, num_classes, ignore)


def test_byte_kernel_ties_all_ignored_and_one_class_patches():
    mask = torch.full((1, 2, 32), 255, dtype=torch.uint8)
    mask[0, :, 0:8] = torch.tensor([3, 1, 1, 3, 3, 1, 1, 3]).repeat(2, 1)  # 8 x class 1, 8 x 3 -> 1
    mask[0, 0, 8:16] = 2  # 8 x class 2, 8 ignored -> 2, purity 1/2
    mask[0, :, 16:24] = 0  # class 0 everywhere (ge_1 == 0): 0, purity 1
    # patch 4 stays all ignored -> ignore_index, purity 0
    assert P._takes_words(mask, 2, 8, 4)
    labels, purity, bad = T.patch_labels(mask.to(DEV), 2, 8, 4, 255)
    assert labels.cpu().tolist() == [[[1, 2, 0, 255]]]
    assert purity.cpu().tolist() == [[[0.5, 0.5, 1.0, 0.0]]] and bad.item() == 0


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
def test_byte_kernel_whole_patches_of_one_value(dtype):
    """16 x 16 patches (64 words) of one value: every count reaches 256, which a byte does not
    hold: the rows are counted in chunks of 32 words (_patch_count)."""
    ignore = 255 if dtype == torch.uint8 else -1
    mask = torch.zeros((1, 16, 64), dtype=torch.int64)
    mask[0, :, 0:16], mask[0, :, 16:32], mask[0, :, 48:64] = 5, ignore, 6
    mask = mask.to(dtype).to(DEV)
    assert P._takes_words(mask, 16, 16, 6)
    labels, purity, bad = T.patch_labels(mask, 16, 16, 6, ignore)
    assert labels.cpu().tolist() == [[[5, ignore, 0, ignore]]]
    assert purity.cpu().tolist() == [[[1.0, 0.0, 1.0, 0.0]]] and bad.item() == 256


@pytest.mark.parametrize("case", ["one-word-rows", "three-word-rows", "64-word-rows", "17-classes", "over-64-words",
                                  "unaligned"])
def test_byte_masks_the_word_kernel_does_not_take(case):
    """Patch rows of one word, of a word count that is no power of two, or over the 63 words whose
    count a byte holds, too many classes, a thread over 64 words, and bytes that start off a word (a view one byte into its storage): the
    general kernel, with the same answers."""
    if case == "unaligned":
        storage = byte_mask(torch.uint8, (1 + 2 * 8 * 16,), 4, 255, 4)
        mask, ph, pw, num_classes = storage[1:].view(2, 8, 16), 4, 8, 4
        assert mask.is_contiguous() and mask.data_ptr() % 4 == 1
    else:
        shape, ph, pw, num_classes = {"one-word-rows": ((2, 8, 12), 4, 4, 4), "three-word-rows": ((2, 6, 24), 3, 12, 4),
                                      "64-word-rows": ((1, 2, 512), 1, 256, 3),
                                      "17-classes": ((1, 4, 16), 4, 8, 17),
                                      "over-64-words": ((1, 32, 16), 32, 8, 3)}[case]
        mask = byte_mask(torch.uint8, shape, num_classes, 255, len(case)).to(DEV)
    assert not P._takes_words(mask, ph, pw, num_classes)
    check_with_bad(mask, ph, pw, num_classes, 255)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.bool, torch.int64])
def test_large_cuda(dtype):
    """Whole GPU-sized blocks: for byte masks the word kernel (512 words a block row, 4 warps)."""
    num_classes = 2 if dtype == torch.bool else 6
    ignore = -1 if dtype == torch.int8 else 255
    mask = random_mask(4, 512, 512, num_classes, dtype if dtype != torch.bool else torch.uint8, ignore,
                       seed=6, p_ignore=0.0 if dtype == torch.bool else 0.05).to(dtype)
    for ph, pw in [(16, 16), (8, 32), (16, 8), (32, 8)]:  # (32, 8): the general kernel
        check(mask, ph, pw, num_classes, ignore)
