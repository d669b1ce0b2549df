"""Compile the Triton kernels for a GPU architecture without a GPU, exactly as the host wrappers
launch them; report registers, spills and shared memory, or check that every launch compiles.

    python benchmarks/offline_compile.py [--arch 90] [--d 128] [--dtype bf16|fp16|tf32|fp32|3xtf32|fp64] [--k 64]
    python benchmarks/offline_compile.py --check [--shard 0/2]     # what tests/test_gpu_compile.py runs

How: a stand-in Triton driver answers "the current device is an sm_<arch> GPU", and every
`kernel[grid](...)` launch of the host wrappers (ct_kernels/triton_ops, run on CPU tensors) becomes
`kernel.run(..., warmup=True)`: Triton's own JIT specializes the arguments (dtypes, 16-byte
alignment, divisibility) and compiles to a cubin, and nothing runs. So the launch constants come
from the code that the GPU runs, not from a copy kept here. The interpreter (TRITON_INTERPRET=1,
which CI uses for the numbers) never compiles; this catches what only a GPU compile meets:
lowering errors, shared memory over the card's limit, grids over CUDA's limits. Registers and
spills (ptxas -v on the generated PTX, by the ptxas Triton runs) are evidence of cost, not errors.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: the interpreter does not compile")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import KernelInterface  # noqa: E402

from ct_kernels.backends import place_rows  # noqa: E402
from ct_kernels.triton_ops import supcon as S  # noqa: E402
from ct_kernels.triton_ops import tuning  # noqa: E402

P = importlib.import_module("ct_kernels.triton_ops.patch_labels")  # the package's attribute is the function

# opt-in shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin): H100 / H200 (90), A100 (80),
# RTX 3090 / A10 (86), RTX 4090 / L4 / L40S (89), B200 (100), RTX 5090 (120), T4 (75)
MAX_SHARED = {90: 232448, 80: 166912, 86: 101376, 89: 101376, 100: 232448, 120: 101376, 75: 65536}
MAX_GRID_YZ = 65535
# input dtypes by name: (torch dtype, tf32 allowed); "3xtf32" is float32 without tf32 under
# CT_KERNELS_FP32_3XTF32=1 (split3 dots), "fp32" the exact default ("ieee" dots)
DTYPES = {"bf16": (torch.bfloat16, False), "fp16": (torch.float16, False), "tf32": (torch.float32, True),
          "fp32": (torch.float32, False), "3xtf32": (torch.float32, False), "fp64": (torch.float64, False)}


class _StandInDriver:
    """What the JIT asks the active driver before compiling; launching is never reached."""

    def __init__(self, arch: int):
        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        # the JIT caches compiled kernels per device: one "device" per architecture
        return self.arch

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


class Launch(NamedTuple):
    kernel: str
    grid: tuple
    compiled: object  # triton CompiledKernel (asm, metadata)
    options: frozenset  # the launch options given (tuning.LAUNCH_OPTIONS must be among them)


@contextlib.contextmanager
def compiling_launches(arch: int):
    """Within: `kernel[grid](...)` compiles for sm_<arch> and records a Launch instead of running."""
    launches: list[Launch] = []
    saved_getitem = KernelInterface.__getitem__

    def getitem(kernel, grid):
        def launch(*args, **kwargs):
            compiled = kernel.run(*args, grid=grid, warmup=True, **kwargs)
            launches.append(Launch(kernel.fn.__name__, tuple(grid), compiled, frozenset(kwargs)))
        return launch

    driver.set_active(_StandInDriver(arch))
    KernelInterface.__getitem__ = getitem
    try:
        yield launches
    finally:
        KernelInterface.__getitem__ = saved_getitem


@contextlib.contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _fp32_mode(dtype: str):
    """The environment under which float32 without tf32 takes split3 dots ("3xtf32") or not."""
    return _env(CT_KERNELS_FP32_3XTF32="1" if dtype == "3xtf32" else None)


def supcon_step(dtype: str, d: int, variant: str = "supcon", kp: int = 0, kn: int = 0,
                config: tuning.Config | None = None, m: int = 320) -> None:
    """One forward + backward through the Triton host wrapper (S._Call) on CPU tensors:
    `config` forced, else the default (first) candidate, as an untimed call takes."""
    torch_dtype, tf32 = DTYPES[dtype]
    g = torch.Generator().manual_seed(0)
    u = torch.randn(m, d, generator=g).to(torch_dtype)
    labels = torch.randint(0, 6, (m,), generator=g)
    forced = ",".join(map(str, config)) if config else None
    with _env(CT_KERNELS_TRITON_CONFIG=forced, CT_KERNELS_TRITON_AUTOTUNE="0"), _fp32_mode(dtype):
        call = S._Call(u, labels, -1, 10.0, variant, kp, kn, tf32)
        cfg = call.config()
        loss, _, saved = call.forward(cfg)
        call.backward(cfg, place_rows(saved, 0, m), loss.new_ones(m))


def patch_labels_step(mask_dtype: torch.dtype, ph: int, pw: int, num_classes: int = 6, patches: int = 3) -> None:
    mask = torch.zeros((2, 4 * ph, patches * pw), dtype=mask_dtype)
    P.patch_labels(mask, ph, pw, num_classes, 255 if mask_dtype != torch.bool else 2)


class Scenario(NamedTuple):
    name: str
    arch: int
    run: Callable[[], None]


# --check: (input dtype, D, variant, hard_positives, hard_negatives), each with its default
# configuration (the one untimed calls and the GPU tests take). D = 40 pads to 64, D = 1 and
# 1024 are the edges; fp16 shares bf16's code and fp64 mining (the top-k merge) compiles slowly,
# so they get the headline D only. About a minute on 2 cores with an empty Triton cache.
CHECK_SUPCON = (
    [("bf16", 128, "supcon", 0, 0), ("bf16", 128, "infonce", 0, 0), ("bf16", 128, "supcon", 64, 64),
     ("bf16", 40, "supcon", 0, 0), ("bf16", 40, "supcon", 64, 64), ("bf16", 128, "infonce", 0, 300)]
    + [("bf16", d, "supcon", k, k) for d in (1, 1024) for k in (0, 8)]
    + [("fp16", 128, "supcon", 0, 0), ("fp16", 128, "supcon", 64, 64)]
    + [(dt, 128, v, k, k) for dt in ("tf32", "fp32", "fp64") for v, k in (("supcon", 0), ("infonce", 0),
                                                                          ("supcon", 64))]
    + [("3xtf32", 128, v, k, k) for v, k in (("supcon", 0), ("infonce", 0), ("supcon", 64))]
    + [("tf32", 40, "supcon", 0, 0), ("fp32", 40, "supcon", 0, 0), ("3xtf32", 40, "supcon", 0, 0),
       ("fp32", 1024, "supcon", 8, 8)])


# --check on cards with less shared memory than sm_90's 227 KB a block, where the first candidates
# can be refused (tuning._first_that_launches takes the next): (arch, input dtype, D, variant, k).
# sm_89 stands for every 99 KB card (sm_86 / sm_89 / sm_120: RTX 3090 / 4090 / 5090, A10, L4, L40S),
# sm_80 for the A100's 163 KB, sm_75 for the T4's 64 KB. The deepest fallbacks seen (Triton 3.6 and
# 3.8): bf16 D = 256 takes the sixth candidate on sm_89, the second on sm_80; tf32 D = 128 mined the
# fourth on sm_89; fp16 D = 128 the third on sm_75.
CHECK_FIT = [(89, "bf16", 128, "infonce", 0), (89, "bf16", 256, "supcon", 0), (89, "tf32", 128, "supcon", 64),
             (80, "bf16", 256, "supcon", 0), (75, "fp16", 128, "supcon", 0)]


def tuner_candidates(dtype: str, d: int, mined: bool) -> list[tuning.Config]:
    """tuning.gpu_candidates for an input dtype by name, with the dot precision the wrapper takes."""
    torch_dtype, tf32 = DTYPES[dtype]
    with _fp32_mode(dtype):
        prec = S._dot_precision(torch_dtype, tf32)
    return tuning.gpu_candidates(d, torch_dtype, mined, prec)


def first_fitting_step(arch: int, dtype: str, d: int, variant: str, k: int) -> None:
    """The candidates in the tuner's order, each compiled for sm_<arch> (forward + backward) until
    every kernel of one fits the card's shared memory, as the untimed pick on such a card takes
    them; raises if none does."""
    needs = []
    for i, cfg in enumerate(tuner_candidates(dtype, d, k > 0)):
        with compiling_launches(arch) as launches:
            supcon_step(dtype, d, variant, k, k, cfg)
        problems = [p for launch in launches for p in launch_problems(launch, arch)]
        if not problems:
            print(f"     sm_{arch} {dtype} D={d} {variant} k={k}: candidate {i} {tuple(cfg)} fits after {needs}")
            return
        needs.append(max(launch.compiled.metadata.shared for launch in launches))
    raise RuntimeError(f"no candidate fits sm_{arch}'s {MAX_SHARED[arch]} bytes of shared memory: {needs}")


def check_scenarios() -> list[Scenario]:
    """What --check compiles: CHECK_SUPCON for sm_90, the headline bf16 step for sm_80, CHECK_FIT,
    and the patch-label kernel for every mask dtype."""
    out = [Scenario(f"{dt} D={d} {v}" + (f" mined {kp}/{kn}" if kp or kn else ""), 90,
                    lambda a=(dt, d, v, kp, kn): supcon_step(*a))
           for dt, d, v, kp, kn in CHECK_SUPCON]
    out.append(Scenario("bf16 D=128 supcon", 80, lambda: supcon_step("bf16", 128)))
    out += [Scenario(f"{dt} D={d} {v}" + (f" mined {k}/{k}" if k else "") + ", first candidate that fits", arch,
                     lambda a=(arch, dt, d, v, k): first_fitting_step(*a))
            for arch, dt, d, v, k in CHECK_FIT]
    for mdt in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool):
        for ph, pw in ((16, 16), (8, 14)):
            out.append(Scenario(f"patch labels {str(mdt)[6:]} {ph}x{pw}", 90,
                                lambda mdt=mdt, ph=ph, pw=pw: patch_labels_step(mdt, ph, pw)))
    out.append(Scenario("patch labels uint8 1x1", 90, lambda: patch_labels_step(torch.uint8, 1, 1)))
    for classes in (1, 16, 1000):  # an int argument equal to 1 becomes a constant in the JIT
        out.append(Scenario(f"patch labels uint8 16x16, {classes} classes", 90,
                            lambda classes=classes: patch_labels_step(torch.uint8, 16, 16, classes)))
    # the benchmark's 1024-pixel rows: the word kernel's whole blocks (128 patches, 4 warps)
    out.append(Scenario("patch labels uint8 16x16, 64 patches a row", 90,
                        lambda: patch_labels_step(torch.uint8, 16, 16, patches=64)))
    return out


def launch_problems(launch: Launch, arch: int) -> list[str]:
    shared = launch.compiled.metadata.shared
    out = []
    if shared > MAX_SHARED[arch]:
        out.append(f"{launch.kernel}: {shared} bytes of shared memory > sm_{arch}'s {MAX_SHARED[arch]}")
    if any(g > MAX_GRID_YZ for g in launch.grid[1:]) or launch.grid[0] >= 2 ** 31:
        out.append(f"{launch.kernel}: grid {launch.grid} beyond CUDA's limits")
    for option in tuning.LAUNCH_OPTIONS.keys() - launch.options:  # else Triton's default decides
        out.append(f"{launch.kernel}: launched without {option}= (tuning.LAUNCH_OPTIONS)")
    return out


def check(shard: int, shards: int) -> int:
    """Compile every launch of check_scenarios()[shard::shards]; 1 if any fails."""
    failures = []
    scenarios = check_scenarios()[shard::shards]
    for sc in scenarios:
        t0 = time.perf_counter()
        with compiling_launches(sc.arch) as launches:
            try:
                sc.run()
            except Exception as exc:  # a compile error is the finding: name the scenario and go on
                failures.append(f"sm_{sc.arch} {sc.name}: {type(exc).__name__}: {str(exc)[:400]}")
                continue
        problems = [p for launch in launches for p in launch_problems(launch, sc.arch)]
        failures += [f"sm_{sc.arch} {sc.name}: {p}" for p in problems]
        kernels = ", ".join(f"{x.kernel} {x.compiled.metadata.shared} B" for x in launches)
        took = f" ({time.perf_counter() - t0:.1f} s)"
        print((f"ok   sm_{sc.arch} {sc.name}: {kernels}" if not problems else f"FAIL sm_{sc.arch} {sc.name}") + took)
    print(f"{len(scenarios)} scenarios, triton {triton.__version__}, {len(failures)} failed")
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


def ptxas_report(compiled, arch: int) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes): ptxas -v of the kernel's PTX, by the ptxas
    that Triton itself runs for the architecture (Triton 3.9 takes its CUDA 13 one, "ptxas-blackwell",
    from sm_90 on: the wheel's plain ptxas, CUDA 12.9, rejects the PTX 9.4 it writes)."""
    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "k.ptx"
        ptx.write_text(compiled.asm["ptx"])
        suffix = "a" if arch >= 90 else ""
        res = subprocess.run([str(ptxas), "-v", f"--gpu-name=sm_{arch}{suffix}", str(ptx), "-o", os.devnull],
                             capture_output=True, text=True, check=True)
    text = res.stdout + res.stderr
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    st, ld = (int(x) for x in re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text).groups())
    return regs, st, ld


def report(arch: int, d: int, dtype: str, k: int) -> None:
    """Every GPU candidate configuration of the tuner, unmined (supcon, infonce) and mined."""
    print(f"triton {triton.__version__}, sm_{arch}, D={d}, {dtype}, k={k}")
    print(f"{'step':<16} {'kernel':<22} {'config (bm,bn,bd,bdo,warps,stages)':<36} regs  spill st/ld  shared")
    for mined in (False, True):
        for cfg in tuner_candidates(dtype, d, mined):
            for variant in (("supcon",) if mined else ("supcon", "infonce")):
                step = variant + (" mined" if mined else "")
                with compiling_launches(arch) as launches:
                    try:
                        supcon_step(dtype, d, variant, k if mined else 0, k if mined else 0, cfg)
                    except Exception as exc:  # a configuration the compiler rejects is a finding too
                        print(f"{step:<16} {'':<22} {str(tuple(cfg)):<36} failed: {type(exc).__name__}: "
                              f"{str(exc)[:80]}")
                for launch in launches:
                    regs, st, ld = ptxas_report(launch.compiled, arch)
                    print(f"{step:<16} {launch.kernel:<22} {str(tuple(cfg)):<36} {regs:>4}  {st:>5}/{ld:<5}  "
                          f"{launch.compiled.metadata.shared}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compile the check scenarios; exit 1 on a failure")
    ap.add_argument("--shard", default="0/1", help="i/n: the i-th of n interleaved parts of --check")
    ap.add_argument("--arch", type=int, default=90, choices=sorted(MAX_SHARED))
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16",
                    help="tf32: float32 inputs with tf32 allowed; fp32: without (exact); 3xtf32: without, split3 dots")
    ap.add_argument("--k", type=int, default=64, help="hard_positives = hard_negatives for the mined rows")
    args = ap.parse_args()
    if args.check:
        i, n = (int(x) for x in args.shard.split("/"))
        return check(i, n)
    report(args.arch, args.d, args.dtype, args.k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
