"""STEGO as a projection: head, correspondence loss, KNN positives, training, checkpoint import.

* :class:`StegoHead` — the estimator: ``fit(train_store, val_store=None, knn=None)``,
  ``transform(x)``, ``save`` / ``load``.
* :class:`SegmentationHead` — the ``nn.Module`` (PROTOCOL §3.1).
* :class:`CorrespondenceLoss`, :func:`sample`, :func:`derangement`, :func:`super_perm` (§3.2).
* :func:`compute_knns` — KNN positives from a store (§3.5).
* :func:`train_stego` — the training loop on stored tokens (§3.4).
* :data:`PRESETS`, :func:`get_preset` — per-dataset hyperparameters (§3.3).
* :func:`import_checkpoint` — released Lightning checkpoints (§3.7).
"""

from stego_probe.projections.stego.checkpoint import import_checkpoint, load_lightning_checkpoint
from stego_probe.projections.stego.head import SegmentationHead
from stego_probe.projections.stego.knn import compute_knns, knn_search, pooled_descriptors
from stego_probe.projections.stego.loss import (
    CorrespondenceLoss,
    derangement,
    pair_loss,
    sample,
    super_perm,
)
from stego_probe.projections.stego.model import StegoHead
from stego_probe.projections.stego.presets import PRESETS, SHARED_DEFAULTS, get_preset, list_presets
from stego_probe.projections.stego.train import ArrayStore, train_stego, validate

__all__ = [
    "PRESETS",
    "SHARED_DEFAULTS",
    "ArrayStore",
    "CorrespondenceLoss",
    "SegmentationHead",
    "StegoHead",
    "compute_knns",
    "derangement",
    "get_preset",
    "import_checkpoint",
    "knn_search",
    "list_presets",
    "load_lightning_checkpoint",
    "pair_loss",
    "pooled_descriptors",
    "sample",
    "super_perm",
    "train_stego",
    "validate",
]
