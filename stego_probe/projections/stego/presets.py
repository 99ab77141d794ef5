"""STEGO's training configuration: :class:`StegoConfig`, the per-dataset presets (PROTOCOL §3.3)
and what the released checkpoints were trained on.

The three dataset presets are the released checkpoints' settings, taken from the sweep commands
of ``merantix-momentum/stego-studies`` (the paper retrains with these at every D). Names follow
the reference config: ``pos_intra`` = self term, ``pos_inter`` = KNN term, ``neg_inter`` = random
negatives. ``dim`` is the released code width; a sweep overrides it with ``n_components``.

A preset is a :class:`StegoConfig` instance; derive another configuration with
:func:`dataclasses.replace`::

    cfg = dataclasses.replace(PRESETS["potsdam3"], dim=32, steps=500)
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stego_probe.published import RELEASES as RELEASES  # re-exported; the one home


# ------------------------------------------------------------------ declarative field checks
def _int(lo: int):
    """Constraint: an int (not a bool) >= ``lo``."""

    def check(v: Any) -> str | None:
        ok = isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_) and v >= lo
        return None if ok else f"an int >= {lo}"

    return check


def _real(lo: float | None = None, hi: float | None = None, lo_open=False, hi_open=False):
    """Constraint: a finite real number (not a bool) in the interval ``lo .. hi``."""
    bounds = []
    if lo is not None:
        bounds.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        bounds.append(f"{'<' if hi_open else '<='} {hi}")
    want = " ".join(["a finite number", " and ".join(bounds)]).strip()

    def check(v: Any) -> str | None:
        if not isinstance(v, numbers.Real) or isinstance(v, bool | np.bool_):
            return want
        if not np.isfinite(v):
            return want
        if lo is not None and (v < lo or (lo_open and v == lo)):
            return want
        if hi is not None and (v > hi or (hi_open and v == hi)):
            return want
        return None

    return check


def _bool(v: Any) -> str | None:
    """Constraint: True or False."""
    return None if isinstance(v, bool | np.bool_) else "True or False"


def _one_of(*options: Any):
    """Constraint: one of ``options``."""

    def check(v: Any) -> str | None:
        return None if v in options else f"one of {options}"

    return check


def _preset_name(v: Any) -> str | None:
    """Constraint: None or a name (str)."""
    return None if v is None or isinstance(v, str) else "None or a preset name (str)"


def _f(default: Any, check) -> Any:
    """A dataclass field with ``default`` and the constraint ``check`` (in its metadata)."""
    return field(default=default, metadata={"check": check})


PROJECTION_TYPES = ("nonlinear", "linear")
NEG_INDEX = ("derangement", "super_perm")


@dataclass(frozen=True, kw_only=True)
class StegoConfig:
    """Everything a STEGO training run is configured by (PROTOCOL §3.3), immutable.

    The defaults are the reference's shared defaults (``train_config.yml``) with the ``potsdam3``
    loss settings, code width and training length (the ViT-S setting); the dataset presets are
    instances, :data:`PRESETS`. Every field is checked when the config is made: a bad value is a
    ``ValueError`` naming the field and what was expected.

    Head (§3.1):
        dim: code width ``D``.
        projection_type: ``"nonlinear"`` (paper) or ``"linear"``.
        head_dropout: ``Dropout2d`` probability of the head-input masks (and the teacher mask).
        teacher_dropout: apply the third mask to the teacher features (reference ``dropout``).

    Loss (§3.2):
        pointwise, pos_intra_weight, pos_inter_weight, neg_inter_weight, pos_intra_shift,
            pos_inter_shift, neg_inter_shift: the loss settings (λ and b of the three terms).
        zero_clamp, stabilize: loss clamps (``stabilize`` is the reference's ``stabalize``).
        correspondence_weight: ``w``, the weight of the whole correspondence loss.
        feature_samples: side ``S`` of the random sampling grid.
        neg_samples: random-negative draws per step.
        neg_index: ``"derangement"`` (default) or ``"super_perm"`` (reference, Q9).

    Training (§3.4):
        steps: training length in mini-batches (>= 1).
        batch_size: images per mini-batch.
        lr, probe_lr: Adam learning rates of the head and of the two probes.
        drop_last: drop the last incomplete batch of an epoch (reference: False, Q9).
        extra_clusters: ``E``; the cluster probe has ``K + E`` clusters.
        random_state: seed of everything random in training (>= 0).

    KNN positives (§3.5):
        num_neighbors, knn_k: positives come from the first ``num_neighbors`` of ``knn_k``
            stored neighbours (the table size rule:
            :func:`stego_probe.projections.stego.train.knn_table_size`).
        knn_self_rank0: reference KNN table with the image itself at rank 0 (Q8 parity).
        knn_dropout: channel-dropout rate on the features the KNN table is computed from; 0 is
            eval mode (default), 0.1 reproduces the reference's dropout-on KNN features (Q5).

    Validation:
        val_every, val_batch_size: validation cadence (steps) and batch size.

    Name:
        preset: the preset this configuration was derived from (None: the defaults); recorded,
            not used by training.

    Examples:
        >>> import dataclasses
        >>> cfg = dataclasses.replace(PRESETS["cocostuff27"], dim=12, steps=3)
        >>> (cfg.dim, cfg.steps, cfg.batch_size, cfg.preset)
        (12, 3, 32, 'cocostuff27')
        >>> StegoConfig(steps=0)
        Traceback (most recent call last):
        ...
        ValueError: StegoConfig.steps: expected an int >= 1, got 0
    """

    # head
    dim: int = _f(70, _int(1))
    projection_type: str = _f("nonlinear", _one_of(*PROJECTION_TYPES))
    head_dropout: float = _f(0.1, _real(0.0, 1.0, hi_open=True))
    teacher_dropout: bool = _f(True, _bool)  # cfg.dropout
    # loss
    pointwise: bool = _f(True, _bool)
    pos_intra_weight: float = _f(0.67, _real())
    pos_inter_weight: float = _f(0.25, _real())
    neg_inter_weight: float = _f(0.63, _real())
    pos_intra_shift: float = _f(0.08, _real())
    pos_inter_shift: float = _f(0.02, _real())
    neg_inter_shift: float = _f(0.76, _real())  # stego-studies README; a STEGO comment has 0.46
    zero_clamp: bool = _f(True, _bool)
    stabilize: bool = _f(False, _bool)  # cfg.stabalize (sic)
    correspondence_weight: float = _f(1.0, _real(0.0))
    feature_samples: int = _f(11, _int(1))
    neg_samples: int = _f(5, _int(1))
    neg_index: str = _f("derangement", _one_of(*NEG_INDEX))
    # training
    steps: int = _f(5000, _int(1))
    batch_size: int = _f(16, _int(1))
    lr: float = _f(5e-4, _real(0.0, lo_open=True))  # head Adam: default betas, no decay
    probe_lr: float = _f(5e-3, _real(0.0, lo_open=True))  # the linear and cluster probe Adams
    drop_last: bool = _f(True, _bool)
    extra_clusters: int = _f(0, _int(0))
    random_state: int = _f(0, _int(0))
    # KNN positives
    num_neighbors: int = _f(7, _int(1))
    knn_k: int = _f(30, _int(1))
    knn_self_rank0: bool = _f(False, _bool)
    knn_dropout: float = _f(0.0, _real(0.0, 1.0, hi_open=True))
    # validation
    val_every: int = _f(100, _int(1))
    val_batch_size: int = _f(8, _int(1))
    # name
    preset: str | None = _f(None, _preset_name)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.generic):  # numpy scalars (e.g. from a table) -> Python
                value = value.item()
                object.__setattr__(self, f.name, value)
            problem = f.metadata["check"](value)
            if problem is not None:
                raise ValueError(f"StegoConfig.{f.name}: expected {problem}, got {value!r}")

    def to_dict(self) -> dict:
        """The configuration as a plain dict (field -> value), as :func:`train_stego` reads it."""
        return dataclasses.asdict(self)


#: Names of the :class:`StegoConfig` fields.
CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(StegoConfig))

#: The §3.3 table, one :class:`StegoConfig` per dataset.
PRESETS: dict[str, StegoConfig] = {
    "cocostuff27": StegoConfig(
        preset="cocostuff27",
        dim=90,
        pointwise=True,
        neg_inter_weight=0.1538476246415498,
        pos_inter_weight=1.0,
        pos_intra_weight=0.1,
        neg_inter_shift=1.0,
        pos_inter_shift=0.2,
        pos_intra_shift=0.12,
        steps=7000,
        batch_size=32,
    ),
    "cityscapes27": StegoConfig(
        preset="cityscapes27",
        dim=100,
        pointwise=False,
        neg_inter_weight=0.9058762625226623,
        pos_inter_weight=0.577453483136995,
        pos_intra_weight=1.0,
        neg_inter_shift=0.31361241889448443,
        pos_inter_shift=0.1754346515479633,
        pos_intra_shift=0.45828472207,
        steps=7000,
        batch_size=32,
    ),
    "potsdam3": StegoConfig(preset="potsdam3"),  # the defaults are Potsdam's settings
    # Small demo stores: the synthetic dataset (200 train / 50 val images) through the offline
    # ``descriptor`` backbone at 96 px (12x12 grid, C=64). Those features are far more similar to
    # each other than DINO's (mean cosine ~0.72 between random tokens of different images, ~0.77
    # within an image), so the shifts sit just around those levels; with the DINO presets'
    # shifts every pair is "positive" and the codes collapse to one direction. Weights as
    # Potsdam's; fewer steps, a smaller sampling grid and a 10-NN table. K comes from the store.
    "synthetic": StegoConfig(
        preset="synthetic",
        dim=16,
        neg_inter_shift=0.85,
        pos_inter_shift=0.72,
        pos_intra_shift=0.78,
        steps=300,
        feature_samples=7,
        val_every=50,
        knn_k=10,
    ),
}


def get_preset(name: str | None) -> StegoConfig:
    """The :class:`StegoConfig` of preset ``name`` (``None``: the defaults, ``StegoConfig()``).

    Configurations are immutable: derive others with ``dataclasses.replace(get_preset(name),
    steps=...)``.

    Raises:
        KeyError: an unknown name (the message lists the presets).
    """
    if name is None:
        return StegoConfig()
    if name not in PRESETS:
        raise KeyError(f"unknown STEGO preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[name]
