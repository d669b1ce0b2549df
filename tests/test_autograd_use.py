"""How the loss behaves inside autograd machinery users reach for: second derivatives, torch.func,
labels that the caller changes or made under inference mode, k above the candidates, activation
checkpointing and saved-tensor hooks."""
import pytest
import torch

import ct_kernels as ct
from cpu_backends import backend_devices

CASES = backend_devices()
IDS = [f"{b}-{d}" for b, d in CASES]


def _batch(device, m=13, d=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, d, generator=g, dtype=torch.float64).to(device).requires_grad_()
    return z, torch.randint(0, 3, (m,), generator=g).to(device)


@pytest.mark.parametrize("backend,device", CASES, ids=IDS)
@pytest.mark.parametrize("with_bank", [False, True])
def test_second_derivatives_are_exact_or_raise(backend, device, with_bank):
    # A gradient penalty differentiates the gradient (backward with create_graph=True). The torch
    # backend is plain autograd, so exact; the fused backends' dU has no graph of its own, and
    # the second derivative must raise rather than silently leave this loss out.
    g = torch.Generator().manual_seed(3)
    z = torch.randn(13, 4, generator=g, dtype=torch.float64).to(device).requires_grad_()
    y = torch.randint(0, 3, (13,), generator=g).to(device)
    bank = (torch.randn(5, 4, generator=g, dtype=torch.float64).to(device), y[:5].flip(0)) if with_bank else None
    kw = dict(hard_positives=2, hard_negatives=3, contrast=bank, backend=backend)
    plain, = torch.autograd.grad(ct.supcon_loss(z, y, 0.5, **kw), z)
    grad, = torch.autograd.grad(ct.supcon_loss(z, y, 0.5, **kw), z, create_graph=True)
    torch.testing.assert_close(grad, plain, rtol=0, atol=0)  # first derivatives unchanged
    if backend == "torch":
        assert torch.autograd.gradgradcheck(lambda t: ct.supcon_loss(t, y, 0.5, **kw), (z,))
    else:
        with pytest.raises(RuntimeError, match="first derivatives only.*backend='torch'"):
            torch.autograd.grad(grad.square().sum(), z)


@pytest.mark.parametrize("backend,device", CASES, ids=IDS)
def test_labels_are_the_callers_to_change(backend, device):
    # the fused Function keeps its own copy: int64 labels made under inference mode, and labels
    # changed in place between forward and backward (a reused buffer), work as on the torch backend
    z, y = _batch(device)
    ref, = torch.autograd.grad(ct.supcon_loss(z, y, 0.5, backend="torch"), z)
    with torch.inference_mode():
        y_inf = y.clone()
    grad, = torch.autograd.grad(ct.supcon_loss(z, y_inf, 0.5, backend=backend), z)
    torch.testing.assert_close(grad, ref, rtol=1e-9, atol=1e-12)
    y_buf = y.clone()
    loss = ct.supcon_loss(z, y_buf, 0.5, backend=backend)
    y_buf.fill_(0)
    grad, = torch.autograd.grad(loss, z)
    torch.testing.assert_close(grad, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend,device", CASES, ids=IDS)
def test_func_transforms_work_or_say_which_backend_does(backend, device):
    z, y = _batch(device)
    f = lambda t: ct.supcon_loss(t, y, 0.5, backend=backend)  # noqa: E731
    if backend == "torch":
        ref, = torch.autograd.grad(f(z), z)
        torch.testing.assert_close(torch.func.grad(f)(z.detach()), ref)
    else:
        with pytest.raises(RuntimeError, match="torch.func transforms.*backend='torch'"):
            torch.func.grad(f)(z.detach())


@pytest.mark.parametrize("backend,device", CASES, ids=IDS)
@pytest.mark.parametrize("k", [12, 300, 2 ** 40])
def test_k_above_the_candidates_is_the_unmined_loss(backend, device, k):
    # min(k, |P_i|) keeps every candidate once k >= M - 1: the unmined loss and gradient, also in
    # float64 on triton, whose on-chip merge takes at most 256 (it does not mine such a k at all)
    z, y = _batch(device)
    ref, = torch.autograd.grad(ct.supcon_loss(z, y, 0.5, backend="torch"), z)
    for kw in (dict(hard_positives=k), dict(hard_negatives=k), dict(hard_positives=k, hard_negatives=k)):
        for variant in ("supcon", "infonce"):
            loss = ct.supcon_loss(z, y, 0.5, backend=backend, variant=variant, **kw)
            want = ct.supcon_loss(z, y, 0.5, backend="torch", variant=variant)
            torch.testing.assert_close(loss, want, rtol=1e-9, atol=1e-12)
    grad, = torch.autograd.grad(ct.supcon_loss(z, y, 0.5, backend=backend, hard_positives=k), z)
    torch.testing.assert_close(grad, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend,device", CASES, ids=IDS)
@pytest.mark.parametrize("wrap", ["checkpoint-reentrant", "checkpoint", "save_on_cpu"])
def test_activation_checkpointing_and_saved_tensor_hooks(backend, device, wrap):
    # Memory savers users wrap a training step in: the loss recomputed inside
    # torch.utils.checkpoint (the non-reentrant one checks that the recomputation saves the same
    # tensors), or its saved tensors moved to the host. Same loss and gradient as a plain call.
    from torch.utils.checkpoint import checkpoint
    z, y = _batch(device, m=17)
    y[4] = -1
    kw = dict(hard_negatives=3, backend=backend)
    plain, = torch.autograd.grad(ct.supcon_loss(z, y, 0.5, **kw), z)
    step = lambda t: ct.supcon_loss(t * 1.0, y, 0.5, **kw)  # noqa: E731
    if wrap == "save_on_cpu":
        with torch.autograd.graph.save_on_cpu():
            loss = step(z)
    else:
        loss = checkpoint(step, z, use_reentrant=wrap == "checkpoint-reentrant")
    loss.backward()  # (the reentrant checkpoint refuses autograd.grad)
    torch.testing.assert_close(z.grad, plain, rtol=0, atol=0)
