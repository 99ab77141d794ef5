"""Per-dataset STEGO hyperparameters (PROTOCOL §3.3) and the shared training defaults.

The three dataset presets are the released checkpoints' settings, taken from the sweep commands
of ``merantix-momentum/stego-studies`` (the paper retrains with these at every D). Names follow
the reference config: ``pos_intra`` = self term, ``pos_inter`` = KNN term, ``neg_inter`` = random
negatives. ``dim`` is the released code width; a sweep overrides it with ``n_components``.
"""

from __future__ import annotations

import copy

#: Defaults shared by every preset (``train_config.yml``; PROTOCOL §3.3 "Shared defaults").
SHARED_DEFAULTS: dict = {
    "lr": 5e-4,  # head Adam, default betas / eps, no weight decay, no scheduler
    "probe_lr": 5e-3,  # the linear and cluster probe Adams
    "num_neighbors": 7,  # positives drawn from the 7 nearest images
    "knn_k": 30,  # neighbours stored per image
    "feature_samples": 11,  # S, side of the random sampling grid
    "neg_samples": 5,
    "head_dropout": 0.1,
    "teacher_dropout": True,  # cfg.dropout
    "zero_clamp": True,
    "stabilize": False,  # cfg.stabalize (sic)
    "correspondence_weight": 1.0,
    "extra_clusters": 0,
    "res": 224,
    "val_res": 320,
    "val_every": 100,
    "random_state": 0,
    "projection_type": "nonlinear",
}

#: The §3.3 table, one dict per dataset.
PRESETS: dict[str, dict] = {
    "cocostuff27": {
        "checkpoint": "cocostuff27_vit_base_5.ckpt",
        "backbone": "dino_vitb8",
        "dim": 90,
        "pointwise": True,
        "neg_inter_weight": 0.1538476246415498,
        "pos_inter_weight": 1.0,
        "pos_intra_weight": 0.1,
        "neg_inter_shift": 1.0,
        "pos_inter_shift": 0.2,
        "pos_intra_shift": 0.12,
        "steps": 7000,
        "batch_size": 32,
        "crop": "five",
        "n_classes": 27,
    },
    "cityscapes27": {
        "checkpoint": "cityscapes_vit_base_1.ckpt",
        "backbone": "dino_vitb8",
        "dim": 100,
        "pointwise": False,
        "neg_inter_weight": 0.9058762625226623,
        "pos_inter_weight": 0.577453483136995,
        "pos_intra_weight": 1.0,
        "neg_inter_shift": 0.31361241889448443,
        "pos_inter_shift": 0.1754346515479633,
        "pos_intra_shift": 0.45828472207,
        "steps": 7000,
        "batch_size": 32,
        "crop": "five",
        "n_classes": 27,
    },
    "potsdam3": {
        "checkpoint": "potsdam_test.ckpt",
        "backbone": "dino_vits8",
        "dim": 70,
        "pointwise": True,
        "neg_inter_weight": 0.63,
        "pos_inter_weight": 0.25,
        "pos_intra_weight": 0.67,
        "neg_inter_shift": 0.76,  # stego-studies README; STEGO's config comment has 0.46
        "pos_inter_shift": 0.02,
        "pos_intra_shift": 0.08,
        "steps": 5000,
        "batch_size": 16,
        "crop": "none",
        "n_classes": 3,
    },
    # Small demo stores: the synthetic dataset (200 train / 50 val images) through the offline
    # ``descriptor`` backbone at 96 px (12x12 grid, C=64). Those features are far more similar to
    # each other than DINO's (mean cosine ~0.72 between random tokens of different images, ~0.77
    # within an image), so the shifts sit just around those levels; with the DINO presets'
    # shifts every pair is "positive" and the codes collapse to one direction. Weights as
    # Potsdam's; fewer steps, a smaller sampling grid and a 10-NN table. K comes from the store.
    "synthetic": {
        "checkpoint": None,
        "backbone": None,
        "dim": 16,
        "pointwise": True,
        "neg_inter_weight": 0.63,
        "pos_inter_weight": 0.25,
        "pos_intra_weight": 0.67,
        "neg_inter_shift": 0.85,
        "pos_inter_shift": 0.72,
        "pos_intra_shift": 0.78,
        "steps": 300,
        "batch_size": 16,
        "crop": "none",
        "n_classes": None,
        "feature_samples": 7,
        "val_every": 50,
        "knn_k": 10,
    },
}


def list_presets() -> list[str]:
    """Names of the available presets."""
    return sorted(PRESETS)


def get_preset(name: str | None) -> dict:
    """Shared defaults overlaid with preset ``name`` (``None``: shared defaults only).

    Returns a fresh dict (mutating it does not change the preset). Without a preset the loss
    weights/shifts/``pointwise``/``dim``/``steps``/``batch_size`` are those of ``potsdam3``, the
    ViT-S setting.
    """
    if name is None:
        base = {
            k: v
            for k, v in PRESETS["potsdam3"].items()
            if k not in ("checkpoint", "backbone", "n_classes", "crop")
        }
        return {**copy.deepcopy(SHARED_DEFAULTS), **base, "preset": None}
    if name not in PRESETS:
        raise KeyError(f"unknown STEGO preset {name!r}; available: {list_presets()}")
    return {**copy.deepcopy(SHARED_DEFAULTS), **copy.deepcopy(PRESETS[name]), "preset": name}
