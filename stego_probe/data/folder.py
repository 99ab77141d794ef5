"""A directory of images with optional label PNGs (PROTOCOL §2.4), for custom data.

Layout::

    <root>/imgs/<split>/<stem>.<jpg|png|...>
    <root>/labels/<split>/<stem>.png       optional; single-channel, raw class ids
                                           (extensions in any case: .png, .PNG ...)

Images and labels are paired by file stem (the reference pairs them by sorted order and only
checks the counts, which silently mislabels a folder with one missing file).
"""

from __future__ import annotations

import os
from pathlib import Path

from stego_probe.data.base import Sample, SegDataset
from stego_probe.data.io import (
    check_same_size,
    list_images,
    read_image,
    read_label_png,
    require_dir,
)
from stego_probe.labels import check_labels


def _by_stem(files: list[Path], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in files:
        if p.stem in out:
            raise ValueError(
                f"{what}: two files share the stem {p.stem!r}: {out[p.stem].name} and {p.name}; "
                "stems must be unique"
            )
        out[p.stem] = p
    return out


class FolderDataset(SegDataset):
    """Images (and optional labels) from a directory tree (``folder``).

    Args:
        root: the dataset directory containing ``imgs/<split>/``.
        split: sub-directory name (``train``, ``val``, or any other).
        n_classes: number of classes ``K``; required when labels are used. Without labels it
            may be left None (``n_classes = 0``).
        ignore_value: raw label value(s) meaning "ignore" (default 255). Any other value outside
            ``[0, K)`` is an error naming the file.
        class_names: ``K`` names (default ``class0``, ``class1`` ...).
        labels: ``None`` (default) uses ``labels/<split>/`` if it exists; ``True`` requires
            it; ``False`` ignores it (unlabelled mode: ``Sample.label`` is None).

    Ids are the file stems, in sorted order. With labels, every image stem must have exactly one
    ``<stem>.png`` label and vice versa, otherwise ValueError lists the unmatched files.
    Extensions are matched case-insensitively (``a.JPG`` pairs with ``a.PNG``) and every file
    is opened under its own name.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        n_classes: int | None = None,
        ignore_value: int | tuple[int, ...] = 255,
        class_names: list[str] | None = None,
        labels: bool | None = None,
    ) -> None:
        self.root = Path(root)
        hint = f"put the {split} images in {self.root / 'imgs' / split}/ (any PIL format)"
        img_dir = require_dir(self.root / "imgs" / split, "folder dataset image directory", hint)
        images = _by_stem(list_images(img_dir), str(img_dir))
        if not images:
            raise FileNotFoundError(f"no image files found in {img_dir}; {hint}")
        lab_dir = self.root / "labels" / split
        if labels is None:
            labels = lab_dir.is_dir()
        elif labels:
            require_dir(
                lab_dir,
                "folder dataset label directory",
                "put one <stem>.png label per image there, or pass labels=False "
                "(`--dataset-arg labels=false`)",
            )
        self.ignore_values = (
            (int(ignore_value),) if isinstance(ignore_value, int) else tuple(map(int, ignore_value))
        )
        if labels:
            if n_classes is None:
                raise ValueError(
                    f"n_classes: the folder dataset {self.root} has labels ({lab_dir}); pass "
                    "n_classes=K (`--dataset-arg n_classes=K`; label values >= K other than "
                    "ignore_value are errors)"
                )
            label_files = sorted(
                p
                for p in lab_dir.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() == ".png"
            )
            label_map = _by_stem(label_files, str(lab_dir))
            no_label = sorted(set(images) - set(label_map))
            no_image = sorted(set(label_map) - set(images))
            if no_label or no_image:
                parts = []
                if no_label:
                    names = [images[s].name for s in no_label[:10]]
                    parts.append(f"images without a label in {lab_dir}: {names}")
                if no_image:
                    names = [label_map[s].name for s in no_image[:10]]
                    parts.append(f"labels without an image in {img_dir}: {names}")
                raise ValueError(
                    "folder dataset: images and labels are paired by file stem and these do not "
                    "match; " + "; ".join(parts)
                )
        if n_classes is None:
            n_classes = 0
        if not isinstance(n_classes, int) or n_classes < 0:
            raise ValueError(f"n_classes: expected a non-negative int, got {n_classes!r}")
        if class_names is None:
            class_names = [f"class{k}" for k in range(n_classes)]
        if len(class_names) != n_classes:
            raise ValueError(
                f"class_names: expected {n_classes} names (n_classes), got {len(class_names)}"
            )
        self.labelled = bool(labels)
        ids = sorted(images)
        self._images = [images[s] for s in ids]
        # the label files as listed (their own name: ``a.PNG`` stays ``a.PNG``)
        self._labels = [label_map[s] for s in ids] if self.labelled else None
        super().__init__(
            name="folder",
            split=split,
            n_classes=n_classes,
            class_names=list(class_names),
            ids=ids,
            info={
                "labelled": self.labelled,
                "ignore_values": list(self.ignore_values),
            },
            args={
                "n_classes": n_classes,
                "ignore_value": list(self.ignore_values),
                "class_names": list(class_names),
                "labels": self.labelled,
            },
            root=self.root,
        )

    def file_list(self) -> list[str]:
        """``imgs/<split>/<file>`` (``| labels/<split>/<file>``) per sample."""
        imgs = [p.relative_to(self.root).as_posix() for p in self._images]
        if self._labels is None:
            return imgs
        labs = [p.relative_to(self.root).as_posix() for p in self._labels]
        return [f"{a} | {b}" for a, b in zip(imgs, labs, strict=True)]

    def load(self, i: int) -> Sample:
        """Sample ``i``: image RGB, label int64 (H, W) (ignore -> -1) or None if unlabelled."""
        image = read_image(self._images[i])
        if self._labels is None:
            return Sample(image, None, self.ids[i])
        lab_path = self._labels[i]
        raw = read_label_png(lab_path)
        check_same_size(image, raw, str(self._images[i]), str(lab_path))
        label = check_labels(raw, self.n_classes, self.ignore_values, source=str(lab_path))
        return Sample(image, label, self.ids[i])


def make_folder(
    root: str | os.PathLike | None = None,
    split: str = "train",
    n_classes: int | None = None,
    ignore_value: int | tuple[int, ...] = 255,
    class_names: list[str] | None = None,
    labels: bool | None = None,
) -> SegDataset:
    """Registry factory for ``folder`` (see :class:`FolderDataset`)."""
    if root is None:
        raise ValueError(
            "root (--data-root): the folder dataset needs root=<dir containing imgs/<split>/>"
        )
    return FolderDataset(
        root,
        split,
        n_classes=n_classes,
        ignore_value=ignore_value,
        class_names=class_names,
        labels=labels,
    )
