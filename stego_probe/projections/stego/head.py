"""``StegoHead``: the STEGO head as a projection estimator (fit on a store, transform tokens).

Its training configuration is one :class:`~stego_probe.projections.stego.presets.StegoConfig`
(``head.config``): a preset (PROTOCOL §3.3, :data:`~stego_probe.projections.stego.PRESETS`) or
the defaults, with the fields given as keywords replaced. The network it trains is
:class:`~stego_probe.projections.stego.net.SegmentationHead`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch

from stego_probe.fileio import to_jsonable
from stego_probe.projections.base import Projection
from stego_probe.projections.stego.knn import compute_knns
from stego_probe.projections.stego.net import SegmentationHead
from stego_probe.projections.stego.presets import CONFIG_FIELDS, StegoConfig, get_preset
from stego_probe.projections.stego.train import knn_table_size, make_probes, train_stego
from stego_probe.store import ArrayStore, is_store

SELECT = ("best_val_cluster_miou", "last")

#: Keyword aliases accepted for :class:`StegoConfig` fields (sklearn's name for the width).
ALIASES = {"n_components": "dim"}


def make_config(
    config: StegoConfig | None = None, preset: str | None = None, **overrides: Any
) -> StegoConfig:
    """The :class:`StegoConfig` of ``config`` or of ``preset``, with ``overrides`` replaced.

    Args:
        config: a full configuration (None: ``get_preset(preset)``).
        preset: a preset name (:data:`~stego_probe.projections.stego.PRESETS`); with ``config``
            it must be None or ``config.preset``.
        **overrides: :class:`StegoConfig` fields (``n_components`` is an alias of ``dim``); a
            value of None keeps the preset's.

    Raises:
        TypeError: a keyword that is not a field (the message lists the fields).
        ValueError: an invalid value (naming the field), ``config`` that is not a
            :class:`StegoConfig`, or a ``preset`` other than ``config.preset``.
        KeyError: an unknown preset.
    """
    if config is not None:
        if not isinstance(config, StegoConfig):
            raise ValueError(f"config: expected a StegoConfig, got {type(config).__name__}")
        if preset is not None and preset != config.preset:
            raise ValueError(
                f"preset={preset!r} and config (of preset {config.preset!r}) disagree; pass "
                "one of them, or dataclasses.replace(config, ...) for a variant"
            )
        base = config
    else:
        base = get_preset(preset)
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        name = ALIASES.get(key, key)
        if name not in CONFIG_FIELDS or name == "preset":
            raise TypeError(
                f"StegoHead got an unexpected keyword argument {key!r}; StegoConfig fields: "
                f"{', '.join(f for f in CONFIG_FIELDS if f != 'preset')}"
            )
        if value is None:
            continue
        if name in changes and changes[name] != value:
            raise ValueError(f"{key}={value!r} contradicts {name}={changes[name]!r}")
        changes[name] = value
    return dataclasses.replace(base, **changes) if changes else base


class StegoHead(Projection):
    """STEGO segmentation head trained on stored DINO tokens, used as a C -> D projection.

    Configured by one :class:`StegoConfig` (``head.config``)::

        StegoHead(preset="cocostuff27", n_components=32)  # a preset, fields replaced
        StegoHead(config=dataclasses.replace(PRESETS["potsdam3"], steps=500))  # a config
        StegoHead(n_components=8, steps=40)  # the defaults (Potsdam's settings)

    Args:
        config: the training configuration (None: ``preset``'s, or the defaults).
        preset: ``"cocostuff27"``, ``"cityscapes27"``, ``"potsdam3"``, ``"synthetic"`` or None.
        n_classes: ``K``; None reads it from the training store.
        select: ``"best_val_cluster_miou"`` (paper protocol, Q16) or ``"last"``: the state used by
            :meth:`transform` and the probes. Both states are kept.
        device: torch device for training.
        progress: tqdm bars.
        **overrides: :class:`StegoConfig` fields replacing the preset's (``n_components`` is
            ``dim``; None keeps the preset's value), e.g. ``steps``, ``batch_size``, ``lr``,
            ``knn_k``, ``random_state``. An unknown keyword is a ``TypeError``, a bad value a
            ``ValueError`` naming the field.

    ``get_params`` / ``set_params`` / ``sklearn.base.clone`` work: the parameters are
    ``config``, ``preset`` (``config.preset``), ``n_classes``, ``select``, ``device`` and
    ``progress``; ``set_params`` also takes config fields (``set_params(steps=10)``), and
    ``set_params(preset=name)`` starts from that preset. ``n_components``, ``random_state`` and
    ``dim`` read the config.

    Attributes:
        head_: the selected :class:`SegmentationHead` (eval mode).
        cluster_probe_: ``{"clusters": (K', D) tensor}`` of the selected state.
        linear_probe_: ``{"weight": (K, D, 1, 1), "bias": (K,)}`` of the selected state.
        states_: ``{"last": state, "best": state or None}``; a state holds ``head``,
            ``cluster_probe`` and ``linear_probe`` state dicts (CPU tensors).
        selected_, selected_step_: which state is used and its step.
        best_step_: step of the best validation cluster mIoU (None without validation).
        history_: list of dicts per step (see :func:`train_stego`); :meth:`history_frame`.
        n_steps_completed_: steps trained; n_features_in_: ``C``; n_classes_: ``K``.
        resolved_params_: the configuration trained with, as a dict.

    Raises:
        sklearn.exceptions.NotFittedError: :meth:`transform`, :meth:`probes`,
            :meth:`history_frame` or :meth:`save` before :meth:`fit`.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> tokens = rng.normal(size=(8, 4, 4, 6)).astype(np.float32)
        >>> head = StegoHead(n_components=3, steps=2, batch_size=4, knn_k=3, num_neighbors=2,
        ...                  n_classes=2, select="last", progress=False).fit(tokens)
        >>> head.transform(tokens[0].reshape(-1, 6)).shape
        (16, 3)
        >>> head.config.steps, head.config.feature_samples
        (2, 11)
    """

    method = "stego"
    _meta_attrs = (
        "n_features_in_",
        "n_classes_",
        "history_",
        "best_step_",
        "n_steps_completed_",
        "selected_",
        "selected_step_",
        "resolved_params_",
        "source_",
    )

    def __init__(
        self,
        config: StegoConfig | None = None,
        *,
        preset: str | None = None,
        n_classes: int | None = None,
        select: str = "best_val_cluster_miou",
        device: str = "cpu",
        progress: bool = True,
        **overrides: Any,
    ) -> None:
        # A given config without overrides is kept as it is (the object: sklearn's clone checks).
        self.config = make_config(config, preset, **overrides)
        self.n_classes = n_classes
        self.select = select
        self.device = device
        self.progress = progress

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:
        """``StegoHead(preset=..., <config fields that differ from the preset>, <params>)``."""
        cfg = self.config
        try:
            base = get_preset(cfg.preset)
        except KeyError:  # a config naming a preset that does not exist here
            base = StegoConfig()
        parts = [f"preset={cfg.preset!r}"] if cfg.preset is not None else []
        parts += [
            f"{f}={getattr(cfg, f)!r}"
            for f in CONFIG_FIELDS
            if f != "preset" and getattr(cfg, f) != getattr(base, f)
        ]
        defaults = {"n_classes": None, "select": SELECT[0], "device": "cpu", "progress": True}
        parts += [f"{k}={getattr(self, k)!r}" for k, v in defaults.items() if getattr(self, k) != v]
        return f"{type(self).__name__}({', '.join(parts)})"

    # ------------------------------------------------------------------ configuration
    @property
    def preset(self) -> str | None:
        """Name of the preset the configuration was derived from (``config.preset``)."""
        return self.config.preset

    @property
    def n_components(self) -> int:
        """Code width ``D`` of the configuration (``config.dim``)."""
        return self.config.dim

    @property
    def random_state(self) -> int:
        """Training seed (``config.random_state``)."""
        return self.config.random_state

    def set_params(self, **params: Any) -> StegoHead:
        """Set parameters: ``config``, ``preset``, ``n_classes``, ``select``, ``device``,
        ``progress``, or any :class:`StegoConfig` field (``n_components``: ``dim``).

        ``preset=name`` starts from that preset's configuration, ``config=cfg`` from ``cfg``;
        the config fields given in the same call are replaced on top. The fitted state (if any)
        is not changed.
        """
        fields = {k: params.pop(k) for k in list(params) if ALIASES.get(k, k) in CONFIG_FIELDS}
        new_preset = fields.pop("preset", None)
        config = params.pop("config", None)
        if config is None and new_preset is None and not fields:
            super().set_params(**params)
            return self
        if config is None:
            config = get_preset(new_preset) if new_preset is not None else self.config
            new_preset = None
        self.config = make_config(config, new_preset, **fields)
        super().set_params(**params)
        return self

    def _check_params(self) -> None:
        """``ValueError`` for an invalid estimator parameter (the config checks itself)."""
        if self.select not in SELECT:
            raise ValueError(f"select must be one of {SELECT}, got {self.select!r}")
        k = self.n_classes
        if k is not None and (not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1):
            raise ValueError(f"n_classes: expected None or an int >= 1, got {k!r}")

    def resolved_params(self) -> dict:
        """The training configuration as a dict (``config.to_dict()``), after checking the
        estimator's own parameters (``select``, ``n_classes``)."""
        self._check_params()
        return self.config.to_dict()

    @property
    def dim(self) -> int:
        """Code width ``D``."""
        if hasattr(self, "head_"):
            return self.head_.dim
        return int(self.config.dim)

    def with_components(self, n_components: int):
        """Not available: a STEGO head must be retrained for another ``D``."""
        raise ValueError("StegoHead cannot change n_components without retraining; fit a new one")

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        X: Any,
        val_store: Any = None,
        knn: np.ndarray | None = None,
        y: Any = None,
        *,
        knn_cache_dir: str | os.PathLike | None = None,
    ):
        """Train the head and its probes.

        Args:
            X: the training feature store (tokens (N, h, w, C), labels for the linear probe),
                or a token array (N, h, w, C) without labels (the linear probe is then untrained).
            val_store: optional validation store (cluster/linear mIoU every ``val_every`` steps).
            knn: optional (N, k) int64 KNN table of ``X`` (see
                :func:`stego_probe.projections.stego.knn.compute_knns`); computed if None.
            y: ignored.
            knn_cache_dir: a folder caching the computed KNN table (``knn_<hash>.npz``, keyed on
                the store's provenance and the KNN options; :func:`compute_knns`). Sized by
                :func:`~stego_probe.projections.stego.train.knn_table_size`.

        Returns:
            self.
        """
        cfg = self.resolved_params()
        if is_store(X):
            if not getattr(X, "complete", True):
                raise ValueError(f"training store {getattr(X, 'path', X)!r} is not complete")
            store = X
        else:
            arr = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
            if arr.ndim != 4:
                raise ValueError(
                    "StegoHead.fit: X must be a feature store or tokens (N, h, w, C) (whole "
                    f"images are needed for the KNN positives), got shape {arr.shape}"
                )
            store = ArrayStore(arr, n_classes=self.n_classes)
        n_classes = self.n_classes or getattr(store, "n_classes", None)
        if n_classes is None:
            raise ValueError("n_classes: the training store has no n_classes; pass n_classes=K")
        if val_store is not None:
            if not is_store(val_store):
                raise ValueError("val_store: expected a feature store (tokens + labels)")
            if int(val_store.dim) != int(store.dim):
                raise ValueError(
                    f"val_store: token width {val_store.dim} != training width {store.dim}"
                )
        knn_source = "given" if knn is not None else "computed"
        if knn is None and knn_cache_dir is not None:
            knn = compute_knns(
                store,
                knn_table_size(cfg, int(store.n_images)),
                knn_self_rank0=cfg["knn_self_rank0"],
                dropout=cfg["knn_dropout"],
                random_state=cfg["random_state"],
                cache_dir=knn_cache_dir,
                progress=self.progress,
            )
            knn_source = "cache"
        out = train_stego(
            store,
            cfg,
            n_classes=int(n_classes),
            val_store=val_store,
            knn=knn,
            device=self.device,
            progress=self.progress,
        )
        selected = self.select
        if selected == "best_val_cluster_miou" and out["best"] is None:
            warnings.warn(
                "select='best_val_cluster_miou' needs a val_store; using the last state",
                stacklevel=2,
            )
            selected = "last"
        self.n_features_in_ = int(store.dim)
        self.n_classes_ = int(n_classes)
        self.history_ = to_jsonable(out["history"])
        self.best_step_ = out["best_step"]
        self.n_steps_completed_ = int(out["n_steps"])
        self.resolved_params_ = to_jsonable(cfg)
        self.source_ = "trained"
        self.states_ = {"last": out["last"], "best": out["best"]}
        self._select(selected)
        self._fit_info = {
            "n_images_used": int(store.n_images),
            "knn": knn_source,
            "selected": selected,
        }
        self.provenance_ = self._make_provenance(store)
        return self

    @property
    def provenance(self) -> dict:
        """Provenance dict (see :attr:`Projection.provenance`); ``params`` are the flat keyword
        arguments of :meth:`_saved_params` (every config field), not the config's repr."""
        return {**super().provenance, "params": to_jsonable(self._saved_params())}

    # ------------------------------------------------------------------ persistence (params)
    def _saved_params(self) -> dict:
        """Flat keyword arguments that rebuild this estimator: ``preset``, every config field,
        ``n_classes``, ``select``, ``device``, ``progress`` (the file format of the earlier flat
        constructor, which :meth:`load` still reads: its None entries take the preset's value)."""
        cfg = self.config.to_dict()
        return {
            **cfg,
            "n_classes": self.n_classes,
            "select": self.select,
            "device": self.device,
            "progress": self.progress,
        }

    def _select(self, selected: str) -> None:
        """Build ``head_`` and the probe attributes from ``states_[selected]``."""
        key = "best" if selected == "best_val_cluster_miou" else "last"
        state = self.states_[key]
        cfg = self.resolved_params_
        w = state["head"]["cluster1.0.weight"]
        with torch.random.fork_rng(devices=[]):  # the init is overwritten: keep the RNG as is
            head = SegmentationHead(
                int(w.shape[1]),
                int(w.shape[0]),
                cfg["projection_type"],
                cfg["head_dropout"],
                cfg["teacher_dropout"],
            )
        head.load_state_dict(state["head"])
        self.head_ = head.eval()
        self.cluster_probe_ = state["cluster_probe"]
        self.linear_probe_ = state["linear_probe"]
        self.selected_ = selected
        self.selected_step_ = self.best_step_ if key == "best" else self.n_steps_completed_
        self._head_device = torch.device("cpu")

    # ------------------------------------------------------------------ use
    def _transform_2d(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) float32 -> (N, D) float32 code, eval mode (no dropout), in row chunks."""
        if self._head_device != x.device:
            self.head_.to(x.device)
            self._head_device = x.device
        self.head_.eval()
        out = [self.head_.code(c[:, :, None, None])[:, :, 0, 0] for c in x.split(65536)]
        return torch.cat(out) if out else x.new_zeros((0, self.dim))

    def probes(self, device: str = "cpu"):
        """The selected state's probes as fitted ``(ClusterLookupProbe, LinearProbe)`` objects."""
        self._check_fitted()
        return make_probes(
            {"cluster_probe": self.cluster_probe_, "linear_probe": self.linear_probe_}, device
        )

    def history_frame(self) -> pd.DataFrame:
        """``history_`` as a DataFrame, one row per step (step 0: validation at initialisation)."""
        self._check_fitted()
        return pd.DataFrame(self.history_)

    # ------------------------------------------------------------------ persistence
    def _extra_state(self) -> dict[str, np.ndarray]:
        arrays = {}
        for which, state in self.states_.items():
            if state is None:
                continue
            for part, sd in state.items():
                for name, t in sd.items():
                    arrays[f"{which}/{part}/{name}"] = t.detach().cpu().numpy()
        return arrays

    def _load_extra_state(self, arrays: dict[str, np.ndarray]) -> None:
        states: dict = {"last": None, "best": None}
        for key, value in arrays.items():
            which, part, name = key.split("/", 2)
            states[which] = states[which] or {"head": {}, "cluster_probe": {}, "linear_probe": {}}
            states[which][part][name] = torch.from_numpy(np.array(value))
        self.states_ = states
        self._select(self.selected_)
