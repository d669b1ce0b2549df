"""Datasets for the segmentation demo: an ISPRS Potsdam-layout reader and a synthetic aerial
scene generator with the same six classes.

Classes (Potsdam order)::

    0 impervious surfaces  (255, 255, 255)
    1 building             (0,   0,   255)
    2 low vegetation       (0,   255, 255)
    3 tree                 (0,   255, 0)
    4 car                  (255, 255, 0)
    5 clutter/background   (255, 0,   0)
    255 boundary / ignore  (0,   0,   0)

Both datasets return ``(image, mask)``: image float32 ``(3, H, W)`` in [0, 1], mask int64
``(H, W)`` with values in 0..5 or 255.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

CLASSES = ("impervious", "building", "low_veg", "tree", "car", "clutter")
NUM_CLASSES = len(CLASSES)
IGNORE_INDEX = 255
POTSDAM_COLORS = {
    (255, 255, 255): 0,
    (0, 0, 255): 1,
    (0, 255, 255): 2,
    (0, 255, 0): 3,
    (255, 255, 0): 4,
    (255, 0, 0): 5,
    (0, 0, 0): IGNORE_INDEX,
}
# Display colours for plots (the Potsdam palette; ignore shown black).
PALETTE = np.array([c for c, _ in sorted(POTSDAM_COLORS.items(), key=lambda kv: kv[1])], dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Potsdam layout
# --------------------------------------------------------------------------------------------

def decode_potsdam_label(rgb: np.ndarray, snap: bool = False, source: str = "label") -> np.ndarray:
    """Colour-coded label image (H, W, 3) uint8 -> class ids (H, W) uint8 (255 = ignore).

    Any colour outside the seven Potsdam colours raises ValueError naming it. ``snap=True``
    first rounds every channel to 0 or 255 (threshold 128), for label files whose colours were
    disturbed by lossy saving.
    """
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"{source}: a colour-coded label image must be (H, W, 3), got {rgb.shape}")
    rgb = rgb[..., :3]
    if snap:
        rgb = np.where(rgb >= 128, 255, 0).astype(np.uint8)
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    out = np.full(code.shape, 254, dtype=np.uint8)  # 254: not yet decoded
    for (r, g, b), cls in POTSDAM_COLORS.items():
        out[code == ((r << 16) | (g << 8) | b)] = cls
    bad = out == 254
    if bad.any():
        bad_codes, counts = np.unique(code[bad], return_counts=True)
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255}) x{n}"
                          for c, n in list(zip(bad_codes.tolist(), counts.tolist()))[:5])
        more = "" if len(bad_codes) <= 5 else f" and {len(bad_codes) - 5} more colours"
        raise ValueError(f"{source}: {int(bad.sum())} pixels have colours that are not Potsdam classes: "
                         f"{shown}{more}. Known colours: {sorted(POTSDAM_COLORS)} "
                         "(pass snap_colors=True to round channels to 0/255 first)")
    return out


_SUFFIX = re.compile(r"_(RGB|IRRG|RGBIR|IR|label_noBoundary|label|labels)$", re.IGNORECASE)
_IMAGE_EXT = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def _tile_key(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return _SUFFIX.sub("", stem)


def _list_images(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(_IMAGE_EXT) and not f.startswith("."))


def find_potsdam_pairs(root: str | None = None, image_dir: str | None = None,
                       label_dir: str | None = None) -> list[tuple[str, str]]:
    """(image, label) file pairs, matched by tile name (``top_potsdam_2_10_RGB.tif`` pairs with
    ``top_potsdam_2_10_label.tif``). Give ``image_dir`` and ``label_dir``, or a ``root`` holding
    the official sub-folders (``2_Ortho_RGB``, ``5_Labels_all`` ...) or ``images/``+``labels/``.
    """
    if image_dir is None or label_dir is None:
        if root is None:
            raise ValueError("give root, or both image_dir and label_dir")
        subs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        lab = [d for d in subs if "label" in d.lower()]
        img = [d for d in subs if "label" not in d.lower() and ("rgb" in d.lower() or "image" in d.lower())]
        # Prefer the full labels over the eroded "noBoundary" ones; prefer RGB over IRRG/RGBIR.
        lab.sort(key=lambda d: ("noboundary" in d.lower(), d))
        img.sort(key=lambda d: ("rgbir" in d.lower() or "irrg" in d.lower(), d))
        if not lab or not img:
            raise FileNotFoundError(f"{root}: expected an image folder (name with 'RGB' or 'image') and a "
                                    f"label folder (name with 'label'); found {subs}")
        image_dir = image_dir or os.path.join(root, img[0])
        label_dir = label_dir or os.path.join(root, lab[0])
    labels = {}
    for p in _list_images(label_dir):
        labels.setdefault(_tile_key(p), p)
    pairs = [(p, labels[_tile_key(p)]) for p in _list_images(image_dir) if _tile_key(p) in labels]
    if not pairs:
        raise FileNotFoundError(f"no image/label pairs matched between {image_dir} and {label_dir}")
    return pairs


def _positions(length: int, crop: int, stride: int) -> list[int]:
    if length <= crop:
        return [0]
    pos = list(range(0, length - crop + 1, stride))
    if pos[-1] != length - crop:
        pos.append(length - crop)  # cover the border: the last crop overlaps its neighbour
    return pos


class PotsdamDataset(Dataset):
    """Crops of Potsdam-layout tiles as a torch Dataset.

    Every tile is cut into ``crop_size`` x ``crop_size`` crops at ``stride`` (default: the crop
    size, no overlap); the last crop of a row/column is shifted to end at the tile border, so
    every pixel is covered. Tiles smaller than the crop are padded (image 0, mask ignore).
    Decoded tiles are kept in a small LRU cache (``cache_tiles``): full Potsdam tiles are
    6000 x 6000, so reading crops in order (the default sampler order) decodes each tile once.
    """

    def __init__(self, root: str | None = None, crop_size: int = 512, stride: int | None = None, *,
                 image_dir: str | None = None, label_dir: str | None = None,
                 tiles: Sequence[str] | None = None, snap_colors: bool = False, cache_tiles: int = 2):
        from PIL import Image
        self._Image = Image
        pairs = find_potsdam_pairs(root, image_dir, label_dir)
        if tiles is not None:
            wanted = set(tiles)
            pairs = [p for p in pairs if _tile_key(p[0]) in wanted]
            if not pairs:
                raise ValueError(f"none of the tiles {sorted(wanted)} were found")
        self.pairs = pairs
        self.crop_size = int(crop_size)
        self.stride = int(stride or crop_size)
        if self.crop_size <= 0 or self.stride <= 0:
            raise ValueError("crop_size and stride must be positive")
        self.snap_colors = snap_colors
        self.cache_tiles = max(1, int(cache_tiles))
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.index: list[tuple[int, int, int]] = []  # (tile, y, x)
        for t, (img_path, lab_path) in enumerate(pairs):
            with Image.open(img_path) as im, Image.open(lab_path) as lb:
                if im.size != lb.size:
                    raise ValueError(f"{img_path} is {im.size} but {lab_path} is {lb.size}")
                w, h = im.size
            for y in _positions(h, self.crop_size, self.stride):
                for x in _positions(w, self.crop_size, self.stride):
                    self.index.append((t, y, x))

    def __len__(self) -> int:
        return len(self.index)

    def _tile(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        if t in self._cache:
            self._cache.move_to_end(t)
            return self._cache[t]
        img_path, lab_path = self.pairs[t]
        with self._Image.open(img_path) as im:
            img = np.asarray(im.convert("RGB"), dtype=np.uint8)
        with self._Image.open(lab_path) as lb:
            if lb.mode not in ("RGB", "RGBA", "P"):
                raise ValueError(f"{lab_path}: expected a colour-coded (RGB) label image, got mode {lb.mode}")
            lab = decode_potsdam_label(np.asarray(lb.convert("RGB"), dtype=np.uint8),
                                       snap=self.snap_colors, source=lab_path)
        self._cache[t] = (img, lab)
        while len(self._cache) > self.cache_tiles:
            self._cache.popitem(last=False)
        return img, lab

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        t, y, x = self.index[i]
        img, lab = self._tile(t)
        c = self.crop_size
        im = img[y:y + c, x:x + c]
        lb = lab[y:y + c, x:x + c]
        if im.shape[0] < c or im.shape[1] < c:
            pad = ((0, c - im.shape[0]), (0, c - im.shape[1]))
            im = np.pad(im, pad + ((0, 0),))
            lb = np.pad(lb, pad, constant_values=IGNORE_INDEX)
        # writable too: a decoded PIL image is a read-only buffer, which torch warns about
        image = torch.from_numpy(np.require(im, requirements=['C', 'W'])).permute(2, 0, 1).float().div_(255.0)
        mask = torch.from_numpy(lb.astype(np.int64))
        return image, mask


# --------------------------------------------------------------------------------------------
# Synthetic aerial scenes
# --------------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise: a random grid every ``cell`` pixels, bilinearly interpolated; ~N(0, 1)-ish."""
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    ys = np.arange(h, dtype=np.float32) / cell + rng.random()
    xs = np.arange(w, dtype=np.float32) / cell + rng.random()
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` (Chebyshev) of a pixel of another class."""
    edge = np.zeros(mask.shape, dtype=bool)
    d = mask[1:, :] != mask[:-1, :]
    edge[1:, :] |= d
    edge[:-1, :] |= d
    d = mask[:, 1:] != mask[:, :-1]
    edge[:, 1:] |= d
    edge[:, :-1] |= d
    out = edge.copy()
    for _ in range(width - 1):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def synthetic_scene(rng: np.random.Generator, size: int = 64, *, boundary_ignore: int = 0,
                    noise: float = 0.06, car_fraction: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic aerial scene: image float32 (3, size, size) in [0, 1], mask uint8 (size, size).

    What makes it hard, as in the paper's setting (Potsdam at low resolution):
      * look-alikes: roofs are drawn in nearly the same grey as roads (told apart by shape, a
        ridge shading and context); low vegetation and trees share the same mean green (trees
        are a coarse, high-contrast canopy texture, low vegetation a fine, flat one);
      * imbalance: cars are a few percent of pixels (``car_fraction``, small rectangles on
        roads, some grey like the road), clutter a few percent;
      * per-image colour/brightness jitter, sensor noise (``noise``), shadows under trees;
      * ``boundary_ignore`` > 0 marks pixels within that distance of a class border as 255
        (Potsdam's eroded-boundary convention).
    Vectorised numpy; about a millisecond for a 64 x 64 scene.
    """
    h = w = int(size)
    s = h / 64.0  # scale of object sizes
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mask = np.full((h, w), 2, dtype=np.uint8)  # low vegetation background

    # Buildings: a few axis-aligned rectangles (some L-shaped), each with a ridge direction.
    nb = int(rng.integers(3, 6))
    by0 = rng.integers(0, h, nb)
    bx0 = rng.integers(0, w, nb)
    bh = (rng.integers(10, 22, nb) * s).astype(np.int64)
    bw = (rng.integers(10, 22, nb) * s).astype(np.int64)
    inb = ((yy[None] >= by0[:, None, None]) & (yy[None] < (by0 + bh)[:, None, None])
           & (xx[None] >= bx0[:, None, None]) & (xx[None] < (bx0 + bw)[:, None, None]))
    # L-shapes: cut one quadrant out of some buildings
    cut = rng.random(nb) < 0.4
    cy = by0 + bh // 2
    cx = bx0 + bw // 2
    quad = ((yy[None] >= cy[:, None, None]) & (xx[None] >= cx[:, None, None]))
    inb &= ~(quad & cut[:, None, None])
    bid = np.where(inb.any(0), inb.argmax(0), -1)
    mask[bid >= 0] = 1

    # Roads: 1-3 straight bands (horizontal/vertical, sometimes diagonal), drawn over buildings'
    # surroundings but not through them (buildings drawn after).
    road = np.zeros((h, w), dtype=bool)
    nr = int(rng.integers(1, 4))
    for _ in range(nr):
        width = rng.uniform(5, 9) * s
        kind = rng.random()
        if kind < 0.4:
            c = rng.uniform(0.1, 0.9) * h
            road |= np.abs(yy - c) < width / 2
        elif kind < 0.8:
            c = rng.uniform(0.1, 0.9) * w
            road |= np.abs(xx - c) < width / 2
        else:
            ang = rng.uniform(0, np.pi)
            c = rng.uniform(0.3, 0.7) * h
            road |= np.abs((yy - c) * np.cos(ang) - (xx - w / 2) * np.sin(ang)) < width / 2
    mask[road & (bid < 0)] = 0

    # Trees: round crowns on vegetation and road edges, never on buildings.
    nt = int(rng.integers(3, 10))
    ty = rng.uniform(0, h, nt)
    tx = rng.uniform(0, w, nt)
    tr = rng.uniform(2.5, 6.5, nt) * s
    d2 = (yy[None] - ty[:, None, None]) ** 2 + (xx[None] - tx[:, None, None]) ** 2
    wobble = 1 + 0.25 * _smooth_noise(rng, h, w, 3 * s)
    tree = (d2 < (tr[:, None, None] * wobble[None]) ** 2).any(0) & (mask != 1)
    mask[tree] = 3

    # Cars: small rectangles on road pixels, aligned with the road, until car_fraction.
    road_px = np.flatnonzero(mask.ravel() == 0)
    car_boxes: list[tuple[slice, slice]] = []
    if road_px.size:
        target = car_fraction * h * w
        area = 0.0
        car = np.zeros((h, w), dtype=bool)
        for _ in range(40):
            if area >= target:
                break
            p = road_px[rng.integers(0, road_px.size)]
            py, px = divmod(int(p), w)
            ch, cw = (max(3, int(round(4 * s))), max(5, int(round(7 * s))))
            if rng.random() < 0.5:
                ch, cw = cw, ch
            sl = (slice(py, min(h, py + ch)), slice(px, min(w, px + cw)))
            if (mask[sl] == 0).mean() < 0.8:
                continue
            car[sl] = True
            car_boxes.append(sl)
            area = car.sum()
        mask[car & (mask == 0)] = 4

    # Clutter: a few irregular small blobs anywhere but on buildings.
    ncl = int(rng.integers(1, 4))
    cly = rng.uniform(0, h, ncl)
    clx = rng.uniform(0, w, ncl)
    clr = rng.uniform(1.5, 3.5, ncl) * s
    d2 = (yy[None] - cly[:, None, None]) ** 2 + (xx[None] - clx[:, None, None]) ** 2
    clutter = (d2 < (clr[:, None, None] * (1 + 0.4 * _smooth_noise(rng, h, w, 2 * s)[None])) ** 2).any(0)
    mask[clutter & (mask != 1)] = 5

    # ---- appearance -------------------------------------------------------------------------
    img = np.zeros((3, h, w), dtype=np.float32)
    grey = rng.uniform(0.42, 0.55)
    fine = _smooth_noise(rng, h, w, 1.0 * s)
    coarse = _smooth_noise(rng, h, w, 2.5 * s)
    broad = _smooth_noise(rng, h, w, 12 * s)

    # impervious: grey asphalt with faint broad variation and fine grain
    m = mask == 0
    road_col = grey + 0.03 * broad + 0.02 * fine
    img[:, m] = road_col[m] * np.array([1.0, 1.0, 1.02], np.float32)[:, None]

    # building roofs: almost the road grey (some reddish tiles), with a ridge shading
    for b in range(nb):
        mb = (bid == b) & (mask == 1)
        if not mb.any():
            continue
        tint = (np.array([1.0, 1.0, 1.0], np.float32) if rng.random() < 0.7
                else np.array([1.15, 0.9, 0.85], np.float32))
        base = grey + rng.uniform(-0.04, 0.06)
        if rng.random() < 0.5:  # ridge along x: the two roof halves lit differently
            side = np.sign(yy - (by0[b] + bh[b] / 2))
        else:
            side = np.sign(xx - (bx0[b] + bw[b] / 2))
        shade = base + 0.05 * side + 0.015 * fine
        img[:, mb] = shade[mb] * tint[:, None]

    green = np.array([0.30, 0.45, 0.22], np.float32) * rng.uniform(0.9, 1.1)
    # low vegetation: flat green, fine low-contrast grain
    m = mask == 2
    lv = 1 + 0.05 * fine + 0.05 * broad
    img[:, m] = green[:, None] * lv[m]
    # trees: same mean green, coarse high-contrast canopy
    m = mask == 3
    tv = 1 + 0.22 * coarse + 0.10 * fine
    img[:, m] = green[:, None] * tv[m]

    # cars: mostly saturated/white/dark, some road-grey; one colour per car
    car_lab = mask == 4
    if car_boxes:
        cols = np.array([[0.85, 0.85, 0.88], [0.15, 0.15, 0.17], [0.7, 0.15, 0.12],
                         [0.2, 0.3, 0.65], [grey + 0.08] * 3], np.float32)
        paint = np.zeros((3, h, w), dtype=np.float32)
        for sl, ci in zip(car_boxes, rng.integers(0, len(cols), len(car_boxes))):
            paint[(slice(None),) + sl] = cols[ci][:, None, None]
        img[:, car_lab] = paint[:, car_lab] * (1 + 0.05 * fine[car_lab])

    # clutter: brownish / mixed
    m = mask == 5
    clc = np.array([0.45, 0.38, 0.30], np.float32) * rng.uniform(0.8, 1.2, 3).astype(np.float32)
    img[:, m] = clc[:, None] * (1 + 0.15 * coarse[m])

    # tree shadows on the ground (south-east of crowns), darken non-tree pixels
    shadow = np.zeros((h, w), dtype=bool)
    sh = max(1, int(round(2 * s)))
    shadow[sh:, sh:] = tree[:-sh, :-sh]
    shadow &= ~tree
    img[:, shadow] *= 0.7

    # global jitter and sensor noise
    img *= rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3).astype(np.float32)[:, None, None]
    img += noise * rng.standard_normal(img.shape).astype(np.float32)
    np.clip(img, 0.0, 1.0, out=img)

    if boundary_ignore > 0:
        mask = mask.copy()
        mask[_boundary(mask, boundary_ignore)] = IGNORE_INDEX
    return img, mask


class SyntheticAerial(Dataset):
    """Deterministic synthetic aerial scenes: item ``i`` of seed ``s`` is always the same
    (``numpy.random.default_rng([seed, i])``), independent of order and workers."""

    def __init__(self, length: int = 1000, size: int = 64, seed: int = 0, *, boundary_ignore: int = 0,
                 noise: float = 0.06, car_fraction: float = 0.03):
        self.length = int(length)
        self.size = int(size)
        self.seed = int(seed)
        self.boundary_ignore = int(boundary_ignore)
        self.noise = float(noise)
        self.car_fraction = float(car_fraction)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, int(i)])
        img, mask = synthetic_scene(rng, self.size, boundary_ignore=self.boundary_ignore,
                                    noise=self.noise, car_fraction=self.car_fraction)
        return torch.from_numpy(img), torch.from_numpy(mask.astype(np.int64))

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack several items (no DataLoader needed for the demo)."""
        items = [self[i] for i in indices]
        return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])


def class_frequencies(masks: torch.Tensor | np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Fraction of non-ignored pixels per class."""
    m = np.asarray(masks).ravel()
    m = m[m != IGNORE_INDEX]
    counts = np.bincount(m, minlength=num_classes)[:num_classes].astype(np.float64)
    return counts / max(1.0, counts.sum())


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class ids (H, W) -> Potsdam colours (H, W, 3) uint8; ignore black."""
    m = np.asarray(mask)
    out = np.zeros(m.shape + (3,), dtype=np.uint8)
    valid = m < NUM_CLASSES
    out[valid] = PALETTE[m[valid]]
    return out
