"""What an older Triton gets: a missing backend that says why (before 3.4), a clear error for
float64 (before 3.5), and `auto` choosing around both. CI's Triton is newer than either, so the
version the package read is replaced here; torch 2.8 with its Triton 3.4 ran the suite for real."""
import pytest
import torch

import ct_kernels as ct
from ct_kernels import backends, selfcheck

triton_ops = pytest.importorskip("ct_kernels.triton_ops")
if not triton_ops.AVAILABLE:
    pytest.skip(f"triton is not usable here: {triton_ops.UNAVAILABLE_REASON}", allow_module_level=True)
from ct_kernels.triton_ops import version  # noqa: E402


def test_version_strings():
    assert version.parse("3.4.0") == (3, 4)
    assert version.parse("3.6.0+git1a2b3c") == (3, 6)
    assert version.parse("3.10.1") == (3, 10)
    assert version.VERSION >= version.MIN_VERSION and version.HAS_FP64_DOT == (version.VERSION >= (3, 5))


def test_a_triton_before_3_4_is_a_missing_backend_that_says_so(monkeypatch):
    reason = version.too_old_reason((3, 1))
    assert "3.4" in reason and "upgrade torch" in reason and version.too_old_reason((3, 4)) == ""
    monkeypatch.setattr(triton_ops, "AVAILABLE", False)
    monkeypatch.setattr(triton_ops, "UNAVAILABLE_REASON", reason)
    assert ct.available_backends()["triton"] != "ok"
    z, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    with pytest.raises(RuntimeError, match="older than 3.4"):
        ct.supcon_loss(z, y, backend="triton")
    # auto on a GPU then takes native (or torch), never the old Triton
    assert backends.resolve("auto", torch.device("cuda"), "supcon_loss", torch.bfloat16)[0] != "triton"


@pytest.fixture
def no_fp64_dot(monkeypatch):
    monkeypatch.setattr(version, "HAS_FP64_DOT", False)


def test_float64_without_fp64_dot_raises_before_any_kernel(no_fp64_dot, monkeypatch):
    def launched(*args, **kwargs):
        raise AssertionError("a kernel was launched")
    monkeypatch.setattr(triton_ops.supcon, "_Call", launched)
    z, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 2, (8,))
    with pytest.raises(RuntimeError, match="float64 tl.dot.*backend='native' or 'torch'"):
        triton_ops.supcon_forward(z, y, -1, 10.0, "supcon", 0, 0, False)
    # the other dtypes are unaffected
    assert triton_ops.supports("supcon_loss", torch.float32) and not triton_ops.supports("supcon_loss", torch.float64)


def test_auto_takes_float64_elsewhere_without_fp64_dot(no_fp64_dot, monkeypatch):
    monkeypatch.setattr(backends, "_load_native", lambda: None)
    cuda = torch.device("cuda")
    assert backends.resolve("auto", cuda, "supcon_loss", torch.float64)[0] == "torch"
    assert backends.resolve("auto", cuda, "supcon_loss", torch.bfloat16)[0] == "triton"
    monkeypatch.setattr(version, "HAS_FP64_DOT", True)
    assert backends.resolve("auto", cuda, "supcon_loss", torch.float64)[0] == "triton"


def test_selfcheck_leaves_out_float64_without_fp64_dot(no_fp64_dot):
    assert "fp64" not in selfcheck.precisions_for("triton", "cuda")
    assert "fp64" in selfcheck.precisions_for("native", "cuda")
    assert "no float64 tl.dot" in selfcheck.header("cpu")
