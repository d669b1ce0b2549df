"""python/datasets.py: the Potsdam-layout reader on small generated files, and the synthetic
scene generator (determinism, class balance, speed)."""
import os
import sys
import time

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

from datasets import (IGNORE_INDEX, POTSDAM_COLORS, PotsdamDataset, SyntheticAerial,  # noqa: E402
                      class_frequencies, decode_potsdam_label, find_potsdam_pairs, synthetic_scene)

Image = pytest.importorskip("PIL.Image")

COLOR_OF = {v: k for k, v in POTSDAM_COLORS.items()}


def _write_tile(folder_img, folder_lab, name, classes, ext=".png", seed=0):
    """Write an RGB tile and its colour-coded label for a (H, W) array of class ids."""
    h, w = classes.shape
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    lab = np.zeros((h, w, 3), dtype=np.uint8)
    for cls, col in COLOR_OF.items():
        lab[classes == cls] = col
    os.makedirs(folder_img, exist_ok=True)
    os.makedirs(folder_lab, exist_ok=True)
    Image.fromarray(rgb).save(os.path.join(folder_img, f"top_potsdam_{name}_RGB{ext}"))
    Image.fromarray(lab).save(os.path.join(folder_lab, f"top_potsdam_{name}_label{ext}"))
    return rgb


def _classes(h, w, seed):
    rng = np.random.default_rng(seed)
    return rng.choice([0, 1, 2, 3, 4, 5, IGNORE_INDEX], size=(h, w)).astype(np.int64)


def test_decode_all_colours():
    rgb = np.array([[list(c) for c in POTSDAM_COLORS]], dtype=np.uint8)
    out = decode_potsdam_label(rgb)
    assert out.tolist() == [list(POTSDAM_COLORS.values())]
    assert out.dtype == np.uint8


def test_decode_unknown_colour_raises():
    rgb = np.full((2, 3, 3), 255, dtype=np.uint8)
    rgb[1, 2] = (10, 200, 30)
    with pytest.raises(ValueError, match=r"\(10, 200, 30\)"):
        decode_potsdam_label(rgb, source="x.png")
    # snapping rounds to the nearest 0/255 corner: (0, 255, 0) = tree
    assert decode_potsdam_label(rgb, snap=True)[1, 2] == 3


def test_reader_colours_ignore_and_tiling(tmp_path):
    root = tmp_path / "potsdam"
    cls_a = _classes(10, 12, 1)
    cls_b = _classes(8, 8, 2)
    rgb_a = _write_tile(str(root / "2_Ortho_RGB"), str(root / "5_Labels_all"), "2_10", cls_a, seed=1)
    _write_tile(str(root / "2_Ortho_RGB"), str(root / "5_Labels_all"), "2_11", cls_b, ".tif", seed=2)
    pairs = find_potsdam_pairs(str(root))
    assert [os.path.basename(p) for p, _ in pairs] == ["top_potsdam_2_10_RGB.png", "top_potsdam_2_11_RGB.tif"]

    ds = PotsdamDataset(str(root), crop_size=4, stride=4)
    # tile a: rows 0,4,6 (last shifted to the border) x cols 0,4,8 ; tile b: 0,4 x 0,4
    assert len(ds) == 3 * 3 + 2 * 2
    ys = sorted({y for t, y, x in ds.index if t == 0})
    xs = sorted({x for t, y, x in ds.index if t == 0})
    assert ys == [0, 4, 6] and xs == [0, 4, 8]
    for i, (t, y, x) in enumerate(ds.index):
        img, mask = ds[i]
        assert img.shape == (3, 4, 4) and img.dtype == torch.float32
        assert mask.shape == (4, 4) and mask.dtype == torch.int64
        ref = (cls_a if t == 0 else cls_b)[y:y + 4, x:x + 4]
        assert mask.numpy().tolist() == ref.tolist()
        if t == 0:
            np.testing.assert_allclose(img.permute(1, 2, 0).numpy(), rgb_a[y:y + 4, x:x + 4] / 255.0, atol=1e-6)
    # ignore pixels (black) decode to 255
    assert any((ds[i][1] == IGNORE_INDEX).any() for i in range(len(ds)))

    # overlapping stride, and padding when the crop exceeds the tile
    ds2 = PotsdamDataset(str(root), crop_size=6, stride=3, tiles=["top_potsdam_2_11"])
    assert len(ds2) == 2 * 2  # positions 0, 2 (the border) on each axis of an 8 x 8 tile
    ds3 = PotsdamDataset(image_dir=str(root / "2_Ortho_RGB"), label_dir=str(root / "5_Labels_all"),
                         crop_size=16, tiles=["top_potsdam_2_11"])
    img, mask = ds3[0]
    assert img.shape == (3, 16, 16)
    assert (mask[8:, :] == IGNORE_INDEX).all() and (mask[:, 8:] == IGNORE_INDEX).all()
    assert (img[:, 8:, :] == 0).all()


def test_reader_unknown_colour_names_file(tmp_path):
    cls = _classes(4, 4, 3)
    _write_tile(str(tmp_path / "img_RGB"), str(tmp_path / "labels"), "3_10", cls)
    lab_path = tmp_path / "labels" / "top_potsdam_3_10_label.png"
    arr = np.asarray(Image.open(lab_path)).copy()
    arr[0, 0] = (128, 128, 128)
    Image.fromarray(arr).save(lab_path)
    ds = PotsdamDataset(str(tmp_path), crop_size=4)
    with pytest.raises(ValueError, match="top_potsdam_3_10_label.png.*\\(128, 128, 128\\)"):
        ds[0]


def test_reader_no_pairs(tmp_path):
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "labels")
    with pytest.raises(FileNotFoundError):
        PotsdamDataset(str(tmp_path), crop_size=4)


def test_synthetic_deterministic_per_seed_and_index():
    a = SyntheticAerial(8, 64, seed=3)
    b = SyntheticAerial(8, 64, seed=3)
    c = SyntheticAerial(8, 64, seed=4)
    for i in (0, 5, 7):
        xa, ya = a[i]
        xb, yb = b[i]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # order independence: item 5 is the same whether or not item 0 was read first
    assert torch.equal(SyntheticAerial(8, 64, seed=3)[5][0], a[5][0])
    assert not torch.equal(a[0][0], c[0][0])
    assert not torch.equal(a[0][1], a[1][1])
    x, y = a[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert y.shape == (64, 64) and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    with pytest.raises(IndexError):
        a[8]


def test_synthetic_class_balance():
    _, masks = SyntheticAerial(200, 64, seed=0).batch(range(200))
    freq = class_frequencies(masks)
    assert set(np.unique(masks.numpy())) <= {0, 1, 2, 3, 4, 5}
    assert (freq > 0).all(), freq  # every class occurs
    assert 0.005 < freq[4] < 0.06, freq  # cars: present, a few percent
    assert freq[5] < 0.05, freq  # clutter rare
    assert freq[2] == freq.max()  # low vegetation dominates
    # most scenes contain cars
    assert sum(bool((m == 4).any()) for m in masks) > 150


def test_synthetic_boundary_ignore_and_look_alikes():
    rng = np.random.default_rng(0)
    img, mask = synthetic_scene(rng, 64, boundary_ignore=1)
    assert (mask == IGNORE_INDEX).any()
    _, plain = synthetic_scene(np.random.default_rng(0), 64)
    # ignore marks only pixels next to a class border
    assert ((mask == IGNORE_INDEX) | (mask == plain)).all()
    # look-alikes: road and roof greys, low vegetation and tree greens, are close in mean colour
    imgs, masks = SyntheticAerial(64, 64, seed=1).batch(range(64))
    mean = {c: imgs.permute(1, 0, 2, 3)[:, masks == c].mean(1) for c in range(6)}
    assert float((mean[0] - mean[1]).abs().max()) < 0.08
    assert float((mean[2] - mean[3]).abs().max()) < 0.05


def test_synthetic_is_fast():
    rng = np.random.default_rng(0)
    synthetic_scene(rng, 64)
    t = time.perf_counter()
    for _ in range(50):
        synthetic_scene(rng, 64)
    per_scene = (time.perf_counter() - t) / 50
    assert per_scene < 0.05, per_scene  # a few ms normally; generous for loaded CI machines
