"""The sweep's configuration: :class:`SweepConfig` and its :class:`StoreSpec` stores.

A config is a preset YAML shipped in ``stego_probe/presets/`` (:func:`list_presets`) or a user
file, plus overrides (:func:`load_config`, merged with :func:`merge_dicts`). Every field is
checked on construction (:meth:`SweepConfig.validate`), so a bad value fails before any store
is extracted. The class count ``K`` a config implies (:func:`config_n_classes`) bounds the
distinctness sample (:func:`check_distinctness_tokens`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from stego_probe.params import renamed_kwargs
from stego_probe.probes import PROBE_NAMES
from stego_probe.probes.defaults import LEGACY_LINEAR_SOLVER, LINEAR_MAX_IMAGES, LINEAR_SOLVER

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
        backbone, weights, backbone_kwargs: passed to :func:`stego_probe.backbones.get_backbone`
            (a single-backbone sweep).
        backbones: instead of ``backbone``, a list of backbones to compare in one sweep, each
            a registry name or ``{name, weights, kwargs}`` (normalised to that mapping); every
            backbone gets its own stores, projections (``<out>/projections/<tag>/``,
            :func:`backbone_tag`) and rows (``backbone`` column). See ``docs/compare.md``.
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
            Other cached fits are read with ``np.load(allow_pickle=False)`` (no code can run;
            :mod:`stego_probe.persist`) and always reused.
    """

    name: str
    dataset: str
    backbone: str | None = None
    data_root: str | None = None
    dataset_kwargs: dict = field(default_factory=dict)
    weights: str | None = None
    backbone_kwargs: dict = field(default_factory=dict)
    backbones: list | None = None
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
        if self.backbones is not None:
            self.backbones = normalize_backbones(self.backbones)
        self.validate()

    @property
    def multi_backbone(self) -> bool:
        """Whether the config lists its backbones in ``backbones`` (the comparison layout:
        per-backbone projections and resume), rather than the single ``backbone``."""
        return self.backbones is not None

    def backbone_entries(self) -> list[dict]:
        """The sweep's backbones as ``[{name, weights, kwargs}]`` (one for a single-backbone
        config)."""
        if self.backbones is None:
            return [
                {"name": self.backbone, "weights": self.weights, "kwargs": self.backbone_kwargs}
            ]
        return copy.deepcopy(self.backbones)

    def backbone_configs(self) -> list[SweepConfig]:
        """One single-backbone config per backbone, in order (``[self]`` for a single-backbone
        config); each is what that backbone's stores, points and rows are made with."""
        if self.backbones is None:
            return [self]
        return [
            dataclasses.replace(
                self,
                backbone=e["name"],
                weights=e["weights"],
                backbone_kwargs=copy.deepcopy(e["kwargs"]),
                backbones=None,
            )
            for e in self.backbones
        ]

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
        return cls(**copy.deepcopy(recorded_config(data, "sweep config")))

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
        if self.backbones is None:
            if not isinstance(self.backbone, str) or not self.backbone:
                raise ValueError(
                    f"sweep backbone must be a backbone name (or give a list in 'backbones'), "
                    f"got {self.backbone!r}"
                )
        else:
            if self.backbone is not None or self.weights is not None or self.backbone_kwargs:
                raise ValueError(
                    "sweep: give either 'backbone' (with 'weights' / 'backbone_kwargs') or "
                    f"'backbones', not both (backbone={self.backbone!r}, "
                    f"backbones={[e['name'] for e in self.backbones]})"
                )
            normalize_backbones(self.backbones)
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
        if "linear" in self.probes:
            # the solver is recorded (config.json), so that a resume under another one — or of
            # a table written before solvers existed (recorded_config) — is refused
            linear = {"solver": LINEAR_SOLVER, **(self.probe_kwargs.get("linear") or {})}
            if linear["solver"] == "lbfgs":  # and the image cap of its training set
                linear.setdefault("max_images", LINEAR_MAX_IMAGES)
            self.probe_kwargs = {**self.probe_kwargs, "linear": linear}
        return self


#: Keys of one ``backbones`` entry.
BACKBONE_ENTRY_KEYS = ("name", "weights", "kwargs")


def backbone_tag(name: str) -> str:
    """A backbone name as a folder name: ``timm:vit_small_patch16_224`` ->
    ``timm-vit_small_patch16_224`` (characters other than letters, digits, ``._-`` become
    ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-") or "backbone"


def normalize_backbones(entries) -> list[dict]:
    """``backbones`` as ``[{name, weights, kwargs}]``: a name is ``{name, weights: None,
    kwargs: {}}``; a mapping may omit ``weights`` / ``kwargs``.

    Raises:
        ValueError: not a non-empty list, an entry that is neither a name nor such a mapping
            (unknown keys are named), or two entries with the same name or folder tag
            (:func:`backbone_tag`): rows are told apart by their ``backbone`` name.
    """
    if not isinstance(entries, list | tuple) or not entries:
        raise ValueError(f"sweep backbones must be a non-empty list of backbones, got {entries!r}")
    out = []
    for i, e in enumerate(entries):
        if isinstance(e, str):
            e = {"name": e}
        if not isinstance(e, dict):
            raise ValueError(
                f"sweep backbones[{i}]: expected a backbone name or a mapping of "
                f"{list(BACKBONE_ENTRY_KEYS)}, got {e!r}"
            )
        unknown = sorted(set(e) - set(BACKBONE_ENTRY_KEYS))
        if unknown:
            raise ValueError(
                f"sweep backbones[{i}]: unknown keys {unknown}; expected {list(BACKBONE_ENTRY_KEYS)}"
            )
        name, weights, kwargs = e.get("name"), e.get("weights"), e.get("kwargs") or {}
        if not isinstance(name, str) or not name:
            raise ValueError(f"sweep backbones[{i}]: 'name' must be a backbone name, got {name!r}")
        if weights is not None and not isinstance(weights, str | os.PathLike):
            raise ValueError(f"sweep backbones[{i}] ({name}): 'weights' must be a path or null")
        if not isinstance(kwargs, dict):
            raise ValueError(f"sweep backbones[{i}] ({name}): 'kwargs' must be a mapping")
        out.append(
            {
                "name": name,
                "weights": None if weights is None else str(weights),
                "kwargs": copy.deepcopy(kwargs),
            }
        )
    for key, what in ((lambda e: e["name"], "name"), (lambda e: backbone_tag(e["name"]), "tag")):
        seen: dict = {}
        for e in out:
            k = key(e)
            if k in seen:
                raise ValueError(
                    f"sweep backbones: {seen[k]!r} and {e['name']!r} have the same {what} "
                    f"{k!r}; each backbone must appear once (rows are told apart by the backbone "
                    "name: compare two weights of one backbone in two sweeps, or register the "
                    "second under another name)"
                )
            seen[k] = e["name"]
    return out


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
        k = default_n_classes(config.dataset)
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
            An override ``backbones`` replaces the preset's single ``backbone`` (and its
            ``weights`` / ``backbone_kwargs``); an override ``backbone`` a preset's
            ``backbones``.

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
    data = renamed_config_kwargs(data, f"sweep preset {preset}")
    over = renamed_config_kwargs(
        {k: v for k, v in (overrides or {}).items() if v is not None}, "sweep overrides"
    )
    if over.get("backbones") is not None:  # the list replaces the preset's single backbone
        for key in ("backbone", "weights", "backbone_kwargs"):
            if key not in over:
                data.pop(key, None)
    elif over.get("backbone") is not None:  # and a single backbone replaces a preset's list
        data.pop("backbones", None)
    data = merge_dicts(data, over)
    fields = set(SweepConfig.__dataclass_fields__)
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"sweep preset {preset}: unknown keys {sorted(unknown)}")
    missing = [
        f.name
        for f in dataclasses.fields(SweepConfig)
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"sweep preset {preset}: missing the required keys {missing}")
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


def renamed_config_kwargs(data: dict, where: str, *, warn: bool = True) -> dict:
    """``data`` (config fields) with the old parameter names in ``probe_kwargs`` /
    ``method_kwargs`` replaced by the current ones (:func:`stego_probe.params.renamed_kwargs`,
    e.g. ``kmeans: {n_train: ...}`` -> ``n_tokens``); ``warn``: a ``FutureWarning`` per name.
    Other fields are returned as they are (a shallow copy)."""
    out = dict(data)
    for key in ("probe_kwargs", "method_kwargs"):
        if isinstance(out.get(key), dict):
            out[key] = {
                name: renamed_kwargs(kw, f"{where}: {key}[{name!r}]", warn=warn)
                if isinstance(kw, dict)
                else kw
                for name, kw in out[key].items()
            }
    return out


def recorded_config(data: dict, where: str) -> dict:
    """A config as recorded by an earlier run (``OUT/config.json``), in today's terms: old
    parameter names renamed (:func:`renamed_config_kwargs`) and, for a run with the linear
    probe that recorded no ``solver`` (written before stego_probe 0.3.0, when the linear probe
    was Adam's mini-batch schedule), ``solver: "adam"``; for an L-BFGS one that recorded no
    ``max_images`` (written before the image cap), ``max_images: None``; compare it with
    ``SweepConfig.to_dict()`` to decide whether a resume may mix rows."""
    out = renamed_config_kwargs(data, where, warn=False)
    if "linear" in (out.get("probes") or []):
        kwargs = dict(out.get("probe_kwargs") or {})
        linear = {"solver": LEGACY_LINEAR_SOLVER, **(kwargs.get("linear") or {})}
        if linear["solver"] == "lbfgs":  # recorded before the image cap: every image
            linear.setdefault("max_images", None)
        kwargs["linear"] = linear
        out["probe_kwargs"] = kwargs
    return out


def merge_dicts(base: dict, over: dict) -> dict:
    """``base`` updated with ``over``; nested dicts merged key by key (deep copies)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def dataset_factory_defaults(dataset: str) -> dict:
    """Keyword defaults of a registered dataset factory (``{}`` if unknown)."""
    from stego_probe.data import DATASETS, dataset_defaults

    return dataset_defaults(dataset) if dataset in DATASETS else {}


def default_n_classes(dataset: str) -> int | None:
    """The class count a dataset factory uses without an ``n_classes`` argument (None when it
    has no such argument, e.g. the paper datasets whose count is part of their name)."""
    default = dataset_factory_defaults(dataset).get("n_classes")
    return int(default) if isinstance(default, int) and not isinstance(default, bool) else None
