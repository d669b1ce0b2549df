"""Patch-majority labels in one kernel and one read of the mask.

A program loads PB neighbouring patches of one patch row as a [PH, PB, PW] block (rows of the
mask are contiguous along the last axis), counts the classes on chip (several at a time, in bit
fields: int32 along a patch row, int64 over the rows), keeps the first class with the largest
count (ties -> smallest class id) and writes label and purity once. Pixels that are neither
ignore_index nor in [0, num_classes) are counted into the `bad` word by an atomic add where a
program saw any: the caller reads it afterwards, no second pass.

Byte masks (uint8, int8, bool) with patch rows of 2, 4, 8, ... words and at most
BYTES_MAX_CLASSES classes take patch_labels_bytes_kernel instead: four pixels to an int32 and a
thread a patch, each class counted by one compare-and-count of a word (sm_90 SASS, Triton 3.8,
16 x 16 patches, 6 classes: 6.2 instructions a pixel on a clean block against the general kernel's 17.6).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..patch import ignore_byte
from .tuning import LAUNCH_OPTIONS, interpreting, next_pow2, on_device_of

MAX_CLASSES = 1024  # the class loop is linear in num_classes; beyond this use backend='torch'
BYTES_MAX_CLASSES = 16  # byte masks with at most this many classes take patch_labels_bytes_kernel
BYTES_MAX_WORDS = 64  # ... and at most this many 4-byte words a thread (its patches' rows)
# class id of pixels that are not counted: above every class group, and NO_CLASS * ROW_BITS fits int32
NO_CLASS = tl.constexpr(1 << 24)


# num_classes is not specialized: the JIT would turn a 1 into a Python constant, which has no .to()
@triton.jit(do_not_specialize=["num_classes"])
def patch_labels_kernel(mask_ptr, labels_ptr, purity_ptr, bad_ptr,
                        W, GW, num_classes, ignore_index,
                        PH: tl.constexpr, PW: tl.constexpr, PHP: tl.constexpr, PWP: tl.constexpr,
                        PB: tl.constexpr, ROW_BITS: tl.constexpr, BITS: tl.constexpr, PER: tl.constexpr,
                        WIDE: tl.constexpr, EVEN: tl.constexpr, ONE_GROUP: tl.constexpr, ROW_AXIS: tl.constexpr):
    rows = tl.program_id(ROW_AXIS)  # b * GH + gy: the patch row of the whole batch (no division)
    xb = tl.program_id(1 - ROW_AXIS)
    r = tl.arange(0, PHP)[:, None, None]
    gx = xb * PB + tl.arange(0, PB)[None, :, None]
    c = tl.arange(0, PWP)[None, None, :]
    x = gx * PW + c
    ptrs = mask_ptr + (rows * PH + r).to(tl.int64) * W + x
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
    _store_patches(labels_ptr, purity_ptr, bad_ptr, rows, xb, GW, best_n, best_c, n_bad, ignore_index,
                   PH * PW, PB)


@triton.jit
def _store_patches(labels_ptr, purity_ptr, bad_ptr, rows, xb, GW, best_n, best_c, n_bad, ignore_index,
                   AREA: tl.constexpr, PB: tl.constexpr):
    """Label and purity of the program's PB patches, once; its bad pixels into the error word."""
    label = tl.where(best_n > 0, best_c.to(tl.int64), ignore_index)
    # purity == count / area exactly, the same bits as the reference's count.float() / (ph * pw):
    # a power-of-two area is an exact multiply, any other an IEEE-rounded division (GPU `/` on
    # fp32 is approximate)
    if AREA & (AREA - 1) == 0:
        purity = best_n.to(tl.float32) * (1.0 / AREA)
    else:
        purity = tl.math.div_rn(best_n.to(tl.float32), tl.full([PB], AREA, tl.float32))
    gxs = xb * PB + tl.arange(0, PB)
    out = rows.to(tl.int64) * GW + gxs
    tl.store(labels_ptr + out, label, mask=gxs < GW)
    tl.store(purity_ptr + out, purity, mask=gxs < GW)
    tl.atomic_add(bad_ptr, n_bad, mask=n_bad > 0, sem="relaxed")  # read after the kernel: no fence


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


# Byte masks (uint8, int8, bool) four pixels to a 32-bit word (SWAR: SIMD within a register). A
# class costs three operations a word (an add and a logic op give each byte's ">= t" bit, a
# multiply-high adds the four bits into a running count), under one a pixel, where the kernel
# above extracts, range-tests and selects each pixel (~12 operations a pixel at 6 classes).
LANES = tl.constexpr(0x01010101)  # 1 in every byte lane
HIGH = tl.constexpr(0x80808080)   # the high bit of every byte lane


@triton.jit
def _at_least(w, wh, t: tl.constexpr):
    """The high bit of each byte lane of w (uint32) whose byte, unsigned, is >= t (0 <= t <= 256),
    where wh = w | HIGH. (byte | 0x80) - t cannot borrow from the next lane for t <= 128, and its
    high bit says (byte & 0x7f) >= t; the byte's own high bit (>= 128) settles the rest. For t > 128
    both must hold."""
    if t <= 128:
        return ((wh - t * LANES) | w) & HIGH
    else:
        return ((wh - (t - 128) * LANES) & w) & HIGH


@triton.jit
def _patch_count(ge, PHP: tl.constexpr, CHUNKS: tl.constexpr):
    """[PHP, PB, PWW] high-bit lanes -> [PB]: how many are set in each patch, by one multiply-high a
    word: the 64-bit product ge * 0x02020202 holds the sum of the word's four high bits at bit 32,
    the partial sums of fewer lanes below it and those of the later lanes from bit 40 up. So the
    sum over up to 63 words (252 pixels) is the low byte of the sum of the products: the rows are
    summed in CHUNKS chunks that short, each cut to its low byte, and the chunks added."""
    x = tl.umulhi(ge, 0x02020202)
    x = tl.reshape(x, [CHUNKS, PHP // CHUNKS, x.shape[1], x.shape[2]])
    x = tl.sum(tl.sum(x, 3), 1) & 0xFF  # [CHUNKS, PB]
    return tl.sum(x.to(tl.int32, bitcast=True), 0)


@triton.jit
def _load_words(ptrs, r, i, xb, PH: tl.constexpr, PWW: tl.constexpr, PHP: tl.constexpr, PB: tl.constexpr, GW,
                EVEN: tl.constexpr):
    """A block's words as [rows, patches, words] (uint32)."""
    if EVEN:
        w = tl.load(ptrs)
    else:  # padding reads byte 0: no ge_t counts it, and class 0 is the area less ge_1
        w = tl.load(ptrs, mask=(r < PH) & (xb * PB + i // PWW < GW), other=0)
    return tl.reshape(w.to(tl.uint32, bitcast=True), [PHP, PB, PWW])


@triton.jit
def patch_labels_bytes_kernel(words_ptr, labels_ptr, purity_ptr, bad_ptr, WW, GW, ignore_index,
                              PH: tl.constexpr, PWW: tl.constexpr, PHP: tl.constexpr,
                              PB: tl.constexpr, NUM_CLASSES: tl.constexpr, IGNORE_BYTE: tl.constexpr,
                              CHUNKS: tl.constexpr, EVEN: tl.constexpr, ROW_AXIS: tl.constexpr):
    """patch_labels_kernel for byte masks read as int32 words (WW a mask row, PWW a patch row, a
    power of two).

    A thread holds a whole patch. The block is loaded as [rows, patches x words], whose second
    dimension is contiguous: Triton's coalescing gives a thread a patch row's words as one vector
    and spreads the threads along it, so each thread holds every row of its patch; then viewed as
    [rows, patches, words]. So the counts need no shuffle and no shared memory, and a patch's
    label is chosen once. (A 3-D load leaves the order of the two non-contiguous dimensions to a
    tie-break that Triton 3.6 and 3.8 settle differently; with threads along the rows, 16 of them
    shared a 16 x 16 patch, each repeating the epilogue.)
    Counts are cumulative: ge_t, the pixels whose byte is >= t for t = 1 .. NUM_CLASSES; class c
    holds ge_c - ge_{c+1} (ge_0 = the area). IGNORE_BYTE is ignore_index as a byte of the mask's
    dtype (-1 when no byte can equal it); a class equal to it never wins. Bad pixels: >=
    NUM_CLASSES and not ignored."""
    rows = tl.program_id(ROW_AXIS)  # b * GH + gy: the patch row of the whole batch
    xb = tl.program_id(1 - ROW_AXIS)
    r = tl.arange(0, PHP)[:, None]
    i = tl.arange(0, PB * PWW)[None, :]
    row_ptrs = words_ptr + (rows * PH + r).to(tl.int64) * WW
    ptrs = row_ptrs + xb * (PB * PWW) + i  # a block's row: PB * PWW contiguous words
    w = _load_words(ptrs, r, i, xb, PH, PWW, PHP, PB, GW, EVEN)
    wh = w | HIGH
    best_n = tl.zeros([PB], tl.int32)
    best_c = tl.zeros([PB], tl.int32)
    prev = tl.full([PB], PH * PWW * 4, tl.int32)  # ge_0
    for t in tl.static_range(1, NUM_CLASSES + 1):
        ge = _patch_count(_at_least(w, wh, t), PHP, CHUNKS)
        if t - 1 != IGNORE_BYTE:
            n = prev - ge  # class t - 1
            better = n > best_n  # strict: ties keep the smaller class
            best_c = tl.where(better, t - 1, best_c)
            best_n = tl.where(better, n, best_n)
        prev = ge
    # prev is now ge_C (C = NUM_CLASSES): the bytes >= C, the bad ones and any ignored ones >= C
    n_bad = prev
    if IGNORE_BYTE >= NUM_CLASSES:
        # the ignored bytes are taken out by a second count, only in blocks that hold bytes >= C
        # (on a clean mask, none). The words are read again (from L2) rather than kept in
        # registers across the class loop (94 -> 218 registers a thread, sm_90, Triton 3.8).
        if tl.max(prev, 0) > 0:
            w = _load_words(ptrs, r, i, xb, PH, PWW, PHP, PB, GW, EVEN)
            wh = w | HIGH
            bad = _at_least(w, wh, NUM_CLASSES)
            bad = bad & ((_at_least(w, wh, IGNORE_BYTE) ^ HIGH) | _at_least(w, wh, IGNORE_BYTE + 1))
            n_bad = _patch_count(bad, PHP, CHUNKS)
    _store_patches(labels_ptr, purity_ptr, bad_ptr + tl.zeros([PB], tl.int32), rows, xb, GW, best_n, best_c,
                   n_bad, ignore_index, PH * PWW * 4, PB)


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
    with on_device_of(mask):
        if _takes_words(mask, ph, pw, num_classes):
            _launch_bytes(mask, labels, purity, bad, ph, pw, num_classes, ignore_index)
        else:
            _launch(mask, labels, purity, bad, ph, pw, num_classes, ignore_index)
    return labels, purity, bad


def _takes_words(mask: torch.Tensor, ph: int, pw: int, num_classes: int) -> bool:
    """Whether patch_labels_bytes_kernel serves this mask: bytes, 4-byte aligned, whose patch rows
    are a power of two of words from 2 to 32 (a thread holds its patches' rows: with one word a
    patch, its per-patch work outweighs 16 pixels' counts; a row over 63 words overflows the
    count's byte), at most 64 words a thread, and few classes (its cost is a compare a class where
    the general kernel's is a bit field per PER)."""
    pww = pw // 4
    return (mask.element_size() == 1 and pw % 4 == 0 and 2 <= pww <= 32 and pww & (pww - 1) == 0
            and mask.data_ptr() % 4 == 0 and num_classes <= BYTES_MAX_CLASSES
            and next_pow2(ph) * max(pww, 4) <= BYTES_MAX_WORDS)


def _grid(rows: int, blocks: int) -> tuple[tuple[int, int], int]:
    """(grid, ROW_AXIS): the batch's patch rows on a grid axis of their own, so that a program finds
    its pixels without dividing its id; CUDA's second axis holds at most 65535 programs."""
    if blocks <= 65535:
        return (rows, blocks), 0
    if rows <= 65535:
        return (blocks, rows), 1
    raise ValueError(f"mask too large for the triton patch_labels kernel: {rows} patch rows of "
                     f"{blocks} blocks (one of them must be at most 65535); use backend='native' or 'torch'")


def _launch(mask, labels, purity, bad, ph, pw, num_classes, ignore_index):
    b, h, w = mask.shape
    gw = w // pw
    php, pwp = next_pow2(ph), next_pow2(pw)
    # per program on GPUs: 4K pixels of a byte mask (32 a thread: the per-program work is spread
    # over more pixels, at 64 registers in sm_90 compiles), 2K of wider ones; small blocks under
    # the interpreter
    target = 256 if interpreting() else (4096 if mask.element_size() == 1 else 2048)
    pb = max(1, min(next_pow2(gw), target // (php * pwp)))
    grid, row_axis = _grid(b * (h // ph), triton.cdiv(gw, pb))
    row_bits, bits, per = count_fields(ph, pw)
    patch_labels_kernel[grid](mask, labels, purity, bad, w, gw, num_classes, ignore_index,
                              PH=ph, PW=pw, PHP=php, PWP=pwp, PB=pb, ROW_BITS=row_bits, BITS=bits, PER=per,
                              WIDE=mask.element_size() == 8, EVEN=php == ph and pwp == pw and gw % pb == 0,
                              ONE_GROUP=num_classes <= per, ROW_AXIS=row_axis, num_warps=4,
                              **LAUNCH_OPTIONS)


def _launch_bytes(mask, labels, purity, bad, ph, pw, num_classes, ignore_index):
    b, h, w = mask.shape
    gw = w // pw
    words = mask.view(torch.int32)  # (b, h, w / 4): the same bytes
    pww = pw // 4
    php = next_pow2(ph)
    # a block's row fills the threads' 4-word vectors once: 512 words (4 warps) on GPUs, so no
    # warp holds other rows than another; 8 patches under the interpreter
    pb = min(next_pow2(gw), 8 if interpreting() else 512 // pww)
    grid, row_axis = _grid(b * (h // ph), triton.cdiv(gw, pb))
    patch_labels_bytes_kernel[grid](words, labels, purity, bad, w // 4, gw, ignore_index,
                                    PH=ph, PWW=pww, PHP=php, PB=pb, NUM_CLASSES=num_classes,
                                    IGNORE_BYTE=ignore_byte(mask.dtype, ignore_index),
                                    CHUNKS=_chunks(php, pww), EVEN=php == ph and gw % pb == 0,
                                    ROW_AXIS=row_axis, num_warps=max(1, min(4, pb * pww // 128)),
                                    **LAUNCH_OPTIONS)


def _chunks(php: int, pww: int) -> int:
    """Chunks of rows for _patch_count, a power of two: at most 63 words each."""
    chunks = 1
    while php // chunks * pww > 63:
        chunks *= 2
    return chunks


@_patch_labels_op.register_fake
def _patch_labels_fake(mask, ph, pw, num_classes, ignore_index):
    b, h, w = mask.shape
    shape = (b, h // ph, w // pw)
    return (mask.new_empty(shape, dtype=torch.int64), mask.new_empty(shape, dtype=torch.float32),
            mask.new_empty(1, dtype=torch.int32))
