"""``python -m ct_kernels.selfcheck``: are the fused kernels right on this machine?

Runs every fused backend that can take the device's tensors on small random batches (odd sizes,
ignored rows, several classes) and compares loss rows and gradients with the float64 dense
reference, by the library's error rule: float64 within 1e-10, float32 (tf32 off) within 1e-5
(FP32_3XTF32_TOLERANCE under CT_KERNELS_FP32_3XTF32=1, see precision.fp32_3xtf32),
tf32 / bf16 / fp16 within twice PyTorch's own error at that precision (matmul in that precision,
float32 softmax) plus 1e-3, NaN never. Mining (both sides, and each side alone) is compared in
float32 / float64 only (in reduced precision near-ties may select other pairs, see DESIGN.md).
Patch labels must equal the reference exactly. Prints one line per check and exits 1 if any
fails.

    python -m ct_kernels.selfcheck                  # cuda if a GPU is visible, else cpu
    python -m ct_kernels.selfcheck --device cpu     # Triton on CPU needs TRITON_INTERPRET=1
    CT_KERNELS_FP32_3XTF32=1 python -m ct_kernels.selfcheck  # float32 (tf32 off) as 3xTF32
    CT_KERNELS_NATIVE_MMA=0 python -m ct_kernels.selfcheck   # native: WMMA tiles, no mma.sync

Each Triton check takes the default configuration, the first the card launches (`--autotune`: the
tuner's pick, after timing every candidate: with an empty Triton cache that took over 2 minutes on
an H200). Timing is benchmarks/gpu_bench.py's job.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import zlib
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import available_backends, backend_for, patch_labels, supcon_loss
from .precision import FP32_3XTF32_TOLERANCE, fp32_3xtf32, fp32_matmul_precision
from .reference import supcon_rows_reference

TEMPERATURE = 0.1
IGNORE = -1
# input precisions: (dtype, tf32, devices)
PRECISIONS = {"fp64": (torch.float64, False, ("cpu", "cuda")), "fp32": (torch.float32, False, ("cpu", "cuda")),
              "tf32": (torch.float32, True, ("cuda",)), "bf16": (torch.bfloat16, False, ("cpu", "cuda")),
              "fp16": (torch.float16, False, ("cpu", "cuda"))}
EXACT_LIMIT = {"fp64": 1e-10, "fp32": 1e-5}
REDUCED_FLOOR = 1e-3
# env switches that change which kernels run: shown in the header
SWITCHES = ("CT_KERNELS_BACKEND", "CT_KERNELS_CPU_MINING_ISA", "CT_KERNELS_FP32_3XTF32", "CT_KERNELS_NATIVE_MMA",
            "CT_KERNELS_NATIVE_MMA_ROWS", "CT_KERNELS_NATIVE_TC", "CT_KERNELS_TRITON_CONFIG", "CT_KERNELS_TRITON_CLASS_RUNS",
            "CT_KERNELS_TRITON_MINING", "CT_KERNELS_TRITON_MINED_BWD", "CT_KERNELS_TRITON_MINED_MASKS",
            "CT_KERNELS_TRITON_SELECT_COUNT", "CT_KERNELS_TRITON_SELECT_STAGES")


class Result(NamedTuple):
    what: str
    text: str
    ok: bool


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (NaN if out has a NaN; the plain norm if ref is 0)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    diff, den = (out - ref).norm(), ref.norm()
    return float(diff / den) if den > 0 else float(diff)


def batch(m: int, d: int, classes: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, labels (every 9th row ignored) and upstream weights of the loss rows."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (m,), generator=g)
    labels[::9] = IGNORE
    grad = torch.randn(m, generator=g, dtype=torch.float64)
    return z.to(device), labels.to(device), grad.to(device)


def _loss_and_grad(z, labels, grad, variant, mining, backend, tf32, temperature):
    """Loss rows and dL/dz of sum(grad * rows) through the public API; mining = (kp, kn)."""
    z = z.detach().clone().requires_grad_(True)
    with fp32_matmul_precision(tf32) if z.is_cuda else contextlib.nullcontext():
        rows = supcon_loss(z, labels, temperature, variant=variant, hard_positives=mining[0],
                           hard_negatives=mining[1], ignore_index=IGNORE, reduction="none", backend=backend)
        (rows.double() * grad.double()).sum().backward()
    return rows.detach(), z.grad


def _same_precision_baseline(z, labels, grad, variant, tf32, temperature):
    """PyTorch at the kernel's precision: normalised in z's dtype, s = U U^T in z's dtype (tf32 if
    asked), float32 softmax."""
    z = z.detach().clone().requires_grad_(True)
    with fp32_matmul_precision(tf32) if z.is_cuda else contextlib.nullcontext():
        u = F.normalize(z, dim=1)
        rows, _ = supcon_rows_reference(u, labels, labels != IGNORE, temperature, variant, half_matmul=True)
        (rows.double() * grad.double()).sum().backward()
    return rows.detach(), z.grad


def errors_and_limit(z: torch.Tensor, labels: torch.Tensor, grad: torch.Tensor, prec: str, variant: str,
                     mining: tuple, backend: str, temperature: float = TEMPERATURE):
    """((loss error, gradient error), limit): the backend's rows of ``z`` (already in ``prec``'s
    dtype) and dL/dz against float64 on the same rounded input, by the tests' rule (see the module
    docstring); ``grad`` weighs the rows. ``labels`` ignore IGNORE."""
    tf32 = PRECISIONS[prec][1]
    rows, dz = _loss_and_grad(z, labels, grad, variant, mining, backend, tf32, temperature)
    ref_rows, ref_dz = _loss_and_grad(z.double(), labels, grad, variant, mining, "torch", False, temperature)
    if prec in EXACT_LIMIT:
        limit = FP32_3XTF32_TOLERANCE if prec == "fp32" and fp32_3xtf32() else EXACT_LIMIT[prec]
    else:
        base_rows, base_dz = _same_precision_baseline(z, labels, grad, variant, tf32, temperature)
        limit = 2 * max(rel_err(base_rows, ref_rows), rel_err(base_dz, ref_dz)) + REDUCED_FLOOR
    return (rel_err(rows, ref_rows), rel_err(dz, ref_dz)), limit


def check_supcon(backend: str, device: str, prec: str, variant: str, mining: tuple = (None, None),
                 m: int = 301, d: int = 40) -> Result:
    z64, labels, grad = batch(m, d, 7, seed=zlib.crc32(f"{prec} {variant} {mining}".encode()), device=device)
    errs, limit = errors_and_limit(z64.to(PRECISIONS[prec][0]), labels, grad, prec, variant, mining, backend)
    mined = "" if mining == (None, None) else " mined " + "/".join("-" if k is None else str(k) for k in mining)
    return Result(f"{backend} {prec} {variant}{mined}",
                  f"loss {errs[0]:.2e}, grad {errs[1]:.2e} (limit {limit:.2e})",
                  all(e <= limit for e in errs))  # NaN compares False


def check_patch_labels(backend: str, device: str, mask_dtype: torch.dtype, ph: int, pw: int) -> Result:
    g = torch.Generator().manual_seed(ph * 31 + pw)
    mask = torch.randint(0, 5, (2, 6 * ph, 5 * pw), generator=g)
    mask[torch.rand(mask.shape, generator=g) < 0.2] = 255
    mask[0, :ph, :pw] = 255  # one patch with no valid pixel
    mask = mask.to(mask_dtype).to(device)
    labels, purity = patch_labels(mask, (ph, pw), 5, 255, backend=backend)
    ref_labels, ref_purity = patch_labels(mask.cpu(), (ph, pw), 5, 255, backend="torch")
    wrong = int((labels.cpu() != ref_labels).sum() + (purity.cpu() != ref_purity).sum())
    name = str(mask_dtype).replace("torch.", "")
    return Result(f"{backend} patch labels {name} {ph}x{pw}", f"{wrong} of {2 * labels.numel()} values differ",
                  wrong == 0)


def fused_backends(device: str) -> list[str]:
    out = []
    for name in ("triton", "native"):
        try:
            backend_for(device, name)
        except RuntimeError:
            continue
        out.append(name)
    return out


def precisions_for(backend: str, device: str) -> list[str]:
    names = [p for p, (_, _, devices) in PRECISIONS.items() if device in devices]
    if backend == "triton" and device == "cpu":  # the interpreter mis-computes 16-bit tl.dot
        names = [p for p in names if p in EXACT_LIMIT]
    if backend == "triton":  # float64 needs Triton 3.5 (the header says so where it is older)
        from .triton_ops import supports
        names = [p for p in names if supports("supcon_loss", PRECISIONS[p][0])]
    return names


def run_checks(device: str, m: int = 301, d: int = 40) -> list[Result]:
    results = []
    for backend in fused_backends(device):
        for prec in precisions_for(backend, device):
            for variant in ("supcon", "infonce"):
                results.append(check_supcon(backend, device, prec, variant, (None, None), m, d))
                if prec in EXACT_LIMIT:  # both sides for supcon, one each for infonce
                    for mining in ([(5, 5)] if variant == "supcon" else [(5, None), (None, 5)]):
                        results.append(check_supcon(backend, device, prec, variant, mining, m, d))
        for mask_dtype in (torch.uint8, torch.int64):
            for ph, pw in ((8, 8), (4, 6)):
                results.append(check_patch_labels(backend, device, mask_dtype, ph, pw))
    return results


def header(device: str) -> str:
    import ct_kernels
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    try:
        import triton
        tri = f"triton {triton.__version__}"
        from .triton_ops import version
        if not version.HAS_FP64_DOT:
            tri += " (no float64 tl.dot before 3.5: its float64 checks are left out)"
    except ImportError:
        tri = "no triton"
    switches = ", ".join(f"{k}={os.environ[k]}" for k in SWITCHES if k in os.environ) or "none"
    backends = ", ".join(f"{k}: {v}" for k, v in available_backends().items())
    return (f"ct_kernels {ct_kernels.__version__} selfcheck on {where}: torch {torch.__version__}, {tri}\n"
            f"backends: {backends}\nswitches: {switches}")


@contextlib.contextmanager
def _env_default(name: str, value: str):
    """name=value within, unless the environment already sets it."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rows", type=int, default=301, help="rows of each random batch")
    ap.add_argument("--dim", type=int, default=40, help="feature width")
    ap.add_argument("--autotune", action="store_true",
                    help="let Triton time every candidate configuration per check (compiles them all: minutes "
                         "on a cold cache); by default each check takes the default configuration")
    args = ap.parse_args(argv)
    print(header(args.device))
    names = fused_backends(args.device)
    if not names:
        print(f"no fused backend runs on {args.device} here (see the backends line): nothing to check")
        return 1
    # The tuner's choice at these small sizes says nothing about a training run's (it is keyed on
    # N), and timing every candidate made the first run on an H200 take over 2 minutes; the tests
    # check every candidate (test_every_gpu_candidate). A value the user set is kept.
    with _env_default("CT_KERNELS_TRITON_AUTOTUNE", "1" if args.autotune else "0"):
        results = run_checks(args.device, args.rows, args.dim)
    for r in results:
        print(f"{'ok    ' if r.ok else 'FAILED'} {r.what:<36} {r.text}")
    failed = [r for r in results if not r.ok]
    print(f"{len(results)} checks, {len(failed)} failed ({', '.join(names)} on {args.device})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
