"""The dense peers that benchmarks/gpu_bench.py times against ct_kernels compute the loss ct_kernels
does (DESIGN.md's formula), so that the recorded ratios compare like with like: naive PyTorch and
the row-chunked, checkpointed version, against the torch reference in float64, loss and gradient."""
import sys
from pathlib import Path

import pytest
import torch

import ct_kernels as ct

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_bench  # noqa: E402


@pytest.mark.parametrize("peer", ["naive", "chunked"])
def test_dense_peers_compute_the_library_loss(peer):
    g = torch.Generator().manual_seed(11)
    z = torch.randn(23, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (23,), generator=g)
    y[5] = 9  # a row without positives: not an anchor, still a column
    fn = gpu_bench.naive_supcon if peer == "naive" else (lambda a, b: gpu_bench.chunked_supcon(a, b, chunk=7))
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    out, ref = fn(z1, y), ct.supcon_loss(z2, y, gpu_bench.TEMP, backend="torch")
    out.backward()
    ref.backward()
    # the peers take s in float32 whatever the input (fp32 softmax, as for bf16 inputs)
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    err = (z1.grad - z2.grad).norm() / z2.grad.norm()
    assert err < 1e-6, err


def test_results_md_is_what_make_results_writes_from_the_records(tmp_path, monkeypatch):
    """benchmarks/RESULTS.md is generated, never edited: regenerating it from the committed
    records (into a copy) gives the committed text, so a change to make_results.py that would
    rewrite the recorded numbers shows up here."""
    pytest.importorskip("matplotlib")
    import shutil
    import make_results
    bench = Path(gpu_bench.__file__).parent
    shutil.copytree(bench / "results", tmp_path / "results")
    monkeypatch.setattr(make_results, "HERE", tmp_path)
    make_results.main(sorted(str(p) for p in (tmp_path / "results").glob("*.json")))
    assert (tmp_path / "RESULTS.md").read_text() == (bench / "RESULTS.md").read_text()
