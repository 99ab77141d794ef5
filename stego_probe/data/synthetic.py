"""A procedurally generated segmentation dataset: no files, deterministic, fast.

Each image is a warped Voronoi partition of the canvas into 5-9 regions; each region takes a
class whose probability depends on the region's height in the image (sky high, road low ...),
and is painted with the class's colour (jittered per region and per image, with a global
illumination factor) modulated by the class's texture. Classes come in pairs of similar colour
and different texture (sky / water, grass / foliage, road / building, sand / brick), so colour
alone confuses them while colour plus texture separates them.

Nuisance
--------
``nuisance`` (a float in ``[0, 1]``, default :data:`DEFAULT_NUISANCE`) sets the strength of the
appearance changes a photograph has and a semantic segmentation should ignore. Each factor
below is drawn once per image or per region as a unit variate and scaled by ``nuisance``, so an
image changes continuously with it; the ranges are those at ``nuisance = 1``:

================= =========== ====================================================================
factor            per         at ``nuisance = 1``
================= =========== ====================================================================
illumination      image       gain ``exp(U(-0.6, 0.6))`` (x0.55 .. x1.8) on top of the base
                              illumination, and haze: a mix of up to 35 % of a bright grey
white balance     image       log channel gains: warm / cool ``(+r, 0, -r) * U(-0.3, 0.3)`` and
                              green / magenta ``(-g, 2g, -g) * U(-0.12, 0.12)``
shading           image       log-linear brightness ramp in a random direction (up to +-0.3
                              corner to corner) and soft shadows (smooth noise, std 0.2, cells
                              of ~40 % of the short side)
instance colour   region      each Voronoi region (one object) gets its own colour: the class
                              colour's chroma rotated by ``U(-90, 90)`` degrees and scaled by
                              ``exp(U(-0.7, 0.7))``, brightness ``exp(U(-0.35, 0.35))``, plus a
                              ``N(0, 0.06)`` paint offset per channel
instance contrast region      texture amplitude ``exp(U(-0.5, 0.5))``
texture scale     region      texture coordinates scaled by ``exp(U(-0.45, 0.45))`` (x0.64 ..
                              x1.57): bricks, windows, waves ... of other sizes
================= =========== ====================================================================

What a class *is* stays fixed: its texture family (orientation, periodic structure, grain) and
its vertical prior; its colour becomes a weak cue as ``nuisance`` grows. All nuisance draws
come from a generator of their own (seeded by ``(seed, split, index)`` and a stream tag), after
the scene's layout, so the labels do not depend on ``nuisance`` and ``nuisance = 0`` gives the
original scenes byte for byte (``generator`` ``"warped-voronoi-v1"``).

Every image is a pure function of ``(seed, split, index, nuisance)``; generating one 96x128
image takes a few milliseconds with vectorised numpy.
"""

from __future__ import annotations

import numbers
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
#: Default nuisance strength (see the module docstring).
DEFAULT_NUISANCE = 0.0
#: Name of the nuisance model recorded in ``info`` when ``nuisance > 0``.
NUISANCE_MODEL = "photometric-v1"
_NUISANCE_STREAM = 0x6E75  # the nuisance generator's extra seed word


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def smooth_noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    cell: float,
    coords: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Smooth random field: N(0, 1) values on a grid of spacing ``cell`` pixels, bilinearly
    interpolated to ``shape``. Returns float32 (H, W).

    ``coords``: optional (y, x) float32 (H, W) pixel coordinates to evaluate the field at
    (e.g. scaled ones); the grid wraps around beyond its extent. ``None`` is the pixel grid.
    """
    h, w = shape
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    oy, ox = rng.uniform(0, 1), rng.uniform(0, 1)
    if coords is None:
        y = (np.arange(h, dtype=np.float32) / cell + oy)[:, None]
        x = (np.arange(w, dtype=np.float32) / cell + ox)[None, :]
    else:
        y, x = coords[0] / cell + oy, coords[1] / cell + ox
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = y - y0, x - x0
    y0, x0, y1, x1 = y0 % gh, x0 % gw, (y0 + 1) % gh, (x0 + 1) % gw
    a, b, c, d = grid[y0, x0], grid[y0, x1], grid[y1, x0], grid[y1, x1]
    return (a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx).astype(
        np.float32
    )


def _texture(kind: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Luminance modulation (H, W) float32 of roughly unit-less amplitude 0.03-0.25.

    ``yy``, ``xx``: float32 (H, W) texture coordinates (the pixel grid, or a scaled one for a
    texture-scale change); the random draws depend on the shape only, not on the coordinates.
    """
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
        iy = (np.floor(yy).astype(np.int64) // 2) % n.shape[0]
        return 0.14 * n[iy, np.floor(xx).astype(np.int64) % n.shape[1]]
    if kind == "blotches":  # dappled light, blobs of ~4 px
        return 0.22 * smooth_noise(rng, shape, rng.uniform(3.0, 5.0), (yy, xx))
    if kind == "asphalt":  # fine, weak grain
        n = (0.035 * rng.standard_normal(shape)).astype(np.float32)
        return n[
            np.floor(yy).astype(np.int64) % shape[0],
            np.floor(xx).astype(np.int64) % shape[1],
        ]
    if kind == "windows":  # grid of dark windows
        py, px = rng.integers(7, 11), rng.integers(6, 10)
        oy, ox = rng.integers(0, py), rng.integers(0, px)
        win = (((yy + oy) % py) < py * 0.55) & (((xx + ox) % px) < px * 0.6)
        return np.where(win, -0.22, 0.04).astype(np.float32)
    if kind == "ripples":  # diagonal ripples
        f = rng.uniform(0.5, 0.8)
        sgn = rng.choice([-1.0, 1.0])
        return (0.09 * np.sin(f * (xx + sgn * yy) + rng.uniform(0, 2 * np.pi))).astype(np.float32)
    if kind == "bricks":  # staggered bricks with light mortar lines (1 texture unit wide)
        bh, bw = rng.integers(4, 6), rng.integers(9, 13)
        row = np.floor(yy / bh).astype(np.int64)
        mortar = ((yy % bh) < 1) | (((xx + (row % 2) * (bw // 2)) % bw) < 1)
        return np.where(mortar, 0.22, 0.0).astype(np.float32) + (
            0.03 * rng.standard_normal(shape)
        ).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")  # pragma: no cover


def _nuisance_draws(rng: np.random.Generator, n_cells: int, size: tuple[int, int]) -> dict:
    """The unit variates of every nuisance factor of one scene (strength 1), in a fixed order."""
    h, w = size
    return {
        "gain": rng.uniform(-1, 1),
        "haze": rng.uniform(0, 1),
        "warm": rng.uniform(-1, 1),
        "tint": rng.uniform(-1, 1),
        "ramp": rng.standard_normal(2) / np.sqrt(2),
        "shadow": smooth_noise(rng, size, 0.4 * min(h, w)),
        "hue": rng.uniform(-1, 1, n_cells),
        "sat": rng.uniform(-1, 1, n_cells),
        "value": rng.uniform(-1, 1, n_cells),
        "paint": rng.standard_normal((n_cells, 3)),
        "contrast": rng.uniform(-1, 1, n_cells),
        "scale": rng.uniform(-1, 1, n_cells),
    }


def _instance_colours(colour: np.ndarray, nd: dict, cells: np.ndarray, s: float) -> np.ndarray:
    """Per-region colours (len(cells), 3) float32: ``colour`` with each region's hue rotation,
    saturation, brightness and paint offset at strength ``s``."""
    lum = colour.mean()
    chroma = colour - lum
    # rotate the chroma about the grey axis (Rodrigues, axis (1, 1, 1) / sqrt(3))
    k = np.full(3, 1 / np.sqrt(3))
    th = s * (np.pi / 2) * nd["hue"][cells][:, None]
    rot = chroma * np.cos(th) + np.cross(k, chroma) * np.sin(th)
    rot = rot * np.exp(s * 0.7 * nd["sat"][cells])[:, None]
    out = (lum + rot) * np.exp(s * 0.35 * nd["value"][cells])[:, None]
    return (out + s * 0.06 * nd["paint"][cells]).astype(np.float32)


def _image_nuisance(img: np.ndarray, nd: dict, s: float, yy: np.ndarray, xx: np.ndarray):
    """Illumination, shading, haze and white balance at strength ``s`` on (H, W, 3) float32."""
    h, w = yy.shape
    ramp = 0.3 * (nd["ramp"][0] * (yy / h - 0.5) + nd["ramp"][1] * (xx / w - 0.5))
    log_light = s * (0.6 * nd["gain"] + ramp + 0.2 * nd["shadow"])
    img = img * np.exp(log_light)[..., None]
    haze = s * 0.35 * nd["haze"]
    img = img * (1 - haze) + haze * np.float32(0.8)
    wb = s * (
        0.3 * nd["warm"] * np.array([1.0, 0.0, -1.0]) + 0.12 * nd["tint"] * np.array([-1, 2, -1])
    )
    return (img * np.exp(wb).astype(np.float32)).astype(np.float32)


def generate_scene(
    rng: np.random.Generator,
    size: tuple[int, int] = (96, 128),
    n_classes: int = 6,
    nuisance: float = 0.0,
    nuisance_rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic scene.

    Args:
        rng: the random generator of the scene (layout, classes, textures, colours, noise).
        size: (H, W) of the image.
        n_classes: number of classes used, the first ``n_classes`` of :data:`CLASSES`.
        nuisance: strength in [0, 1] of the nuisance factors (module docstring); 0: none, and
            ``nuisance_rng`` is not used.
        nuisance_rng: the generator of the nuisance factors (required when ``nuisance > 0``).

    Returns:
        image uint8 (H, W, 3) and label int64 (H, W) with values in ``[0, n_classes)``; the
        label does not depend on ``nuisance``.
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
    # nuisance: one draw of every factor, from its own generator
    s = float(nuisance)
    if s > 0:
        if nuisance_rng is None:
            raise ValueError("nuisance_rng: required when nuisance > 0")
        nd = _nuisance_draws(nuisance_rng, n_cells, size)
        scale = np.exp(s * 0.45 * nd["scale"]).astype(np.float32)[cell]
        ty, tx = yy / scale, xx / scale
        contrast = np.exp(s * 0.5 * nd["contrast"]).astype(np.float32)
    else:
        ty, tx = yy, xx
    # paint
    illum = rng.uniform(0.75, 1.2)
    img = np.empty((h, w, 3), dtype=np.float32)
    for k in np.unique(cell_class):
        m = label == k
        name, base, _, tex = CLASSES[int(k)]
        colour = np.asarray(base, np.float32) + rng.normal(0, 0.06, 3).astype(np.float32)
        mod = _texture(tex, rng, ty, tx)
        if s > 0:
            cells = cell[m]
            colours = _instance_colours(colour, nd, np.arange(n_cells), s)[cells]
            img[m] = colours * (1.0 + contrast[cells, None] * mod[m, None])
        else:
            img[m] = colour[None, :] * (1.0 + mod[m, None])
    img = img * illum
    if s > 0:
        img = _image_nuisance(img, nd, s, yy, xx)
    img = img + rng.normal(0, 0.015, img.shape).astype(np.float32)
    img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return img, label


def check_nuisance(nuisance: object) -> float:
    """``nuisance`` as a float in [0, 1], or a ``ValueError`` naming the argument."""
    ok = isinstance(nuisance, numbers.Real) and not isinstance(nuisance, bool | np.bool_)
    if not ok or not np.isfinite(nuisance) or not 0.0 <= float(nuisance) <= 1.0:
        raise ValueError(f"nuisance: expected a number in [0, 1], got {nuisance!r}")
    return float(nuisance)


class SyntheticDataset(SegDataset):
    """Procedural scenes (``synthetic``): no files, deterministic per ``(seed, split, index)``.

    Args:
        split: any name; ``train`` and ``val`` draw disjoint streams (different seeds).
        n_images: number of images (default 200 for train, 50 for other splits).
        size: (H, W) of every image (default 96 x 128, non-square).
        n_classes: 2..8 classes (default 6: sky, water, grass, foliage, road, building).
        seed: base seed.
        nuisance: strength in [0, 1] of the photometric and instance nuisance (illumination,
            white balance, shading, per-object colour / contrast / texture scale; module
            docstring); 0 gives the original scenes. Labels do not depend on it.

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
        nuisance: float = DEFAULT_NUISANCE,
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
        self.nuisance = check_nuisance(nuisance)
        self.size = size
        self.seed = int(seed)
        info = {"size": list(size), "seed": self.seed, "generator": "warped-voronoi-v1"}
        info["nuisance"] = self.nuisance
        if self.nuisance > 0:
            info["nuisance_model"] = NUISANCE_MODEL
        super().__init__(
            name="synthetic",
            split=split,
            n_classes=n_classes,
            class_names=[c[0] for c in CLASSES[:n_classes]],
            ids=[f"{split}_{i:05d}" for i in range(n_images)],
            info=info,
            args={
                "n_images": n_images,
                "size": list(size),
                "n_classes": n_classes,
                "seed": self.seed,
                "nuisance": self.nuisance,
            },
        )

    def load(self, i: int) -> Sample:
        """Sample ``i``: image RGB, label int64 (H, W)."""
        key = [self.seed, _split_code(self.split), i]
        rng = np.random.default_rng(key)
        nrng = np.random.default_rng(key + [_NUISANCE_STREAM]) if self.nuisance > 0 else None
        img, label = generate_scene(rng, self.size, self.n_classes, self.nuisance, nrng)
        return Sample(Image.fromarray(img), label, self.ids[i])


def make_synthetic(
    root: object = None,
    split: str = "train",
    n_images: int | None = None,
    size: tuple[int, int] = (96, 128),
    n_classes: int = 6,
    seed: int = 0,
    nuisance: float = DEFAULT_NUISANCE,
) -> SegDataset:
    """Registry factory for ``synthetic``; ``root`` is ignored (nothing is read from disk)."""
    return SyntheticDataset(
        split,
        n_images=n_images,
        size=size,
        n_classes=n_classes,
        seed=seed,
        nuisance=nuisance,
    )
