"""The dataset interface shared by every dataset: ``dataset[i] -> Sample(image, label, id)``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass
class Sample:
    """One image of a segmentation dataset.

    Attributes:
        image: RGB ``PIL.Image`` at the dataset's native resolution.
        label: int64 array (H, W) with classes in ``[0, K)`` and -1 = ignore, or ``None`` for an
            unlabelled dataset (every pixel ignored).
        id: a stable identifier (file stem, list entry), unique within the split.
    """

    image: Image.Image
    label: np.ndarray | None
    id: str


@dataclass
class SegDataset:
    """Base class: a finite, indexable split of a segmentation dataset.

    Subclasses set the attributes below and implement :meth:`load` (the sample for ``ids[i]``).
    Indexing is deterministic: ``dataset[i]`` always returns the same sample.

    Attributes:
        name: registry name (``cocostuff27``, ``folder`` ...).
        split: split name (``train``, ``val`` ...).
        n_classes: number of classes ``K``.
        class_names: ``K`` human-readable names.
        ids: sample ids in dataset order.
        info: extra description stored in provenance (root, list file, label map ...).
    """

    name: str
    split: str
    n_classes: int
    class_names: list[str]
    ids: list[str]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name}/{self.split}: index {i} out of range [0, {len(self)})")
        return self.load(i % len(self))

    def load(self, i: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def provenance(self) -> dict:
        """Description of this split for store provenance."""
        return {
            "dataset": self.name,
            "split": self.split,
            "n_classes": self.n_classes,
            "n_images": len(self),
            **self.info,
        }
