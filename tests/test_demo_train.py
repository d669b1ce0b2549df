"""python/train.py and python/demo.py: one training step of each configuration on tiny sizes
(ViT and hierarchical backbones, with and without the contrastive term, both minings), the
metrics, and the demo's table/verdict. Kept fast: the whole file runs in well under a minute."""

import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

pytest.importorskip("timm")

import train as T  # noqa: E402
from metrics import ConfusionMatrix, segmentation_metrics  # noqa: E402

TINY_VIT = dict(backbone="vit_tiny_patch16_224", model_kwargs={"depth": 2, "embed_dim": 48, "num_heads": 2},
                patch_size=8, crop=32, decoder_dim=16, proj_dim=16)
TINY_CNN = dict(backbone="resnet18", model_kwargs={}, crop=32, decoder_dim=16, proj_dim=16, stages=[1, 2, 3],
                con_stages=[0, 1])


def _cfg(**kw):
    base = dict(train_size=8, val_size=4, steps=1, batch_size=4, warmup=1, backend="torch", threads=0,
                eval_batch=4, log_every=1, min_purity=0.5)
    base.update(kw)
    return T.TrainConfig(**base)


@pytest.fixture(scope="module")
def data32():
    return T.load_data(_cfg(crop=32))


def _one_step(cfg, data):
    res = T.train(cfg, data, progress=_NullBar())
    h = res["history"]
    assert len(h["ce"]) == 1 and np.isfinite(h["ce"][0])
    m = res["metrics"]
    assert len(m["iou"]) == 6 and 0.0 <= m["oa"] <= 1.0
    return res


class _NullBar:
    def update(self, n=1):
        pass

    def set_postfix(self, *a, **k):
        pass


@pytest.mark.parametrize("arch", ["vit", "cnn"])
def test_baseline_step(arch, data32):
    kw = TINY_VIT if arch == "vit" else TINY_CNN
    res = _one_step(_cfg(**kw), data32)
    assert np.isnan(res["history"]["con"][0])
    assert res["backend"] is None and res["rows_per_step"] == 0


@pytest.mark.parametrize("arch", ["vit", "cnn"])
@pytest.mark.parametrize("mining", ["similarity", "confidence"])
def test_contrastive_step(arch, mining, data32):
    kw = TINY_VIT if arch == "vit" else TINY_CNN
    cfg = _cfg(contrastive_weight=0.5, mining=mining, hard_k=4 if mining == "similarity" else None,
               min_per_class=2, dice_weight=0.5, **kw)
    res = _one_step(cfg, data32)
    assert np.isfinite(res["history"]["con"][0])
    assert res["backend"] == "torch"
    assert res["patches_per_step"] > 0
    assert res["patches_per_step"] <= res["rows_per_step"]


def test_contrastive_gradients_reach_backbone_and_heads(data32):
    cfg = _cfg(contrastive_weight=1.0, **TINY_VIT)
    torch.manual_seed(0)
    net = T.Segmenter(cfg)
    x, y = data32[0][:4], data32[1][:4]
    out = net.losses(x, y)
    net.zero_grad()
    out["con"].backward()
    assert net.heads[0].net[0].weight.grad.abs().sum() > 0
    assert net.model.body.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert net.model.classifier.weight.grad is None or net.model.classifier.weight.grad.abs().sum() == 0


def test_same_seed_same_init_with_and_without_contrastive():
    torch.manual_seed(3)
    a = T.Segmenter(_cfg(**TINY_VIT)).model.state_dict()
    torch.manual_seed(3)
    b = T.Segmenter(_cfg(contrastive_weight=0.1, **TINY_VIT)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_hierarchical_stage_reductions():
    net = T.Segmenter(_cfg(**TINY_CNN))
    assert net.model.reductions == [4, 8, 16]
    logits, feats = net.model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 6, 8, 8)
    assert [f.shape[-1] for f in feats] == [8, 4, 2]


def test_parse_kwargs_and_cli_config():
    assert T.parse_kwargs("depth=4,embed_dim=96,act=gelu") == {"depth": 4, "embed_dim": 96, "act": "gelu"}
    import argparse
    p = argparse.ArgumentParser()
    T.add_arguments(p)
    cfg = T.config_from_args(p.parse_args(["--stages", "1,2", "--hard-k", "8", "--model-kwargs", ""]))
    assert cfg.stages == [1, 2] and cfg.hard_k == 8 and cfg.model_kwargs == {}


def test_metrics_by_hand():
    cm = ConfusionMatrix(3, ignore_index=255)
    target = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm.update(pred, target)
    m = cm.compute()
    # class 0: tp 1, fp 1, fn 1 -> 1/3 ; class 1: tp 2, fp 1, fn 0 -> 2/3 ; class 2: tp 0 fn 1 -> 0
    np.testing.assert_allclose(m["iou"], [1 / 3, 2 / 3, 0.0])
    np.testing.assert_allclose(m["f1"], [0.5, 0.8, 0.0])
    assert m["miou"] == pytest.approx(1 / 3)
    assert m["oa"] == pytest.approx(3 / 5)
    m01 = cm.compute(classes=[0, 1])
    assert m01["miou"] == pytest.approx(0.5)
    # a class absent from truth and prediction is NaN and left out of the mean
    m2 = segmentation_metrics(np.array([[2, 0, 0], [0, 1, 0], [0, 0, 0]]))
    assert np.isnan(m2["iou"][2]) and m2["miou"] == pytest.approx(1.0)


def test_demo_table_and_verdict():
    import demo
    def run(ious):
        return {"metrics": {"iou": ious, "miou": float(np.mean(ious)), "miou5": float(np.mean(ious[:5])),
                            "mf15": float(np.mean(ious[:5]))}}
    base = [run([0.5] * 6), run([0.5] * 6)]
    con = [run([0.6] * 6), run([0.55] * 6)]
    table, summary = demo.results_table(base, con)
    assert "mIoU (5)" in table and "car" in table
    assert summary["miou5"]["diff_mean"] == pytest.approx(0.075)
    assert "beats" in demo.verdict(summary, 2)
    _, worse = demo.results_table(con, base)
    assert "does NOT beat" in demo.verdict(worse, 2)
    _, one = demo.results_table(con[:1], base[:1])
    assert "does NOT beat" in demo.verdict(one, 1)


def test_memory_bank_step(data32):
    """--memory-bank: the criterion gets a MemoryBank of that size, filled by the steps (that the
    bank's rows join each step's loss is test_module.py's test_memory_bank_in_the_module)."""
    cfg = _cfg(contrastive_weight=0.5, memory_bank=8, steps=2, **TINY_VIT)
    res = T.train(cfg, data32, progress=_NullBar())
    bank = res["model"].criterion.memory_bank
    assert bank.size_per_class == 8 and int(bank.filled.sum()) > 0 and np.isfinite(res["history"]["con"]).all()
    with pytest.raises(ValueError, match="memory-bank"):
        T.Segmenter(_cfg(contrastive_weight=0.5, memory_bank=8, **TINY_CNN))



@pytest.mark.parametrize("kw,match", [
    (dict(steps=0), "--steps must be >= 1"),
    (dict(batch_size=16, train_size=8), "--batch-size 16 is larger than --train-size 8"),
    (dict(eval_batch=0), "--eval-batch must be >= 1"),
    (dict(memory_bank=-5, contrastive_weight=0.1), "--memory-bank must be >= 0"),
    (dict(contrastive_weight=0.1, mining="confidence", hard_k=8), "--hard-k"),
    (dict(contrastive_weight=0.1, min_purity=1.5), "contrastive options: min_purity"),
    (dict(contrastive_weight=0.1, temperature=0.0), "contrastive options: temperature"),
    (dict(device="gpu0"), "--device"),
])
def test_bad_options_fail_before_any_training(kw, match):
    if kw.get("backend") == "triton" and torch.cuda.is_available():
        pytest.skip("triton runs here")
    with pytest.raises(ValueError, match=match):
        T.check_config(_cfg(**kw))
    T.check_config(_cfg())  # the defaults pass


def test_a_missing_backend_fails_before_any_training(monkeypatch):
    def missing(device, backend):
        raise RuntimeError(f"backend={backend!r} was requested ... pip install ...")
    monkeypatch.setattr(T.ct, "backend_for", missing)
    with pytest.raises(ValueError, match="contrastive options: backend='native' was requested"):
        T.check_config(_cfg(contrastive_weight=0.1, backend="native"))
    T.check_config(_cfg(backend="native"))  # the baseline does not need it


def test_cli_value_errors_name_the_option():
    import argparse
    p = argparse.ArgumentParser()
    T.add_arguments(p)
    for argv in (["--stages", "a"], ["--model-kwargs", "depth"]):
        with pytest.raises(SystemExit):
            p.parse_args(argv)
    with pytest.raises(ValueError, match="--stages: index 7 is out of range for 2 blocks"):
        T.Segmenter(_cfg(**dict(TINY_VIT, stages=[7])))
    with pytest.raises(ValueError, match="--con-stages: index 5 is out of range for 3 stages"):
        T.Segmenter(_cfg(**dict(TINY_CNN, con_stages=[5]), contrastive_weight=0.1))


def test_json_outputs_hold_no_nan(tmp_path):
    import json
    out = T.json_safe({"a": [float("nan"), 1.0, np.float32(2.0)], "b": (float("inf"),), "c": {"d": np.nan}})
    assert out == {"a": [None, 1.0, 2.0], "b": [None], "c": {"d": None}}
    json.loads(json.dumps(out, allow_nan=False))


def test_potsdam_tiles_are_checked(tmp_path):
    from test_datasets import _classes, _write_tile
    root = tmp_path / "potsdam"
    for i, name in enumerate(["2_10", "2_11"]):
        _write_tile(str(root / "images"), str(root / "labels"), name, _classes(40, 40, i), seed=i)
    with pytest.raises(ValueError, match=r"--val-tiles: \['typo'\] not in .* which holds \['top_potsdam_2_10'"):
        T.load_data(_cfg(dataset=str(root), val_tiles=["top_potsdam_2_10", "typo"]))
    with pytest.raises(ValueError, match="none is left for training"):
        T.load_data(_cfg(dataset=str(root), val_tiles=["top_potsdam_2_10", "top_potsdam_2_11"]))
    train, _, val, _ = T.load_data(_cfg(dataset=str(root), crop=32))
    assert len(train) == len(val) == 4  # one tile each, four 32 x 32 crops covering 40 x 40


def test_demo_writes_its_results_with_a_potsdam_folder_and_few_scenes(tmp_path):
    """The figure came after the JSON was due and crashed on a dataset (Potsdam) or on fewer than four
    validation scenes, losing both runs: now the JSON is written first and the figure copes."""
    pytest.importorskip("matplotlib")
    import json
    import demo
    from test_datasets import _classes, _write_tile
    root = tmp_path / "potsdam"
    for i, name in enumerate(["2_10", "2_11"]):
        _write_tile(str(root / "images"), str(root / "labels"), name, _classes(32, 32, i), seed=i)
    common = ["--backbone", "vit_tiny_patch16_224", "--model-kwargs", "depth=1,embed_dim=48,num_heads=2",
              "--patch-size", "8", "--crop", "32", "--steps", "1", "--batch-size", "1", "--decoder-dim", "16",
              "--proj-dim", "16", "--backend", "torch", "--min-purity", "0.5", "--eval-batch", "4"]
    for extra, name in ((["--dataset", str(root)], "potsdam"), (["--train-size", "2", "--val-size", "2"], "two")):
        assert demo.main(common + extra + ["--out", str(tmp_path / name)]) == 0
        with open(tmp_path / name / "demo.json") as f:
            json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
        assert (tmp_path / name / "demo.png").stat().st_size > 0


def test_the_shipped_defaults_pass_the_checks():
    import demo
    T.check_config(demo.DEMO_DEFAULTS)  # what `make demo` runs
    T.check_config(T.TrainConfig())


def test_step_time_leaves_out_the_first_steps(data32, monkeypatch):
    # The first steps carry one-off costs (on a GPU the Triton tuner timing its candidates): the
    # ms/step the demo compares between the runs is taken after them. A stand-in clock: the first
    # 2 of 20 steps take 100 s, the other 18 take 1 s each.
    import time
    clock = iter([0.0, 100.0, 118.0] + [118.0] * 10)
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    res = T.train(_cfg(steps=20, log_every=100, **TINY_VIT), data32, progress=_NullBar())
    assert res["warm_steps"] == 2 and res["train_s"] == 118.0
    assert res["step_ms"] == pytest.approx(1000.0)
