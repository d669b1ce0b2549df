"""Anchor slices of the fused kernels (backends.py contract: start, count).

A slice is what one rank runs under process_group, and what a batch runs in front of its
memory-bank rows: anchors are rows start .. start + count, every row is a column. Checked the
way the distributed path uses it: the rows are cut into slices (like ranks, unaligned with any
block size), each slice runs its own forward, the per-row statistics of all slices are
concatenated, and each slice's backward must give the rows of the whole-batch gradient.
"""
import pytest
import torch

import ct_kernels as ct
from ct_kernels import backends
from ct_kernels.distributed import ReferenceKernels
from ct_kernels.reference import supcon_rows_reference
from cpu_backends import backend_devices

IGN = -1
TEMP = 0.2


def _kernel_module(backend):
    """The module with the kernel contract of ``backend`` (the torch backend's is the reference)."""
    if backend == "torch":
        return ReferenceKernels
    if backend == "native":
        from ct_kernels import _native
        return _native
    from ct_kernels import triton_ops
    return triton_ops


KERNELS = [(b, _kernel_module(b), torch.device(d)) for b, d in backend_devices()]
IDS = [f"{b}-{d}" for b, d in backend_devices()]


def _batch(m, d, n_classes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, n_classes, (m,), generator=g)
    y[torch.rand(m, generator=g) < 0.15] = IGN
    u[y == IGN] = 0
    grad = torch.randn(m, generator=g, dtype=torch.float64)
    return u.to(device), y.to(device), grad.to(device)


def _whole_batch(u, y, variant, kp, kn, grad):
    leaf = u.detach().clone().requires_grad_()
    rows, npos = supcon_rows_reference(leaf, y, y != IGN, TEMP, variant, kp or None, kn or None)
    (rows * grad).sum().backward()
    return rows.detach(), npos, leaf.grad


def _cat_saved(parts):
    """Per-position concatenation of the slices' saved tensors (what the all_gather builds)."""
    return tuple(None if ts[0] is None else torch.cat(ts) for ts in zip(*parts))


@pytest.mark.parametrize("name,kernels,device", KERNELS, ids=IDS)
@pytest.mark.parametrize("variant,kp,kn", [("supcon", 0, 0), ("infonce", 0, 0), ("supcon", 3, 5),
                                           ("infonce", 2, 0), ("supcon", 0, 4)])
@pytest.mark.parametrize("cuts", [(0, 45), (0, 7, 19, 45), (0, 1, 44, 45), (0, 0, 30, 45)],
                         ids=["whole", "uneven", "one-row", "empty"])
def test_slices_reassemble_the_whole_batch(name, kernels, device, variant, kp, kn, cuts):
    u, y, grad = _batch(45, 6, 4, device)
    ref_rows, ref_npos, ref_du = _whole_batch(u, y, variant, kp, kn, grad)
    inv = 1.0 / TEMP
    fwd = [kernels.supcon_forward(u, y, IGN, inv, variant, kp, kn, False, a, b - a)
           for a, b in zip(cuts[:-1], cuts[1:])]
    for (a, b), (rows, npos, saved) in zip(zip(cuts[:-1], cuts[1:]), fwd):
        assert rows.shape == (b - a,) and npos.shape == (b - a,)
        torch.testing.assert_close(rows.double(), ref_rows[a:b], rtol=1e-9, atol=1e-12)
        assert npos.tolist() == ref_npos[a:b].tolist()
        for t in saved:
            assert t is None or t.shape[0] == b - a
    saved_all = _cat_saved([s for _, _, s in fwd])
    rows_dtype = fwd[0][0].dtype
    for a, b in zip(cuts[:-1], cuts[1:]):
        du = kernels.supcon_backward(u, y, IGN, inv, variant, kp, kn, False, saved_all, grad.to(rows_dtype),
                                     a, b - a)
        assert du.shape == (b - a, u.shape[1])
        torch.testing.assert_close(du.double(), ref_du[a:b], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name,kernels,device", KERNELS, ids=IDS)
def test_memory_bank_rows_are_never_anchors(name, kernels, device, monkeypatch):
    """contrast=(zc, yc): the kernels get count = the batch's rows, not the bank's."""
    if name == "torch":
        pytest.skip("the torch backend calls the dense reference directly")
    seen = []
    real = kernels.supcon_forward

    def spy(u, labels, *args):
        seen.append((u.shape[0], args[-2:]))
        return real(u, labels, *args)

    monkeypatch.setattr(kernels, "supcon_forward", spy)
    u, y, _ = _batch(13, 4, 3, device, seed=3)
    zc, yc, _ = _batch(20, 4, 3, device, seed=4)
    loss = ct.supcon_loss(u.requires_grad_(), y, TEMP, backend=name, contrast=(zc, yc), reduction="none")
    assert loss.shape == (13,) and seen == [(33, (0, 13))]
    loss.sum().backward()
    assert u.grad.shape == (13, 4)


def test_place_rows():
    a = torch.tensor([1.0, 2.0])
    b = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)
    pa, pb, pn = backends.place_rows((a, b, None), 3, 6)
    assert pa.tolist() == [0, 0, 0, 1, 2, 0]
    assert pb.tolist() == [[0, 0]] * 3 + [[1, 2], [3, 4], [0, 0]] and pb.dtype == torch.int32
    assert pn is None
    assert backends.place_rows((a,), 0, 2)[0] is a


@pytest.mark.parametrize("name,kernels,device", [k for k in KERNELS if k[0] != "torch"],
                         ids=[i for k, i in zip(KERNELS, IDS) if k[0] != "torch"])
def test_slice_outside_the_rows_is_an_error(name, kernels, device):
    u, y, _ = _batch(5, 3, 2, device)
    for start, count in ((4, 2), (6, 0), (-1, 2)):
        with pytest.raises((ValueError, RuntimeError), match="anchor rows"):
            kernels.supcon_forward(u, y, IGN, 5.0, "supcon", 0, 0, False, start, count)
