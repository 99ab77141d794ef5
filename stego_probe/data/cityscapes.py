"""Cityscapes-27 (PROTOCOL §2.2): fine annotations, class = labelId - 7 (labelIds 7..33)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stego_probe.data.base import Sample, SegDataset
from stego_probe.data.io import check_same_size, read_image, read_label_png, require_dir
from stego_probe.labels import IGNORE, check_labels

CLASS_NAMES = [
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail",
    "bridge", "tunnel", "pole", "polegroup", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "caravan", "trailer", "train",
    "motorcycle", "bicycle",
]  # fmt: skip

#: labelId of the first non-void class; class = labelId - FIRST_NONVOID.
FIRST_NONVOID = 7
#: Number of Cityscapes labelIds (0..33).
N_LABEL_IDS = 34
#: Directory name of the five-crop folders written by the reference for this dataset.
CROPPED_NAME = "cityscapes"

_IMG_SUFFIX = "_leftImg8bit.png"
_LAB_SUFFIX = "_gtFine_labelIds.png"
_HINT = (
    "Download cityscapes.zip from "
    "https://marhamilresearch4.blob.core.windows.net/stego-public/pytorch_data/ (or "
    "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from cityscapes-dataset.com) and "
    "unzip under the data root, so that DATA_ROOT/cityscapes/{leftImg8bit,gtFine}/<split>/<city>/ "
    "exist"
)


def cityscapes_label_map(raw: np.ndarray, source: str = "labels") -> np.ndarray:
    """Map raw Cityscapes labelIds (0..33) to the 27 classes: ``labelId - 7``, negatives -> -1.

    Args:
        raw: integer array of any shape with labelIds.
        source: file name for the error message.

    Returns:
        int64 array, same shape, values in ``[0, 27) ∪ {-1}``.

    Raises:
        ValueError: a value is not a labelId in 0..33 (for example a trainId image with 255).

    Examples:
        >>> cityscapes_label_map(np.array([7, 33, 6, 0])).tolist()
        [0, 26, -1, -1]
    """
    ids = check_labels(raw, N_LABEL_IDS, ignore_values=(), source=source)
    out = ids - FIRST_NONVOID
    out[out < 0] = IGNORE
    return out


class Cityscapes27(SegDataset):
    """Cityscapes-27 at native resolution (``cityscapes27``).

    Layout under ``root`` (the torchvision ``Cityscapes`` layout inside the STEGO data root)::

        cityscapes/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png
        cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png

    Images and labels are paired by city and stem; samples are ordered by city, then file name
    (torchvision lists directories in file-system order, which is not reproducible). Ids are the
    stems, e.g. ``aachen_000000_000019``. Train is ``train`` with fine labels (2,975 images),
    val is ``val`` (500 images).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train") -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split: cityscapes27 has splits 'train' and 'val', got {split!r}")
        self.root = Path(root)
        base = require_dir(self.root / "cityscapes", "Cityscapes directory", _HINT)
        img_root = require_dir(base / "leftImg8bit" / split, "Cityscapes image directory", _HINT)
        lab_root = require_dir(base / "gtFine" / split, "Cityscapes gtFine directory", _HINT)
        self._images: list[Path] = []
        self._labels: list[Path] = []
        ids: list[str] = []
        missing: list[str] = []
        for city in sorted(p for p in img_root.iterdir() if p.is_dir()):
            for img in sorted(city.glob(f"*{_IMG_SUFFIX}")):
                stem = img.name[: -len(_IMG_SUFFIX)]
                lab = lab_root / city.name / f"{stem}{_LAB_SUFFIX}"
                if not lab.is_file():
                    missing.append(str(lab))
                self._images.append(img)
                self._labels.append(lab)
                ids.append(stem)
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} Cityscapes label files are missing, e.g. {missing[:3]}; every "
                f"image <stem>{_IMG_SUFFIX} needs gtFine/{split}/<city>/<stem>{_LAB_SUFFIX}"
            )
        if not ids:
            raise FileNotFoundError(
                f"no Cityscapes images found: expected {img_root}/<city>/*{_IMG_SUFFIX}. {_HINT}"
            )
        super().__init__(
            name="cityscapes27",
            split=split,
            n_classes=27,
            class_names=list(CLASS_NAMES),
            ids=ids,
            info={
                "annotations": "gtFine labelIds",
                "label_map": "labelId-7, negative->-1",
            },
            root=self.root,
        )

    def file_list(self) -> list[str]:
        """``cityscapes/leftImg8bit/<split>/<city>/<file> | cityscapes/gtFine/...`` per sample."""
        return [
            f"{a.relative_to(self.root).as_posix()} | {b.relative_to(self.root).as_posix()}"
            for a, b in zip(self._images, self._labels, strict=True)
        ]

    def load(self, i: int) -> Sample:
        """Sample ``i``: image RGB, label int64 (H, W) in [0, 27) with -1 = ignore."""
        image = read_image(self._images[i])
        raw = read_label_png(self._labels[i])
        check_same_size(image, raw, str(self._images[i]), str(self._labels[i]))
        return Sample(image, cityscapes_label_map(raw, str(self._labels[i])), self.ids[i])


def make_cityscapes27(
    root: str | os.PathLike | None = None,
    split: str = "train",
    cropped: bool = False,
    crop_ratio: float = 0.5,
    crop_dir_name: str = CROPPED_NAME,
) -> SegDataset:
    """Registry factory for ``cityscapes27``; ``cropped=True`` reads the five-crop folders
    ``root/cropped/<crop_dir_name>_five_crop_<crop_ratio>/`` (the reference names them
    ``cityscapes_five_crop_0.5``; see :class:`stego_probe.data.crops.CroppedDataset`)."""
    from stego_probe.data.crops import CroppedDataset

    if root is None:
        raise ValueError(
            "root (--data-root): cityscapes27 needs the data root containing cityscapes/"
        )
    if cropped:
        return CroppedDataset(
            root,
            split=split,
            name="cityscapes27",
            n_classes=27,
            class_names=list(CLASS_NAMES),
            dir_name=crop_dir_name,
            ratio=crop_ratio,
        )
    return Cityscapes27(root, split)
