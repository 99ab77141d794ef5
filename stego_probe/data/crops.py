"""Five-crop preprocessing (PROTOCOL §2.6) and the reader for the cropped folders.

Layout (the reference's ``crop_datasets.py``), relative to the data root::

    cropped/<dir_name>_five_crop_<ratio>/img/<split>/<5i+k>.{png|jpg}
    cropped/<dir_name>_five_crop_<ratio>/label/<split>/<5i+k>.png     uint8, label + 1 (0 = ignore)
    cropped/<dir_name>_five_crop_<ratio>/manifest_<split>.json        stego_probe only (optional)

``<dir_name>`` is ``cocostuff27`` for CocoStuff and ``cityscapes`` for Cityscapes, as in the
reference; ``<ratio>`` is formatted with ``str(float)`` (``0.5``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from stego_probe.data.base import Sample, SegDataset
from stego_probe.data.io import check_same_size, read_image, read_label_png, require_dir
from stego_probe.data.transforms import five_crop_sample
from stego_probe.fileio import atomic_write, is_temp_file, to_jsonable
from stego_probe.labels import check_labels
from stego_probe.provenance import check_compatible, package_info

#: Registry name -> the directory name the reference uses for its five-crop folders.
REFERENCE_DIR_NAMES = {"cocostuff27": "cocostuff27", "cityscapes27": "cityscapes"}
STORAGES = {"png": ".png", "jpeg75": ".jpg"}
_INDEX_FILE = re.compile(r"^(\d+)\.(png|jpg)$")
_OLD_TMP_SUFFIX = ".partial"  # temporary files of stego_probe <= 0.3 (before fileio)
#: Source provenance keys added after stego_probe 0.2.0 (absent from older manifests).
_LATER_SOURCE_KEYS = ("args", "files_sha256")


def crop_dir(root: str | os.PathLike, dir_name: str, ratio: float = 0.5) -> Path:
    """``root/cropped/<dir_name>_five_crop_<ratio>`` (ratio formatted as ``str(float(ratio))``).

    Examples:
        >>> crop_dir("/data", "cityscapes").as_posix()
        '/data/cropped/cityscapes_five_crop_0.5'
    """
    return Path(root) / "cropped" / f"{dir_name}_five_crop_{float(ratio)}"


def _index_files(directory: Path) -> dict[int, Path]:
    """``{index: path}`` for files named ``<int>.png`` / ``<int>.jpg``; both for one index is an
    error (mixed storages)."""
    out: dict[int, Path] = {}
    for p in directory.iterdir():
        m = _INDEX_FILE.match(p.name)
        if m is None:
            continue
        idx = int(m.group(1))
        if idx in out:
            raise ValueError(
                f"{directory}: both {out[idx].name} and {p.name} exist; remove one storage "
                "(png or jpeg75) and re-run prepare-crops"
            )
        out[idx] = p
    return out


class CroppedDataset(SegDataset):
    """The pre-cropped five-crop folders, read back as a dataset.

    Args:
        root: the data root containing ``cropped/``.
        split: split sub-directory (``train`` / ``val``).
        name: registry name reported by the dataset (``cocostuff27`` ...).
        n_classes, class_names: the classes of the source dataset.
        dir_name: folder prefix (default: the reference's name for ``name``).
        ratio: crop ratio in the folder name.

    Item ``j`` is crop ``j % 5`` of source image ``j // 5``; labels are stored as label + 1
    (0 = ignore) and returned as int64 (H, W) in ``[0, K) ∪ {-1}``. Ids are ``f"{source id}_c{k}"``
    when the folder has a stego_probe manifest, else the index as a string.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        name: str,
        n_classes: int,
        class_names: list[str],
        dir_name: str | None = None,
        ratio: float = 0.5,
    ) -> None:
        dir_name = dir_name or REFERENCE_DIR_NAMES.get(name, name)
        self.root = Path(root)
        base = crop_dir(root, dir_name, ratio)
        hint = (
            f"create it with `stego-probe prepare-crops --dataset {name} --data-root {root} "
            f"--split {split}` (or the reference's crop_datasets.py)"
        )
        img_dir = require_dir(base / "img" / split, "five-crop image directory", hint)
        lab_dir = require_dir(base / "label" / split, "five-crop label directory", hint)
        self._images = _index_files(img_dir)
        self._labels = _index_files(lab_dir)
        if not self._images and not self._labels:
            raise FileNotFoundError(f"{img_dir} holds no crops; {hint}")
        n = max(max(self._images, default=-1), max(self._labels, default=-1)) + 1
        no_img = sorted(set(range(n)) - set(self._images))
        no_lab = sorted(set(range(n)) - set(self._labels))
        if no_img or no_lab:
            raise ValueError(
                f"{base}: five-crop files must be numbered 0..{n - 1} with one label per image; "
                f"missing images {no_img[:5]} in {img_dir}, missing labels {no_lab[:5]} in "
                f"{lab_dir}. Re-run prepare-crops to finish it"
            )
        manifest = base / f"manifest_{split}.json"
        ids = [str(j) for j in range(n)]
        info = {"cropped": str(base.relative_to(self.root))}
        if manifest.is_file():
            meta = json.loads(manifest.read_text())
            if meta.get("complete") and len(meta.get("ids", [])) == n:
                ids = list(meta["ids"])
            info["crop_storage"] = meta.get("storage")
            info["crop_source"] = meta.get("source")
        info["crop_ratio"] = float(ratio)
        super().__init__(
            name=name,
            split=split,
            n_classes=n_classes,
            class_names=list(class_names),
            ids=ids,
            info=info,
            # the registry options that select these folders (cocostuff27 / cityscapes27)
            args={"cropped": True, "crop_ratio": float(ratio), "crop_dir_name": dir_name},
            root=self.root,
        )

    def file_list(self) -> list[str]:
        """``cropped/<dir>/img/<split>/<j>.<ext> | cropped/<dir>/label/<split>/<j>.png``."""
        return [
            f"{self._images[j].relative_to(self.root).as_posix()} | "
            f"{self._labels[j].relative_to(self.root).as_posix()}"
            for j in range(len(self.ids))
        ]

    def load(self, i: int) -> Sample:
        """Crop ``i``: image RGB, label int64 (H, W) = stored value - 1."""
        image = read_image(self._images[i])
        raw = read_label_png(self._labels[i])
        check_same_size(image, raw, str(self._images[i]), str(self._labels[i]))
        label = check_labels(raw - 1, self.n_classes, source=str(self._labels[i]))
        return Sample(image, label, self.ids[i])


def _valid_file(path: Path) -> bool:
    """True if ``path`` exists and its image header/chunks verify."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def _atomic_save(im: Image.Image, path: Path, fmt: str) -> None:
    # no fsync per crop (thousands of small files): a resumed run re-verifies every file
    atomic_write(path, lambda tmp: im.save(tmp, fmt), fsync=False)


def prepare_crops(
    dataset: SegDataset,
    out_dir: str | os.PathLike,
    ratio: float = 0.5,
    storage: str = "png",
    progress: bool = True,
    dir_name: str | None = None,
) -> Path:
    """Write the five crops of every image of ``dataset`` in the reference layout.

    Crop ``k`` (TL, TR, BL, BR, centre) of source image ``i`` is written as index ``5i + k``:
    the image as RGB (``png``: lossless, the default; ``jpeg75``: PIL JPEG at its default quality
    75, as the reference does, Q22) and the label as a uint8 PNG holding ``label + 1`` (0 =
    ignore; an unlabelled sample gives all 0). A ``manifest_<split>.json`` with the crop ids and
    the source provenance is written last.

    Resumable and idempotent: crops whose files exist and verify are skipped, every file is
    written to a hidden temporary name and renamed, and stale temporary files are removed.

    Args:
        dataset: the source split at native resolution (not already cropped).
        out_dir: the data root; crops go to ``out_dir/cropped/<dir_name>_five_crop_<ratio>/``.
        ratio: crop side as a fraction of the image side.
        storage: ``"png"`` or ``"jpeg75"``.
        progress: show a tqdm bar.
        dir_name: folder prefix (default: ``cocostuff27`` / ``cityscapes`` as the reference,
            else the dataset name).

    Returns:
        the crop directory ``out_dir/cropped/<dir_name>_five_crop_<ratio>``.
    """
    from tqdm.auto import tqdm

    if storage not in STORAGES:
        raise ValueError(f"storage: expected one of {list(STORAGES)}, got {storage!r}")
    if isinstance(dataset, CroppedDataset):
        raise ValueError(
            "dataset: already a five-crop dataset; pass the full-resolution split (without "
            "cropped=True / `--dataset-arg cropped=true`)"
        )
    if dataset.n_classes > 254:
        raise ValueError(
            f"dataset: {dataset.n_classes} classes do not fit the uint8 label + 1 encoding"
        )
    dir_name = dir_name or REFERENCE_DIR_NAMES.get(dataset.name, dataset.name)
    base = crop_dir(out_dir, dir_name, ratio)
    img_dir = base / "img" / dataset.split
    lab_dir = base / "label" / dataset.split
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    ext = STORAGES[storage]
    other = {e for e in STORAGES.values() if e != ext}
    for d in (img_dir, lab_dir):
        for p in d.iterdir():
            if is_temp_file(p) or p.name.endswith(_OLD_TMP_SUFFIX):
                p.unlink()
    clash = [p.name for p in img_dir.iterdir() if p.suffix in other and _INDEX_FILE.match(p.name)]
    if clash:
        raise ValueError(
            f"{img_dir} already holds crops stored as {sorted(other)} (e.g. {clash[0]}); refusing "
            f"to mix storages. Delete {base} or use the same storage"
        )
    manifest = base / f"manifest_{dataset.split}.json"
    # JSON round trip so that a fresh provenance compares equal to the stored one
    source = to_jsonable({k: v for k, v in dataset.provenance.items() if k != "root"})
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        old_source = old.get("source", {})
        # manifests written before stego_probe recorded args / files_sha256 lack them
        new_only = {k for k in _LATER_SOURCE_KEYS if k not in old_source}
        check_compatible(
            {**old_source, "ratio": old.get("ratio"), "storage": old.get("storage")},
            {**source, "ratio": float(ratio), "storage": storage},
            sorted((set(old_source) | set(source) | {"ratio", "storage"}) - new_only),
            what=f"five-crop inputs for {base} (delete it to start over)",
        )
    _write_manifest(
        manifest,
        {"complete": False, "source": source, "ratio": float(ratio), "storage": storage, "ids": []},
    )
    fmt = "PNG" if storage == "png" else "JPEG"
    ids: list[str] = []
    for i in tqdm(range(len(dataset)), disable=not progress, desc=f"five-crop {dataset.name}"):
        names = [str(5 * i + k) for k in range(5)]
        todo = [
            k
            for k in range(5)
            if not (
                _valid_file(img_dir / f"{names[k]}{ext}")
                and _valid_file(lab_dir / f"{names[k]}.png")
            )
        ]
        if not todo:
            ids.extend(f"{dataset.ids[i]}_c{k}" for k in range(5))
            continue
        crops = five_crop_sample(dataset[i], ratio)
        for k, c in enumerate(crops):
            ids.append(c.id)
            if k not in todo:
                continue
            if c.label is None:
                enc = np.zeros((c.image.height, c.image.width), dtype=np.uint8)
            else:
                enc = (np.asarray(c.label, dtype=np.int64) + 1).clip(0, 255).astype(np.uint8)
            _atomic_save(c.image.convert("RGB"), img_dir / f"{names[k]}{ext}", fmt)
            _atomic_save(Image.fromarray(enc), lab_dir / f"{names[k]}.png", "PNG")
    _write_manifest(
        manifest,
        {
            "complete": True,
            "source": source,
            "ratio": float(ratio),
            "storage": storage,
            "ids": ids,
            **package_info(),
        },
    )
    return base


def _write_manifest(path: Path, meta: dict) -> None:
    atomic_write(path, json.dumps(to_jsonable(meta)))
