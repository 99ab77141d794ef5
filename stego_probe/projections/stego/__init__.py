"""STEGO as a projection: head, correspondence loss, KNN positives, training, checkpoint import.

* :class:`StegoHead` (``head.py``) — the estimator: ``fit(train_store, val_store=None, knn=None,
  knn_cache_dir=None)``, ``transform(x)``, ``save`` / ``load``.
* :class:`StegoConfig`, :data:`PRESETS`, :func:`get_preset` (``presets.py``) — the training
  configuration and the per-dataset presets (§3.3); :data:`RELEASES` — what the released
  checkpoints were trained on.
* :class:`SegmentationHead` (``net.py``) — the ``nn.Module`` (PROTOCOL §3.1).
* :class:`CorrespondenceLoss`, :func:`sample`, :func:`derangement`, :func:`super_perm` (§3.2).
* :func:`compute_knns` — KNN positives from a store (§3.5).
* :func:`train_stego` — the training loop on stored tokens (§3.4).
* :func:`import_checkpoint` — released Lightning checkpoints (§3.7).
"""

# checkpoint.py imports the estimator (head.py) before anything imports train.py.
from stego_probe.projections.stego.checkpoint import import_checkpoint, load_lightning_checkpoint
from stego_probe.projections.stego.head import StegoHead, make_config
from stego_probe.projections.stego.knn import compute_knns, knn_search, pooled_descriptors
from stego_probe.projections.stego.loss import (
    CorrespondenceLoss,
    derangement,
    pair_loss,
    sample,
    super_perm,
)
from stego_probe.projections.stego.net import SegmentationHead
from stego_probe.projections.stego.presets import PRESETS, RELEASES, StegoConfig, get_preset
from stego_probe.projections.stego.train import train_stego, validate
from stego_probe.store import ArrayStore  # re-export: the in-memory store's old home

__all__ = [
    "PRESETS",
    "RELEASES",
    "ArrayStore",
    "CorrespondenceLoss",
    "SegmentationHead",
    "StegoConfig",
    "StegoHead",
    "compute_knns",
    "derangement",
    "get_preset",
    "import_checkpoint",
    "knn_search",
    "load_lightning_checkpoint",
    "make_config",
    "pair_loss",
    "pooled_descriptors",
    "sample",
    "super_perm",
    "train_stego",
    "validate",
]
