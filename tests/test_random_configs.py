"""Random configurations, float64, every fused backend against the dense reference (and, last,
patch_labels on random masks).

The other files test each option on its own; here each case draws all of them at once (variant,
mining on either side with k below and above the candidates, ignored rows and a non-default
ignore label, one class, contrast rows, reduction, normalize, temperature, M from 1 across two of
the C++ kernels' 256-row blocks, up to 70 under the interpreter) on fresh random rows, and compares the loss and the gradient for random upstream
weights. A third of the cases are small integers with duplicated rows, unnormalised, at a power
of two temperature: every s is then exact whatever order a kernel sums in, so exact ties occur
and must break as the reference does (to the lower column). On random float rows a duplicate
would be a 1-ulp near-tie, which two GEMM calls may break either way, so those have none.

The seeds are fixed: seeds 0 .. n - 1, n per backend and device below; CT_KERNELS_RANDOM_CASES=n
and CT_KERNELS_RANDOM_FIRST=s run seeds s .. s + n - 1 instead (a failure names its seed: rerun it
alone with n = 1). On the CPU: the C++ kernels and the Triton interpreter; on a GPU the CUDA
kernels take a few cases too (float64; each new configuration compiles a Triton kernel).
"""
import math
import os
import random

import pytest
import torch

import ct_kernels as ct
from cpu_backends import backend_devices

# per (backend, device): the interpreter takes ~0.3 s a case, the C++ kernels ~3 ms
DEFAULT_CASES = {("native", "cpu"): 600, ("triton", "cpu"): 30, ("native", "cuda"): 100, ("triton", "cuda"): 6}
REL = 1e-9
# patch_labels: ~0.3 ms a case native, ~0.15 s under the interpreter
DEFAULT_MASK_CASES = {("native", "cpu"): 2000, ("triton", "cpu"): 60, ("native", "cuda"): 200, ("triton", "cuda"): 30}


def draw_case(seed: int, backend: str) -> dict:
    r = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    # the tiny batches (edge cases of their own) in 15 % of the draws; native's across two row blocks
    big = 520 if backend == "native" else 70
    m = r.choice([1, 2, 3]) if r.random() < 0.15 else r.choice([r.randint(4, 40), r.randint(4, big),
                                                                r.randint(big // 2, big)])
    d = r.choice([1, 2, r.randint(1, 40), r.randint(1, 140)])
    classes = 1 if r.random() < 0.15 else r.choice([2, r.randint(2, 8)])  # one class: infonce's loss is 0
    ignore = -1 if r.random() < 0.7 else r.choice([0, 3, 255])
    exact = r.random() < 0.3

    def rows(n):
        if exact:
            return torch.randint(-3, 4, (n, d), generator=gen).double()
        return torch.randn(n, d, generator=gen, dtype=torch.float64)

    z = rows(m)
    if exact and m > 2:
        src = torch.randint(0, m, (m // 2,), generator=gen)
        z[torch.randint(0, m, (m // 2,), generator=gen)] = z[src]
    y = torch.randint(0, classes, (m,), generator=gen)
    if r.random() < 0.5:
        y[torch.rand(m, generator=gen) < r.random()] = ignore
    contrast = None
    if r.random() < 0.25:
        k = r.randint(0, 60)
        yc = torch.randint(0, classes, (k,), generator=gen)
        if k and r.random() < 0.5:
            yc[0] = ignore
        contrast = (rows(k), yc)
    return dict(z=z, labels=y, contrast=contrast, ignore_index=ignore,
                variant=r.choice(["supcon", "infonce"]),
                hard_positives=r.choice([None, None, r.randint(1, m + 3)]),
                hard_negatives=r.choice([None, None, r.randint(1, m + 3)]),
                reduction=r.choice(["mean", "sum", "none"]),
                normalize=r.random() < 0.85 and not exact,
                temperature=r.choice([0.25, 0.5, 1.0] if exact else [0.05, 0.1, 0.5, 1.0, 3.0]))


def loss_and_grad(case: dict, backend: str, seed: int, device: str = "cpu"):
    z = case["z"].to(device, copy=True).requires_grad_(True)
    opts = {k: v for k, v in case.items() if k not in ("z", "labels", "temperature", "contrast")}
    if case["contrast"] is not None:
        opts["contrast"] = tuple(t.to(device) for t in case["contrast"])
    out = ct.supcon_loss(z, case["labels"].to(device), case["temperature"], backend=backend, **opts)
    w = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    (out * w.to(device)).sum().backward()
    return out.detach().cpu(), z.grad.cpu(), w


def floors(case: dict, w: torch.Tensor) -> tuple[float, float]:
    """Absolute error floors of the loss and the gradient: float64 rounding of terms ~s_max.

    A SupCon row whose one positive stands far above its negatives has l = log(1 + tiny),
    computed by every backend (the reference too) as lse - s_p, a difference of terms ~s_max, and
    a gradient p - 1 with p ~ 1: both keep only ~1e-16 * s_max absolute. D = 1 with normalize has
    an exactly zero true gradient: both sides hold rounding of the same size.
    """
    rows = [case["z"]] + ([case["contrast"][0]] if case["contrast"] is not None else [])
    zs = torch.cat(rows)
    norms = zs.norm(dim=1)
    t = case["temperature"]
    if case["normalize"]:
        s_max, grad_scale = 1.0 / t, 1.0 / (t * max(float(norms.min()), 1e-3))
    else:
        s_max, grad_scale = float(norms.max()) ** 2 / t, float(norms.max()) / t
    n = zs.shape[0]
    loss_floor = 1e-13 * (1.0 + s_max) * math.sqrt(max(1, n))
    grad_floor = 1e-12 * (1.0 + s_max) * float(w.norm()) * math.sqrt(max(1, n)) * max(1.0, grad_scale)
    return loss_floor, grad_floor


def seed_range(default: int) -> range:
    """Seeds CT_KERNELS_RANDOM_FIRST (0) .. + CT_KERNELS_RANDOM_CASES (default) - 1."""
    first = int(os.environ.get("CT_KERNELS_RANDOM_FIRST", 0))
    return range(first, first + int(os.environ.get("CT_KERNELS_RANDOM_CASES", default)))


def fused_cases():
    return [(b, dev) for b, dev in backend_devices() if b != "torch"]


# Under the interpreter, lanes that a kernel's `where` discards still compute (exp2 of s far above
# a row's log-sum-exp for columns outside its sets, times 0): numpy warns, the result is exact.
@pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")
@pytest.mark.parametrize("backend,device", fused_cases())
def test_random_configurations_match_the_reference(backend, device):
    failures, seeds = [], seed_range(DEFAULT_CASES[backend, device])
    for seed in seeds:
        case = draw_case(seed, backend)
        ref, gref, w = loss_and_grad(case, "torch", seed)
        out, grad, _ = loss_and_grad(case, backend, seed, device)
        loss_floor, grad_floor = floors(case, w)
        loss_err = float((out - ref).norm())
        grad_err = float((grad - gref).norm())
        ok = (out.shape == ref.shape and out.dtype == ref.dtype and bool(torch.isfinite(out).all())
              and bool(torch.isfinite(grad).all()) and loss_err <= REL * float(ref.norm()) + loss_floor
              and grad_err <= REL * float(gref.norm()) + grad_floor)
        if not ok:
            shown = {k: v for k, v in case.items() if k not in ("z", "labels", "contrast")}
            shown.update(m=case["z"].shape[0], d=case["z"].shape[1],
                         contrast_rows=None if case["contrast"] is None else case["contrast"][0].shape[0])
            failures.append(f"seed {seed}: {shown}: loss err {loss_err:.3g} (ref norm {float(ref.norm()):.3g}), "
                            f"grad err {grad_err:.3g} (ref norm {float(gref.norm()):.3g})")
    assert not failures, f"{len(failures)} of {len(seeds)} cases differ:\n" + "\n".join(failures[:10])


MASK_RANGES = {torch.bool: (0, 1), torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-300, 300),
               torch.int32: (-300, 300), torch.int64: (-300, 300)}


def draw_mask(seed: int) -> tuple[torch.Tensor, tuple[int, int], int, int]:
    """A random mask (every dtype; patch sizes that take the byte-word kernels and those that do
    not; ignored pixels; an ignore_index inside or outside the dtype's range; a fifth with one
    out-of-range pixel, often the byte an out-of-range ignore_index would alias; a third
    non-contiguous) -> (mask, (ph, pw), num_classes, ignore_index)."""
    r = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    dtype = r.choice(list(MASK_RANGES))
    lo, hi = MASK_RANGES[dtype]
    ph = r.choice([1, 2, 3, 4, 8, 16, r.randint(1, 12)])
    pw = r.choice([1, 2, 4, 8, 16, 32, r.randint(1, 12)])
    b, gh, gw = r.randint(1, 3), r.randint(1, 5), r.randint(1, 6)
    classes = r.choice([1, 2, 3, 6, 16, 17, r.randint(1, 40)])
    ignore = r.choice([255, -1, 0, 1, classes - 1, classes, 127, -128, 1000, r.randint(lo, hi)])
    if dtype.itemsize == 1 and r.random() < 0.3:  # one the bytes cannot hold (its low byte can)
        ignore = r.choice([-1, 255, 256 + r.randint(0, 255), -129 - r.randint(0, 100)] if dtype == torch.int8
                          else [-1, -2, 256 + r.randint(0, 255), 1000])
    v = torch.randint(0, min(classes, hi + 1), (b, gh * ph, gw * pw), generator=gen)
    if r.random() < 0.5 and lo <= ignore <= hi:
        v[torch.rand(v.shape, generator=gen) < r.random()] = ignore
    if r.random() < 0.2:
        # the byte a 1-byte mask would hold for an ignore_index outside its range: a bad pixel, not
        # an ignored one (the word kernels compare bytes)
        alias = (ignore & 0xFF) - (256 if dtype == torch.int8 and ignore & 0x80 else 0)
        bad = [x for x in (classes, classes + 5, -2, lo, hi, alias, alias)
               if lo <= x <= hi and x != ignore and not 0 <= x < classes]
        if bad:
            v.view(-1)[r.randrange(v.numel())] = r.choice(bad)
    mask = v.bool() if dtype == torch.bool else v.to(dtype)
    if r.random() < 0.3:
        mask = mask.transpose(1, 2).contiguous().transpose(1, 2)
    return mask, (ph, pw), classes, ignore


def _labels_or_error(mask, patch, classes, ignore, backend):
    try:
        labels, purity = ct.patch_labels(mask, patch, classes, ignore_index=ignore, backend=backend)
        return labels.cpu(), purity.cpu()
    except ValueError as e:
        return str(e)


@pytest.mark.parametrize("backend,device", fused_cases())
def test_random_masks_match_the_reference(backend, device):
    """Labels and purity bitwise those of the torch backend, or the same error."""
    failures, seeds = [], seed_range(DEFAULT_MASK_CASES[backend, device])
    for seed in seeds:
        mask, patch, classes, ignore = draw_mask(seed)
        ref = _labels_or_error(mask, patch, classes, ignore, "torch")
        out = _labels_or_error(mask.to(device), patch, classes, ignore, backend)
        same = (out == ref if isinstance(ref, str) or isinstance(out, str)
                else torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1]))
        if not same:
            failures.append(f"seed {seed}: {mask.dtype} {tuple(mask.shape)} patch {patch} classes {classes} "
                            f"ignore {ignore}: {'error' if isinstance(out, str) else 'labels'} vs "
                            f"{'error' if isinstance(ref, str) else 'labels'} of the reference")
    assert not failures, f"{len(failures)} of {len(seeds)} masks differ:\n" + "\n".join(failures[:10])
