"""The Triton kernels compile for sm_90 / sm_80 as the host wrappers launch them, without a GPU (and on
sm_80 / sm_89 some configuration fits the card's shared memory where the first does not).

CI runs the Triton kernels through the interpreter, which never compiles them: a lowering error,
shared memory over the card's limit or a grid over CUDA's limits would first show on a GPU.
benchmarks/offline_compile.py --check compiles every launch of a set of forward + backward steps
(each input dtype, edge D's, mining, every mask dtype) with Triton's own JIT pointed at a stand-in
sm_90 driver. It needs a process without TRITON_INTERPRET, so it runs in subprocesses, two
interleaved halves at once (one per CI core).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 2


def _ptxas() -> Path | None:
    try:
        import triton
    except ImportError:
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return path if path.exists() else None


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the Triton tests compile for it themselves")
@pytest.mark.skipif(_ptxas() is None, reason="needs Triton with its bundled ptxas")
def test_triton_kernels_compile_for_the_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "offline_compile.py"), "--check",
                               "--shard", f"{i}/{SHARDS}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(SHARDS)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    failed = [out for p, out in zip(procs, outputs) if p.returncode != 0]
    assert not failed, "\n".join(out[-6000:] for out in failed)
    # every scenario ran: the summary lines add up to the whole list, none failed
    counts = [line for out in outputs for line in out.splitlines() if " scenarios, triton " in line]
    assert len(counts) == SHARDS and all(line.endswith(", 0 failed") for line in counts), outputs
