"""The Triton tuner's choice on a GPU, exercised on the CPU with a stand-in timer: it takes the
fastest candidate, skips one that fails, caches per key, and keeps every candidate's time (which
benchmarks/gpu_bench.py records next to each ct_triton row)."""
import importlib.util
import logging
from pathlib import Path

import pytest
import torch

tuning = pytest.importorskip("ct_kernels.triton_ops.tuning")
triton_testing = pytest.importorskip("triton.testing")

KEY = ("test", 128, torch.bfloat16)


@pytest.fixture
def gpu_tuner(monkeypatch):
    """pick() as on a GPU: not interpreting, not capturing, autotuning on, empty caches; the
    timer returns each candidate's made-up time (its position + 1 ms; the third is fastest, the
    second fails to compile)."""
    cands = tuning.gpu_candidates(128, torch.bfloat16)
    assert len(cands) >= 3
    ms = {c: float(i + 1) for i, c in enumerate(cands)}
    ms[cands[2]] = 0.5
    ran = []

    def bench(fn, warmup, rep):
        fn()
        cfg = ran[-1]
        if cfg == cands[1]:
            raise RuntimeError("out of resources: shared memory")
        return ms[cfg]

    monkeypatch.setattr(tuning, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setenv("CT_KERNELS_TRITON_AUTOTUNE", "1")
    monkeypatch.delenv("CT_KERNELS_TRITON_CONFIG", raising=False)
    monkeypatch.setattr(tuning, "_CACHE", {})
    monkeypatch.setattr(tuning, "TIMINGS", {})
    monkeypatch.setattr(triton_testing, "do_bench", bench)
    monkeypatch.setattr(tuning, "pick", tuning.pick)  # restored after a test that wraps it
    return cands, ms, ran


def _pick(ran):
    return tuning.pick(KEY, 4096, 128, torch.bfloat16, ran.append)


def test_pick_takes_the_fastest_and_keeps_every_time(gpu_tuner, caplog):
    cands, ms, ran = gpu_tuner
    with caplog.at_level(logging.INFO, logger=tuning.__name__):
        cfg = _pick(ran)
    assert cfg == cands[2]
    assert ran == cands  # each candidate timed once
    times = dict(tuning.TIMINGS[KEY])
    assert times[cands[1]] is None and times[cands[2]] == 0.5 and times[cands[0]] == 1.0
    assert len(times) == len(cands)
    text = caplog.text
    assert tuning.format_config(cands[2]) + " 0.500 ms" in text and "failed" in text
    assert _pick(ran) == cfg and len(ran) == len(cands)  # cached: not timed again


def test_format_config_round_trips():
    for c in tuning.gpu_candidates(128, torch.bfloat16) + tuning.gpu_candidates(96, torch.float32, True, "tf32"):
        assert tuning.parse_config(tuning.format_config(c)) == c


def test_gpu_bench_records_the_pick(gpu_tuner):
    """gpu_bench.TunerPicks: the config a measurement ran and the candidates' times."""
    cands, ms, ran = gpu_tuner
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"
    spec = importlib.util.spec_from_file_location("gpu_bench_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    picks = bench.TunerPicks()
    assert picks.fields() == {}
    tuning.pick(KEY, 4096, 128, torch.bfloat16, ran.append)  # through the module, as supcon._Call asks
    fields = picks.fields()
    assert fields["triton_config"] == tuning.format_config(cands[2])
    assert fields["tune_ms"][tuning.format_config(cands[1])] is None
    assert fields["tune_ms"][tuning.format_config(cands[0])] == 1.0
    assert len(fields["tune_ms"]) == len(cands)
