"""Byte masks for the word kernels' tests (Triton and native CUDA): classes, ignored pixels where
the dtype holds ignore_index, a few bad values; and the check against the reference."""
import torch

from ct_kernels.patch import ignore_byte
from ct_kernels.reference import patch_labels_reference

# (dtype, ph, pw, num_classes, ignore_index): the cumulative counts meet the ignore byte below,
# inside and above the classes
BYTE_CASES = [
    (torch.uint8, 16, 16, 6, 255),  # the benchmark's case; rows in two chunks of 32 words
    (torch.uint8, 4, 8, 1, 255),
    (torch.uint8, 3, 8, 2, 0),  # ignore_index a class id; rows padded to 4
    (torch.uint8, 2, 32, 16, 7),  # 8 words a patch row; ignore inside the classes
    (torch.uint8, 2, 128, 4, 255),  # 32 words a patch row, the widest: a chunk a row
    (torch.uint8, 5, 8, 5, 300),  # ignore_index no byte can hold
    (torch.uint8, 1, 8, 3, 3),  # ignore_index == num_classes
    (torch.int8, 4, 8, 6, -1),  # negative values are bad, -1 ignored
    (torch.int8, 8, 16, 4, 100),
]


def byte_mask(dtype, shape, num_classes, ignore, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randint(0, num_classes, shape, generator=g)
    if ignore_byte(dtype, ignore) >= 0:  # the dtype holds ignore_index
        m[torch.rand(shape, generator=g) < 0.2] = ignore
    hi = 255 if dtype == torch.uint8 else 127
    bad_values = [v for v in (num_classes, 200 if dtype == torch.uint8 else -5, hi) if v != ignore]
    where = torch.rand(shape, generator=g) < 0.02
    m[where] = torch.tensor(bad_values)[torch.randint(0, len(bad_values), (int(where.sum()),), generator=g)]
    return m.to(dtype)


def assert_matches_reference(labels, purity, bad, mask, ph, pw, num_classes, ignore):
    """Labels, purity and the bad-pixel count against the reference, bad pixels counting as impure."""
    m = mask.cpu().to(torch.int64)
    is_bad = (m != ignore) & ((m < 0) | (m >= num_classes))
    ref_labels, ref_purity = patch_labels_reference(torch.where(is_bad, ignore, m), ph, pw, num_classes, ignore)
    assert int(bad) == is_bad.sum().item()
    assert torch.equal(labels.cpu(), ref_labels)
    assert torch.equal(purity.cpu(), ref_purity)
