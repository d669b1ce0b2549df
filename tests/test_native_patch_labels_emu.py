"""The native CUDA word kernel for byte masks' patch labels (csrc/cuda/patch_labels_words.cuh) run
through its launch on the CPU emulator (tests/emu): labels, purity and the bad count against the
reference. tests/test_native_patch_labels.py checks the op on a GPU where one is at hand."""
from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from byte_masks import BYTE_CASES, assert_matches_reference, byte_mask
from ct_kernels.patch import ignore_byte
from emu_build import build_emulator



@pytest.fixture(scope="session")
def words_binary(tmp_path_factory) -> Path:
    return build_emulator(tmp_path_factory, "patch_labels_words_emu.cpp")


def _run(binary, tmp_path, mask, ph, pw, num_classes, ignore):
    b, h, w = mask.shape
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    head = struct.pack("<8q", b, h, w, ph, pw, num_classes, ignore_byte(mask.dtype, ignore), ignore)
    src.write_bytes(head + mask.contiguous().view(torch.uint8).numpy().tobytes())
    res = subprocess.run([str(binary), str(src), str(dst)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.returncode, res.stderr)
    n = b * (h // ph) * (w // pw)
    raw = dst.read_bytes()
    labels = torch.from_numpy(np.frombuffer(raw, "<i8", n).copy()).view(b, h // ph, w // pw)
    purity = torch.from_numpy(np.frombuffer(raw, "<f4", n, 8 * n).copy()).view(b, h // ph, w // pw)
    bad = int(np.frombuffer(raw, "<i4", 1, 12 * n)[0])
    return labels, purity, bad


@pytest.mark.parametrize("gw", [3, 130], ids=["one-block", "two-blocks"])
@pytest.mark.parametrize("dtype,ph,pw,num_classes,ignore", BYTE_CASES)
def test_word_kernel_matches_reference(words_binary, tmp_path, dtype, ph, pw, num_classes, ignore, gw):
    """A thread a patch, 128 a block: 3 patches a row leave most threads of the block idle, 2 x 130
    patches fill two blocks and part of a third."""
    mask = byte_mask(dtype, (2, ph, gw * pw), num_classes, ignore, seed=ph * 1000 + pw + gw)
    assert_matches_reference(*_run(words_binary, tmp_path, mask, ph, pw, num_classes, ignore),
                             mask, ph, pw, num_classes, ignore)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.bool])
def test_whole_patches_of_one_value_and_ties(words_binary, tmp_path, dtype):
    """16 x 16 patches of one value (every count reaches 256, over a byte: two halves of 32 words),
    an all-ignored patch, and a tie that goes to the smaller class."""
    if dtype == torch.bool:
        mask = torch.zeros((1, 16, 48), dtype=torch.bool)
        mask[0, :, 16:32] = True
        mask[0, :8, 32:48] = True  # 128 x 1, 128 x 0: a tie -> 0
        labels, purity, bad = _run(words_binary, tmp_path, mask, 16, 16, 2, 255)
        assert labels.tolist() == [[[0, 1, 0]]] and purity.tolist() == [[[1.0, 1.0, 0.5]]] and bad == 0
        return
    ignore = 255 if dtype == torch.uint8 else -1
    mask = torch.zeros((1, 16, 64), dtype=torch.int64)
    mask[0, :, 0:16], mask[0, :, 16:32], mask[0, :, 48:64] = 5, ignore, 6
    labels, purity, bad = _run(words_binary, tmp_path, mask.to(dtype), 16, 16, 6, ignore)
    assert labels.tolist() == [[[5, ignore, 0, ignore]]]
    assert purity.tolist() == [[[1.0, 0.0, 1.0, 0.0]]] and bad == 256


@pytest.mark.parametrize("ph,pw,num_classes", [(4, 4, 3), (3, 12, 3), (1, 256, 3), (16, 32, 3), (4, 8, 17)])
def test_word_kernel_refuses_what_it_does_not_serve(words_binary, tmp_path, ph, pw, num_classes):
    """One-word rows, rows of a word count that is no power of two or over 32, a patch over 64
    words, too many classes: words_kernel_takes says no (the op then takes the general kernel)."""
    mask = torch.zeros((1, ph, 2 * pw), dtype=torch.uint8)
    head = struct.pack("<8q", 1, ph, 2 * pw, ph, pw, num_classes, 255, 255)
    (tmp_path / "in.bin").write_bytes(head + mask.numpy().tobytes())
    res = subprocess.run([str(words_binary), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], timeout=60)
    assert res.returncode == 3
