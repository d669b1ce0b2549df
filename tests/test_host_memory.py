"""Extra memory of a Triton step from the host's allocations (benchmarks/host_memory.py: the
kernels launched as no-ops, the profiler's memory timeline): O(N x D) with a small constant."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ct_kernels import triton_ops as T

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "host_memory.py"


@pytest.mark.skipif(not T.AVAILABLE, reason=f"triton unavailable: {T.UNAVAILABLE_REASON}")
def test_bf16_step_holds_a_few_copies_of_z():
    """N = 32768, D = 128, bf16: U, dU, z.grad and three 8 MiB float32 chunks of the normalisation's
    backward, 6.0 copies of z. torch.isfinite(u).all() (|u| and three bool masks) and five float32
    temporaries of the whole batch made it 13."""
    out = subprocess.run([sys.executable, str(SCRIPT), "32768"], capture_output=True, text=True, check=True,
                         timeout=300).stdout
    copies = float(re.search(r"\(([\d.]+) copies of z", out).group(1))
    assert copies < 7, out
