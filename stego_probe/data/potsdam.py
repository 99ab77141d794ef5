"""Potsdam-3 (PROTOCOL §2.3): ``.mat`` tiles, 6 ISPRS classes -> 3, no cropping."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from stego_probe.data.base import Sample, SegDataset
from stego_probe.data.io import check_same_size, read_list, read_mat, require_dir
from stego_probe.labels import IGNORE

logger = logging.getLogger(__name__)

CLASS_NAMES = ["roads and cars", "buildings and clutter", "trees and vegetation"]

#: Fine ISPRS id -> coarse id (impervious, building, low vegetation, tree, car, clutter).
FINE_TO_COARSE = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2}
#: Raw value meaning "unlabelled".
POTSDAM_IGNORE = 255

#: Split name -> list files under ``potsdam/`` (the reference's table).
SPLIT_LISTS = {
    "train": ["labelled_train.txt"],
    "val": ["labelled_test.txt"],
    "unlabelled_train": ["unlabelled_train.txt"],
    "train+val": ["labelled_train.txt", "labelled_test.txt"],
    "all": ["all.txt"],
}
_UNMAPPED = ("ignore", "zero")
_HINT = (
    "Download potsdam.zip from "
    "https://marhamilresearch4.blob.core.windows.net/stego-public/pytorch_data/ and unzip it "
    "under the data root, so that DATA_ROOT/potsdam/{imgs,gt}/ and the split lists exist"
)


def potsdam_label_map(
    raw: np.ndarray, unmapped: str = "ignore", source: str = "labels"
) -> tuple[np.ndarray, int]:
    """Map raw Potsdam labels (6 ISPRS classes) to the 3 coarse classes.

    {0, 4} -> 0, {1, 5} -> 1, {2, 3} -> 2, 255 -> -1. Any other value is *unmapped*: -1 with
    ``unmapped="ignore"`` (default), 0 with ``unmapped="zero"`` (the reference, quirk Q23).

    Args:
        raw: integer-valued array of any shape.
        unmapped: ``"ignore"`` or ``"zero"``.
        source: file name for error messages.

    Returns:
        (int64 array of the same shape with values in {-1, 0, 1, 2}, number of unmapped pixels).

    Examples:
        >>> potsdam_label_map(np.array([4, 5, 3, 255, 7]))[0].tolist()
        [0, 1, 2, -1, -1]
        >>> potsdam_label_map(np.array([4, 5, 3, 255, 7]), unmapped="zero")[0].tolist()
        [0, 1, 2, -1, 0]
    """
    if unmapped not in _UNMAPPED:
        raise ValueError(f"potsdam_unmapped: expected one of {list(_UNMAPPED)}, got {unmapped!r}")
    arr = np.asarray(raw)
    if not np.issubdtype(arr.dtype, np.integer):
        if not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise ValueError(f"{source}: labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    out = np.full(arr.shape, 0 if unmapped == "zero" else IGNORE, dtype=np.int64)
    known = np.zeros(arr.shape, dtype=bool)
    for fine, coarse in FINE_TO_COARSE.items():
        m = arr == fine
        out[m] = coarse
        known |= m
    m = arr == POTSDAM_IGNORE
    out[m] = IGNORE
    known |= m
    return out, int((~known).sum())


def _to_rgb_image(arr: np.ndarray, source: str) -> Image.Image:
    """(H, W, C>=3) array -> RGB PIL image of channels [:3] (IR dropped)."""
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"{source}: 'img' must have shape (H, W, >=3), got {arr.shape}")
    rgb = arr[:, :, :3]
    if rgb.dtype == np.uint8:
        out = rgb
    elif np.issubdtype(rgb.dtype, np.floating):
        # torchvision's to_pil_image on float input: x * 255 truncated to uint8
        if rgb.size and (np.nanmin(rgb) < 0 or np.nanmax(rgb) > 1 or np.isnan(rgb).any()):
            raise ValueError(f"{source}: float 'img' values must lie in [0, 1]")
        out = np.clip(rgb * 255.0, 0, 255).astype(np.uint8)
    elif np.issubdtype(rgb.dtype, np.integer):
        if rgb.size and (rgb.min() < 0 or rgb.max() > 255):
            raise ValueError(
                f"{source}: integer 'img' values must lie in [0, 255], got "
                f"[{rgb.min()}, {rgb.max()}]"
            )
        out = rgb.astype(np.uint8)
    else:
        raise ValueError(f"{source}: unsupported 'img' dtype {rgb.dtype}")
    return Image.fromarray(np.ascontiguousarray(out))


class Potsdam3(SegDataset):
    """Potsdam-3 (``potsdam3``).

    Layout under ``root`` (the STEGO data root)::

        potsdam/imgs/<id>.mat     key "img", (H, W, >=3); channels [:3] = RGB are used
        potsdam/gt/<id>.mat       key "gt", (H, W) fine labels; a missing file = all ignore
        potsdam/{labelled_train,labelled_test,unlabelled_train,all}.txt

    Args:
        root: the data root containing ``potsdam/``.
        split: ``train`` (labelled_train.txt), ``val`` (labelled_test.txt), ``unlabelled_train``,
            ``train+val`` or ``all``.
        potsdam_unmapped: what raw values outside {0..5, 255} become: ``"ignore"`` (-1, the
            default; the count is logged) or ``"zero"`` (class 0, as the reference does, Q23).
    """

    def __init__(
        self, root: str | os.PathLike, split: str = "train", potsdam_unmapped: str = "ignore"
    ) -> None:
        if split not in SPLIT_LISTS:
            raise ValueError(f"split: potsdam3 has splits {list(SPLIT_LISTS)}, got {split!r}")
        if potsdam_unmapped not in _UNMAPPED:
            raise ValueError(
                f"potsdam_unmapped: expected one of {list(_UNMAPPED)}, got {potsdam_unmapped!r}"
            )
        self.root = Path(root)
        base = require_dir(self.root / "potsdam", "Potsdam directory", _HINT)
        self.image_dir = require_dir(base / "imgs", "Potsdam image directory", _HINT)
        self.gt_dir = base / "gt"
        ids: list[str] = []
        for name in SPLIT_LISTS[split]:
            ids.extend(read_list(base / name, "Potsdam split list", _HINT))
        if len(set(ids)) != len(ids):
            raise ValueError(f"potsdam3 split {split!r}: the split lists repeat ids")
        self.unmapped = potsdam_unmapped
        super().__init__(
            name="potsdam3",
            split=split,
            n_classes=3,
            class_names=list(CLASS_NAMES),
            ids=ids,
            info={
                "split_lists": list(SPLIT_LISTS[split]),
                "label_map": "{0,4}->0 {1,5}->1 {2,3}->2 255->-1",
                "potsdam_unmapped": potsdam_unmapped,
            },
            args={"potsdam_unmapped": potsdam_unmapped},
            root=self.root,
        )

    def file_list(self) -> list[str]:
        """``potsdam/imgs/<id>.mat | potsdam/gt/<id>.mat`` per sample, ``| (no gt)`` where the
        label file is missing (the sample then reads as all-ignore)."""
        return [
            f"potsdam/imgs/{sid}.mat | "
            + (f"potsdam/gt/{sid}.mat" if (self.gt_dir / f"{sid}.mat").is_file() else "(no gt)")
            for sid in self.ids
        ]

    def load(self, i: int) -> Sample:
        """Sample ``i``: image RGB, label int64 (H, W) in {0, 1, 2} with -1 = ignore."""
        sid = self.ids[i]
        img_path = self.image_dir / f"{sid}.mat"
        image = _to_rgb_image(read_mat(img_path, "img"), str(img_path))
        gt_path = self.gt_dir / f"{sid}.mat"
        if not gt_path.is_file():
            label = np.full((image.height, image.width), IGNORE, dtype=np.int64)
            return Sample(image, label, sid)
        raw = read_mat(gt_path, "gt")
        check_same_size(image, raw, str(img_path), str(gt_path))
        label, n_unmapped = potsdam_label_map(raw, self.unmapped, str(gt_path))
        if n_unmapped:
            logger.warning(
                "%s: %d pixels have values outside {0..5, 255}; mapped to %s",
                gt_path,
                n_unmapped,
                "class 0 (potsdam_unmapped='zero')" if self.unmapped == "zero" else "ignore (-1)",
            )
        return Sample(image, label, sid)


def make_potsdam3(
    root: str | os.PathLike | None = None,
    split: str = "train",
    potsdam_unmapped: str = "ignore",
    cropped: bool = False,
    crop: str | None = None,
    crop_ratio: float | None = None,
    crop_dir_name: str | None = None,
) -> SegDataset:
    """Registry factory for ``potsdam3``. Potsdam is used without cropping (Q24): asking for
    ``cropped=True``, a ``crop``, ``crop_ratio`` or ``crop_dir_name`` raises ValueError."""
    asked = [
        f"{k}={v!r}"
        for k, v in [
            ("cropped", cropped),
            ("crop", crop),
            ("crop_ratio", crop_ratio),
            ("crop_dir_name", crop_dir_name),
        ]
        if v not in (None, False, "none")
    ]
    if asked:
        raise ValueError(
            f"potsdam3 is used without cropping (PROTOCOL Q24); got {', '.join(asked)}. Potsdam "
            "tiles are trained and evaluated whole"
        )
    if root is None:
        raise ValueError("root (--data-root): potsdam3 needs the data root containing potsdam/")
    return Potsdam3(root, split, potsdam_unmapped=potsdam_unmapped)
