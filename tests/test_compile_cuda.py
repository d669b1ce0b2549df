"""torch.compile of a training step with the fused backends on CUDA tensors (GPU only; the CPU
counterparts are in test_module.py and test_amp_determinism.py). Both backends reach
torch.compile as torch.library custom ops with fake kernels, so fullgraph=True must hold."""
import pytest
import torch

import ct_kernels as ct

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("kw", [dict(), dict(hard_negatives=4), dict(variant="infonce")],
                         ids=["supcon", "mined", "infonce"])
@pytest.mark.parametrize("backend", ["triton", "native"])
def test_compiled_step_matches_eager_on_cuda(backend, kw):
    try:
        ct.backend_for("cuda", backend)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 4, stride=4), torch.nn.GELU(),
                                torch.nn.Conv2d(16, 16, 1)).cuda().double()
    crit = ct.ContrastivePatchLoss(3, min_purity=0.5, backend=backend, **kw)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64).cuda()
    mask = torch.randint(0, 3, (4, 8, 8), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2).cuda()

    def step(m):
        loss = crit(m(images), mask)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    eager_loss, eager_grads = step(model)
    model.zero_grad()
    compiled_loss, compiled_grads = step(torch.compile(model, fullgraph=True))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-9, atol=1e-12)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    torch._dynamo.reset()
    whole = torch.compile(lambda im: crit(model(im), mask), fullgraph=True)(images)
    torch.testing.assert_close(whole, eager_loss, rtol=1e-9, atol=1e-12)
