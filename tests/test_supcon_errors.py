"""Bad input to supcon_loss raises before any kernel runs, naming the argument."""
import pytest
import torch

import ct_kernels as ct


@pytest.mark.parametrize("z,y,kw,err,match", [
    (torch.randn(4), torch.zeros(4, dtype=torch.int64), {}, ValueError, "z must be 2-D"),
    (torch.randn(4, 3).int(), torch.zeros(4, dtype=torch.int64), {}, TypeError, "z must be float"),
    (torch.randn(4, 0), torch.zeros(4, dtype=torch.int64), {}, ValueError, "D >= 1"),
    (torch.randn(4, 3), torch.zeros(5, dtype=torch.int64), {}, ValueError, "labels must be 1-D"),
    (torch.randn(4, 3), torch.zeros(4), {}, TypeError, "labels must be an integer"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), dict(temperature=0.0), ValueError, "temperature"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), dict(temperature=float("nan")), ValueError, "temperature"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), dict(variant="x"), ValueError, "variant"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), dict(reduction="avg"), ValueError, "reduction"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), dict(hard_positives=0), ValueError, "hard_positives"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), dict(hard_negatives=True), TypeError, "hard_negatives"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), dict(backend="gpu"), ValueError, "backend"),
    ("z", torch.zeros(4, dtype=torch.int64), {}, TypeError, "z must be a torch.Tensor"),
    # a float label would compare as-is in the reference but truncate in the kernels
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), dict(ignore_index=1.5), TypeError, "ignore_index"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), dict(ignore_index=None), TypeError, "ignore_index"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), dict(ignore_index=2 ** 63), ValueError, "ignore_index"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), dict(hard_positives=2 ** 63), ValueError,
     "hard_positives"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), dict(temperature=1e-39), ValueError, "temperature"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), dict(temperature=torch.tensor(0.1)), TypeError,
     r"temperature must be a real number.*float\(t\)"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), dict(temperature="0.1"), TypeError, "temperature"),
    (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), dict(process_group="x"), (RuntimeError, TypeError),
     "process_group"),
])
def test_bad_input(z, y, kw, err, match):
    with pytest.raises(err, match=match):
        ct.supcon_loss(z, y, **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mismatched_devices():
    with pytest.raises(ValueError, match="labels must be on z's device"):
        ct.supcon_loss(torch.randn(4, 3, device="cuda"), torch.zeros(4, dtype=torch.int64))


def test_mismatched_devices_meta():
    # a second device without a GPU: meta tensors are enough to reach the device check
    with pytest.raises(ValueError, match="labels must be on z's device"):
        ct.supcon_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64, device="meta"))


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="triton"):
        ct.supcon_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), backend="triton")


def test_env_override(monkeypatch):
    monkeypatch.setenv("CT_KERNELS_BACKEND", "torch")
    assert ct.backend_for("cpu") == "torch"
    monkeypatch.setenv("CT_KERNELS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="backend"):
        ct.backend_for("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_on_cuda_follows_the_measured_preference():
    from ct_kernels.backends import CUDA_PREFERENCE
    avail = ct.available_backends()
    if avail["triton"] != "ok" or avail["native"] != "ok":
        pytest.skip("needs both fused backends")
    assert ct.backend_for("cuda", dtype=torch.bfloat16) == CUDA_PREFERENCE["half"]
    assert ct.backend_for("cuda", dtype=torch.float64) == CUDA_PREFERENCE["fp64"]


def test_auto_on_cpu_prefers_native_when_built():
    expected = "native" if ct.available_backends()["native"] == "ok" else "torch"
    assert ct.backend_for("cpu") == expected


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_numpy_integers_and_the_largest_k_are_taken(backend):
    np = pytest.importorskip("numpy")
    if backend not in ct.available_backends():
        pytest.skip(f"{backend}: {ct.available_backends()}")
    z, y = torch.randn(9, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 5])
    want = ct.supcon_loss(z, y, ignore_index=5, backend="torch")
    got = ct.supcon_loss(z, y, ignore_index=np.int64(5), hard_positives=2 ** 63 - 1, hard_negatives=np.int32(40),
                         backend=backend)
    torch.testing.assert_close(got, want)



def test_temperature_takes_numpy_numbers():
    np = pytest.importorskip("numpy")
    z, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2])
    ref = ct.supcon_loss(z, y, 0.5, backend="torch")
    assert ct.supcon_loss(z, y, np.float32(0.5), backend="torch") == ref
    assert ct.supcon_loss(z, y, np.int64(2), backend="torch") == ct.supcon_loss(z, y, 2.0, backend="torch")
