"""patch_labels against a brute-force count, every mask dtype, every backend that runs on CPU."""
import collections

import pytest
import torch

import ct_kernels as ct
from cpu_backends import cpu_backends


def brute_patch_labels(mask, ph, pw, ignore_index):
    b, h, w = mask.shape
    labels = torch.empty(b, h // ph, w // pw, dtype=torch.int64)
    purity = torch.empty(b, h // ph, w // pw, dtype=torch.float32)
    for n in range(b):
        for r in range(h // ph):
            for c in range(w // pw):
                px = [int(v) for v in mask[n, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw].reshape(-1)]
                counts = collections.Counter(v for v in px if v != ignore_index)
                if not counts:
                    labels[n, r, c], purity[n, r, c] = ignore_index, 0.0
                    continue
                top = max(counts.values())
                labels[n, r, c] = min(k for k, v in counts.items() if v == top)
                purity[n, r, c] = top / (ph * pw)
    return labels, purity


def _random_mask(shape, classes, ignore, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    m = torch.randint(0, classes, shape, generator=g)
    m[torch.rand(shape, generator=g) < 0.2] = ignore
    m[0, :4, :4] = ignore  # an all-ignored patch
    m[-1, -4:, -4:] = 1    # a pure patch
    return m.to(dtype)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("dtype,ignore", [(torch.uint8, 255), (torch.int32, -1), (torch.int64, 255),
                                          (torch.int16, 7)])
@pytest.mark.parametrize("ph,pw", [(4, 4), (2, 4), (4, 1)])
def test_against_brute_force(backend, dtype, ignore, ph, pw):
    mask = _random_mask((2, 8, 12), 4, ignore, seed=ph * 10 + pw, dtype=dtype)
    labels, purity = ct.patch_labels(mask, (ph, pw), 4, ignore_index=ignore, backend=backend)
    ref_l, ref_p = brute_patch_labels(mask, ph, pw, ignore)
    assert labels.dtype == torch.int64 and purity.dtype == torch.float32
    assert torch.equal(labels, ref_l)
    torch.testing.assert_close(purity, ref_p, rtol=0, atol=0)


@pytest.mark.parametrize("backend", cpu_backends())
def test_ties_go_to_smallest_class(backend):
    mask = torch.tensor([[[3, 3, 1, 0, 4, 5], [2, 2, 0, 1, 5, 5]]], dtype=torch.int64)  # patches 2x2
    labels, purity = ct.patch_labels(mask, 2, 6, ignore_index=5, backend=backend)
    assert labels.tolist() == [[[2, 0, 4]]]
    assert purity.tolist() == [[[0.5, 0.5, 0.25]]]


@pytest.mark.parametrize("backend", cpu_backends())
def test_bool_mask(backend):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 6, 6, generator=g) < 0.3
    labels, purity = ct.patch_labels(mask, 3, 2, backend=backend)
    ref_l, ref_p = brute_patch_labels(mask.to(torch.int64), 3, 3, 255)
    assert torch.equal(labels, ref_l)
    torch.testing.assert_close(purity, ref_p)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("bad", [4, -2, 300])
def test_out_of_range_labels_raise(backend, bad):
    mask = torch.zeros(1, 4, 4, dtype=torch.int64)
    mask[0, 1, 2] = bad
    with pytest.raises(ValueError, match="num_classes"):
        ct.patch_labels(mask, 2, 4, ignore_index=255, backend=backend)


@pytest.mark.parametrize("mask,patch,err,match,ignore", [
    (torch.zeros(4, 4, dtype=torch.int64), 2, ValueError, "3-D", 255),
    (torch.zeros(1, 4, 4), 2, TypeError, "integer or bool", 255),
    (torch.zeros(1, 6, 4, dtype=torch.int64), 4, ValueError, "divisible", 255),
    (torch.zeros(1, 4, 4, dtype=torch.int64), 0, ValueError, "patch_size", 255),
    (torch.zeros(1, 4, 4, dtype=torch.int64), (2, 2, 2), TypeError, "patch_size", 255),
    # a float ignore value compares as-is in the reference but the kernels would truncate it
    (torch.zeros(1, 4, 4, dtype=torch.int64), 2, TypeError, "ignore_index", 1.5),
    (torch.zeros(1, 4, 4, dtype=torch.int64), 2, TypeError, "ignore_index", None),
    (torch.zeros(1, 4, 4, dtype=torch.int64), 2, ValueError, "ignore_index", 2 ** 63),
])
def test_bad_input(mask, patch, err, match, ignore):
    with pytest.raises(err, match=match):
        ct.patch_labels(mask, patch, 3, ignore_index=ignore)


def test_bad_num_classes_and_backend():
    mask = torch.zeros(1, 4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="num_classes"):
        ct.patch_labels(mask, 2, 0)
    with pytest.raises(ValueError, match="backend"):
        ct.patch_labels(mask, 2, 3, backend="cuda")


def test_numpy_integers_are_sizes_and_counts():
    np = pytest.importorskip("numpy")
    mask = torch.randint(0, 3, (2, 8, 8))
    ref = ct.patch_labels(mask, 4, 3, backend="torch")
    for ps, nc in ((np.int64(4), np.int64(3)), ((np.int32(4), np.int32(4)), 3)):
        out = ct.patch_labels(mask, ps, nc, backend="torch")
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
