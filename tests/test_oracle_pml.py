"""Every backend against the outside oracle, pytorch-metric-learning's SupConLoss.

DESIGN.md: ``variant="supcon"`` equals ``SupConLoss(temperature)`` on batches that hold a negative
pair. Rows with the ignore label take no part in ours; the oracle gets the other rows only.
The dense torch backend is checked against it too (tests/test_supcon_torch.py); here the fused
backends meet it directly, not only through that reference.
"""
import pytest
import torch

import ct_kernels as ct
from cpu_backends import backend_devices
from ct_kernels.selfcheck import rel_err

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

IGN = -1


def _batch(m, d, classes, seed, p_ignore, device):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (m,), generator=g)
    y[torch.rand(m, generator=g) < p_ignore] = IGN
    y[0] = 0  # anchors with positives and a negative pair exist whatever the draw
    y[1] = 0
    y[2] = 1 if classes > 1 else 0
    return z.to(device), y.to(device)


@pytest.mark.parametrize("backend,device", backend_devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("m,d,classes,temp,p_ignore", [
    (37, 7, 3, 0.1, 0.0),     # odd sizes, several positives a row
    (61, 19, 6, 0.07, 0.2),   # ignored rows; some classes with one row (anchors without positives)
    (23, 2, 2, 0.5, 0.1),     # D = 2, two classes (D = 1 has a zero gradient: the rows normalise to +-1)
])
def test_supcon_equals_pytorch_metric_learning(backend, device, dtype, m, d, classes, temp, p_ignore):
    z, y = _batch(m, d, classes, seed=m * 31 + d, p_ignore=p_ignore, device=device)
    keep = y != IGN
    assert (y[keep][:, None] != y[keep][None, :]).any(), "needs a negative pair for PML to agree"
    z_ours = z.to(dtype).clone().requires_grad_()
    z_pml = z.clone().requires_grad_()  # the oracle in float64
    # float32 on CUDA: tf32 off, so the rule is float32's 1e-5 (PyTorch's default)
    ours = ct.supcon_loss(z_ours, y, temp, ignore_index=IGN, backend=backend)
    theirs = pml_losses.SupConLoss(temperature=temp)(z_pml[keep], y[keep])
    ours.backward()
    theirs.backward()
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert rel_err(ours, theirs) <= tol
    assert rel_err(z_ours.grad, z_pml.grad) <= tol
    assert torch.all(z_ours.grad[~keep] == 0)
