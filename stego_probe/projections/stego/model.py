"""``StegoHead``: the STEGO head as a projection estimator (fit on a store, transform tokens).

Parameters left at ``None`` take their value from ``preset`` (PROTOCOL §3.3; see
:mod:`stego_probe.projections.stego.presets`) or, without a preset, from the shared defaults and
the ``potsdam3`` loss settings. :meth:`StegoHead.resolved_params` shows the effective values.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch

from stego_probe.projections.base import Projection, _json_safe, is_store
from stego_probe.projections.stego.head import SegmentationHead
from stego_probe.projections.stego.presets import get_preset
from stego_probe.projections.stego.train import ArrayStore, make_probes, train_stego

SELECT = ("best_val_cluster_miou", "last")

#: Constructor parameters that default to the preset (``None`` = take the preset's value).
_PRESET_PARAMS = {
    "n_components": "dim",
    "pointwise": "pointwise",
    "pos_intra_weight": "pos_intra_weight",
    "pos_inter_weight": "pos_inter_weight",
    "neg_inter_weight": "neg_inter_weight",
    "pos_intra_shift": "pos_intra_shift",
    "pos_inter_shift": "pos_inter_shift",
    "neg_inter_shift": "neg_inter_shift",
    "steps": "steps",
    "batch_size": "batch_size",
    "feature_samples": "feature_samples",
    "val_every": "val_every",
    "knn_k": "knn_k",
    "extra_clusters": "extra_clusters",
}

#: Constructor parameters copied as they are into the training configuration.
_DIRECT_PARAMS = (
    "projection_type",
    "head_dropout",
    "teacher_dropout",
    "zero_clamp",
    "stabilize",
    "lr",
    "probe_lr",
    "neg_samples",
    "neg_index",
    "num_neighbors",
    "knn_self_rank0",
    "knn_dropout",
    "drop_last",
    "val_batch_size",
    "random_state",
)


class StegoHead(Projection):
    """STEGO segmentation head trained on stored DINO tokens, used as a C -> D projection.

    Args:
        n_components: code width ``D`` (None: the preset's released ``D``; 70 without preset).
        preset: ``"cocostuff27"``, ``"cityscapes27"``, ``"potsdam3"``, ``"synthetic"`` or None.
        projection_type: ``"nonlinear"`` (paper) or ``"linear"``.
        head_dropout: ``Dropout2d`` probability of the head-input masks (and the teacher mask).
        teacher_dropout: apply the third mask to the teacher features (reference ``dropout``).
        pointwise, pos_intra_weight, pos_inter_weight, neg_inter_weight, pos_intra_shift,
            pos_inter_shift, neg_inter_shift: loss settings (None: preset).
        zero_clamp, stabilize: loss clamps (``stabilize`` is the reference's ``stabalize``).
        steps, batch_size: training length in mini-batches and images per batch (None: preset).
        lr, probe_lr: Adam learning rates of the head and of the two probes.
        neg_samples, feature_samples: random-negative draws and sampling-grid side ``S``.
        neg_index: ``"derangement"`` (default) or ``"super_perm"`` (reference, Q9).
        num_neighbors, knn_k: positives come from the first ``num_neighbors`` of ``knn_k``
            stored neighbours.
        knn_self_rank0: reference KNN table with the image itself at rank 0 (Q8 parity).
        knn_dropout: channel-dropout rate on the features the KNN table is computed from; 0 is
            eval mode (default), 0.1 reproduces the reference's dropout-on KNN features (Q5).
        drop_last: drop the last incomplete batch of an epoch (reference: False, Q9).
        extra_clusters: ``E``, cluster probe size ``K + E``.
        val_every, val_batch_size: validation cadence (steps) and batch size.
        select: ``"best_val_cluster_miou"`` (paper protocol, Q16) or ``"last"``: the state used by
            :meth:`transform` and the probes. Both states are kept.
        n_classes: ``K``; None reads it from the training store.
        random_state: seed of everything random in training.
        device: torch device for training.
        progress: tqdm bars.

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
        resolved_params_: the effective training configuration.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> tokens = rng.normal(size=(8, 4, 4, 6)).astype(np.float32)
        >>> head = StegoHead(n_components=3, steps=2, batch_size=4, knn_k=3, num_neighbors=2,
        ...                  n_classes=2, select="last", progress=False).fit(tokens)
        >>> head.transform(tokens[0].reshape(-1, 6)).shape
        (16, 3)
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
        n_components: int | None = None,
        preset: str | None = None,
        projection_type: str = "nonlinear",
        head_dropout: float = 0.1,
        teacher_dropout: bool = True,
        pointwise: bool | None = None,
        pos_intra_weight: float | None = None,
        pos_inter_weight: float | None = None,
        neg_inter_weight: float | None = None,
        pos_intra_shift: float | None = None,
        pos_inter_shift: float | None = None,
        neg_inter_shift: float | None = None,
        zero_clamp: bool = True,
        stabilize: bool = False,
        steps: int | None = None,
        batch_size: int | None = None,
        lr: float = 5e-4,
        probe_lr: float = 5e-3,
        neg_samples: int = 5,
        feature_samples: int | None = None,
        neg_index: str = "derangement",
        num_neighbors: int = 7,
        knn_k: int | None = None,
        knn_self_rank0: bool = False,
        knn_dropout: float = 0.0,
        drop_last: bool = True,
        extra_clusters: int | None = None,
        val_every: int | None = None,
        val_batch_size: int = 8,
        select: str = "best_val_cluster_miou",
        n_classes: int | None = None,
        random_state: int = 0,
        device: str = "cpu",
        progress: bool = True,
    ) -> None:
        self.n_components = n_components
        self.preset = preset
        self.projection_type = projection_type
        self.head_dropout = head_dropout
        self.teacher_dropout = teacher_dropout
        self.pointwise = pointwise
        self.pos_intra_weight = pos_intra_weight
        self.pos_inter_weight = pos_inter_weight
        self.neg_inter_weight = neg_inter_weight
        self.pos_intra_shift = pos_intra_shift
        self.pos_inter_shift = pos_inter_shift
        self.neg_inter_shift = neg_inter_shift
        self.zero_clamp = zero_clamp
        self.stabilize = stabilize
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.probe_lr = probe_lr
        self.neg_samples = neg_samples
        self.feature_samples = feature_samples
        self.neg_index = neg_index
        self.num_neighbors = num_neighbors
        self.knn_k = knn_k
        self.knn_self_rank0 = knn_self_rank0
        self.knn_dropout = knn_dropout
        self.drop_last = drop_last
        self.extra_clusters = extra_clusters
        self.val_every = val_every
        self.val_batch_size = val_batch_size
        self.select = select
        self.n_classes = n_classes
        self.random_state = random_state
        self.device = device
        self.progress = progress

    # ------------------------------------------------------------------ configuration
    def resolved_params(self) -> dict:
        """The effective training configuration: shared defaults < preset < explicit params."""
        cfg = get_preset(self.preset)
        for param, key in _PRESET_PARAMS.items():
            value = getattr(self, param)
            if value is not None:
                cfg[key] = value
        for param in _DIRECT_PARAMS:
            cfg[param] = getattr(self, param)
        if self.select not in SELECT:
            raise ValueError(f"select must be one of {SELECT}, got {self.select!r}")
        for key in ("dim", "steps", "batch_size", "feature_samples", "num_neighbors", "val_every"):
            v = cfg[key]
            if (
                not isinstance(v, int | np.integer)
                or isinstance(v, bool)
                or v < (0 if key == "steps" else 1)
            ):
                raise ValueError(f"{key}: expected a positive int, got {v!r}")
        return cfg

    @property
    def dim(self) -> int:
        """Code width ``D``."""
        if hasattr(self, "head_"):
            return self.head_.dim
        return int(self.resolved_params()["dim"])

    def with_components(self, n_components: int):
        """Not available: a STEGO head must be retrained for another ``D``."""
        raise ValueError("StegoHead cannot change n_components without retraining; fit a new one")

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, val_store: Any = None, knn: np.ndarray | None = None, y: Any = None):
        """Train the head and its probes.

        Args:
            X: the training feature store (tokens (N, h, w, C), labels for the linear probe),
                or a token array (N, h, w, C) without labels (the linear probe is then untrained).
            val_store: optional validation store (cluster/linear mIoU every ``val_every`` steps).
            knn: optional (N, k) int64 KNN table of ``X`` (see
                :func:`stego_probe.projections.stego.knn.compute_knns`); computed if None.
            y: ignored.

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
        self.history_ = _json_safe(out["history"])
        self.best_step_ = out["best_step"]
        self.n_steps_completed_ = int(out["n_steps"])
        self.resolved_params_ = _json_safe(cfg)
        self.source_ = "trained"
        self.states_ = {"last": out["last"], "best": out["best"]}
        self._select(selected)
        self._fit_info = {
            "n_images_used": int(store.n_images),
            "knn": "given" if knn is not None else "computed",
            "selected": selected,
        }
        self.provenance_ = self._make_provenance(store)
        return self

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
