"""A small training step run eagerly and under torch.compile(fullgraph=True), shared by the CPU
and CUDA compile tests: the loss and the parameters' gradients must agree."""
import torch

import ct_kernels as ct


def check_compiled_step(backend, device="cpu", dtype=torch.float32, loss_tol=(1e-5, 1e-6),
                        grad_tol=(1e-4, 1e-6), **criterion_kw):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.GELU(),
                                torch.nn.Conv2d(8, 8, 1)).to(device, dtype)
    crit = ct.ContrastivePatchLoss(3, min_purity=0.5, backend=backend, **criterion_kw)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 16, 16, generator=g, dtype=dtype).to(device)
    mask = torch.randint(0, 3, (2, 4, 4), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2).to(device)

    def step(m):
        loss = crit(m(images), mask)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    eager_loss, eager_grads = step(model)
    model.zero_grad()
    compiled_loss, compiled_grads = step(torch.compile(model, fullgraph=True))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=loss_tol[0], atol=loss_tol[1])
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=grad_tol[0], atol=grad_tol[1])
    torch._dynamo.reset()
    whole = torch.compile(lambda im: crit(model(im), mask), fullgraph=True)(images)  # the criterion compiled too
    torch.testing.assert_close(whole, eager_loss, rtol=loss_tol[0], atol=loss_tol[1])
