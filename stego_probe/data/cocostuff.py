"""CocoStuff-27 (PROTOCOL §2.1): the curated IIC/PiCIE lists, fine 182 -> coarse 27 classes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stego_probe.data.base import Sample, SegDataset
from stego_probe.data.io import check_same_size, read_image, read_label_png, read_list, require_dir
from stego_probe.labels import IGNORE, check_labels

#: Fine (0..181) -> coarse (0..26) map, indexed by fine id (PROTOCOL §2.1).
FINE_TO_COARSE = np.array(
    [9, 11, 11, 11, 11, 11, 11, 11, 11, 8, 8, 8, 8, 8, 8, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6,
     6, 6, 6, 6, 6, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 5, 5, 5, 5, 5, 5, 5, 5, 2, 2, 2, 2,
     2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 4, 4, 4,
     4, 4, 4, 4, 4, 17, 17, 22, 20, 20, 22, 15, 25, 16, 13, 12, 12, 17, 17, 23, 15, 15, 17, 15,
     21, 15, 25, 13, 13, 13, 13, 13, 22, 26, 14, 14, 15, 22, 21, 21, 24, 20, 22, 15, 17, 16, 15,
     22, 24, 21, 17, 25, 16, 21, 17, 22, 16, 21, 21, 25, 21, 26, 21, 24, 20, 17, 14, 21, 26, 15,
     23, 20, 21, 24, 15, 24, 22, 25, 15, 20, 17, 17, 22, 14, 18, 18, 18, 18, 18, 18, 18, 26, 26,
     19, 19, 24],
    dtype=np.int64,
)  # fmt: skip

#: Coarse class names, index = coarse id ("-thing" / "-stuff" disambiguate the two food and
#: furniture classes).
COARSE_NAMES = [
    "electronic", "appliance", "food-thing", "furniture-thing", "indoor", "kitchen",
    "accessory", "animal", "outdoor", "person", "sports", "vehicle", "ceiling", "floor",
    "food-stuff", "furniture-stuff", "rawmaterial", "textile", "wall", "window", "building",
    "ground", "plant", "sky", "solid", "structural", "water",
]  # fmt: skip

#: Raw value meaning "unlabelled" in the fine annotation PNGs.
COCO_IGNORE = 255

_SPLITS = {"train": "train2017", "train2017": "train2017", "val": "val2017", "val2017": "val2017"}
_CANONICAL = {"train2017": "train", "val2017": "val"}
#: The curated lists of IIC / PiCIE used by STEGO (train: subset None, val: subset 7).
DEFAULT_LISTS = {"train": "Coco164kFull_Stuff_Coarse.txt", "val": "Coco164kFull_Stuff_Coarse_7.txt"}
#: Directory name of the five-crop folders written by the reference for this dataset.
CROPPED_NAME = "cocostuff27"

_HINT = (
    "Download cocostuff.zip from "
    "https://marhamilresearch4.blob.core.windows.net/stego-public/pytorch_data/ and unzip it "
    "under the data root, so that DATA_ROOT/cocostuff/{images,annotations,curated}/ exist"
)


def coco_fine_to_coarse(raw: np.ndarray, source: str = "labels") -> np.ndarray:
    """Map raw fine CocoStuff labels to the 27 coarse classes.

    Args:
        raw: integer array of any shape with fine ids 0..181 and 255 = unlabelled.
        source: file name for the error message.

    Returns:
        int64 array, same shape, values in ``[0, 27) ∪ {-1}``.

    Raises:
        ValueError: a value is neither a fine id nor 255.

    Examples:
        >>> coco_fine_to_coarse(np.array([0, 105, 181, 255])).tolist()
        [9, 23, 24, -1]
    """
    fine = check_labels(raw, len(FINE_TO_COARSE), ignore_values=(COCO_IGNORE,), source=source)
    out = np.full(fine.shape, IGNORE, dtype=np.int64)
    valid = fine >= 0
    out[valid] = FINE_TO_COARSE[fine[valid]]
    return out


class CocoStuff27(SegDataset):
    """CocoStuff-27 at native resolution (``cocostuff27``).

    Layout under ``root`` (the STEGO data root)::

        cocostuff/images/{train2017,val2017}/<id>.jpg
        cocostuff/annotations/{train2017,val2017}/<id>.png    fine ids 0..181, 255 = unlabelled
        cocostuff/curated/{train2017,val2017}/<list>.txt      one id per line

    Args:
        root: the data root containing ``cocostuff/``.
        split: ``"train"`` / ``"val"`` (or ``"train2017"`` / ``"val2017"``).
        image_list: list file name in ``curated/<split dir>/``; default
            ``Coco164kFull_Stuff_Coarse.txt`` for train and ``Coco164kFull_Stuff_Coarse_7.txt``
            for val, as in the reference.

    Items are ``Sample(image RGB, label int64 (H, W) in [0, 27) ∪ {-1}, id)``; ids are the list
    entries.
    """

    def __init__(
        self, root: str | os.PathLike, split: str = "train", image_list: str | None = None
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split: cocostuff27 has splits 'train' and 'val', got {split!r}")
        split_dir = _SPLITS[split]
        split = _CANONICAL[split_dir]
        self.root = Path(root)
        base = require_dir(self.root / "cocostuff", "CocoStuff directory", _HINT)
        image_list = image_list or DEFAULT_LISTS[split]
        list_path = base / "curated" / split_dir / image_list
        ids = read_list(list_path, "CocoStuff curated image list", _HINT)
        self.image_dir = require_dir(
            base / "images" / split_dir, "CocoStuff image directory", _HINT
        )
        self.label_dir = require_dir(
            base / "annotations" / split_dir, "CocoStuff annotation directory", _HINT
        )
        super().__init__(
            name="cocostuff27",
            split=split,
            n_classes=27,
            class_names=list(COARSE_NAMES),
            ids=ids,
            info={
                "image_list": str(Path("curated") / split_dir / image_list),
                "label_map": "cocostuff fine182->coarse27, 255->-1",
            },
            args={"image_list": image_list},
            root=self.root,
        )
        self._split_dir = split_dir

    def file_list(self) -> list[str]:
        """``cocostuff/images/<split>/<id>.jpg | cocostuff/annotations/<split>/<id>.png``."""
        d = self._split_dir
        return [
            f"cocostuff/images/{d}/{sid}.jpg | cocostuff/annotations/{d}/{sid}.png"
            for sid in self.ids
        ]

    def load(self, i: int) -> Sample:
        """Sample ``i``: image RGB, label int64 (H, W) coarse ids with -1 = ignore."""
        sid = self.ids[i]
        img_path = self.image_dir / f"{sid}.jpg"
        lab_path = self.label_dir / f"{sid}.png"
        image = read_image(img_path)
        raw = read_label_png(lab_path)
        check_same_size(image, raw, str(img_path), str(lab_path))
        return Sample(image, coco_fine_to_coarse(raw, str(lab_path)), sid)


def make_cocostuff27(
    root: str | os.PathLike | None = None,
    split: str = "train",
    cropped: bool = False,
    crop_ratio: float = 0.5,
    crop_dir_name: str = CROPPED_NAME,
    image_list: str | None = None,
) -> SegDataset:
    """Registry factory for ``cocostuff27``; ``cropped=True`` reads the five-crop folders
    ``root/cropped/<crop_dir_name>_five_crop_<crop_ratio>/`` instead (see
    :class:`stego_probe.data.crops.CroppedDataset`)."""
    from stego_probe.data.crops import CroppedDataset

    if root is None:
        raise ValueError(
            "root (--data-root): cocostuff27 needs the data root containing cocostuff/"
        )
    if cropped:
        if image_list is not None:
            raise ValueError("image_list: not used with cropped=True (the crops are fixed)")
        return CroppedDataset(
            root,
            split=_CANONICAL.get(_SPLITS.get(split, split), split),
            name="cocostuff27",
            n_classes=27,
            class_names=list(COARSE_NAMES),
            dir_name=crop_dir_name,
            ratio=crop_ratio,
        )
    return CocoStuff27(root, split, image_list=image_list)
