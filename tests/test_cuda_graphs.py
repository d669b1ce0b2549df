"""The fused losses inside CUDA graphs, and on a GPU that is not the current one (GPU only).

torch.compile(mode="reduce-overhead") and hand-made graphs capture the host wrappers too: a
host-to-device copy or a host sync there breaks the capture, and a tuner that times candidates
must not run inside it. Triton launches on the current device, so the wrappers select the
tensor's (the native ops hold a CUDAGuard).
"""
import pytest
import torch

import ct_kernels as ct

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _backend(name):
    try:
        ct.backend_for("cuda", name)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    return name


def _batch(m, d, seed, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, d, generator=g).to(device)
    labels = torch.randint(0, 5, (m,), generator=g).to(device)
    labels[::11] = -1
    return z, labels


@pytest.mark.parametrize("kw", [dict(), dict(hard_positives=3, hard_negatives=5), dict(variant="infonce")],
                         ids=["supcon", "mined", "infonce"])
@pytest.mark.parametrize("backend", ["triton", "native"])
def test_graph_replay_matches_eager(backend, kw):
    _backend(backend)
    m, d = 333, 64
    z_static, labels_static = _batch(m, d, 0)
    z_static.requires_grad_(True)

    def step():
        loss = ct.supcon_loss(z_static, labels_static, 0.1, backend=backend, **kw)
        loss.backward()
        return loss

    side = torch.cuda.Stream()  # warm-up off the default stream (tuning, compiles), as PyTorch asks
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            z_static.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    z_static.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss_static = step()
    for seed in (1, 2):
        z_new, labels_new = _batch(m, d, seed)
        with torch.no_grad():
            z_static.copy_(z_new)
        labels_static.copy_(labels_new)
        graph.replay()
        z_eager = z_new.clone().requires_grad_(True)
        loss_eager = ct.supcon_loss(z_eager, labels_new, 0.1, backend=backend, **kw)
        loss_eager.backward()
        torch.testing.assert_close(loss_static, loss_eager.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(z_static.grad, z_eager.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", ["triton", "native"])
def test_tensors_on_a_gpu_that_is_not_current(backend):
    _backend(backend)
    z, labels = _batch(300, 32, 3, device="cuda:1")
    z.requires_grad_(True)
    with torch.cuda.device(0):
        loss = ct.supcon_loss(z, labels, 0.1, backend=backend)
        loss.backward()
        labels_img, purity = ct.patch_labels(torch.randint(0, 4, (2, 32, 32), device="cuda:1"), 8, 4,
                                             ignore_index=255, backend=backend)
    z_ref = z.detach().cpu().double().requires_grad_(True)
    ref = ct.supcon_loss(z_ref, labels.cpu(), 0.1, backend="torch")
    ref.backward()
    torch.testing.assert_close(loss.detach().cpu().double(), ref.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(z.grad.cpu().double(), z_ref.grad, rtol=1e-3, atol=1e-6)
    assert labels_img.device == torch.device("cuda:1") and purity.device == torch.device("cuda:1")
