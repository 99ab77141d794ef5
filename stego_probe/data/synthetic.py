"""A procedurally generated segmentation dataset: no files, deterministic, fast.

Each image is a warped Voronoi partition of the canvas into 5-9 regions; each region takes a
class whose probability depends on the region's height in the image (sky high, road low ...),
and is painted with the class's colour (jittered per region and per image, with a global
illumination factor) modulated by the class's texture. Classes come in pairs of similar colour
and different texture (sky / water, grass / foliage, road / building, sand / brick), so colour
alone confuses them while colour plus texture separates them.

Every image is a pure function of ``(seed, split, index)``; generating one 96x128 image takes a
few milliseconds with vectorised numpy.
"""

from __future__ import annotations

import zlib

import numpy as np
from PIL import Image

from stego_probe.data.base import Sample, SegDataset

#: (name, base RGB in [0, 1], preferred vertical position in [0, 1] (0 = top), texture)
CLASSES = [
    ("sky", (0.56, 0.70, 0.90), 0.10, "gradient"),
    ("water", (0.46, 0.62, 0.84), 0.80, "waves"),
    ("grass", (0.38, 0.60, 0.28), 0.75, "grain"),
    ("foliage", (0.30, 0.52, 0.24), 0.35, "blotches"),
    ("road", (0.52, 0.51, 0.52), 0.90, "asphalt"),
    ("building", (0.57, 0.53, 0.50), 0.35, "windows"),
    ("sand", (0.78, 0.68, 0.48), 0.85, "ripples"),
    ("brick", (0.64, 0.36, 0.28), 0.45, "bricks"),
]

#: Maximum number of classes.
MAX_CLASSES = len(CLASSES)
DEFAULT_N_IMAGES = {"train": 200, "val": 50}


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth random field: N(0, 1) values on a grid of spacing ``cell`` pixels, bilinearly
    interpolated to ``shape``. Returns float32 (H, W)."""
    h, w = shape
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    y = np.arange(h, dtype=np.float32) / cell + rng.uniform(0, 1)
    x = np.arange(w, dtype=np.float32) / cell + rng.uniform(0, 1)
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx).astype(
        np.float32
    )


def _texture(kind: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Luminance modulation (H, W) float32 of roughly unit-less amplitude 0.03-0.25."""
    shape = yy.shape
    h = shape[0]
    if kind == "gradient":  # smooth vertical brightening towards the horizon, almost no grain
        return (0.18 * (yy / h - 0.5) + 0.01 * rng.standard_normal(shape)).astype(np.float32)
    if kind == "waves":  # horizontal wave crests, period ~4.5-7 px, slightly wavy
        f = rng.uniform(0.9, 1.4)
        ph = rng.uniform(0, 2 * np.pi)
        return (0.13 * np.sin(f * yy + 1.2 * np.sin(0.12 * xx + ph) + ph)).astype(np.float32)
    if kind == "grain":  # per-pixel noise, a bit stretched vertically (blades)
        n = rng.standard_normal((shape[0] // 2 + 1, shape[1])).astype(np.float32)
        return 0.14 * np.repeat(n, 2, axis=0)[: shape[0]]
    if kind == "blotches":  # dappled light, blobs of ~4 px
        return 0.22 * smooth_noise(rng, shape, rng.uniform(3.0, 5.0))
    if kind == "asphalt":  # fine, weak grain
        return (0.035 * rng.standard_normal(shape)).astype(np.float32)
    if kind == "windows":  # grid of dark windows
        py, px = rng.integers(7, 11), rng.integers(6, 10)
        oy, ox = rng.integers(0, py), rng.integers(0, px)
        win = (((yy + oy) % py) < py * 0.55) & (((xx + ox) % px) < px * 0.6)
        return np.where(win, -0.22, 0.04).astype(np.float32)
    if kind == "ripples":  # diagonal ripples
        f = rng.uniform(0.5, 0.8)
        sgn = rng.choice([-1.0, 1.0])
        return (0.09 * np.sin(f * (xx + sgn * yy) + rng.uniform(0, 2 * np.pi))).astype(np.float32)
    if kind == "bricks":  # staggered bricks with light mortar lines
        bh, bw = rng.integers(4, 6), rng.integers(9, 13)
        row = (yy // bh).astype(np.int64)
        mortar = ((yy % bh) == 0) | (((xx + (row % 2) * (bw // 2)) % bw) == 0)
        return np.where(mortar, 0.22, 0.0).astype(np.float32) + (
            0.03 * rng.standard_normal(shape)
        ).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")  # pragma: no cover


def generate_scene(
    rng: np.random.Generator, size: tuple[int, int] = (96, 128), n_classes: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic scene.

    Args:
        rng: the random generator (all randomness comes from it).
        size: (H, W) of the image.
        n_classes: number of classes used, the first ``n_classes`` of :data:`CLASSES`.

    Returns:
        image uint8 (H, W, 3) and label int64 (H, W) with values in ``[0, n_classes)``.
    """
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # warped Voronoi partition
    n_cells = int(rng.integers(5, 10))
    cy = rng.uniform(0, h, n_cells).astype(np.float32)
    cx = rng.uniform(0, w, n_cells).astype(np.float32)
    amp = 0.08 * min(h, w)
    wy = yy + amp * smooth_noise(rng, (h, w), 0.25 * min(h, w))
    wx = xx + amp * smooth_noise(rng, (h, w), 0.25 * min(h, w))
    d = (wy[None] - cy[:, None, None]) ** 2 + (wx[None] - cx[:, None, None]) ** 2
    cell = np.argmin(d, axis=0)
    # classes by vertical prior
    pref = np.array([c[2] for c in CLASSES[:n_classes]], dtype=np.float64)
    logits = -((cy[:, None] / h - pref[None]) ** 2) / (2 * 0.3**2)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    cell_class = np.array([rng.choice(n_classes, p=pi) for pi in p], dtype=np.int64)
    label = cell_class[cell]
    # paint
    illum = rng.uniform(0.75, 1.2)
    img = np.empty((h, w, 3), dtype=np.float32)
    for k in np.unique(cell_class):
        m = label == k
        name, base, _, tex = CLASSES[int(k)]
        colour = np.asarray(base, np.float32) + rng.normal(0, 0.06, 3).astype(np.float32)
        mod = _texture(tex, rng, yy, xx)
        img[m] = colour[None, :] * (1.0 + mod[m, None])
    img = img * illum + rng.normal(0, 0.015, img.shape).astype(np.float32)
    img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return img, label


class SyntheticDataset(SegDataset):
    """Procedural scenes (``synthetic``): no files, deterministic per ``(seed, split, index)``.

    Args:
        split: any name; ``train`` and ``val`` draw disjoint streams (different seeds).
        n_images: number of images (default 200 for train, 50 for other splits).
        size: (H, W) of every image (default 96 x 128, non-square).
        n_classes: 2..8 classes (default 6: sky, water, grass, foliage, road, building).
        seed: base seed.

    Items are ``Sample(image RGB (W x H), label int64 (H, W) in [0, n_classes), id)`` with ids
    ``f"{split}_{index:05d}"``; no pixel is ignored.

    Examples:
        >>> ds = SyntheticDataset("val", n_images=2)
        >>> s = ds[0]
        >>> s.image.size, s.label.shape, s.id
        ((128, 96), (96, 128), 'val_00000')
    """

    def __init__(
        self,
        split: str = "train",
        n_images: int | None = None,
        size: tuple[int, int] = (96, 128),
        n_classes: int = 6,
        seed: int = 0,
    ) -> None:
        if n_images is None:
            n_images = DEFAULT_N_IMAGES.get(split, DEFAULT_N_IMAGES["val"])
        if not isinstance(n_images, int) or n_images < 1:
            raise ValueError(f"n_images: expected a positive int, got {n_images!r}")
        if not isinstance(n_classes, int) or not 2 <= n_classes <= MAX_CLASSES:
            raise ValueError(f"n_classes: expected an int in [2, {MAX_CLASSES}], got {n_classes!r}")
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 8:
            raise ValueError(f"size: expected (H, W) with both sides >= 8, got {size!r}")
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        self.size = size
        self.seed = int(seed)
        super().__init__(
            name="synthetic",
            split=split,
            n_classes=n_classes,
            class_names=[c[0] for c in CLASSES[:n_classes]],
            ids=[f"{split}_{i:05d}" for i in range(n_images)],
            info={"size": list(size), "seed": self.seed, "generator": "warped-voronoi-v1"},
            args={
                "n_images": n_images,
                "size": list(size),
                "n_classes": n_classes,
                "seed": self.seed,
            },
        )

    def load(self, i: int) -> Sample:
        """Sample ``i``: image RGB, label int64 (H, W)."""
        rng = np.random.default_rng([self.seed, _split_code(self.split), i])
        img, label = generate_scene(rng, self.size, self.n_classes)
        return Sample(Image.fromarray(img), label, self.ids[i])


def make_synthetic(
    root: object = None,
    split: str = "train",
    n_images: int | None = None,
    size: tuple[int, int] = (96, 128),
    n_classes: int = 6,
    seed: int = 0,
) -> SegDataset:
    """Registry factory for ``synthetic``; ``root`` is ignored (nothing is read from disk)."""
    return SyntheticDataset(split, n_images=n_images, size=size, n_classes=n_classes, seed=seed)
