"""The dimension sweep: methods x dims x seeds, each point fit -> probe -> metrics -> distinctness.

A sweep is described by a :class:`SweepConfig` (a preset YAML shipped in
``stego_probe/presets/`` or a user file, plus overrides). :func:`run_sweep`

0. checks, before any work, that the optional packages it needs are installed
   (:func:`check_dependencies`) and that the output folder is not a resume with other settings;
1. makes sure the train and val feature stores exist (extracting them if missing, resumably);
2. enumerates the points (``dino`` only at full width; other methods at every ``D <= C``);
3. for each point not yet in ``<out>/results.csv``: fits the projection on the train store, runs
   the probes on the val store (:func:`stego_probe.evaluate.evaluate_stores`), measures
   distinctness on a seeded token sample of the val codes, and appends the rows atomically.
   A failing point does not stop the others; :class:`SweepError` lists the failures at the end.

Re-running the same command therefore resumes: finished points are skipped. PCA is fitted once
per seed and sliced for every ``D`` (its explained-variance ratios become the Figure 3 rows).
Points can run in a local loop (default) or as Ray tasks (``executor="ray"``, optional extra).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import shutil
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from stego_probe.fileio import atomic_write, canonical_json, to_jsonable
from stego_probe.probes import PROBE_NAMES
from stego_probe.results import (
    IDENTITY_COLUMNS,
    RESULT_COLUMNS,
    append_csv,
    make_rows,
    mode_column,
    read_results,
)
from stego_probe.store import check_store_pair
from stego_probe.threads import limit, store_workload, uses_threads

#: Methods whose projection has a width parameter (``dino`` is the identity at full width).
WIDTH_METHODS = ("pca", "rp", "rp_sparse", "umap", "hnne", "stego")


@dataclass
class StoreSpec:
    """Where one split's features come from: split name, resolution, crop and an image limit."""

    split: str = "train"
    res: int = 224
    crop: str = "center"
    limit: int | None = None


@dataclass
class SweepConfig:
    """A sweep: dataset and backbone, the two stores, and the grid of methods x dims x seeds.

    Attributes:
        name: preset name (used for store and output folder names).
        dataset, data_root, dataset_kwargs: passed to :func:`stego_probe.data.get_dataset`.
        backbone, weights, backbone_kwargs: passed to :func:`stego_probe.backbones.get_backbone`.
        train, val: :class:`StoreSpec` of the train (fit) and val (evaluation) stores.
        methods: subset of ``dino``, ``pca``, ``rp``, ``rp_sparse``, ``umap``, ``hnne``, ``stego``.
        dims: embedding dimensions D (values above the backbone width are skipped).
        seeds: random states (projection, probe sample and initialisation).
        probes: subset of ``kmeans``, ``linear``, ``cluster``.
        mode: ``pixel`` (codes upsampled to label resolution, as the reference) or ``token``
            (labels pooled to the token grid; a fast approximation).
        flip: evaluate in the reference's "eval" mode (flip-averaged codes; needs stores
            extracted with flipped tokens).
        probe_kwargs, method_kwargs: per-probe / per-method keyword arguments.
        distinctness: ``{enabled, n_tokens, seeds}`` for :mod:`stego_probe.distinctness`.
        batch_size, device: extraction and evaluation settings.
        trust_pickle: reuse cached UMAP / h-NNE fits from ``<out>/projections/``, whose model
            is a pickle (unpickling can run code from the file); by default they are refitted.
            Other cached fits are read with ``torch.load(weights_only=True)`` and always reused.
    """

    name: str
    dataset: str
    backbone: str
    data_root: str | None = None
    dataset_kwargs: dict = field(default_factory=dict)
    weights: str | None = None
    backbone_kwargs: dict = field(default_factory=dict)
    train: StoreSpec = field(default_factory=StoreSpec)
    val: StoreSpec = field(default_factory=lambda: StoreSpec(split="val", res=320))
    methods: list[str] = field(default_factory=lambda: ["dino", "pca", "rp", "stego"])
    dims: list[int] = field(default_factory=lambda: [3, 6, 12, 24, 48, 96, 192, 384, 768])
    seeds: list[int] = field(default_factory=lambda: [0])
    probes: list[str] = field(default_factory=lambda: ["kmeans", "linear"])
    mode: str = "pixel"
    flip: bool = False
    probe_kwargs: dict = field(default_factory=dict)
    method_kwargs: dict = field(default_factory=dict)
    distinctness: dict = field(default_factory=lambda: {"enabled": True})
    batch_size: int = 32
    device: str = "auto"
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        for key in ("train", "val"):
            spec = getattr(self, key)
            if isinstance(spec, dict):
                unknown = set(spec) - set(StoreSpec.__dataclass_fields__)
                if unknown:
                    raise ValueError(
                        f"sweep {key}: unknown keys {sorted(unknown)}; expected "
                        f"{sorted(StoreSpec.__dataclass_fields__)}"
                    )
                setattr(self, key, StoreSpec(**spec))
        self.validate()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SweepConfig:
        """A validated config from :meth:`to_dict` output (e.g. a sweep's ``config.json``)."""
        if not isinstance(data, dict):
            raise ValueError(f"sweep config: expected a mapping, got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"sweep config: unknown keys {sorted(unknown)}")
        return cls(**copy.deepcopy(data))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> SweepConfig:
        """A validated config read from a JSON file written from :meth:`to_dict`
        (``<out>/config.json``)."""
        try:
            data = json.loads(Path(path).read_text())
        except ValueError as e:
            raise ValueError(f"sweep config {path}: not valid JSON ({e})") from None
        return cls.from_dict(data)

    def validate(self) -> SweepConfig:
        """Check every field; raise ``ValueError`` naming the field and what was expected.

        Also run on construction, so a bad value fails when the config is loaded, before any
        store is extracted: e.g. ``seeds`` must be integers in ``[0, 2**32 - 1]`` and
        ``distinctness.n_tokens`` must exceed the number of classes ``K`` (when ``K`` is known
        from the config: ``dataset_kwargs.n_classes`` or the dataset's fixed class count).
        """
        known = {"dino", *WIDTH_METHODS}
        bad = [m for m in self.methods if m not in known]
        if bad:
            raise ValueError(f"sweep methods {bad} unknown; expected a subset of {sorted(known)}")
        bad = [p for p in self.probes if p not in PROBE_NAMES]
        if bad:
            raise ValueError(f"sweep probes {bad} unknown; expected kmeans, linear, cluster")
        if self.mode not in ("pixel", "token"):
            raise ValueError(f"sweep mode must be 'pixel' or 'token', got {self.mode!r}")
        if not self.seeds:
            raise ValueError("sweep seeds must not be empty")
        _check_ints("seeds", self.seeds, 0, "non-negative integers (0 <= seed <= 2**32 - 1)")
        if not self.dims:
            raise ValueError("sweep dims must not be empty")
        _check_ints("dims", self.dims, 1, "positive integers")
        for key in ("train", "val"):
            spec = getattr(self, key)
            if not isinstance(spec, StoreSpec):
                raise ValueError(
                    f"sweep {key}: expected a mapping of {sorted(StoreSpec.__dataclass_fields__)}"
                )
            _check_ints(f"{key}.res", [spec.res], 1, "a positive integer")
            if spec.limit is not None:
                _check_ints(f"{key}.limit", [spec.limit], 1, "a positive integer or null")
        if self.mode == "token" and self.flip:
            raise ValueError("sweep flip=True (eval mode) needs mode='pixel', got mode='token'")
        for what, keys, allowed in (
            ("method_kwargs", self.method_kwargs, known),
            ("probe_kwargs", self.probe_kwargs, set(PROBE_NAMES)),
            ("distinctness", self.distinctness or {}, {"enabled", "n_tokens", "seeds"}),
        ):
            bad = sorted(set(keys) - set(allowed))
            if bad:
                raise ValueError(f"sweep {what}: unknown keys {bad}; expected {sorted(allowed)}")
        dist = self.distinctness or {}
        if "seeds" in dist:
            seeds = dist["seeds"]
            if not isinstance(seeds, list | tuple) or not seeds:
                raise ValueError(
                    f"sweep distinctness.seeds must be a non-empty list of seeds, got {seeds!r}"
                )
            _check_ints("distinctness.seeds", seeds, 0, "non-negative integers")
        n_tokens = dist.get("n_tokens", DEFAULT_DISTINCTNESS_TOKENS)
        _check_ints("distinctness.n_tokens", [n_tokens], 1, "a positive integer")
        k = config_n_classes(self)
        if dist.get("enabled", True) and k is not None:
            check_distinctness_tokens(self, k)
        return self


#: Default ``distinctness.n_tokens``: val tokens sampled for the distinctness measures.
DEFAULT_DISTINCTNESS_TOKENS = 20000

#: Class counts of the datasets whose factories have no ``n_classes`` option.
_FIXED_N_CLASSES = {"cocostuff27": 27, "cityscapes27": 27, "potsdam3": 3}


def _check_ints(name: str, values, low: int, expected: str) -> None:
    """``ValueError`` naming the config field ``name`` unless every value is an int >= low
    (and, for seeds, <= 2**32 - 1)."""
    bad = [
        v
        for v in values
        if isinstance(v, bool)
        or not isinstance(v, int | np.integer)
        or v < low
        or ("seed" in name and v > 2**32 - 1)
    ]
    if bad:
        raise ValueError(f"sweep {name} must be {expected}, got {list(values)!r}")


def config_n_classes(config: SweepConfig) -> int | None:
    """The class count ``K`` a sweep's dataset has, as far as the config tells it (None when
    only the data does, e.g. a ``folder`` dataset without ``n_classes``)."""
    k = config.dataset_kwargs.get("n_classes")
    if k is None:
        k = _FIXED_N_CLASSES.get(config.dataset)
    if k is None:
        k = _default_n_classes(config.dataset)
    return int(k) if isinstance(k, int | np.integer) and not isinstance(k, bool) else None


def check_distinctness_tokens(config: SweepConfig, n_classes: int) -> None:
    """``ValueError`` unless ``distinctness.n_tokens`` exceeds the class count ``K`` (the
    clustering measures need more tokens than clusters)."""
    n = (config.distinctness or {}).get("n_tokens", DEFAULT_DISTINCTNESS_TOKENS)
    if int(n) <= int(n_classes):
        raise ValueError(
            f"sweep distinctness.n_tokens={n} must be at least K + 1 = {int(n_classes) + 1} "
            f"(K = {n_classes} classes of {config.dataset!r}: the distinctness measures cluster "
            "the sampled tokens into K clusters)"
        )


def list_presets() -> list[str]:
    """Names of the presets shipped with the package (``stego_probe/presets/*.yaml``)."""
    root = resources.files("stego_probe") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_config(preset: str | os.PathLike, overrides: dict | None = None) -> SweepConfig:
    """Load a sweep preset (package preset name or YAML path) and apply ``overrides``.

    Args:
        preset: a name from :func:`list_presets` or a path to a YAML file with the fields of
            :class:`SweepConfig`.
        overrides: field -> value, applied on top (``None`` values are ignored); nested dicts
            ``train`` / ``val`` / ``probe_kwargs`` / ``method_kwargs`` are merged key by key.

    Returns:
        a validated :class:`SweepConfig`.
    """
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"sweep preset file {path} does not exist")
        data = yaml.safe_load(path.read_text())
    else:
        names = list_presets()
        if str(preset) not in names:
            raise KeyError(f"unknown sweep preset {preset!r}; known presets: {names} (or a .yaml)")
        data = yaml.safe_load(
            (resources.files("stego_probe") / "presets" / f"{preset}.yaml").read_text()
        )
    if not isinstance(data, dict):
        raise ValueError(f"sweep preset {preset}: expected a YAML mapping")
    data = merge_dicts(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    fields = set(SweepConfig.__dataclass_fields__)
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"sweep preset {preset}: unknown keys {sorted(unknown)}")
    for key in ("train", "val"):
        if key in data and isinstance(data[key], dict):
            unknown = set(data[key]) - set(StoreSpec.__dataclass_fields__)
            if unknown:
                raise ValueError(
                    f"sweep preset {preset}: unknown keys {sorted(unknown)} in {key!r}; "
                    f"expected {sorted(StoreSpec.__dataclass_fields__)}"
                )
            data[key] = StoreSpec(**data[key])
    return SweepConfig(**data).validate()


def merge_dicts(base: dict, over: dict) -> dict:
    """``base`` updated with ``over``; nested dicts merged key by key (deep copies)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# --------------------------------------------------------------------------------------- stores


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
    ``ignore_value=255`` as ``[255]``)."""

    def as_list(x):
        return list(x) if isinstance(x, list | tuple) else [x]

    return _same(a, b) or _same(as_list(a), as_list(b))


def _recorded_dataset_args(prov: dict) -> dict | None:
    """The dataset constructor options a store records (every option, defaults filled):
    ``provenance["dataset_args"]``, else (older stores) the options inside ``dataset_info``;
    None when neither is recorded."""
    if isinstance(prov.get("dataset_args"), dict) and prov["dataset_args"]:
        return dict(prov["dataset_args"])
    info = prov.get("dataset_info") if isinstance(prov.get("dataset_info"), dict) else {}
    return next((dict(info[k]) for k in _ARGS_KEYS if isinstance(info.get(k), dict)), None)


def _expected_dataset_info(config: SweepConfig, split: str) -> dict | None:
    """The ``dataset_info`` a store extracted for ``config`` would record (the dataset's own
    provenance), or None when the dataset cannot be built here (e.g. its files are absent)."""
    try:
        from stego_probe.data import get_dataset

        ds = get_dataset(
            config.dataset, root=config.data_root, split=split, **config.dataset_kwargs
        )
        return to_jsonable(ds.provenance)
    except Exception:  # the data is not here: compare the recorded options only
        return None


def _dataset_defaults(dataset: str) -> dict:
    """Keyword defaults of a registered dataset factory (``{}`` if unknown)."""
    from stego_probe.data import DATASETS, dataset_defaults

    return dataset_defaults(dataset) if dataset in DATASETS else {}


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
    ``class_names``; for older stores without them against ``dataset_info``; the recorded
    options the config leaves unset against their defaults; and, when the dataset can be built
    here, everything else that ``dataset_info`` records apart from where the data lives), the weights (``weights_sha256`` against the
    sha256 of ``config.weights``; ``backbone_kwargs`` such as ``pretrained`` / ``seed`` against
    ``backbone_info``), ``tokens_flipped`` for the val store of a ``flip`` sweep, and the
    store spec (``res``, ``crop``, ``limit``). Keys a store does not record are not compared.

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
    n_classes = config.dataset_kwargs.get("n_classes", _default_n_classes(config.dataset))
    if n_classes is not None and store.n_classes != int(n_classes):
        diffs.append(f"n_classes: store {store.n_classes!r}, config {int(n_classes)!r}")
    compared = {"dataset", "split", "n_classes", *_LOCATION_KEYS, *_ARGS_KEYS}
    expected = _expected_dataset_info(config, spec.split)
    recorded = _recorded_dataset_args(prov)
    # the options as the dataset built from the config resolves them (255 -> [255]), if built
    built = next(
        (expected[k] for k in _ARGS_KEYS if expected and isinstance(expected.get(k), dict)), None
    )
    # the options the config sets, against what the store recorded
    for k, v in sorted(config.dataset_kwargs.items()):
        if recorded is not None and k in recorded:
            got = recorded[k]
        else:  # an older store: the option, if at all, in the dataset's own provenance
            got = info.get(k, prov.get(k))
        compared.add(k)
        if k == "n_classes" or got is None:
            continue
        want = built[k] if built is not None and k in built else v
        if not (_same_option(got, want) or _same_option(got, v)):
            diffs.append(f"dataset_kwargs.{k}: store {got!r}, config {v!r}")
    # options the store records explicitly (resolved, defaults filled in) that the config
    # leaves unset: against the dataset built from the config, else the factory's defaults
    defaults = _dataset_defaults(config.dataset) if built is None else built
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
        if k in prov and prov.get(k) != getattr(spec, k)
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


def _default_n_classes(dataset: str) -> int | None:
    """The class count a dataset factory uses without an ``n_classes`` argument (None when it
    has no such argument, e.g. the paper datasets whose count is part of their name)."""
    default = _dataset_defaults(dataset).get("n_classes")
    return int(default) if isinstance(default, int) and not isinstance(default, bool) else None


#: File in the output folder naming the stores a sweep's rows were computed from.
STORES_FILE = "stores.json"


def ensure_stores(
    config: SweepConfig,
    out_dir: str | os.PathLike,
    progress: bool = True,
    train_store: str | os.PathLike | None = None,
    val_store: str | os.PathLike | None = None,
):
    """Open the sweep's train and val stores, extracting whichever is missing or incomplete.

    Args:
        config: the sweep.
        out_dir: output folder; stores are extracted under ``<out>/stores/`` (:func:`store_path`).
        progress: tqdm bars.
        train_store, val_store: paths of existing complete stores to use instead of
            ``<out>/stores/...`` (checked by :func:`open_existing_store`; nothing is extracted
            or copied for them).

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
    if record.exists() and has_results(Path(out_dir) / "results.csv"):
        old = json.loads(record.read_text())
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
    atomic_write(record, json.dumps(recorded, indent=2))
    return stores


# --------------------------------------------------------------------------------------- points


@dataclass(frozen=True)
class Point:
    """One sweep point: a method at a width with a seed."""

    method: str
    dim: int
    seed: int


def sweep_points(config: SweepConfig, feature_dim: int) -> list[Point]:
    """Enumerate the points of a sweep for a backbone of width ``feature_dim``.

    ``dino`` is evaluated once per seed at ``D = feature_dim``; width methods at every configured
    ``D <= feature_dim`` (``D = feature_dim`` is added for PCA / RP / STEGO so the curves meet
    DINO).
    """
    points = []
    for method in config.methods:
        if method == "dino":
            dims = [feature_dim]
        else:
            dims = sorted({int(d) for d in config.dims if int(d) <= feature_dim})
            if method in ("pca", "rp", "rp_sparse", "stego") and feature_dim not in dims:
                dims.append(feature_dim)
        points += [Point(method, d, int(s)) for d in dims for s in config.seeds]
    return points


def done_points(results_path: str | os.PathLike) -> set[Point]:
    """Points that already have rows in a results CSV (the resume set; a missing file has none):
    :func:`stego_probe.results.done_keys` over ``method, dim, seed``, without the PCA spectrum
    rows (``metric == "explained_variance_ratio"``)."""
    from stego_probe.results import done_keys

    keys = ["method", "dim", "seed"]
    exclude = {"metric": "explained_variance_ratio"}
    return {Point(*k) for k in done_keys(results_path, keys, exclude=exclude)}


def store_fingerprint(source) -> dict:
    """What identifies the data a projection is fitted on, for the cache in ``projections/``.

    For a feature store: the sha256 of its provenance, its layout (images, grid, width), the
    sha256 of its sample ids, a checksum summary when the store records one, and the
    modification times of its ``zarr.json`` / ``_SUCCESS`` (rewritten when the store is
    extracted again or repaired). For an array: its shape and the sha256 of its bytes.

    Returns:
        a JSON-able dict; equal dicts mean "the same fit data" (``{}`` for None).
    """
    if source is None:
        return {}
    from stego_probe.store import is_store

    if not is_store(source):
        arr = np.ascontiguousarray(np.asarray(source))
        return {
            "array_shape": list(arr.shape),
            "array_sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
        }
    prov = dict(getattr(source, "provenance", None) or {})
    out: dict = {
        "provenance_sha256": _sha256_json(prov),
        "n_images": int(source.n_images),
        "grid": list(getattr(source, "grid", ()) or ()),
        "dim": getattr(source, "dim", None),
    }
    try:
        out["ids_sha256"] = _sha256_json(list(source.ids))
    except Exception:  # a duck-typed store without ids
        out["ids_sha256"] = None
    out["checksums_sha256"] = _checksums_sha256(str(getattr(source, "path", "")))
    out["mtimes"] = _store_mtimes(str(getattr(source, "path", "")))
    return out


def _checksums_sha256(path: str) -> str | None:
    """sha256 of a store's per-block ``checksums`` array (None for a store without one)."""
    if not path:
        return None
    try:
        import zarr

        group = zarr.open_group(path, mode="r", zarr_format=3)
        if "checksums" not in group:
            return None
        return hashlib.sha256(np.ascontiguousarray(group["checksums"][...]).tobytes()).hexdigest()
    except Exception:  # not a zarr store we can read: the other fields identify it
        return None


def _sha256_json(obj) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def _store_mtimes(path: str) -> dict:
    """Modification times (ns, or fsspec's ``mtime``) of a store's ``zarr.json`` and
    ``_SUCCESS`` (None where unknown)."""
    out = {}
    for name in ("zarr.json", "_SUCCESS"):
        value = None
        try:
            if "://" in path:
                import fsspec

                fs, root = fsspec.core.url_to_fs(path)
                info = fs.info(f"{root.rstrip('/')}/{name}")
                value = info.get("mtime", info.get("created"))
                value = str(value) if value is not None else None
            elif path:
                value = os.stat(os.path.join(path, name)).st_mtime_ns
        except (OSError, ValueError, ImportError):
            value = None
        out[name] = value
    return out


def projection_inputs(config: SweepConfig, point: Point, train_store, val_store=None) -> dict:
    """The fingerprint of everything a cached sweep projection depends on: method, ``D``
    (PCA: none, one fit serves every ``D``), seed, the method's ``method_kwargs`` and the fit
    data (:func:`store_fingerprint` of the train store; STEGO also of the val store its
    checkpoint is selected on). Recorded as ``provenance["sweep_inputs"]`` in the cached file;
    a cache whose record differs is refitted."""
    out = {
        "method": point.method,
        "dim": None if point.method == "pca" else int(point.dim),
        "seed": int(point.seed),
        "method_kwargs": config.method_kwargs.get(point.method, {}),
        "train": store_fingerprint(train_store),
    }
    if point.method == "stego":
        out["val"] = store_fingerprint(val_store)
    return to_jsonable(out)


def check_projection_finite(proj, what: str) -> None:
    """``ValueError`` naming ``what`` if a fitted projection's saved arrays (components,
    statistics, network weights) hold NaN or inf, so that nothing non-finite is cached."""
    arrays = {name: getattr(proj, name, None) for name in type(proj)._array_attrs}
    if not type(proj)._pickled_state:  # a pickled model (UMAP / h-NNE) is not inspected
        arrays.update(proj._extra_state())
    bad = []
    for name, value in arrays.items():
        if value is None:
            continue
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad.append(f"{name} ({int((~np.isfinite(arr)).sum())} of {arr.size})")
    if bad:
        raise ValueError(
            f"{what}: the fitted projection has NaN or infinite values in {', '.join(bad)}; "
            "it is not cached. Check the fit data (the train store) and the method_kwargs"
        )


def _save_fit(proj, path: Path, inputs: dict, point: Point) -> None:
    check_projection_finite(proj, f"{point_label(point)} fit")
    proj.provenance_ = {**dict(proj.provenance_), "sweep_inputs": inputs}
    proj.save(path)


def _load_cached(klass, path: Path, inputs_fn, trust: bool):
    """The cached fit at ``path`` if it was fitted on the same inputs, else None (with a
    warning saying why it is refitted). The class is checked before anything else is read."""
    proj = klass.load(path, trust=trust)
    cached = dict(getattr(proj, "provenance_", None) or {}).get("sweep_inputs")
    inputs = inputs_fn()
    if cached == inputs:
        try:
            check_projection_finite(proj, str(path))
        except ValueError as e:
            reason = str(e)
        else:
            return proj
    elif cached is None:
        reason = "it records no fingerprint of its inputs (written by an older version)"
    else:
        changed = sorted(k for k in set(cached) | set(inputs) if cached.get(k) != inputs.get(k))
        reason = f"its inputs changed ({', '.join(changed)})"
    warnings.warn(f"refitting the cached projection {path}: {reason}", RuntimeWarning, stacklevel=3)
    return None


def fit_projection(
    config: SweepConfig, point: Point, train_store, cache_dir: str | os.PathLike, val_store=None
):
    """Fit (or load from ``cache_dir``) the projection of one sweep point.

    PCA is fitted once per seed at full width and then narrowed with ``set_params``, so every D
    shares one eigendecomposition. Fitted projections are saved under ``cache_dir`` so that a
    resumed sweep and the figures can reuse them. Each cached file records the fingerprint of
    its inputs (:func:`projection_inputs`); a cached file whose inputs changed (e.g. the train
    store was extracted again) is refitted. A fit with NaN or inf values is never cached
    (:func:`check_projection_finite`); the fits themselves reject non-finite fit data, naming
    the store and the image.
    """
    from stego_probe.projections import get_projection, projection_class

    kwargs = dict(config.method_kwargs.get(point.method, {}))
    # A cached file is loaded as the class this point expects (checked before anything else is
    # read) and with torch's weights-only reader; a UMAP / h-NNE model is a pickle, unpickled
    # only with config.trust_pickle (otherwise it is refitted and the cache rewritten).
    klass = projection_class(point.method)
    trust = bool(config.trust_pickle)
    reuse = trust or not klass._pickled_state
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)

    def inputs():
        return projection_inputs(config, point, train_store, val_store)

    if point.method == "pca":
        path = cache_dir / f"pca_seed{point.seed}.pt"
        proj = _load_cached(klass, path, inputs, trust) if path.exists() else None
        if proj is None:
            proj = get_projection("pca", None, random_state=point.seed, **kwargs)
            proj.fit(train_store)
            _save_fit(proj, path, inputs(), point)
        return proj.set_params(n_components=point.dim)
    path = cache_dir / f"{point.method}_d{point.dim}_seed{point.seed}.pt"
    if path.exists() and reuse:
        proj = _load_cached(klass, path, inputs, trust)
        if proj is not None:
            return proj
    if point.method == "dino":
        proj = get_projection("dino", None)
    else:
        proj = get_projection(point.method, point.dim, random_state=point.seed, **kwargs)
    if point.method == "stego":
        # Checkpoint selection by validation cluster mIoU (the paper protocol, PROTOCOL §3.4).
        proj.set_params(progress=False, device=_torch_device(config))
        proj.fit(train_store, val_store=val_store)
    else:
        proj.fit(train_store)
    _save_fit(proj, path, inputs(), point)
    return proj


def pca_spectrum_rows(config: SweepConfig, train_store, cache_dir) -> list[dict]:
    """Figure 3 rows: the explained-variance ratio of every PCA component (seed 0 fit)."""
    proj = fit_projection(
        config, Point("pca", train_store.dim, config.seeds[0]), train_store, cache_dir
    )
    context = _context(config, train_store, Point("pca", 0, config.seeds[0]))
    context.update(probe="none", split=config.train.split)
    ratios = np.asarray(proj.explained_variance_ratio_, dtype=np.float64)
    if not np.isfinite(ratios).all():
        raise ValueError(
            f"PCA spectrum of train store {getattr(train_store, 'path', train_store)}: "
            f"{int((~np.isfinite(ratios)).sum())} of {ratios.size} explained-variance ratios are "
            "NaN or infinite; no rows are written"
        )
    rows = []
    for i, r in enumerate(ratios, start=1):
        rows += make_rows({**context, "dim": i}, {"explained_variance_ratio": float(r)})
    return rows


#: k-means protocol of the distinctness measures (one restart per seed; ``kmeans_iterations``
#: counts the iterations until the objective changes by <= ``tol``, a convergence *speed*).
DISTINCTNESS_KMEANS = {"niter": 50, "tol": 1e-4}


def _context(config: SweepConfig, store, point: Point) -> dict:
    prov = store.provenance
    return {
        "dataset": config.dataset,
        "backbone": config.backbone,
        "weights_sha256": prov.get("weights_sha256") or "",
        "method": point.method,
        "dim": point.dim,
        "seed": point.seed,
        "crf": False,
        "mode": mode_column(config.mode, config.flip),
        "split": config.val.split,
    }


def _torch_device(config: SweepConfig) -> str:
    from stego_probe.device import resolve_device

    return str(resolve_device(config.device))


def _probe_kwargs(config: SweepConfig) -> dict:
    """Per-probe kwargs with the sweep's device for the torch-trained probes."""
    out = {k: dict(v) for k, v in config.probe_kwargs.items()}
    for name in ("cluster", "linear"):
        out.setdefault(name, {}).setdefault("device", _torch_device(config))
    return out


@uses_threads(store="train_store")
def run_point(
    config: SweepConfig, point: Point, train_store, val_store, cache_dir, *, threads="auto"
) -> list[dict]:
    """Evaluate one sweep point and return its tidy rows (probe metrics + distinctness).

    ``threads``: CPU threads while the point runs (:mod:`stego_probe.threads`; ``"auto"``: 1
    for small stores, all cores for ViT-sized ones).
    """
    from stego_probe.evaluate import evaluate_stores

    proj = fit_projection(config, point, train_store, cache_dir, val_store=val_store)
    context = _context(config, val_store, point)
    df = evaluate_stores(
        train_store,
        val_store,
        probes=config.probes,
        projection=None if point.method == "dino" else proj,
        method=point.method,
        mode=config.mode,
        flip=config.flip,
        seed=point.seed,
        probe_kwargs=_probe_kwargs(config),
        batch_size=config.batch_size,
        progress=False,
    )
    df["dim"] = point.dim
    rows = df.to_dict("records")
    dist = config.distinctness or {}
    if dist.get("enabled", True):
        from stego_probe.distinctness import distinctness_report

        n_tokens = int(dist.get("n_tokens", DEFAULT_DISTINCTNESS_TOKENS))
        codes, labels = val_code_sample(val_store, proj, n_tokens=n_tokens, seed=point.seed)
        try:
            report = distinctness_report(
                codes,
                labels,
                n_clusters=val_store.n_classes,
                seeds=tuple(dist.get("seeds", (0, 1, 2))),
                **DISTINCTNESS_KMEANS,
            )
        except ValueError as e:  # degenerate codes or labels: say where they came from
            raise ValueError(
                f"distinctness of {len(codes)} sampled codes of val store {val_store.path}: {e}"
            ) from e
        kmeans = {f"kmeans_{k}": v for k, v in DISTINCTNESS_KMEANS.items()}
        context = {**context, "probe": "none", "match": "", **kmeans, "kmeans_nredo": 1}
        rows += make_rows(context, report)
    return rows


def val_code_sample(val_store, projection, n_tokens: int, seed: int):
    """A seeded sample of val tokens projected to codes, with their token labels.

    Returns:
        codes (n, D) float32 and labels (n,) int64 (-1 = ignore).

    Raises:
        ValueError: the sample holds NaN or inf tokens (the message names the store, the image
            index and its id).
    """
    from stego_probe.projections.base import check_store_sample

    tokens, labels = val_store.sample_tokens(n_tokens, seed=seed, with_labels=True)
    check_store_sample(val_store, tokens)
    codes = projection.transform(np.ascontiguousarray(tokens, dtype=np.float32))
    return np.asarray(codes, dtype=np.float32), np.asarray(labels, dtype=np.int64)


@uses_threads()
def run_sweep(
    config: SweepConfig,
    out_dir: str | os.PathLike,
    executor: str = "local",
    progress: bool = True,
    train_store: str | os.PathLike | None = None,
    val_store: str | os.PathLike | None = None,
    *,
    threads: int | str | None = "auto",
) -> pd.DataFrame:
    """Run (or resume) a sweep and return the full results table.

    Before any work (extraction, ``config.json``) the optional packages the sweep needs are
    checked (:func:`check_dependencies`) and the folder is checked for a resume with other
    settings. A point that fails does not stop the sweep: the other points run and keep their
    rows, and :class:`SweepError` lists every failed point at the end.

    Args:
        config: the sweep.
        out_dir: output folder: ``stores/``, ``projections/``, ``results.csv``, ``config.json``
            (and ``failures.log`` after a run with failed points).
        executor: ``local`` (a loop in this process) or ``ray`` (one Ray task per point; needs
            ``pip install 'stego-probe[ray]'`` and a running or local Ray cluster).
        progress: show progress bars (the sweep's shows the current point and a cost-weighted
            ETA, see :class:`SweepProgress`).
        threads: CPU threads of torch / FAISS / BLAS while the sweep runs (restored after):
            ``"auto"``: 1 for small stores, all cores for ViT-sized ones and extraction,
            ``"all"``, an int or None (library defaults); see :mod:`stego_probe.threads`.
        train_store, val_store: existing complete stores to use instead of extracting into
            ``<out>/stores/`` (see :func:`ensure_stores`).

    Returns:
        the results table (all rows in ``<out>/results.csv``).

    The whole run holds an exclusive lock on ``out_dir`` (:func:`stego_probe.lock.folder_lock`):
    a second sweep started into the same folder is refused with
    :class:`~stego_probe.lock.FolderLockedError` naming the holder, and a point already in
    ``results.csv`` is never appended again (:func:`append_point`).

    Raises:
        ImportError: an optional package the sweep needs is missing (nothing is written).
        ValueError: ``out_dir`` holds results of a sweep with other result-defining settings,
            or a store there does not match the config.
        stego_probe.lock.FolderLockedError: another live run holds ``out_dir``.
        SweepError: some points failed (the others' rows are written; re-run to retry).
    """
    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    check_dependencies(config, executor)
    from stego_probe.lock import folder_lock, table_lock

    # One run per output folder: a second sweep into it is refused at once; the table lock
    # also refuses an `evaluate --out OUT/results.csv` started at any time during the sweep.
    with folder_lock(out_dir, what="sweep"), table_lock(Path(out_dir) / "results.csv", "sweep"):
        return _run_sweep_locked(config, Path(out_dir), executor, progress, train_store, val_store)


def _run_sweep_locked(config, out: Path, executor, progress, train_store, val_store):
    _check_resume(config, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.json", json.dumps(to_jsonable(config.to_dict()), indent=2))
    results = out / "results.csv"
    cache_dir = out / "projections"
    train_store, val_store = ensure_stores(
        config, out, progress=progress, train_store=train_store, val_store=val_store
    )
    check_store_pair(train_store, val_store)
    if (config.distinctness or {}).get("enabled", True) and val_store.n_classes:
        check_distinctness_tokens(config, int(val_store.n_classes))

    done = done_points(results)
    todo = run_order([p for p in sweep_points(config, train_store.dim) if p not in done])
    # The PCA fits made here read the train store like a sweep point does: same thread policy.
    with limit("auto", store_workload(train_store)):
        if "pca" in config.methods and not _has_spectrum(results):
            append_csv(
                pca_spectrum_rows(config, train_store, cache_dir), results, unique=IDENTITY_COLUMNS
            )
        if executor == "ray":
            # One PCA fit per seed, shared by every D: fitted here, or parallel tasks would race
            # to fit and save the same file.
            for seed in sorted({p.seed for p in todo if p.method == "pca"}):
                fit_projection(config, Point("pca", train_store.dim, seed), train_store, cache_dir)
    tracker = SweepProgress(
        todo,
        point_weights(config, todo),
        desc=f"sweep {config.name}" + (" (ray)" if executor == "ray" else ""),
        disable=not progress,
    )
    with tracker:
        if executor == "local":
            _run_local(config, todo, train_store, val_store, cache_dir, results, tracker)
        else:
            _run_ray(config, todo, train_store.path, val_store.path, cache_dir, results, tracker)
    df = read_results(results) if results.exists() else pd.DataFrame(columns=RESULT_COLUMNS)
    _report_failures(config, out, tracker.failures, len(todo), df)
    return df


class SweepError(RuntimeError):
    """Some points of a sweep failed; every other point finished and its rows are written.

    The message lists each failed point as ``(method, D=dim, seed=seed): ErrorType: message``;
    the full tracebacks are in ``<out>/failures.log``. Running the same sweep again retries only
    the failed points (the finished ones are skipped as usual).

    Attributes:
        failures: ``[(Point, exception)]`` in the order the points failed.
        results: the results table with the finished points' rows (a DataFrame).
    """

    def __init__(self, message: str, failures: list, results: pd.DataFrame) -> None:
        super().__init__(message)
        self.failures = failures
        self.results = results


# --------------------------------------------------------------------------------- extras

#: Optional extras a sweep can need: extra -> (what needs it, module to import, package).
_EXTRAS = {
    "ray": ("executor='ray'", "ray", "Ray"),
    "umap": ("method 'umap'", "umap", "umap-learn"),
    "hnne": ("method 'hnne'", "hnne", "hnne"),
}


def required_extras(config: SweepConfig, executor: str = "local") -> list[str]:
    """The optional extras (``pip install 'stego-probe[<extra>]'``) a sweep needs.

    ``ray`` for ``executor="ray"``, ``umap`` / ``hnne`` when those methods are swept. A sweep
    never needs the ``crf`` extra: it evaluates without the dense CRF (``crf`` is false in its
    rows).
    """
    extras = ["ray"] if executor == "ray" else []
    return extras + [m for m in ("umap", "hnne") if m in config.methods]


def check_dependencies(config: SweepConfig, executor: str = "local") -> None:
    """Import every optional package the sweep needs (:func:`required_extras`).

    :func:`run_sweep` calls it first, so a missing extra fails in seconds, before any store is
    extracted or anything is written, instead of after hours of extraction.

    Raises:
        ImportError: naming each missing package, what needs it and its
            ``pip install 'stego-probe[<extra>]'`` command.
    """
    missing = []
    for extra in required_extras(config, executor):
        what, module, package = _EXTRAS[extra]
        try:
            importlib.import_module(module)
        except ImportError as e:
            missing.append(f"{what} needs {package}: pip install 'stego-probe[{extra}]' ({e})")
    if missing:
        raise ImportError(
            f"sweep {config.name}: {'; '.join(missing)}. Nothing was extracted or written"
        )


# --------------------------------------------------------------------- order and progress

#: Cost of one STEGO training step relative to one step of a trained probe (same batch size),
#: the prior of :func:`point_weights` until a STEGO point has been timed. Measured on the
#: ``synthetic`` preset on 2 CPU cores: a STEGO point took 59-67 s, a PCA / RP point 9.2-9.8 s
#: (200 steps x 16 images for both the head and the linear probe).
STEGO_STEP_COST = 5.5


def point_label(point: Point) -> str:
    """How progress bars and errors name a point: ``"(method, D=dim, seed=seed)"``."""
    return f"({point.method}, D={point.dim}, seed={point.seed})"


def run_order(points: list[Point]) -> list[Point]:
    """The order in which :func:`run_sweep` runs ``points``: the first point of every method,
    then the others in enumeration order (:func:`sweep_points`).

    Timing one point of each method early (the STEGO points are far slower than the others)
    lets :class:`SweepProgress` correct its cost estimate within the first few points, while
    the cheap methods' curves still fill in first. The order only depends on ``points``, so a
    resumed sweep runs its remaining points in the same order; every point is independent
    (PCA is fitted once per seed and shared by every D whatever the order).
    """
    firsts: dict[str, Point] = {}
    for p in points:
        firsts.setdefault(p.method, p)
    head = list(firsts.values())
    return head + [p for p in points if p not in set(head)]


def point_weights(config: SweepConfig, points: list[Point]) -> dict[Point, float]:
    """Prior cost of each point for the progress ETA, in units of one point's evaluation.

    Every point costs 1 (fit the probes on its codes, score them on val, distinctness). A
    ``stego`` point adds the training of its head: ``STEGO_STEP_COST * steps * batch_size`` over
    the ``steps * batch_size`` of the trained probes (``linear``, ``cluster``; 7000 x 32 when
    neither is swept). :class:`SweepProgress` replaces these priors by measured times as points
    finish, so they only matter until each method has been timed.

    Returns:
        point -> weight (> 0).
    """
    from stego_probe.probes.cluster_lookup import DEFAULT_BATCH_SIZE, DEFAULT_STEPS

    probe_work = 0
    for name in ("linear", "cluster"):
        if name in config.probes:
            kw = config.probe_kwargs.get(name, {})
            probe_work += int(kw.get("steps", DEFAULT_STEPS)) * int(
                kw.get("batch_size", DEFAULT_BATCH_SIZE)
            )
    probe_work = probe_work or DEFAULT_STEPS * DEFAULT_BATCH_SIZE
    stego_extra: dict[int, float] = {}
    weights = {}
    for p in points:
        weights[p] = 1.0
        if p.method == "stego":
            if p.dim not in stego_extra:
                stego_extra[p.dim] = _stego_work(config, p.dim) * STEGO_STEP_COST / probe_work
            weights[p] += stego_extra[p.dim]
    return weights


def _stego_work(config: SweepConfig, dim: int) -> float:
    """``steps * batch_size`` of the sweep's STEGO head at width ``dim`` (preset resolved)."""
    from stego_probe.projections import get_projection

    try:
        cfg = get_projection("stego", dim, **config.method_kwargs.get("stego", {}))
        params = cfg.resolved_params()
        return float(params["steps"]) * float(params["batch_size"])
    except (TypeError, ValueError, KeyError):  # bad kwargs: the point itself reports them
        return 7000.0 * 32.0


def _error_summary(error: BaseException) -> str:
    """``"ErrorType: first line of the message"`` (a Ray task error shows its cause)."""
    cause = getattr(error, "cause", None)  # ray.exceptions.RayTaskError wraps the task's error
    if isinstance(cause, BaseException):
        error = cause
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class SweepProgress:
    """Progress bar and ETA of a sweep's points, weighted by cost and calibrated as they finish.

    Counting points gives a wrong ETA: a STEGO point trains a head and costs many times a PCA or
    RP point. Here the time left is estimated as

        sum over unfinished points of  weight(point) * seconds_per_weight(method)

    divided by the measured parallelism (work-seconds finished per wall-second: about 1 for the
    local loop, the number of busy workers with Ray). ``seconds_per_weight`` of a method is
    measured on its finished points; for a method with none finished yet, the rate of all finished
    points is used with the prior weights (:func:`point_weights`). The bar fills with the
    estimated share of the work done and shows the points done, failures, the ETA and the current
    point ``(method, D, seed)``.

    Args:
        points: the points to run.
        weights: prior cost of each point (missing points weigh 1).
        desc: bar description.
        disable: no bar (the bookkeeping and :meth:`eta` still work).
        clock: a ``time.monotonic``-like function (tests pass a fake clock).

    Attributes:
        done: finished point -> measured seconds (None for a failed point).
        failures: ``[(point, exception)]`` in the order the points failed.
        running: points started and not finished, in start order.
    """

    #: bar resolution (the bar counts thousandths of the estimated work).
    _STEPS = 1000

    def __init__(
        self,
        points: list[Point],
        weights: dict[Point, float] | None = None,
        *,
        desc: str = "sweep",
        disable: bool = False,
        clock=time.monotonic,
    ) -> None:
        from tqdm.auto import tqdm

        self.points = list(points)
        weights = weights or {}
        self.weights = {p: float(weights.get(p, 1.0)) for p in self.points}
        self.clock = clock
        self.done: dict[Point, float | None] = {}
        self.failures: list[tuple[Point, BaseException]] = []
        self.running: list[Point] = []
        self._started: dict[Point, float] = {}
        self._t0: float | None = None
        self._t_last: float | None = None
        self._last: Point | None = None
        self.bar = tqdm(
            total=self._STEPS,
            desc=desc,
            disable=disable,
            bar_format=f"{{desc}}: {{percentage:3.0f}}%|{{bar}}| 0/{len(self.points)} points",
        )
        self._show()

    def __enter__(self) -> SweepProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()

    def start(self, point: Point) -> None:
        """Mark ``point`` as started (the local loop) or submitted (Ray)."""
        now = self.clock()
        if self._t0 is None:
            self._t0 = self._t_last = now
        self._started[point] = now
        self.running.append(point)
        self._show()

    def finish(
        self, point: Point, seconds: float | None = None, error: BaseException | None = None
    ) -> None:
        """Mark ``point`` as finished after ``seconds`` of work (default: since :meth:`start`),
        or as failed with ``error`` (its time is not used for the estimate)."""
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
        if point in self.running:
            self.running.remove(point)
        if seconds is None:
            seconds = now - self._started.get(point, now)
        self.done[point] = None if error is not None else max(float(seconds), 0.0)
        self._t_last, self._last = now, point
        if error is not None:
            self.failures.append((point, error))
            if not self.bar.disable:
                msg = f"sweep point {point_label(point)} failed: {_error_summary(error)}"
                self.bar.write(msg, file=sys.stderr)
        self._show()

    # ---------------------------------------------------------------------------- estimate
    def _rates(self) -> tuple[float | None, dict[str, float]]:
        """Seconds per unit weight: over all timed points, and per method."""
        per: dict[str, list[float]] = {}
        for p, s in self.done.items():
            if s is not None:
                acc = per.setdefault(p.method, [0.0, 0.0])
                acc[0] += s
                acc[1] += self.weights.get(p, 1.0)
        if not per:
            return None, {}
        total_s = sum(a[0] for a in per.values())
        total_w = sum(a[1] for a in per.values())
        return total_s / total_w, {m: a[0] / a[1] for m, a in per.items()}

    def _estimate(self, point: Point, overall: float, per: dict[str, float]) -> float:
        return self.weights.get(point, 1.0) * per.get(point.method, overall)

    def remaining_work(self) -> float | None:
        """Estimated work-seconds of the unfinished points (None before a point is timed)."""
        overall, per = self._rates()
        if overall is None:
            return None
        return sum(self._estimate(p, overall, per) for p in self.points if p not in self.done)

    def eta(self) -> float | None:
        """Estimated wall-clock seconds until every point has finished (None before the first
        point has been timed)."""
        left = self.remaining_work()
        if left is None:
            return None
        work = sum(s for s in self.done.values() if s is not None)
        wall = (self._t_last or 0.0) - (self._t0 or 0.0)
        throughput = work / wall if wall > 0 and work > 0 else 1.0
        return max(left / throughput - (self.clock() - self._t_last), 0.0)

    def fraction_done(self) -> float:
        """Estimated share of the work done, in [0, 1]."""
        if not self.points:
            return 1.0
        overall, per = self._rates()
        if overall is None:
            done = sum(self.weights[p] for p in self.done if p in self.weights)
            return done / sum(self.weights.values())
        done = sum(
            s if s is not None else self._estimate(p, overall, per) for p, s in self.done.items()
        )
        left = self.remaining_work() or 0.0
        return done / (done + left) if done + left > 0 else 1.0

    def postfix(self) -> str:
        """The bar's text: points done, failures, ETA and the current point."""
        parts = [f"{len(self.done)}/{len(self.points)} points"]
        if self.failures:
            parts.append(f"{len(self.failures)} failed")
        eta = self.eta()
        if eta is not None and len(self.done) < len(self.points):
            parts.append(f"eta {self.bar.format_interval(eta)}")
        if len(self.running) == 1:
            parts.append(f"now {point_label(self.running[0])}")
        elif self.running:
            parts.append(f"{len(self.running)} submitted")
            if self._last is not None:
                parts.append(f"last {point_label(self._last)}")
        return ", ".join(parts)

    def _show(self) -> None:
        self.bar.n = int(round(self.fraction_done() * self._STEPS))
        text = self.postfix().replace("{", "{{").replace("}", "}}")
        self.bar.bar_format = "{desc}: {percentage:3.0f}%|{bar}| " + text + " [{elapsed}]"
        self.bar.refresh()


#: Metrics that are always defined: a NaN there means a broken point, never an empty class.
FINITE_METRICS = ("accuracy", "miou", "explained_variance_ratio")


def check_rows_finite(rows: list[dict], what: str) -> None:
    """``ValueError`` naming ``what`` if result rows hold an infinite value, or NaN in a metric
    of :data:`FINITE_METRICS`. (Some metrics are NaN by definition in places, e.g. the
    precision of a class never predicted, or restart agreement with one seed.)"""
    bad = []
    for r in rows:
        v = float(r.get("value", float("nan")))
        if np.isinf(v) or (np.isnan(v) and r.get("metric") in FINITE_METRICS):
            bad.append(f"{r.get('probe')}/{r.get('metric')}={v}")
    if bad:
        raise ValueError(
            f"{what}: {len(bad)} non-finite result value(s) ({', '.join(bad[:5])}); the rows "
            "are not written"
        )


def append_point(point: Point, rows: list[dict], results: Path) -> bool:
    """Append one point's rows to ``results`` unless the point is already there.

    Idempotent: a point whose rows ``results`` holds already (:func:`done_points`) is skipped
    with a warning, so a rerun, or a second writer that slipped past the folder lock, never
    duplicates rows. Rows are checked with :func:`check_rows_finite` first.

    Returns:
        True if the rows were appended, False if the point was already in ``results``.
    """
    check_rows_finite(rows, f"sweep point {point_label(point)}")
    if point in done_points(results):
        warnings.warn(
            f"sweep point {point_label(point)} is already in {results}; its new rows are not "
            "appended again",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    append_csv(rows, results, unique=IDENTITY_COLUMNS)
    return True


def _record(point: Point, outcome, seconds, results: Path, tracker: SweepProgress) -> None:
    """Shared by both executors: append a finished point's rows to ``results`` (as soon as it
    finishes, so nothing finished is lost), or record its failure (an exception; also rows
    with non-finite headline values, which are not written)."""
    if not isinstance(outcome, BaseException):
        try:
            append_point(point, outcome, results)
        except ValueError as e:
            outcome = e
    if isinstance(outcome, BaseException):
        tracker.finish(point, error=outcome)
    else:
        tracker.finish(point, seconds)


def _run_local(config, todo, train_store, val_store, cache_dir, results, tracker) -> None:
    for point in todo:
        tracker.start(point)
        try:
            outcome = run_point(config, point, train_store, val_store, cache_dir)
        except Exception as e:  # reported with its point at the end; the others still run
            outcome = e
        _record(point, outcome, None, results, tracker)


def _report_failures(config, out: Path, failures, n_points: int, df: pd.DataFrame) -> None:
    """Write ``failures.log`` and raise :class:`SweepError` if points failed (else remove an
    earlier run's log)."""
    log = out / "failures.log"
    if not failures:
        log.unlink(missing_ok=True)
        return
    with log.open("w") as f:
        for point, error in failures:
            f.write(f"=== {point_label(point)}\n{''.join(traceback.format_exception(error))}\n")
    lines = "\n".join(f"  {point_label(p)}: {_error_summary(e)}" for p, e in failures)
    raise SweepError(
        f"sweep {config.name}: {len(failures)} of {n_points} points failed:\n{lines}\n"
        f"The other {n_points - len(failures)} points finished; all finished rows are in "
        f"{out / 'results.csv'}, the tracebacks in {log}. Run the same sweep again to retry "
        "only the failed points",
        failures,
        df,
    ) from failures[0][1]


#: Fields that may differ when a sweep is resumed into the same folder: they add points or
#: change where / how fast things run. Any other field defines the rows already written.
RESUMABLE_FIELDS = (
    "name",
    "methods",
    "dims",
    "seeds",
    "data_root",
    "batch_size",
    "device",
    "trust_pickle",
)

#: Fields the fitted projections in ``projections/`` depend on (besides method, D and seed).
PROJECTION_FIELDS = (
    "dataset",
    "dataset_kwargs",
    "backbone",
    "weights",
    "backbone_kwargs",
    "train",
    "val",
    "flip",
    "method_kwargs",
)

#: Fields a store's content depends on that its path (:func:`store_path`) does not encode.
STORE_FIELDS = ("dataset_kwargs", "weights", "backbone_kwargs")


def has_results(results_path: str | os.PathLike) -> bool:
    """Whether a results CSV exists and holds at least one row."""
    path = Path(results_path)
    if not path.is_file():
        return False
    try:
        return len(pd.read_csv(path, nrows=1)) > 0
    except pd.errors.EmptyDataError:
        return False


def _check_resume(config: SweepConfig, out: Path) -> None:
    """Refuse to resume into ``out`` a sweep whose result-defining fields differ.

    Only a folder with results rows is a resume. In a folder without any (a run that failed
    before its first point finished), ``config.json`` is simply replaced; what that run left
    under other settings and this run would reuse is removed first: ``projections/`` if a field
    of :data:`PROJECTION_FIELDS` differs, and the store at this sweep's store path if a field of
    :data:`STORE_FIELDS` differs (or ``flip`` is now on, for the val store).
    """
    path = out / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    new = to_jsonable(config.to_dict())
    changed = [k for k, v in new.items() if k not in RESUMABLE_FIELDS and old.get(k) != v]
    if not changed:
        return
    if has_results(out / "results.csv"):
        diffs = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed]
        raise ValueError(
            f"{out} holds a sweep with another configuration ({'; '.join(diffs)}); resuming "
            "would mix their results. Use another output folder, or delete this one"
        )
    stale = []
    if set(changed) & set(PROJECTION_FIELDS):
        stale.append(out / "projections")
    for which in ("train", "val"):
        if set(changed) & set(STORE_FIELDS) or (
            which == "val" and "flip" in changed and config.flip
        ):
            stale.append(Path(store_path(config, out, which)))
    for p in stale:
        if p.exists():
            warnings.warn(
                f"{out} has no results yet, so this is not a resume; removing {p}, left by an "
                f"earlier run with other settings ({', '.join(changed)})",
                RuntimeWarning,
                stacklevel=3,
            )
            shutil.rmtree(p)


def _has_spectrum(results: Path) -> bool:
    return (
        results.exists() and (read_results(results)["metric"] == "explained_variance_ratio").any()
    )


def _run_ray(config, todo, train_path, val_path, cache_dir, results, tracker) -> None:
    import ray  # checked by check_dependencies
    import torch

    # Ray hides GPUs from tasks that do not ask for one.
    @ray.remote(num_gpus=1 if torch.cuda.is_available() else 0)
    def task(cfg, point):
        from stego_probe.store import FeatureStore

        start = time.perf_counter()
        rows = run_point(
            cfg, point, FeatureStore.open(train_path), FeatureStore.open(val_path), cache_dir
        )
        return rows, time.perf_counter() - start

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True)
    pending = {}
    for p in todo:
        pending[task.remote(config, p)] = p
        tracker.start(p)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            point = pending.pop(ref)
            # Rows are appended by the driver only, so the CSV has a single writer.
            try:
                rows, seconds = ray.get(ref)
            except Exception as e:  # a failed task: reported at the end, the others go on
                _record(point, e, None, results, tracker)
            else:
                _record(point, rows, seconds, results, tracker)


def set_num_threads(n: int | str | None) -> None:
    """Backward-compatible alias of :func:`stego_probe.threads.set_num_threads` (torch, FAISS
    and BLAS threads for the rest of the process; None leaves the defaults)."""
    from stego_probe import threads

    threads.set_num_threads(n)


def summary_table(df: pd.DataFrame, metric: str = "miou") -> pd.DataFrame:
    """Mean ± std over seeds of ``metric`` per (method, dim) and probe, as a wide table.

    Methods are shown by their display name (:func:`stego_probe.plots.method_label`: the raw
    features after their backbone, ``"DINO"`` only for a DINO); when the rows include CRF rows,
    a method that has them is split into ``"... with CRF"`` / ``"... w/o CRF"``; when they
    include several evaluation modes, the mode is appended (``"STEGO [val]"``). Rows repeated
    with the same seed count once (the last wins), as in the figures.

    Args:
        df: results rows (``method``, ``dim``, ``seed``, ``probe``, ``metric``, ``value``; the
            ``backbone``, ``crf`` and ``mode`` columns are used when present).
        metric: the metric to summarise.

    Returns:
        DataFrame indexed by (method label, dim) with one ``"<probe>"`` column of strings:
        ``"41.2 ±  1.3 (n=3)"`` (mean ± sample std over n seeds) or ``"41.2 (n=1)"`` (one seed:
        the mean only). ``table.attrs["note"]`` says the same in one line (e.g. ``"mean ± sample
        std over 3 seeds"`` or ``"1 seed (n=1): mean only"``), for a printed header. Empty if
        there are no such rows.
    """
    from stego_probe.plots import method_label
    from stego_probe.results import as_bool

    sel = df[(df["metric"] == metric) & (df["probe"] != "none")].copy()
    if sel.empty:
        return pd.DataFrame()
    if "crf" in sel.columns:
        sel["crf"] = sel["crf"].map(as_bool).astype(bool)
    else:
        sel["crf"] = False
    if "mode" not in sel.columns:
        sel["mode"] = ""
    sel["mode"] = sel["mode"].fillna("").astype(str)
    keys = ["method", "crf", "mode", "dim", "probe"]
    sel = sel.drop_duplicates(keys + ["seed"], keep="last")
    g = sel.groupby(keys)["value"].agg(["mean", "std", "count"]).reset_index()
    crf_methods = set(sel.loc[sel["crf"], "method"])
    several_modes = sel["mode"].nunique() > 1

    def label(method, crf, mode) -> str:
        out = method_label(method, sel)
        if method in crf_methods:
            out += " with CRF" if crf else " w/o CRF"
        return out + (f" [{mode}]" if several_modes and mode else "")

    g["label"] = [label(*k) for k in zip(g["method"], g["crf"], g["mode"])]
    g["cell"] = [
        f"{m:5.1f} ± {s:4.1f} (n={n})" if n > 1 else f"{m:5.1f} (n=1)"
        for m, s, n in zip(g["mean"], g["std"], g["count"])
    ]
    table = g.pivot_table(index=["label", "dim"], columns="probe", values="cell", aggfunc="first")
    table.index = table.index.set_names(["method", "dim"])
    table.columns.name = "probe"
    multi = sorted(set(int(n) for n in g["count"] if n > 1))
    if not multi:
        note = "1 seed (n=1): mean only"
    else:
        k = str(multi[0]) if len(multi) == 1 else f"{multi[0]}–{multi[-1]}"
        note = f"mean ± sample std over {k} seeds"
        if (g["count"] <= 1).any():
            note += "; (n=1) cells: one seed, mean only"
    table.attrs["note"] = note
    return table
