"""Writers of tiny dataset trees in the layouts stego_probe reads, for tests.

Every writer takes a directory (``tmp_path``), writes a few small images with known content and
returns what a correct reader must give back: the ids in dataset order, the decoded images as
uint8 (H, W, 3) arrays, and the raw and mapped labels as int64 (H, W) arrays.

Import from a test module with ``from data_fixtures import write_cocostuff`` (pytest puts
``tests/`` on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from stego_probe.data.cocostuff import FINE_TO_COARSE


def _rng(seed: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, *extra])


def _image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def _decoded(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def write_cocostuff(
    root: str | Path,
    n_train: int = 3,
    n_val: int = 2,
    size: tuple[int, int] = (12, 16),
    seed: int = 0,
) -> dict:
    """Write ``root/cocostuff/{images,annotations,curated}/{train2017,val2017}/``.

    Fine labels draw from every fine id 0..181 and 255; the first train label starts with the
    row ``[0, 105, 181, 255, ...]``. Images are JPEG (so ``images`` holds the decoded pixels).

    Returns:
        ``{"train": split, "val": split}`` with ``split = {"ids", "images", "fine", "coarse"}``
        (ids in list order; images uint8 (H, W, 3); fine / coarse int64 (H, W)).
    """
    base = Path(root) / "cocostuff"
    out = {}
    lists = {"train": "Coco164kFull_Stuff_Coarse.txt", "val": "Coco164kFull_Stuff_Coarse_7.txt"}
    for s, (split, n, sdir) in enumerate(
        [("train", n_train, "train2017"), ("val", n_val, "val2017")]
    ):
        rng = _rng(seed, s)
        for d in ("images", "annotations", "curated"):
            (base / d / sdir).mkdir(parents=True, exist_ok=True)
        # ids deliberately not in sorted order: the list order defines the dataset order
        ids = [f"{(7 * i + 3) % 10 + 10 * s:012d}" for i in range(n)]
        rec = {"ids": ids, "images": [], "fine": [], "coarse": []}
        for i, sid in enumerate(ids):
            fine = rng.choice(np.r_[np.arange(182), 255], size=size).astype(np.int64)
            if split == "train" and i == 0:
                fine[0, :4] = [0, 105, 181, 255]
            coarse = np.where(fine == 255, -1, FINE_TO_COARSE[np.minimum(fine, 181)])
            Image.fromarray(_image(rng, size)).save(base / "images" / sdir / f"{sid}.jpg")
            Image.fromarray(fine.astype(np.uint8)).save(base / "annotations" / sdir / f"{sid}.png")
            rec["images"].append(_decoded(base / "images" / sdir / f"{sid}.jpg"))
            rec["fine"].append(fine)
            rec["coarse"].append(coarse.astype(np.int64))
        (base / "curated" / sdir / lists[split]).write_text("\n".join(ids) + "\n")
        out[split] = rec
    return out


def write_cityscapes(
    root: str | Path,
    cities: tuple[str, ...] = ("bochum", "aachen"),
    n_per_city: int = 2,
    size: tuple[int, int] = (8, 16),
    seed: int = 0,
) -> dict:
    """Write ``root/cityscapes/{leftImg8bit,gtFine}/{train,val}/<city>/`` (PNG, lossless).

    labelIds draw from 0..33; the first image's first row starts with ``[7, 33, 6, 0]``.
    Files are created in reverse order (the reader must sort by city, then name).

    Returns:
        ``{"train": split, "val": split}`` with ``split = {"ids", "images", "label_ids",
        "labels"}`` in the expected dataset order (sorted by city, then stem).
    """
    base = Path(root) / "cityscapes"
    out = {}
    for s, split in enumerate(("train", "val")):
        rng = _rng(seed, s)
        entries = []
        for city in cities:
            (base / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (base / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            for j in range(n_per_city):
                entries.append((city, f"{city}_{j:06d}_{19 + 7 * s:06d}"))
        entries.sort()
        rec = {"ids": [], "images": [], "label_ids": [], "labels": []}
        data = {}
        for k, (city, stem) in enumerate(entries):
            ids = rng.integers(0, 34, size=size).astype(np.int64)
            if split == "train" and k == 0:
                ids[0, :4] = [7, 33, 6, 0]
            data[(city, stem)] = (_image(rng, size), ids)
        for city, stem in reversed(entries):
            img, ids = data[(city, stem)]
            Image.fromarray(img).save(
                base / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            )
            Image.fromarray(ids.astype(np.uint8)).save(
                base / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            )
        for city, stem in entries:
            img, ids = data[(city, stem)]
            rec["ids"].append(stem)
            rec["images"].append(img)
            rec["label_ids"].append(ids)
            rec["labels"].append(np.where(ids < 7, -1, ids - 7).astype(np.int64))
        out[split] = rec
    return out


def write_potsdam(
    root: str | Path,
    n_train: int = 3,
    n_val: int = 2,
    size: tuple[int, int] = (10, 12),
    seed: int = 0,
    missing_gt: tuple[str, ...] = (),
    unmapped_value: int | None = None,
) -> dict:
    """Write ``root/potsdam/{imgs,gt}/<id>.mat`` and the split lists.

    Images are (H, W, 4) uint8 (RGB + IR); gt values draw from {0..5, 255}; the first train gt
    starts with ``[4, 5, 3, 255]``. ``missing_gt`` ids get no gt file; ``unmapped_value``
    (e.g. 7) is written at pixel (1, 0) of the first train gt.

    Returns:
        ``{"train": split, "val": split}`` with ``split = {"ids", "images" (H, W, 3 RGB),
        "gt" (raw int64 or None)}``.
    """
    from scipy.io import savemat

    base = Path(root) / "potsdam"
    (base / "imgs").mkdir(parents=True, exist_ok=True)
    (base / "gt").mkdir(parents=True, exist_ok=True)
    out = {}
    all_ids = []
    for s, (split, n, list_name) in enumerate(
        [("train", n_train, "labelled_train.txt"), ("val", n_val, "labelled_test.txt")]
    ):
        rng = _rng(seed, s)
        ids = [f"{s}_{i}_{(3 * i) % 5}" for i in range(n)]
        rec = {"ids": ids, "images": [], "gt": []}
        for i, sid in enumerate(ids):
            img = rng.integers(0, 256, (*size, 4), dtype=np.uint8)
            gt = rng.choice(np.array([0, 1, 2, 3, 4, 5, 255]), size=size).astype(np.uint8)
            if split == "train" and i == 0:
                gt[0, :4] = [4, 5, 3, 255]
                if unmapped_value is not None:
                    gt[1, 0] = unmapped_value
            savemat(base / "imgs" / f"{sid}.mat", {"img": img})
            if sid in missing_gt:
                rec["gt"].append(None)
            else:
                savemat(base / "gt" / f"{sid}.mat", {"gt": gt})
                rec["gt"].append(gt.astype(np.int64))
            rec["images"].append(img[:, :, :3])
        (base / list_name).write_text("\n".join(ids) + "\n")
        all_ids += ids
        out[split] = rec
    (base / "unlabelled_train.txt").write_text("\n".join(out["train"]["ids"]) + "\n")
    (base / "all.txt").write_text("\n".join(all_ids) + "\n")
    return out


def write_folder(
    root: str | Path,
    split: str = "train",
    stems: tuple[str, ...] = ("zeta", "alpha", "mid", "beta"),
    size: tuple[int, int] = (9, 13),
    n_classes: int = 4,
    labels: bool = True,
    ignore_value: int = 255,
    seed: int = 0,
    image_ext: str = ".png",
    label_ext: str = ".png",
) -> dict:
    """Write ``root/imgs/<split>/<stem><image_ext>`` and (if ``labels``)
    ``root/labels/<split>/<stem><label_ext>`` (a PNG whatever the extension's case), with
    label content that differs per stem so that a
    pairing by sorted order instead of stem would be detected: the label of stem number ``j`` (in
    ``stems`` order) has ``label[0, 0] = j % n_classes`` and ``ignore_value`` at ``[0, 1]``.

    Returns:
        ``{"ids": sorted stems, "images": {stem: uint8 (H, W, 3)}, "labels": {stem: raw int64
        (H, W)} or None}``.
    """
    root = Path(root)
    (root / "imgs" / split).mkdir(parents=True, exist_ok=True)
    if labels:
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    images, labs = {}, {}
    for j, stem in enumerate(stems):
        img = _image(rng, size)
        path = root / "imgs" / split / f"{stem}{image_ext}"
        Image.fromarray(img).save(path, Image.registered_extensions()[image_ext.lower()])
        images[stem] = _decoded(path)
        if labels:
            lab = rng.integers(0, n_classes, size=size).astype(np.int64)
            lab[0, 0] = j % n_classes
            lab[0, 1] = ignore_value
            Image.fromarray(lab.astype(np.uint8)).save(
                root / "labels" / split / f"{stem}{label_ext}", "PNG"
            )
            labs[stem] = lab
    return {"ids": sorted(stems), "images": images, "labels": labs if labels else None}


def write_cropped(
    root: str | Path,
    dir_name: str,
    split: str,
    images: list[np.ndarray],
    labels: list[np.ndarray],
    ratio: float = 0.5,
    ext: str = ".png",
) -> Path:
    """Write the reference five-crop layout directly:
    ``root/cropped/<dir_name>_five_crop_<ratio>/{img,label}/<split>/<j>{ext|.png}`` with labels
    stored as ``label + 1`` uint8 (no manifest, like the reference's output).

    Args:
        images: uint8 (h, w, 3) arrays, one per index j.
        labels: int64 (h, w) arrays with -1 = ignore.

    Returns:
        the crop directory.
    """
    base = Path(root) / "cropped" / f"{dir_name}_five_crop_{float(ratio)}"
    (base / "img" / split).mkdir(parents=True, exist_ok=True)
    (base / "label" / split).mkdir(parents=True, exist_ok=True)
    for j, (img, lab) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(img).save(base / "img" / split / f"{j}{ext}")
        Image.fromarray((np.asarray(lab) + 1).astype(np.uint8)).save(
            base / "label" / split / f"{j}.png"
        )
    return base
