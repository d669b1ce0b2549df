"""``patch_labels``: the majority class of the mask under each patch, and its purity."""
from __future__ import annotations

import numbers
from fractions import Fraction

import torch

from . import backends
from .reference import patch_labels_reference

MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def ignore_byte(dtype: torch.dtype, ignore_index: int) -> int:
    """ignore_index as the byte a uint8 / int8 / bool mask holds for it; -1 when no element can
    equal it (the word kernels' IGNORE_BYTE; csrc/cuda/patch_labels.cpp has the C++ twin)."""
    lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
    return ignore_index & 0xFF if lo <= ignore_index <= hi else -1


def as_patch_size(patch_size) -> tuple[int, int]:
    if isinstance(patch_size, bool):
        raise TypeError("patch_size must be an int or a pair (ph, pw), got bool")
    if is_int(patch_size):
        ph = pw = int(patch_size)
    elif isinstance(patch_size, (tuple, list)) and len(patch_size) == 2 and all(is_int(p) for p in patch_size):
        ph, pw = int(patch_size[0]), int(patch_size[1])
    else:
        raise TypeError(f"patch_size must be an int or a pair of ints (ph, pw), got {patch_size!r}")
    if ph <= 0 or pw <= 0:
        raise ValueError(f"patch_size must be positive, got {(ph, pw)}")
    return ph, pw


def check_mask(mask: torch.Tensor, ph: int, pw: int) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() != 3:
        raise ValueError(f"mask must be 3-D (B, H, W), got shape {tuple(mask.shape)}")
    if mask.dtype not in MASK_DTYPES:
        raise TypeError(f"mask must be an integer or bool tensor, got {mask.dtype}")
    _, h, w = mask.shape
    if h % ph or w % pw:
        raise ValueError(f"mask height and width ({h}, {w}) must be divisible by patch_size ({ph}, {pw})")


INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def as_int(name: str, value, what: str = "an int") -> int:
    """A Python or numpy integer (anything with __index__ but a bool; never a float, which a kernel
    would truncate) as an int; TypeError naming the argument otherwise."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return int(value.__index__())
    except (AttributeError, TypeError):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}") from None


def is_int(value) -> bool:
    """A Python or NumPy integer, not a bool (which Python counts as one)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_integer_labels(labels: torch.Tensor) -> None:
    """Labels compare as integers: a float, complex or bool tensor is a TypeError."""
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")


def check_label_value(name: str, value) -> int:
    """An ignore label: an integer (a label compares as an integer; the kernels would truncate 1.5
    to 1 where the reference compares it as is) in int64's range."""
    value = as_int(name, value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{name} must fit in int64, got {value}")
    return value


def check_num_classes(num_classes) -> int:
    """num_classes as an int (NumPy ints too); ValueError unless a positive integer."""
    if not is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return int(num_classes)


def purity_ratio(min_purity: float) -> tuple[int, int]:
    """min_purity as the decimal it rounds to at 9 significant digits, (numerator, denominator):
    0.1 + 0.2 is 3/10, and 0.7 of 10 pixels is 7, not 8."""
    frac = Fraction(f"{float(min_purity):.9g}")
    return frac.numerator, frac.denominator


def min_count(min_purity, ph: int, pw: int) -> int:
    """Pixels the majority class needs for a patch to pass ``min_purity`` (a float, or its
    ``purity_ratio``): ceil(min_purity * area), in integers, which every backend compares alike
    and which hold for symbolic sizes (torch.compile with dynamic shapes, where a patch size read
    off the mask's shape is a SymInt and a float attribute may be symbolic too: the module keeps
    the ratio, computed once)."""
    num, den = min_purity if isinstance(min_purity, tuple) else purity_ratio(min_purity)
    return -((-num * (ph * pw)) // den)


def kept_row_labels(labels: torch.Tensor, purity: torch.Tensor, ph: int, pw: int, ignore_index: int,
                    min_purity, left_out: int = -1) -> torch.Tensor:
    """(B*h*w,) row labels: the patch's majority class, or ``left_out`` for patches without a valid
    pixel or whose majority count is below ceil(min_purity * ph * pw) (compared in integers, so
    every backend keeps the same patches). Rows ordered (batch, row, column)."""
    count = torch.round(purity * float(ph * pw)).to(torch.int64)
    keep = (labels != ignore_index) & (count >= min_count(min_purity, ph, pw))
    return torch.where(keep, labels, torch.full_like(labels, left_out)).reshape(-1)


def _bad_label_error(num_classes: int, ignore_index: int) -> ValueError:
    return ValueError(f"mask holds values outside [0, num_classes={num_classes}) that are not "
                      f"ignore_index={ignore_index}")


def patch_labels_unchecked(mask: torch.Tensor, ph: int, pw: int, num_classes: int, ignore_index: int,
                           backend: str = "auto"):
    """Labels, purity and the out-of-range pixel count as a device tensor (no host read)."""
    _, kernels = backends.resolve(backend, mask.device, "patch_labels")
    if kernels is not None and backend == "auto" and num_classes > getattr(kernels, "MAX_CLASSES", num_classes):
        kernels = None  # histogram kernels hold at most MAX_CLASSES bins: `auto` takes the dense path
    if kernels is None:
        m = mask.to(torch.int64)
        bad = ((m != ignore_index) & ((m < 0) | (m >= num_classes))).sum().to(torch.int32).reshape(1)
        m = torch.where(bad > 0, torch.full_like(m, ignore_index), m)  # keep one_hot in range
        labels, purity = patch_labels_reference(m, ph, pw, num_classes, ignore_index)
        return labels, purity, bad
    return kernels.patch_labels(mask.contiguous(), ph, pw, num_classes, ignore_index)


def patch_labels(mask: torch.Tensor, patch_size, num_classes: int, ignore_index: int = 255, *,
                 backend: str = "auto"):
    """Majority label of each patch (ties to the smallest class id) and its purity.

    Returns ``labels`` (B, H/ph, W/pw) int64, ``ignore_index`` where every pixel is ignored, and
    ``purity`` float32 = majority count / (ph * pw), ignored pixels counting as impure. A mask value
    outside [0, num_classes) other than ``ignore_index`` raises ValueError (read after the kernel,
    from a count it writes; on CUDA this is one host synchronisation).

    Args:
        mask: (B, H, W) integer or bool tensor.
        patch_size: int or (ph, pw), dividing H and W.
        num_classes: valid labels are 0 .. num_classes - 1.
        ignore_index: mask value of unlabelled pixels.
        backend: ``"auto"``, ``"triton"``, ``"native"`` or ``"torch"``.
    """
    ph, pw = as_patch_size(patch_size)
    check_mask(mask, ph, pw)
    num_classes = check_num_classes(num_classes)
    ignore_index = check_label_value("ignore_index", ignore_index)
    backends.check_backend_name(backend)
    labels, purity, bad = patch_labels_unchecked(mask, ph, pw, num_classes, ignore_index, backend)
    if int(bad.item()) != 0:
        raise _bad_label_error(num_classes, ignore_index)
    return labels, purity
