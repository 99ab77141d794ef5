"""Training the STEGO head directly on stored backbone tokens (PROTOCOL §3.4), no backbone forward.

One step = one mini-batch (Q14):

1. draw ``B`` anchor images from a seeded shuffle of the training store (``drop_last=True`` by
   default, Q9) and one KNN positive per anchor, ``nns[i, r]``: ``r ~ U{0..6}`` of a table with
   the image itself removed (default), or ``r ~ U{1..7}`` of the reference table that keeps
   itself at rank 0 (``knn_self_rank0=True``). A fresh ``r`` is drawn every time;
2. ``(f_t, s) = head(tokens)`` for anchors and positives in train mode (fresh dropout masks);
3. ``L_corr`` (:class:`CorrespondenceLoss`);
4. the linear and the cluster probe on the *detached* anchor code;
5. one backward pass of ``L_corr + L_lin + L_clu`` and a step of the three Adam optimisers;
6. every ``val_every`` steps (and after the last) validation on a val store: cluster and linear
   mIoU / accuracy. The full history is kept, with the best-by-val (paper protocol, Q16) and the
   last states (Q17).

All randomness (initialisation, dropout, batch order, positives, sampling grids, negatives) comes
from ``random_state``; the global torch RNG is restored afterwards.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from stego_probe.labels import canonicalize
from stego_probe.probes.cluster_lookup import (
    ClusterLookupProbe,
    cluster_lookup_loss,
    minibatch_stream,
)
from stego_probe.probes.linear import LinearProbe, linear_probe_loss
from stego_probe.projections.base import check_store_tokens
from stego_probe.projections.stego.knn import compute_knns
from stego_probe.projections.stego.loss import CorrespondenceLoss
from stego_probe.projections.stego.net import SegmentationHead
from stego_probe.scoring import Scorer, score_store
from stego_probe.store import preloaded

#: Keys of the resolved training configuration consumed by :func:`train_stego`.
LOSS_KEYS = (
    "pos_intra_weight",
    "pos_inter_weight",
    "neg_inter_weight",
    "pos_intra_shift",
    "pos_inter_shift",
    "neg_inter_shift",
    "pointwise",
    "zero_clamp",
    "stabilize",
    "feature_samples",
    "neg_samples",
    "neg_index",
    "correspondence_weight",
)


def _checked_tokens(store, idx, checked: bool) -> np.ndarray:
    """``store.tokens(idx)``, checked finite unless ``checked`` (the store was checked whole)."""
    tokens = store.tokens(idx)
    if not checked:
        check_store_tokens(store, idx, tokens)
    return tokens


def _to_bchw(tokens: np.ndarray, device) -> torch.Tensor:
    """(n, h, w, C) numpy -> (n, C, h, w) float32 tensor on ``device``."""
    return (
        torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32))
        .permute(0, 3, 1, 2)
        .to(device)
    )


def make_probes(state: dict, device="cpu") -> tuple[ClusterLookupProbe, LinearProbe]:
    """Fitted probe objects from a trainer state (``cluster_probe``, ``linear_probe`` entries).

    ``state["cluster_probe"]["clusters"]`` is (K', D); ``state["linear_probe"]`` holds the
    reference layout ``weight`` (K, D, 1, 1) and ``bias`` (K,). The linear probe trained inside
    the STEGO loop reads raw codes, as the reference's, so it is built with
    ``standardize="none"``.
    """
    clusters = torch.as_tensor(state["cluster_probe"]["clusters"])
    weight = torch.as_tensor(state["linear_probe"]["weight"])
    bias = torch.as_tensor(state["linear_probe"]["bias"])
    k, d = weight.shape[:2]
    cp = ClusterLookupProbe(clusters.shape[0], device=device).initialize(d)
    lp = LinearProbe(k, device=device, standardize="none").initialize(d)
    with torch.no_grad():
        cp.params_["clusters"].copy_(clusters)
        lp.params_["weight"].copy_(weight.reshape(k, d))
        lp.params_["bias"].copy_(bias)
    return cp, lp


@torch.no_grad()
def validate(
    head: SegmentationHead,
    state: dict,
    store,
    n_classes: int,
    batch_size: int = 8,
    device="cpu",
    progress: bool = False,
) -> dict:
    """Validation ("val" mode, PROTOCOL §4.4) over a whole store: one pass, no flip.

    The code (eval mode, no dropout) is bilinearly upsampled to the label size; the cluster probe
    predicts the argmax cosine to its centroids, the linear probe the argmax of its logits
    (:func:`make_probes` on ``state``). Returns ``{"val_cluster_miou", "val_cluster_accuracy",
    "val_linear_miou", "val_linear_accuracy"}`` in percent (Hungarian / identity matching).
    """
    was_training = head.training
    head.eval()
    cp, lp = make_probes(state, device)
    scorer = Scorer({"cluster": cp, "linear": lp}, n_classes)
    score_store(
        store,
        scorer,
        lambda tokens: head.code(_to_bchw(tokens, device)),
        batch_size=batch_size,
        size=tuple(store.label_shape),
        progress=progress,
    )
    head.train(was_training)
    res = scorer.results("hungarian", require_pixels=False)
    sc, sl_ = res["cluster", False], res["linear", False]
    return {
        "val_cluster_miou": float(sc["miou"]),
        "val_cluster_accuracy": float(sc["accuracy"]),
        "val_linear_miou": float(sl_["miou"]),
        "val_linear_accuracy": float(sl_["accuracy"]),
    }


def _histogram(cd: torch.Tensor, bins: int = 20) -> list[int]:
    """Counts of code correlations in ``bins`` equal bins over [-1, 1] (PROTOCOL §9 item 7)."""
    return torch.histc(cd.detach().float().cpu(), bins=bins, min=-1.0, max=1.0).long().tolist()


def _state(head, clusters, linear) -> dict:
    """Detached CPU copies of the trainable state."""
    return {
        "head": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
        "cluster_probe": {"clusters": clusters.detach().cpu().clone()},
        "linear_probe": {k: v.detach().cpu().clone() for k, v in linear.state_dict().items()},
    }


def positive_ranks(knn_self_rank0: bool, num_neighbors: int) -> tuple[int, int]:
    """Inclusive range of KNN ranks positives are drawn from: (1, 7) parity, (0, 6) default."""
    return (1, num_neighbors) if knn_self_rank0 else (0, num_neighbors - 1)


def knn_table_size(cfg: dict, n_images: int) -> int:
    """Neighbours to store per image: ``knn_k`` (30), at least enough for ``num_neighbors``
    positives, at most the ``n_images - 1`` other images (``n_images`` for the parity table)."""
    _, hi = positive_ranks(cfg["knn_self_rank0"], cfg["num_neighbors"])
    return min(max(int(cfg["knn_k"]), hi + 1), n_images - (0 if cfg["knn_self_rank0"] else 1))


def train_stego(
    train_store,
    cfg: dict,
    *,
    n_classes: int,
    val_store=None,
    knn: np.ndarray | None = None,
    device="cpu",
    progress: bool = True,
    preload_bytes: float = 2**30,
) -> dict:
    """Train a STEGO head and its two probes on stored tokens.

    Args:
        train_store: feature store of the training split (``FeatureStore`` or
            :class:`~stego_probe.store.ArrayStore`): tokens (N, h, w, C), labels (N, H, W) for
            the linear probe.
        cfg: resolved hyperparameters (see :meth:`StegoHead.resolved_params`): ``dim``,
            ``projection_type``, ``head_dropout``, ``teacher_dropout``, the loss keys
            :data:`LOSS_KEYS`, ``steps``, ``batch_size``, ``lr``, ``probe_lr``,
            ``num_neighbors``, ``knn_k``, ``knn_self_rank0``, ``drop_last``, ``val_every``,
            ``val_batch_size``, ``extra_clusters``, ``random_state``.
        n_classes: ``K`` (linear probe width; the cluster probe has ``K + extra_clusters``).
        val_store: optional validation store (labels at evaluation resolution).
        knn: (N, k) int64 KNN table of ``train_store``; computed if None.
        device: torch device.
        progress: tqdm bar.
        preload_bytes: a training store whose tokens (as float32) and labels (int64) fit in
            this many bytes is read into memory once instead of once per step
            (:func:`stego_probe.store.preloaded`).

    Returns:
        dict with ``last`` and ``best`` states (each ``{"head", "cluster_probe",
        "linear_probe"}`` of CPU tensors; ``best`` None without ``val_store``), ``best_step``,
        ``history`` (list of dicts, one per step: losses, mean code correlations; at validation
        steps the val metrics and the correlation histograms; a step-0 row holds the val metrics
        at initialisation and is never selected), ``n_steps``.

    Raises:
        ValueError: NaN or inf tokens in the training or the validation store, found when read
            (a preloaded training store is checked whole before training); the message names
            the store, the image index and its id.
        FloatingPointError: a non-finite loss (from finite tokens).
    """
    steps, bsz, seed = int(cfg["steps"]), int(cfg["batch_size"]), int(cfg["random_state"])
    n = int(train_store.n_images)
    if bsz < 1 or steps < 0:
        raise ValueError(f"batch_size must be >= 1 and steps >= 0, got {bsz} and {steps}")
    if cfg["drop_last"] and bsz > n:
        raise ValueError(f"batch_size={bsz} exceeds the {n} training images (drop_last=True)")
    lo, hi = positive_ranks(cfg["knn_self_rank0"], cfg["num_neighbors"])
    store = preloaded(train_store, preload_bytes)
    checked = store is not train_store  # a preloaded copy was checked whole
    if knn is None:
        k = knn_table_size(cfg, n)
        knn = compute_knns(
            store,
            k,
            knn_self_rank0=cfg["knn_self_rank0"],
            dropout=float(cfg.get("knn_dropout", 0.0)),
            random_state=int(cfg.get("random_state", 0)),
            progress=progress,
        )
    knn = np.asarray(knn, dtype=np.int64)
    if knn.ndim != 2 or knn.shape[0] != n or knn.shape[1] <= hi:
        raise ValueError(
            f"knn: expected an int (N={n}, k>{hi}) table of the training store, got shape "
            f"{knn.shape} (num_neighbors={cfg['num_neighbors']}, knn_self_rank0="
            f"{cfg['knn_self_rank0']})"
        )
    if knn.min() < 0 or knn.max() >= n:
        raise ValueError(f"knn: indices must lie in [0, {n}), got [{knn.min()}, {knn.max()}]")
    loss_fn = CorrespondenceLoss(**{k: cfg[k] for k in LOSS_KEYS})
    dim, in_dim = int(cfg["dim"]), int(train_store.dim)
    n_clusters = n_classes + int(cfg["extra_clusters"])
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    history: list[dict] = []
    best, best_step, best_score = None, None, -math.inf
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        head = SegmentationHead(
            in_dim, dim, cfg["projection_type"], cfg["head_dropout"], cfg["teacher_dropout"]
        ).to(device)
        clusters = torch.nn.Parameter(torch.randn(n_clusters, dim, device=device))
        linear = torch.nn.Conv2d(dim, n_classes, 1).to(device)
        opts = [
            torch.optim.Adam(head.parameters(), lr=cfg["lr"]),
            torch.optim.Adam(linear.parameters(), lr=cfg["probe_lr"]),
            torch.optim.Adam([clusters], lr=cfg["probe_lr"]),
        ]
        gen = torch.Generator().manual_seed(seed)  # sampling grids and negative indices
        rng = np.random.default_rng(seed)  # batch order and positive ranks
        batches = minibatch_stream(n, bsz, steps, rng, cfg["drop_last"], sort=False)

        def run_validation(row: dict) -> None:
            state = _state(head, clusters, linear)
            row.update(validate(head, state, val_store, n_classes, cfg["val_batch_size"], device))

        if val_store is not None:
            history.append({"step": 0})
            run_validation(history[-1])
        bar = tqdm(range(1, steps + 1), desc="train stego", disable=not progress)
        for step in bar:
            idx = next(batches)
            pos = knn[idx, rng.integers(lo, hi + 1, size=len(idx))]
            head.train()
            f_t, s = head(_to_bchw(_checked_tokens(store, idx, checked), device))
            f_tp, s_p = head(_to_bchw(_checked_tokens(store, pos, checked), device))
            l_corr, parts = loss_fn(f_t, s, f_tp, s_p, generator=gen)
            # Probes see the detached code: they are evaluation heads and cannot move the head.
            code = s.detach()
            labels = torch.from_numpy(canonicalize(store.labels(idx), n_classes)).to(device)
            if (labels >= 0).any():
                l_lin = linear_probe_loss(linear(code), labels)
            else:  # no labelled pixel in this batch (or an unlabelled store)
                l_lin = torch.zeros((), device=device)
            l_clu = cluster_lookup_loss(code, clusters)
            total = l_corr + l_lin + l_clu
            for o in opts:
                o.zero_grad(set_to_none=True)
            total.backward()
            for o in opts:
                o.step()
            row = {
                "step": step,
                "loss": float(total.detach()),
                "loss_corr": float(l_corr.detach()),
                "loss_self": float(parts["self"].detach()),
                "loss_knn": float(parts["knn"].detach()),
                "loss_rand": float(parts["rand"].detach()),
                "loss_linear": float(l_lin.detach()),
                "loss_cluster": float(l_clu.detach()),
                "corr_self_mean": float(parts["cd_self"].detach().mean()),
                "corr_knn_mean": float(parts["cd_knn"].detach().mean()),
                "corr_rand_mean": float(parts["cd_rand"].detach().mean()),
            }
            if not all(math.isfinite(v) for k, v in row.items() if k.startswith("loss")):
                raise FloatingPointError(f"non-finite loss at step {step}: {row}")
            if val_store is not None and (step % cfg["val_every"] == 0 or step == steps):
                run_validation(row)
                for name in ("self", "knn", "rand"):
                    row[f"hist_{name}"] = _histogram(parts[f"cd_{name}"])
                if row["val_cluster_miou"] > best_score:
                    best_score, best_step = row["val_cluster_miou"], step
                    best = _state(head, clusters, linear)
                bar.set_postfix(loss=f"{row['loss']:.3f}", miou=f"{row['val_cluster_miou']:.1f}")
            history.append(row)
    return {
        "last": _state(head, clusters, linear),
        "best": best,
        "best_step": best_step,
        "history": history,
        "n_steps": steps,
    }
