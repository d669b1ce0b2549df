"""Patch-majority labels in one kernel and one read of the mask.

A program loads PB neighbouring patches of one patch row as a [PH, PB, PW] block (rows of the
mask are contiguous along the last axis), counts the classes on chip (several at a time, in bit
fields: int32 along a patch row, int64 over the rows), keeps the first class with the largest
count (ties -> smallest class id) and writes label and purity once. Pixels that are neither ignore_index nor in [0,
num_classes) are counted into the `bad` word with one atomic add per program that saw any: the
caller reads it afterwards, no second pass.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tuning import interpreting, next_pow2, on_device_of

MAX_CLASSES = 1024  # the class loop is linear in num_classes; beyond this use backend='torch'
# class id of pixels that are not counted: above every class group, and NO_CLASS * ROW_BITS fits int32
NO_CLASS = tl.constexpr(1 << 24)


# num_classes is not specialized: the JIT would turn a 1 into a Python constant, which has no .to()
@triton.jit(do_not_specialize=["num_classes"])
def patch_labels_kernel(mask_ptr, labels_ptr, purity_ptr, bad_ptr,
                        H, W, GH, GW, num_classes, ignore_index,
                        PH: tl.constexpr, PW: tl.constexpr, PHP: tl.constexpr, PWP: tl.constexpr,
                        PB: tl.constexpr, ROW_BITS: tl.constexpr, BITS: tl.constexpr, PER: tl.constexpr,
                        WIDE: tl.constexpr, EVEN: tl.constexpr, ONE_GROUP: tl.constexpr):
    pid = tl.program_id(0)
    n_xb = tl.cdiv(GW, PB)
    xb = pid % n_xb
    rest = pid // n_xb
    gy = rest % GH
    b = rest // GH
    r = tl.arange(0, PHP)[:, None, None]
    gx = xb * PB + tl.arange(0, PB)[None, :, None]
    c = tl.arange(0, PWP)[None, None, :]
    y = gy * PH + r
    x = gx * PW + c
    ptrs = mask_ptr + (b * H + y).to(tl.int64) * W + x
    if EVEN:  # every lane of the block is a pixel (no padding, whole patches): nothing to mask
        v = tl.load(ptrs)
        counted = v != ignore_index
    else:
        inb = (r < PH) & (c < PW) & (gx < GW)
        v = tl.load(ptrs, mask=inb, other=0)
        counted = inb & (v != ignore_index)
    # 0 <= v < num_classes as one unsigned compare, in 64 bits for int64 masks (a wide value must
    # not wrap into range) and in 32 for the narrower ones (sign-extended first)
    if WIDE:
        in_range = v.to(tl.uint64, bitcast=True) < num_classes.to(tl.uint64)
    else:
        in_range = v.to(tl.int32).to(tl.uint32, bitcast=True) < num_classes.to(tl.uint32)
    # class id (int32): NO_CLASS for pixels that are not counted (ignored, or outside the mask),
    # -1 for counted pixels out of [0, num_classes) ("bad": rare, reported through bad_ptr)
    cls = tl.where(counted, tl.where(in_range, v.to(tl.int32), -1), NO_CLASS)
    n_bad = tl.min(tl.min(tl.min(cls, 2), 1), 0)  # one operation a pixel says whether any is bad
    if n_bad < 0:  # only then are they counted
        n_bad = tl.sum(tl.sum(tl.sum(tl.where(cls < 0, 1, 0), 2), 1), 0)
    else:
        n_bad = 0
    best_n = tl.zeros([PB], tl.int32)
    best_c = tl.zeros([PB], tl.int32)
    # PER classes at a time, counted in bit fields in two stages. Per pixel: an int32 add of
    # 1 << (ROW_BITS * j) for class k0 + j, summed along the patch row (ROW_BITS holds PW, so a
    # row's fields cannot carry). A pixel of no class in this group shifts its 1 into the spare
    # bits PER * ROW_BITS .. 31 instead (the unsigned min sends j < 0 and j >= PER there), which
    # only ever carry out of the word: no compare or select per pixel and group. Per row, once:
    # the fields widened to BITS (which holds PH * PW) in an int64, summed over the patch rows.
    shift = cls * ROW_BITS
    if ONE_GROUP:  # num_classes <= PER (the usual case): k0 = 0 known at compile time
        best_n, best_c = _count_group(shift, 0, best_n, best_c, num_classes, ROW_BITS, BITS, PER)
    else:
        for k0 in range(0, num_classes, PER):
            best_n, best_c = _count_group(shift, k0, best_n, best_c, num_classes, ROW_BITS, BITS, PER)
    label = tl.where(best_n > 0, best_c.to(tl.int64), ignore_index)
    # IEEE-rounded division (GPU `/` on fp32 is approximate): purity == count / area exactly,
    # the same bits as the reference's count.float() / (ph * pw)
    purity = tl.math.div_rn(best_n.to(tl.float32), tl.full([PB], PH * PW, tl.float32))
    gxs = xb * PB + tl.arange(0, PB)
    out = (b * GH + gy) * GW + gxs
    tl.store(labels_ptr + out, label, mask=gxs < GW)
    tl.store(purity_ptr + out, purity, mask=gxs < GW)
    tl.atomic_add(bad_ptr, n_bad, mask=n_bad > 0)


@triton.jit
def _count_group(shift, k0, best_n, best_c, num_classes, ROW_BITS: tl.constexpr, BITS: tl.constexpr,
                 PER: tl.constexpr):
    """Classes k0 .. k0 + PER - 1 of patch_labels_kernel's two-stage bit-field count, folded into
    the running best (count, class) of each patch."""
    amt = tl.minimum((shift - k0 * ROW_BITS).to(tl.uint32), 31).to(tl.int32)
    row = tl.sum(tl.full(shift.shape, 1, tl.int32) << amt, 2)  # [PHP, PB]
    wide = tl.zeros(row.shape, tl.int64)
    for jj in tl.static_range(PER):
        field = ((row >> (jj * ROW_BITS)) & ((1 << ROW_BITS) - 1)).to(tl.int64)
        wide += field << (jj * BITS)
    packed = tl.sum(wide, 0)  # [PB]: PER fields of BITS bits
    for jj in tl.static_range(PER):
        n = ((packed >> (jj * BITS)) & ((1 << BITS) - 1)).to(tl.int32)
        # strict: an equal count later never beats a smaller class id
        better = (n > best_n) & (k0 + jj < num_classes)
        best_c = tl.where(better, k0 + jj, best_c)
        best_n = tl.where(better, n, best_n)
    return best_n, best_c


def count_fields(ph: int, pw: int) -> tuple[int, int, int]:
    """(ROW_BITS, BITS, PER) of the kernel: field widths for a patch row's count (0 .. pw) and a
    patch's (0 .. ph * pw), and the classes counted together (int32 row fields below bit 31, so at
    least one spare bit; int64 patch fields)."""
    row_bits, bits = pw.bit_length(), (ph * pw).bit_length()
    return row_bits, bits, max(1, min(31 // row_bits, 63 // bits))


def patch_labels(mask: torch.Tensor, ph: int, pw: int, num_classes: int, ignore_index: int):
    """-> (labels (B, H/ph, W/pw) int64, purity float32, bad int32 (1,)): see backends.py."""
    if mask.dim() != 3:
        raise ValueError(f"mask must be (B, H, W), got shape {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)  # same bytes, 0/1
    if mask.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        raise TypeError(f"mask must be an integer or bool tensor, got {mask.dtype}")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes={num_classes}: the triton patch_labels kernel supports 1..{MAX_CLASSES}")
    b, h, w = mask.shape
    ph, pw = int(ph), int(pw)
    if ph < 1 or pw < 1 or h % ph or w % pw:
        raise ValueError(f"patch size ({ph}, {pw}) must divide the mask size ({h}, {w})")
    return _patch_labels_op(mask, ph, pw, int(num_classes), int(ignore_index))


# A custom op, so torch.compile sees one opaque node (see supcon.py for why).
@torch.library.custom_op("ct_kernels_triton::patch_labels", mutates_args=())
def _patch_labels_op(mask: torch.Tensor, ph: int, pw: int, num_classes: int,
                     ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, h, w = mask.shape
    mask = mask.contiguous()
    gh, gw = h // ph, w // pw
    labels = torch.empty((b, gh, gw), dtype=torch.int64, device=mask.device)
    purity = torch.empty((b, gh, gw), dtype=torch.float32, device=mask.device)
    bad = torch.zeros(1, dtype=torch.int32, device=mask.device)
    if labels.numel() == 0:
        return labels, purity, bad
    php, pwp = next_pow2(ph), next_pow2(pw)
    # per program on GPUs: 4K pixels of a byte mask (32 a thread: the per-program work is spread
    # over more pixels, at 64 registers in sm_90 compiles), 2K of wider ones; small blocks under
    # the interpreter
    target = 256 if interpreting() else (4096 if mask.element_size() == 1 else 2048)
    pb = max(1, min(next_pow2(gw), target // (php * pwp)))
    grid = (b * gh * triton.cdiv(gw, pb),)
    row_bits, bits, per = count_fields(ph, pw)
    with on_device_of(mask):
        patch_labels_kernel[grid](mask, labels, purity, bad, h, w, gh, gw, num_classes, ignore_index,
                                  PH=ph, PW=pw, PHP=php, PWP=pwp, PB=pb, ROW_BITS=row_bits, BITS=bits, PER=per,
                                  WIDE=mask.element_size() == 8, EVEN=php == ph and pwp == pw and gw % pb == 0,
                                  ONE_GROUP=num_classes <= per, num_warps=4)
    return labels, purity, bad


@_patch_labels_op.register_fake
def _patch_labels_fake(mask, ph, pw, num_classes, ignore_index):
    b, h, w = mask.shape
    shape = (b, h // ph, w // pw)
    return (mask.new_empty(shape, dtype=torch.int64), mask.new_empty(shape, dtype=torch.float32),
            mask.new_empty(1, dtype=torch.int32))
