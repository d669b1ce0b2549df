"""python -m ct_kernels.selfcheck: passes on what this machine runs, and fails when a kernel is off."""
import pytest
import torch

import ct_kernels as ct
from ct_kernels import selfcheck
from cpu_backends import cpu_backends

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FUSED = [b for b in cpu_backends() if b != "torch"] if DEVICE == "cpu" else ["triton", "native"]


def test_passes_on_this_machine(capsys):
    if not FUSED:
        pytest.skip("no fused backend built here")
    assert selfcheck.main(["--device", DEVICE, "--rows", "70", "--dim", "12"]) == 0  # the interpreter is slow
    out = capsys.readouterr().out
    for backend in selfcheck.fused_backends(DEVICE):
        assert f"ok     {backend} fp32 supcon mined 5/5" in out
        assert f"ok     {backend} fp64 infonce mined -/5" in out
        assert f"ok     {backend} patch labels int64 4x6" in out
    assert ", 0 failed" in out


def _only_native(monkeypatch):
    if "native" not in selfcheck.fused_backends("cpu"):
        pytest.skip("the native CPU kernels are not built")
    monkeypatch.setattr(selfcheck, "fused_backends", lambda device: ["native"])


def test_a_loss_off_by_1e_4_fails(monkeypatch, capsys):
    _only_native(monkeypatch)

    def skewed(z, labels, *args, backend="auto", **kw):
        rows = ct.supcon_loss(z, labels, *args, backend=backend, **kw)
        return rows * (1 + 1e-4) if backend != "torch" else rows

    monkeypatch.setattr(selfcheck, "supcon_loss", skewed)
    assert selfcheck.main(["--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "FAILED native fp32 supcon " in out and "ok     native bf16 supcon " in out  # within bf16's limit


def test_one_wrong_patch_label_fails(monkeypatch, capsys):
    _only_native(monkeypatch)

    def one_off(mask, patch_size, num_classes, ignore_index=255, *, backend="auto"):
        labels, purity = ct.patch_labels(mask, patch_size, num_classes, ignore_index, backend=backend)
        if backend != "torch":
            labels = labels.clone()
            labels[0, 1, 1] += 1
        return labels, purity

    monkeypatch.setattr(selfcheck, "patch_labels", one_off)
    assert selfcheck.main(["--device", "cpu"]) == 1
    assert "FAILED native patch labels uint8 8x8        1 of 120 values differ" in capsys.readouterr().out
