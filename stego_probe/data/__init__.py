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
from collections.abc import Callable, Mapping

from stego_probe.data.base import Sample, SegDataset
from stego_probe.fileio import to_jsonable
from stego_probe.registry import Registry

__all__ = [
    "DATASETS",
    "Sample",
    "SegDataset",
    "get_dataset",
    "list_datasets",
    "register_dataset",
    "dataset_defaults",
    "dataset_factory",
    "dataset_description",
    "dataset_args_from_provenance",
    "dataset_from_provenance",
]

#: The dataset registry: name -> ``factory(root=, split=, **options)``, meta ``description``.
DATASETS = Registry("dataset", overwrite=True)


def register_dataset(name: str, factory: Callable[..., SegDataset], description: str = "") -> None:
    """Register ``factory(root=..., split=..., **kw) -> SegDataset`` under ``name``.

    Re-registering a name replaces the previous factory (useful in notebooks).
    """
    if not callable(factory):
        raise ValueError(f"factory for {name!r}: expected a callable, got {type(factory)}")
    DATASETS.register(name, factory, description=description)


def list_datasets(filter: str | None = None) -> list[str]:
    """Registered dataset names, sorted; ``filter``: an ``fnmatch`` pattern (``"coco*"``)."""
    return DATASETS.names(filter)


def dataset_description(name: str) -> str:
    """One-line description of a registered dataset (KeyError for an unknown name)."""
    return DATASETS.meta(name)["description"]


def dataset_factory(name: str) -> Callable[..., SegDataset]:
    """The factory registered under ``name`` (KeyError for an unknown name)."""
    return DATASETS.get(name)


def dataset_defaults(name: str) -> dict:
    """The keyword defaults of a registered dataset's factory (``{}`` when not inspectable).

    These are the factory's own defaults, before the dataset resolves them: a default of None
    may stand for a value chosen per split (``synthetic``'s ``n_images``: 200 train images, 50
    val images), which only the built dataset's ``args`` record.

    Examples:
        >>> d = dataset_defaults("synthetic")
        >>> d["n_classes"], d["seed"], d["n_images"]
        (6, 0, None)
        >>> get_dataset("synthetic", split="val").args["n_images"]
        50
    """
    try:
        params = inspect.signature(dataset_factory(name)).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins / C callables
        return {}
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


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
    factory = dataset_factory(name)
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


#: Keys of an (older) store's ``dataset_info`` that are never dataset options.
_INFO_NOT_OPTIONS = ("root", "data_root", "split", "dataset", "generator", "files_sha256", "args")


def dataset_args_from_provenance(prov: Mapping) -> dict | None:
    """The dataset constructor options a store's provenance records, or None.

    ``prov["dataset_args"]`` (every option of the constructor, defaults filled; stores written
    since it exists), else the options inside ``prov["dataset_info"]`` (``args``, the dataset's
    own record of them). None for older stores that record neither (only the dataset's
    descriptive ``dataset_info``).

    Examples:
        >>> dataset_args_from_provenance({"dataset_args": {"ignore_value": [11]}})
        {'ignore_value': [11]}
        >>> dataset_args_from_provenance({"dataset_info": {"args": {"seed": 2}}})
        {'seed': 2}
        >>> dataset_args_from_provenance({"dataset_info": {"seed": 2}}) is None
        True
    """
    if isinstance(prov.get("dataset_args"), Mapping):
        return dict(prov["dataset_args"])
    info = prov.get("dataset_info") if isinstance(prov.get("dataset_info"), Mapping) else {}
    for src, key in ((prov, "dataset_kwargs"), (info, "args"), (info, "dataset_args"),
                     (info, "dataset_kwargs")):  # fmt: skip
        if isinstance(src.get(key), Mapping):
            return dict(src[key])
    return None


def dataset_from_provenance(
    prov: Mapping,
    root: str | os.PathLike | None = None,
    *,
    check: bool = False,
    **overrides,
) -> SegDataset:
    """Rebuild the dataset split a feature store was extracted from, from its provenance.

    The registry name and split are ``prov["dataset"]`` / ``prov["split"]``; the constructor
    options are :func:`dataset_args_from_provenance` (so a folder dataset gets back its
    ``ignore_value`` and ``class_names``, a synthetic one its ``n_images`` / ``size`` /
    ``seed``); for older stores without them, the entries of ``prov["dataset_info"]`` that the
    factory accepts as keywords (without ``n_images`` for a store made with a ``limit``, whose
    ``dataset_info`` counts only the images used). ``overrides`` replace options.

    Args:
        prov: a store's provenance (``FeatureStore.provenance``).
        root: the data root; default: the recorded one (``data_root``, else
            ``dataset_info["root"]``). Pass it when the data moved.
        check: also require that the rebuilt dataset's provenance equals the recorded
            ``dataset_info`` (apart from ``n_images`` for a store made with a ``limit``), e.g.
            before re-extracting blocks of the store.
        **overrides: dataset options that replace the recorded ones.

    Returns:
        a :class:`SegDataset`.

    Raises:
        ValueError: the provenance records no dataset / split, the dataset is not registered,
            or (``check``) the rebuilt dataset differs (the differing keys are named).
        FileNotFoundError: the data is not at the root.

    Examples:
        >>> ds = get_dataset("synthetic", split="val", n_images=3, seed=2)
        >>> prov = {"dataset": "synthetic", "split": "val", "dataset_info": ds.provenance,
        ...         "dataset_args": ds.provenance["args"]}
        >>> again = dataset_from_provenance(prov, check=True)
        >>> again.ids == ds.ids, again.info["seed"]
        (True, 2)
    """
    prov = dict(prov)
    name, split = prov.get("dataset"), prov.get("split")
    if not name or not split:
        raise ValueError(
            "store provenance records no dataset name and split (keys 'dataset', 'split'); "
            "cannot rebuild the dataset it was extracted from"
        )
    if name not in DATASETS:
        raise ValueError(
            f"store provenance names dataset {name!r}, which is not registered (known: "
            f"{', '.join(list_datasets())}); register it with register_dataset first"
        )
    info = dict(prov["dataset_info"]) if isinstance(prov.get("dataset_info"), Mapping) else {}
    given_root = root
    if root is None:
        root = prov.get("data_root", info.get("data_root", info.get("root")))
    kwargs = dataset_args_from_provenance(prov)
    if kwargs is None:
        # An older store: the options only in the dataset's own provenance; take the entries
        # the factory accepts (the limited view of a --limit store counts only its images).
        try:
            params = inspect.signature(dataset_factory(name)).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins / C callables
            params = {}
        kwargs = {k: v for k, v in info.items() if k in params and k not in _INFO_NOT_OPTIONS}
        if prov.get("limit") is not None:
            kwargs.pop("n_images", None)
    kwargs.update(overrides)
    if isinstance(kwargs.get("size"), list):
        kwargs["size"] = tuple(kwargs["size"])
    dataset = get_dataset(name, root=root, split=split, **kwargs)
    if check:
        got, want = to_jsonable(dataset.provenance), to_jsonable(info)
        if prov.get("limit") is not None:
            got.pop("n_images", None)
            want.pop("n_images", None)
        if got != want:
            diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            raise ValueError(
                f"the {name}/{split} dataset rebuilt from the store provenance differs from the "
                f"recorded one in {', '.join(diff)}"
                + (
                    ""
                    if given_root is not None
                    else "; if the data moved, pass its new root (`--data-root` on the command "
                    "line)"
                )
            )
    return dataset


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
