"""torch.compile of a training step with the fused backends on CUDA tensors (GPU only; the CPU
counterpart is in test_amp_determinism.py). Both backends reach torch.compile as torch.library
custom ops with fake kernels, so fullgraph=True must hold."""
import pytest
import torch

import ct_kernels as ct
from compiled_step import check_compiled_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("kw", [dict(), dict(hard_negatives=4), dict(variant="infonce")],
                         ids=["supcon", "mined", "infonce"])
@pytest.mark.parametrize("backend", ["triton", "native"])
def test_compiled_step_matches_eager_on_cuda(backend, kw):
    try:
        ct.backend_for("cuda", backend)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    # float64: exact dots on both backends, so eager and compiled agree to rounding
    check_compiled_step(backend, "cuda", torch.float64, loss_tol=(1e-9, 1e-12), grad_tol=(1e-7, 1e-10), **kw)
