"""Datasets: one interface, ``dataset[i] -> Sample(image RGB, label int64 (H, W) | None, id)``.

Use :func:`get_dataset` with a registry name::

    from stego_probe.data import get_dataset
    ds = get_dataset("cocostuff27", root="/data", split="val")
    ds = get_dataset("cityscapes27", root="/data", split="train", cropped=True)
    ds = get_dataset("synthetic", split="train", n_images=64)

Nothing is ever downloaded: missing files raise FileNotFoundError saying what to put where.
See ``docs/datasets.md`` for the layouts, label maps and transforms.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

from stego_probe.data.base import Sample, SegDataset

__all__ = [
    "Sample",
    "SegDataset",
    "get_dataset",
    "list_datasets",
    "register_dataset",
    "dataset_description",
]

_REGISTRY: dict[str, tuple[Callable[..., SegDataset], str]] = {}


def register_dataset(name: str, factory: Callable[..., SegDataset], description: str = "") -> None:
    """Register ``factory(root=..., split=..., **kw) -> SegDataset`` under ``name``.

    Re-registering a name replaces the previous factory (useful in notebooks).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    if not callable(factory):
        raise ValueError(f"factory for {name!r}: expected a callable, got {type(factory)}")
    _REGISTRY[name] = (factory, description)


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def dataset_description(name: str) -> str:
    """One-line description of a registered dataset (KeyError for an unknown name)."""
    _check_name(name)
    return _REGISTRY[name][1]


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}")


def get_dataset(
    name: str, root: str | os.PathLike | None = None, split: str = "train", **kw
) -> SegDataset:
    """Build a dataset split by registry name.

    Args:
        name: ``cocostuff27``, ``cityscapes27``, ``potsdam3``, ``folder``, ``synthetic`` or a
            registered name.
        root: the data root (the directory holding ``cocostuff/``, ``cityscapes/``,
            ``potsdam/``, ``cropped/``); for ``folder`` the dataset directory itself; unused for
            ``synthetic``.
        split: ``train`` / ``val`` (dataset-specific names are accepted where documented).
        **kw: dataset options, e.g. ``cropped=True`` (CocoStuff / Cityscapes five-crop folders),
            ``potsdam_unmapped="zero"``, ``n_classes=`` / ``ignore_value=`` (folder),
            ``n_images=`` / ``size=`` / ``seed=`` (synthetic).

    Returns:
        a :class:`SegDataset` whose items are :class:`Sample`.

    Raises:
        KeyError: unknown name (the message lists the known ones).
        FileNotFoundError: a directory or list file is missing (the message says what to put
            where).
        ValueError: bad split or option.

    Examples:
        >>> ds = get_dataset("synthetic", split="val", n_images=3)
        >>> len(ds), ds.n_classes, ds[0].label.dtype
        (3, 6, dtype('int64'))
    """
    _check_name(name)
    factory = _REGISTRY[name][0]
    _check_options(name, factory, kw)
    return factory(root=root, split=split, **kw)


def _check_options(name: str, factory: Callable[..., SegDataset], kw: dict) -> None:
    """``ValueError`` naming the dataset's options for a keyword ``factory`` does not take."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins / C callables
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [
        k
        for k, p in params.items()
        if k not in ("root", "split") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise ValueError(
            f"dataset {name!r}: unknown option(s) {', '.join(unknown)}; "
            f"its options are: {', '.join(accepted) or 'none'}"
        )


def _register_builtins() -> None:
    from stego_probe.data.cityscapes import make_cityscapes27
    from stego_probe.data.cocostuff import make_cocostuff27
    from stego_probe.data.folder import make_folder
    from stego_probe.data.potsdam import make_potsdam3
    from stego_probe.data.synthetic import make_synthetic

    register_dataset(
        "cocostuff27",
        make_cocostuff27,
        "COCO-Stuff, curated IIC lists, 182 fine -> 27 coarse classes (cropped=True: five-crops)",
    )
    register_dataset(
        "cityscapes27",
        make_cityscapes27,
        "Cityscapes gtFine, labelId - 7 -> 27 classes (cropped=True: five-crops)",
    )
    register_dataset(
        "potsdam3", make_potsdam3, "ISPRS Potsdam .mat tiles, 6 -> 3 classes, never cropped"
    )
    register_dataset(
        "folder",
        make_folder,
        "any <root>/imgs/<split>/* with optional <root>/labels/<split>/*.png (paired by stem)",
    )
    register_dataset(
        "synthetic",
        make_synthetic,
        "procedural colour+texture scenes, no files (6 classes, 96x128 by default)",
    )


_register_builtins()
