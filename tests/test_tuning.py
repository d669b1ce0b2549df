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


def _refusing(ran, refused, error=None):
    """A trial that records each candidate and raises Triton's launch-time OutOfResources (or
    `error`) for those in `refused`."""
    from triton.runtime.errors import OutOfResources

    def trial(cfg):
        ran.append(cfg)
        if cfg in refused:
            raise error or OutOfResources(232448, 101376, "shared memory")
    return trial


@pytest.mark.parametrize("untimed", ["timed=False", "CT_KERNELS_TRITON_AUTOTUNE=0"])
def test_untimed_pick_skips_what_the_device_refuses(gpu_tuner, monkeypatch, caplog, untimed):
    # The candidates are ordered for 227 KB of shared memory a block; on a 99 KB card (sm_89) the
    # first bf16 D = 256 one needs 182 KB (benchmarks/offline_compile.py --arch 89) and Triton
    # refuses its launch. The untimed pick (a mined anchor slice under process_group,
    # autotuning off) took the first candidate regardless and failed at the launch.
    cands, _, ran = gpu_tuner
    if untimed.startswith("CT_"):
        monkeypatch.setenv("CT_KERNELS_TRITON_AUTOTUNE", "0")
    trial = _refusing(ran, set(cands[:2]))
    with caplog.at_level(logging.INFO, logger=tuning.__name__):
        cfg = tuning.pick(KEY, 4096, 128, torch.bfloat16, trial, timed=untimed.startswith("CT_"))
    assert cfg == cands[2] and ran == cands[:3]  # in order, untimed, stopping at the first that runs
    assert "refused by the device" in caplog.text and tuning.format_config(cands[0]) in caplog.text
    assert tuning.pick(KEY, 4096, 128, torch.bfloat16, trial, timed=False) == cfg and len(ran) == 3  # cached


def test_untimed_pick_raises_when_nothing_fits_and_passes_other_errors(gpu_tuner, monkeypatch):
    cands, _, ran = gpu_tuner
    monkeypatch.setenv("CT_KERNELS_TRITON_AUTOTUNE", "0")
    with pytest.raises(RuntimeError, match="no Triton configuration of .* fits this GPU"):
        tuning.pick(KEY, 4096, 128, torch.bfloat16, _refusing(ran, set(cands)))
    assert ran == cands and KEY not in tuning._CACHE
    ran.clear()
    with pytest.raises(ValueError, match="a bug"):  # not a resource refusal: not hidden
        tuning.pick(KEY, 4096, 128, torch.bfloat16, _refusing(ran, {cands[0]}, ValueError("a bug")))
    assert ran == cands[:1]


def test_pick_runs_nothing_inside_a_capture(gpu_tuner, monkeypatch):
    cands, _, ran = gpu_tuner
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert tuning.pick(KEY, 4096, 128, torch.bfloat16, ran.append) == cands[0] and ran == []
