"""The sweep's train and val feature stores: where they live, and whether they fit the config.

:func:`ensure_stores` opens both (recording them in :data:`STORES_FILE`): the sweep's own under
``<out>/stores/`` (:func:`store_path`, extracted when missing by :func:`open_or_extract`) or
stores the user gives (:func:`open_existing_store`). Every store is compared with the config
(:func:`check_store_matches`) before it is used.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from stego_probe.fileio import atomic_write, canonical_json, to_jsonable
from stego_probe.sweep.config import (
    StoreSpec,
    SweepConfig,
    dataset_factory_defaults,
    default_n_classes,
)
from stego_probe.sweep.table import has_results


def store_path(config: SweepConfig, out_dir: str | os.PathLike, which: str) -> str:
    """Path of the ``train`` or ``val`` store of a sweep: ``<out>/stores/<name>_<split>_<res>``."""
    spec: StoreSpec = getattr(config, which)
    tag = (
        f"{config.dataset}_{spec.split}_{config.backbone.replace(':', '-')}_{spec.res}_{spec.crop}"
    )
    if spec.limit:
        tag += f"_n{spec.limit}"
    return str(Path(out_dir) / "stores" / tag)


def open_or_extract(
    config: SweepConfig,
    which: str,
    path: str | os.PathLike,
    *,
    flipped: bool = False,
    cache: dict | None = None,
    progress: bool = True,
):
    """Open the ``train`` / ``val`` store of ``config`` at ``path``, extracting it if missing.

    A complete store is reused only if it was extracted for this config
    (:func:`check_store_matches`, strictly: resolution, crop and limit too, since the path
    encodes them); otherwise it is refused, naming the store and every field that differs. A
    missing or incomplete one is (re)extracted resumably with :func:`stego_probe.extract.extract`,
    which refuses to mix inputs.

    Args:
        config: the sweep (dataset, backbone, the ``train`` / ``val`` :class:`StoreSpec`).
        which: ``"train"`` or ``"val"``.
        path: store location (local path or fsspec URL).
        flipped: also extract ``tokens_flipped`` (the "eval" mode's flip average).
        cache: a dict reused across calls so the backbone is built only once.
        progress: tqdm bars.

    Returns:
        a complete :class:`stego_probe.store.FeatureStore`.

    Raises:
        ValueError: a complete store at ``path`` that was extracted with other settings.
    """
    from stego_probe.store import FeatureStore

    if FeatureStore.exists(path) and FeatureStore.open(path, allow_incomplete=True).complete:
        store = FeatureStore.open(path)
        check_store_matches(
            config,
            which,
            store,
            what=f"{which} store {path}",
            strict=True,
            hint="it was extracted with other settings. Delete it to have the sweep extract it "
            "again, or use another --out",
        )
        return store
    from stego_probe.backbones import get_backbone
    from stego_probe.data import get_dataset
    from stego_probe.extract import extract

    spec: StoreSpec = getattr(config, which)
    cache = {} if cache is None else cache
    if "backbone" not in cache:
        cache["backbone"] = get_backbone(
            config.backbone, weights=config.weights, device=config.device, **config.backbone_kwargs
        )
    dataset = get_dataset(
        config.dataset, root=config.data_root, split=spec.split, **config.dataset_kwargs
    )
    return extract(
        dataset,
        cache["backbone"],
        str(path),
        res=spec.res,
        crop=spec.crop,
        batch_size=config.batch_size,
        device=config.device,
        flipped=flipped,
        limit=spec.limit,
        progress=progress,
    )


def open_existing_store(config: SweepConfig, which: str, path: str | os.PathLike):
    """Open a complete store given by the user as the sweep's ``train`` / ``val`` store.

    Nothing is extracted or written. The store must agree with the config
    (:func:`check_store_matches`): same ``dataset``, ``backbone``, split, the dataset options
    its provenance records (e.g. ``n_classes``, ``n_images`` of ``synthetic``), weights, and
    ``tokens_flipped`` for the val store of a ``flip`` sweep. A resolution, crop or image limit
    other than the config's store spec is allowed but warned about (the results rows do not
    record them; the store's own provenance does).

    Raises:
        FileNotFoundError: no store at ``path``.
        ValueError: incomplete, or incompatible with the config (the message names every
            difference).
    """
    from stego_probe.store import FeatureStore

    what = f"{which} store {path} (--{which}-store)"
    if not FeatureStore.exists(path):
        raise FileNotFoundError(f"{what}: no feature store there (no zarr.json)")
    store = FeatureStore.open(path, allow_incomplete=True)
    if not store.complete:
        raise ValueError(
            f"{what}: the store is incomplete; finish it with `stego-probe extract` (which "
            "resumes) or let the sweep extract its own stores (omit the option)"
        )
    other = check_store_matches(config, which, store, what=what, strict=False)
    if other:
        warnings.warn(
            f"{what}: " + ", ".join(other) + "; the results use the store as it is",
            RuntimeWarning,
            stacklevel=3,
        )
    return FeatureStore.open(path)


#: Keys of a store's ``dataset_info`` that say where the data was read from, not what it is
#: (``data_root`` may change between runs of a sweep: the data may move).
_LOCATION_KEYS = ("root", "data_root", "list_file", "root_abs")

#: Keys under which a store's ``dataset_info`` may record the dataset options it was built with.
_ARGS_KEYS = ("args", "kwargs", "dataset_args", "dataset_kwargs", "options")


def _same(a, b) -> bool:
    """Whether two provenance values agree after a JSON round trip (tuples = lists)."""
    return canonical_json(a) == canonical_json(b)


def _same_option(a, b) -> bool:
    """:func:`_same`, where a scalar equals the one-element list of it (a dataset records
    ``ignore_value=255`` as ``[255]``) and an int the float of it (``nuisance=0`` is ``0.0``)."""

    def norm(x):
        x = to_jsonable(x)
        if isinstance(x, list):
            return [norm(v) for v in x]
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items()}
        return float(x) if isinstance(x, int) and not isinstance(x, bool) else x

    def as_list(x):
        return x if isinstance(x, list) else [x]

    a, b = norm(a), norm(b)
    return _same(a, b) or _same(as_list(a), as_list(b))


def _recorded_dataset_args(prov: dict) -> dict | None:
    """The dataset constructor options a store records (every option it had, defaults filled;
    :func:`stego_probe.data.dataset_args_from_provenance`); None when none are recorded."""
    from stego_probe.data import dataset_args_from_provenance

    return dataset_args_from_provenance(prov) or None


def _expected_dataset_info(
    config: SweepConfig, split: str, limit: int | None = None
) -> dict | None:
    """The ``dataset_info`` a store extracted for ``config`` with image limit ``limit`` would
    record (the dataset's own provenance; with a ``limit``, that of its first ``limit`` images,
    as :func:`stego_probe.extract.extract` records it), or None when the dataset cannot be
    built here (e.g. its files are absent)."""
    try:
        from stego_probe.data import get_dataset
        from stego_probe.extract import LimitedDataset

        ds = get_dataset(
            config.dataset, root=config.data_root, split=split, **config.dataset_kwargs
        )
        if limit is not None and limit < len(ds):
            ds = LimitedDataset(ds, limit)
        return to_jsonable(ds.provenance)
    except Exception:  # the data is not here: compare the recorded options only
        return None


def _unrecorded_option_default(config: SweepConfig, split: str, option: str):
    """The value of dataset option ``option`` in a store that does not record it (written
    before the option existed, so built with its default): as the dataset built from the
    config without ``option`` resolves it (``ignore_value=255`` -> ``[255]``, a split-dependent
    ``n_images=None`` -> the count), else the factory's default; None when unknown."""
    from stego_probe.data import get_dataset

    kwargs = {k: v for k, v in config.dataset_kwargs.items() if k != option}
    try:
        args = get_dataset(config.dataset, root=config.data_root, split=split, **kwargs).args
        if option in args:
            return to_jsonable(args[option])
    except Exception:  # the data is not here: the factory's own default
        pass
    return dataset_factory_defaults(config.dataset).get(option)


def check_store_matches(
    config: SweepConfig,
    which: str,
    store,
    *,
    what: str,
    strict: bool,
    hint: str = "",
) -> list[str]:
    """Check that ``store`` holds the ``which`` (``"train"`` / ``"val"``) split of ``config``.

    Compared with the store's provenance: ``dataset``, ``backbone``, ``split``, ``n_classes``,
    the dataset options (the config's ``dataset_kwargs`` against the constructor options the
    store records, ``dataset_args``, e.g. a folder dataset's ``ignore_value`` and
    ``class_names``; for older stores without them against ``dataset_info``; an option the
    config sets that a store's ``dataset_args`` lack, since the store was written before the
    option existed, against the option's default, e.g. ``synthetic``'s ``nuisance`` 0; the
    recorded options the config leaves unset against their defaults; and, when the dataset can
    be built here, everything else that ``dataset_info`` records apart from where the data
    lives, for a store extracted with a ``limit`` against the same first images of the
    config's dataset), the weights (``weights_sha256`` against the sha256 of
    ``config.weights``; ``backbone_kwargs`` such as ``pretrained`` / ``seed`` against
    ``backbone_info``), ``tokens_flipped`` for the val store of a ``flip`` sweep, and the
    store spec (``res``, ``crop``, ``limit``; a ``limit`` of at least the split's size equals
    none, as :func:`stego_probe.extract.extract` records it). Other keys a store does not
    record are not compared.

    Args:
        config: the sweep.
        which: ``"train"`` or ``"val"``.
        store: an open :class:`~stego_probe.store.FeatureStore`.
        what: how the message names the store (e.g. ``"train store out/stores/..."``).
        strict: also refuse a different ``res`` / ``crop`` / ``limit``; otherwise they are
            returned for a warning.
        hint: appended to the error (what to do).

    Returns:
        the store-spec differences not refused (``strict=False``), as ``"res 48 (config 64)"``.

    Raises:
        ValueError: ``"<what> does not match sweep <name>: <field>: store <value>, config
            <value>; ..."`` listing every difference.
    """
    prov = dict(store.provenance)
    spec: StoreSpec = getattr(config, which)
    info = dict(prov.get("dataset_info") or {})
    want = {"dataset": config.dataset, "backbone": config.backbone, "split": spec.split}
    diffs = [
        f"{k}: store {prov.get(k)!r}, config {v!r}" for k, v in want.items() if prov.get(k) != v
    ]
    n_classes = config.dataset_kwargs.get("n_classes", default_n_classes(config.dataset))
    if n_classes is not None and store.n_classes != int(n_classes):
        diffs.append(f"n_classes: store {store.n_classes!r}, config {int(n_classes)!r}")
    compared = {"dataset", "split", "n_classes", *_LOCATION_KEYS, *_ARGS_KEYS}
    # a store made with a limit records the provenance of the images it used (the first
    # dataset_info["n_images"]): the config's dataset is compared as the same view of it
    used = info.get("n_images") if prov.get("limit") is not None else None
    expected = _expected_dataset_info(config, spec.split, used if isinstance(used, int) else None)
    recorded = _recorded_dataset_args(prov)
    # the options as the dataset built from the config resolves them (255 -> [255]), if built
    built = next(
        (expected[k] for k in _ARGS_KEYS if expected and isinstance(expected.get(k), dict)), None
    )
    # the options the config sets, against what the store recorded
    for k, v in sorted(config.dataset_kwargs.items()):
        compared.add(k)
        if k == "n_classes":
            continue
        note = ""
        if recorded is not None and k in recorded:
            got = recorded[k]
        else:  # an older store: the option, if at all, in the dataset's own provenance
            got = info.get(k, prov.get(k))
            if got is None and recorded is not None:
                # the store records its options but not this one: written before the option
                # existed, so extracted with its default
                got = _unrecorded_option_default(config, spec.split, k)
                note = " (the default; not recorded)"
        if got is None:
            continue
        want = built[k] if built is not None and k in built else v
        if not (_same_option(got, want) or _same_option(got, v)):
            diffs.append(f"dataset_kwargs.{k}: store {got!r}{note}, config {v!r}")
    # options the store records explicitly (resolved, defaults filled in) that the config
    # leaves unset: against the dataset built from the config, else the factory's defaults
    defaults = dataset_factory_defaults(config.dataset) if built is None else built
    for k, got in sorted((recorded or {}).items()):
        if k in config.dataset_kwargs or k in _LOCATION_KEYS or k in ("split",):
            continue
        default = defaults.get(k)
        if default is not None and not _same_option(got, default):
            diffs.append(f"dataset_kwargs.{k}: store {got!r}, config {default!r} (the default)")
    # everything else the dataset records (file-list fingerprint, size, seed ...)
    if expected is not None:
        for k in sorted(set(expected) & set(info) - compared):
            if not _same(info[k], expected[k]):
                diffs.append(f"dataset_info.{k}: store {info[k]!r}, config {expected[k]!r}")
    diffs += _weights_mismatches(config, prov)
    if which == "val" and config.flip and not store.has_flipped:
        diffs.append("flip: the config evaluates flip-averaged codes; the store has no flipped "
                     "tokens (extract with --flipped)")  # fmt: skip
    other = [
        (k, prov.get(k), getattr(spec, k))
        for k in ("res", "crop", "limit")
        if k in prov
        and prov.get(k) != getattr(spec, k)
        and not (k == "limit" and _limit_covers_store(prov, spec.limit))
    ]
    if strict:
        diffs += [f"{k}: store {a!r}, config {b!r}" for k, a, b in other]
    if diffs:
        raise ValueError(
            f"{what} does not match sweep {config.name!r}: "
            + "; ".join(diffs)
            + (f"; {hint}" if hint else "")
        )
    return [f"{k} {a!r} (config {b!r})" for k, a, b in other]


def _limit_covers_store(prov: dict, limit: int | None) -> bool:
    """Whether a store without a recorded ``limit`` is what an extraction with ``limit`` gives:
    a limit of at least the split's size takes every image, and
    :func:`stego_probe.extract.extract` then records none."""
    n = prov.get("n_source_images")
    return prov.get("limit") is None and limit is not None and n is not None and limit >= n


def _weights_mismatches(config: SweepConfig, prov: dict) -> list[str]:
    """Differences between the weights a store was extracted with and the config's."""
    from stego_probe.provenance import sha256_file

    diffs = []
    if config.weights is not None and os.path.isfile(config.weights):
        sha = sha256_file(config.weights)
        if "weights_sha256" in prov and prov.get("weights_sha256") != sha:
            diffs.append(
                f"weights: store {prov.get('weights')!r} (sha256 {prov.get('weights_sha256')}), "
                f"config {config.weights!r} (sha256 {sha})"
            )
    bb = dict(prov.get("backbone_info") or {})
    kwargs = dict(config.backbone_kwargs)
    if "pretrained" in bb and "pretrained" not in kwargs:
        kwargs["pretrained"] = True  # the registry ViTs' default
    if bb.get("pretrained") is False and "init_seed" in bb and "seed" not in kwargs:
        kwargs["seed"] = 0  # the default random-init seed
    for k, v in sorted(kwargs.items()):
        got = bb.get("init_seed" if k == "seed" else k)
        if got is not None and not _same(got, v):
            diffs.append(f"backbone_kwargs.{k}: store {got!r}, config {v!r}")
    return diffs


#: File in the output folder naming the stores a sweep's rows were computed from.
STORES_FILE = "stores.json"


def ensure_stores(
    config: SweepConfig,
    out_dir: str | os.PathLike,
    progress: bool = True,
    train_store: str | os.PathLike | None = None,
    val_store: str | os.PathLike | None = None,
    *,
    record_key: str | None = None,
):
    """Open the sweep's train and val stores, extracting whichever is missing or incomplete.

    Args:
        config: the sweep.
        out_dir: output folder; stores are extracted under ``<out>/stores/`` (:func:`store_path`).
        progress: tqdm bars.
        train_store, val_store: paths of existing complete stores to use instead of
            ``<out>/stores/...`` (checked by :func:`open_existing_store`; nothing is extracted
            or copied for them).
        record_key: in a multi-backbone sweep, the backbone's tag: its paths are recorded
            under this key of ``stores.json`` (and compared with that entry only).

    The paths used are recorded in ``<out>/stores.json``; a resume (a folder with results) with
    other stores is refused, since its rows and cached projections came from the recorded ones.

    Returns:
        ``(train_store, val_store)`` as :class:`stego_probe.store.FeatureStore`.
    """
    given = {"train": train_store, "val": val_store}
    paths = {
        w: str(given[w]) if given[w] is not None else store_path(config, out_dir, w) for w in given
    }
    # recorded: the sweep's own stores relative to the folder (it may move), others absolute
    recorded = {
        w: os.path.relpath(paths[w], out_dir)
        if given[w] is None
        else (paths[w] if "://" in paths[w] else os.path.abspath(paths[w]))
        for w in paths
    }
    record = Path(out_dir) / STORES_FILE
    everything = json.loads(record.read_text()) if record.exists() else {}
    if record.exists() and has_results(Path(out_dir) / "results.csv"):
        old = everything if record_key is None else everything.get(record_key) or recorded
        diffs = [
            f"{w}: {old.get(w)!r} -> {recorded[w]!r}" for w in paths if old.get(w) != recorded[w]
        ]
        if diffs:
            raise ValueError(
                f"{out_dir} holds results computed from other stores ({'; '.join(diffs)}); "
                "resuming would mix them. Use another output folder, or the same stores"
            )
    cache: dict = {}
    stores = tuple(
        open_existing_store(config, which, given[which])
        if given[which] is not None
        else open_or_extract(
            config,
            which,
            paths[which],
            flipped=config.flip and which == "val",
            cache=cache,
            progress=progress,
        )
        for which in ("train", "val")
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if record_key is not None:
        recorded = {**everything, record_key: recorded}
    atomic_write(record, json.dumps(recorded, indent=2))
    return stores
