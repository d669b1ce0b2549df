"""The precision helpers every backend shares (ct_kernels/precision.py)."""
import math

import torch

from ct_kernels import precision
from ct_kernels.precision import fp32_matmul_precision, half_weight_scale


def test_half_weight_scale_is_a_power_of_two_that_brings_weights_near_one():
    for m, gmax in ((4099, 1 / 4099), (32768, 1 / 32768), (16, 3.0), (10**6, 1e-7), (100, 65504.0)):
        g = torch.full((7,), gmax / 2)
        g[3] = -gmax  # the largest magnitude may be negative
        s = half_weight_scale(g, m)
        e = math.log2(float(s))
        assert s.dtype == torch.float32 and s.dim() == 0 and e == int(e)
        # the largest H (~ 2 max|g|) stays below 2 * 2^14; a typical one (~ max|g| / m) is near 1
        assert gmax * float(s) <= min(m, 2**14) < 2 * gmax * float(s)
    # the scaled fp16 products of the typical weights are normal numbers, not zeros
    m = 32768
    h = torch.full((4,), (1 / m) * (1 / m))
    assert torch.all(h.half() == 0)
    assert torch.all((h * half_weight_scale(torch.full((m,), 1 / m), m)).half() > 6.1e-5)


def test_half_weight_scale_without_usable_weights_is_one():
    for g in (torch.zeros(5), torch.tensor([1.0, float("nan")]), torch.tensor([float("inf"), 1.0])):
        assert float(half_weight_scale(g, 100)) == 1.0
    assert 2.0 ** -100 <= float(half_weight_scale(torch.tensor([1e38]), 1)) < 1  # clamped exponent


def test_precision_setting_is_read_at_trace_time_under_torch_compile():
    """torch.compile(fullgraph=True) of code that reads the setting (supcon_loss on CUDA float32
    does): dynamo cannot trace the fp32_precision getter on torch 2.11 (a graph break, an error
    with fullgraph). The GPU machine's torch.compile test found it; this is its CPU form. Called
    as supcon.py calls it, an attribute of the module: torch 2.5 replaced a global imported by name
    with the constant it read, and the next eager call raised."""
    @torch.compile(fullgraph=True, backend="eager")
    def scaled(x):
        return x * 2 if precision.fp32_matmul_allows_tf32() else x * 3

    for tf32, factor in ((True, 2.0), (False, 3.0)):
        torch._dynamo.reset()
        with fp32_matmul_precision(tf32):
            assert precision.fp32_matmul_allows_tf32() is tf32
            assert torch.equal(scaled(torch.ones(2)), torch.full((2,), factor))
            assert precision.fp32_matmul_allows_tf32() is tf32  # still the function, in eager code
    torch._dynamo.reset()


def test_no_module_imports_the_constant_result_by_name():
    """The CUDA float32 path of supcon_loss reads the setting inside compiled code; on torch 2.5
    dynamo then overwrote the caller's global of that name with a bool. CPU tests cannot reach
    that path, so this checks what it depends on: every other module calls it through
    ``precision``."""
    import importlib
    import pkgutil

    import ct_kernels
    names = [m.name for m in pkgutil.walk_packages(ct_kernels.__path__, "ct_kernels.")]
    holders = [n for n in names if n != "ct_kernels.precision"
               and hasattr(importlib.import_module(n), "fp32_matmul_allows_tf32")]
    assert "ct_kernels.supcon" in names and not holders
