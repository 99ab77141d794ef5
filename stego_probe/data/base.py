"""The dataset interface shared by every dataset: ``dataset[i] -> Sample(image, label, id)``."""

from __future__ import annotations

import hashlib
import json
import os
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
        info: extra description stored in provenance (root, list file, label map ...). It is
            compared key by key when an extraction resumes, so it must describe the data
            (nothing that changes between runs, such as a time stamp).
        args: the constructor options that define the data, resolved (defaults filled in) and
            JSON-able, without ``root`` and ``split``; for the built-in datasets
            ``get_dataset(name, root=..., split=..., **args)`` rebuilds the same split.
        root: the data root the files are read from (None: no files).

    Subclasses reading files override :meth:`file_list`, so that :attr:`provenance` carries a
    fingerprint of the file names (``files_sha256``).
    """

    name: str
    split: str
    n_classes: int
    class_names: list[str]
    ids: list[str]
    info: dict = field(default_factory=dict)
    args: dict = field(default_factory=dict)
    root: str | os.PathLike | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name}/{self.split}: index {i} out of range [0, {len(self)})")
        return self.load(i % len(self))

    def load(self, i: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def file_list(self) -> list[str] | None:
        """The files each sample is read from, one string per sample in dataset order
        (paths relative to :attr:`root`, several files joined by ``" | "``), or None for a
        dataset without files. Only names: nothing is opened."""
        return None

    @property
    def files_sha256(self) -> str:
        """SHA-256 (hex) of the ids and :meth:`file_list`, in order: a cheap fingerprint of
        which files the split is made of (names only, not contents)."""
        return files_fingerprint(self.ids, self.file_list())

    @property
    def provenance(self) -> dict:
        """Description of this split for store provenance: ``dataset``, ``split``,
        ``n_classes``, ``n_images``, the :attr:`info` entries, ``root`` (absolute, or None),
        ``args`` and ``files_sha256``."""
        root = self.root if self.root is not None else self.info.get("root")
        return {
            "dataset": self.name,
            "split": self.split,
            "n_classes": self.n_classes,
            "n_images": len(self),
            **self.info,
            "root": absolute_root(root),
            "args": dict(self.args),
            "files_sha256": self.files_sha256,
        }


def absolute_root(root: str | os.PathLike | None) -> str | None:
    """``root`` as an absolute path string (``~`` expanded, symlinks kept), or None."""
    if root is None:
        return None
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def files_fingerprint(ids: list[str], files: list[str] | None) -> str:
    """SHA-256 (hex) of ``ids`` and ``files`` (one entry per sample, or None), in order.

    Examples:
        >>> files_fingerprint(["a", "b"], None) == files_fingerprint(["a", "b"], None)
        True
        >>> files_fingerprint(["a", "b"], None) == files_fingerprint(["b", "a"], None)
        False
    """
    # JSON-encoded: no separator inside an id or a file name can make two lists collide
    if files is None:
        data = json.dumps([str(i) for i in ids])
    elif len(files) == len(ids):
        data = json.dumps([[str(i), str(f)] for i, f in zip(ids, files, strict=True)])
    else:  # not aligned: the two lists apart
        data = json.dumps([[str(i) for i in ids], [str(f) for f in files]])
    return hashlib.sha256(data.encode("utf-8")).hexdigest()
