"""AMP, determinism and a compiled training step, every backend that runs on CPU."""

import pytest
import torch

import ct_kernels as ct
from compiled_step import check_compiled_step
from cpu_backends import cpu_backends


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 12, generator=g)
    y = torch.randint(0, 4, (40,), generator=g)
    y[::9] = -1
    return x, y


# float16 too: ignored rows (every 9th here) once made its loss NaN (F.normalize's eps is 0 in float16)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", cpu_backends(with_triton=False))  # 16-bit dots: not in the interpreter
def test_autocast_keeps_feature_dtype_and_gives_fp32_loss(backend, dtype, monkeypatch):
    x, y = _data()
    lin = torch.nn.Linear(12, 8)
    seen = []
    if backend == "native":
        from ct_kernels import _native
        real = _native.supcon_forward
        monkeypatch.setattr(_native, "supcon_forward", lambda u, *a: (seen.append(u.dtype), real(u, *a))[1])
    with torch.autocast("cpu", dtype=dtype):
        feats = lin(x)
        assert feats.dtype == dtype
        loss = ct.supcon_loss(feats, y, 0.1, backend=backend)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    if backend == "native":
        assert seen == [dtype]  # the kernel saw the features' own dtype
    scaler = torch.amp.GradScaler("cpu")
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.isfinite(p).all() for p in lin.parameters())
    # the same loss without autocast, from the same bf16 features: autocast changed nothing inside
    ref = ct.supcon_loss(feats.detach(), y, 0.1, backend=backend)
    torch.testing.assert_close(loss.detach(), ref)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("kw", [dict(), dict(variant="infonce", hard_negatives=3)], ids=["supcon", "mined-infonce"])
def test_deterministic_under_use_deterministic_algorithms(backend, kw):
    x, y = _data(1)
    outs = []
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            z = x.clone().requires_grad_()
            loss = ct.supcon_loss(z, y, 0.2, backend=backend, **kw)
            loss.backward()
            outs.append((loss.detach(), z.grad))
    finally:
        torch.use_deterministic_algorithms(prev)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("backend", cpu_backends())
def test_compiled_training_step_matches_eager(backend):
    check_compiled_step(backend)
