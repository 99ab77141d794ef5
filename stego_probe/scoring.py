"""Scoring fitted probes on a validation split, batch by batch: one home for evaluation
(:func:`stego_probe.evaluate.evaluate_codes` / :func:`~stego_probe.evaluate.evaluate_stores`)
and STEGO's training-time validation (:func:`stego_probe.projections.stego.train.validate`).

:class:`Scorer` keeps one :class:`~stego_probe.metrics.ConfusionAccumulator` per (probe, CRF
setting), so no prediction is kept in memory (quirk Q30); cluster probes are matched to classes
with ``match`` (Hungarian by default), the linear probe with the identity. :func:`score_store`
runs a store through an encoder (projection or STEGO head) and a scorer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from stego_probe.metrics import ConfusionAccumulator


def _predict(name: str, probe, codes, size):
    return probe.predict(codes, size=size)


def _n_outputs(probe) -> int:
    return int(getattr(probe, "n_clusters", None) or probe.n_classes)


class Scorer:
    """Confusion accumulators for every (probe, crf) pair, fed batch by batch.

    Args:
        probes: ``{name: fitted probe}``; ``"linear"`` is matched with the identity, every
            other probe with the ``match`` given to :meth:`results`.
        n_classes: ``K``.
        crf: also score the dense-CRF refined predictions (:meth:`update` then needs images).
        crf_workers: CRF worker processes (0 = serial).
        predict: ``(name, probe, codes, size) -> (B, H, W) int`` predictions (default
            ``probe.predict(codes, size=size)``).
        log_probs: ``(name, probe, codes, size) -> (B, K', H, W)`` log-probabilities, the CRF
            input (required with ``crf=True``; e.g.
            :func:`stego_probe.evaluate.log_probs_batch`).

    Examples:
        >>> class Ident:  # a probe predicting channel argmax
        ...     n_classes = 2
        ...     def predict(self, codes, size=None):
        ...         return codes.argmax(1)
        >>> s = Scorer({"linear": Ident()}, 2)
        >>> _ = s.update(np.eye(2)[None, :, :, None], np.array([[[0], [1]]]))
        >>> s.results()["linear", False]["miou"]
        100.0
    """

    def __init__(
        self,
        probes: Mapping,
        n_classes: int,
        crf: bool = False,
        crf_workers: int = 0,
        predict: Callable | None = None,
        log_probs: Callable | None = None,
    ):
        self.probes = dict(probes)
        self.n_classes = int(n_classes)
        self.crf = bool(crf)
        self.crf_workers = int(crf_workers)
        if self.crf and log_probs is None:
            raise ValueError("log_probs: crf=True needs a log-probability function")
        self._predict = predict or _predict
        self._log_probs = log_probs
        self.acc = {}
        for name, probe in self.probes.items():
            for use_crf in (False, True) if crf else (False,):
                self.acc[name, use_crf] = ConfusionAccumulator(_n_outputs(probe), self.n_classes)

    def update(self, codes, labels: np.ndarray, size=None, images=None) -> dict:
        """Score one batch.

        Args:
            codes: (B, D, h, w) codes (numpy or torch), or (M, D) with ``size=None``.
            labels: (B, H, W) (or (M,)) int labels; values outside ``[0, K)`` are ignored.
            size: label resolution ``(H, W)`` the codes are upsampled to, None for none.
            images: (B, H, W, 3) uint8 images (with ``crf=True``).

        Returns:
            ``{(probe, crf): (B, H, W) predictions}``.
        """
        preds = {}
        for name, probe in self.probes.items():
            preds[name, False] = self._predict(name, probe, codes, size)
            self.acc[name, False].update(preds[name, False], labels)
            if self.crf:
                from stego_probe.probes.crf import batch_crf

                lp = self._log_probs(name, probe, codes, size)
                preds[name, True] = batch_crf(images, lp, num_workers=self.crf_workers)
                self.acc[name, True].update(preds[name, True], labels)
        return preds

    def results(self, match: str = "hungarian", require_pixels: bool = True) -> dict:
        """``{(probe, crf): scores}`` (:meth:`ConfusionAccumulator.scores`, percent).

        Raises:
            ValueError: no valid pixel was scored (unless ``require_pixels=False``).
        """
        out = {}
        for (name, use_crf), acc in self.acc.items():
            if require_pixels and acc.n_pixels == 0:
                raise ValueError(
                    "validation labels: no valid pixel (every label is outside [0, "
                    f"{self.n_classes})); nothing to score"
                )
            m = "identity" if name == "linear" else match
            out[name, use_crf] = acc.scores(match=m)
        return out


def _check_codes(codes, what: str) -> None:
    """:func:`stego_probe.codes.check_finite` of numpy or torch codes."""
    from stego_probe.codes import check_finite

    check_finite(codes, what)


def score_store(
    store,
    scorer: Scorer,
    encode: Callable,
    *,
    batch_size: int = 8,
    size=None,
    flip: bool = False,
    token_labels: bool = False,
    images: Callable | None = None,
    on_batch: Callable | None = None,
    progress: bool = False,
) -> Scorer:
    """Feed a whole validation store through ``encode`` into ``scorer``, in order.

    Every batch's tokens are checked finite (naming the store and the image), encoded, checked
    finite again, and scored against the store's labels.

    Args:
        store: a :class:`~stego_probe.store.TokenStore` (``iter_batches``).
        scorer: the :class:`Scorer` to feed.
        encode: tokens (B, h, w, C) float32 -> codes (B, D, h, w) (numpy or torch).
        batch_size: images per batch.
        size: label resolution the codes are scored at, None for the token grid.
        flip: average the codes of ``tokens`` and ``tokens_flipped`` (evaluation mode).
        token_labels: pool the labels to the token grid (:func:`stego_probe.store.pool_labels`).
        images: ``(indices (B,), ids) -> (B, H, W, 3) uint8`` for the CRF.
        on_batch: called as ``on_batch(predictions, ids)`` after each batch.
        progress: tqdm bar.

    Returns:
        ``scorer``.
    """
    from stego_probe.projections.base import check_store_tokens

    batches = store.iter_batches(int(batch_size), progress=progress)
    flipped = store.iter_batches(int(batch_size), flipped=True) if flip else None
    where = f"val store {getattr(store, 'path', None)}"
    pos = 0
    for tokens, labels, ids in batches:
        idx = np.arange(pos, pos + len(tokens))
        pos += len(tokens)
        check_store_tokens(store, idx, tokens)
        codes = encode(tokens)
        if flipped is not None:
            tokens_f, _, _ = next(flipped)
            check_store_tokens(store, idx, tokens_f, array="tokens_flipped")
            codes = 0.5 * (codes + encode(tokens_f))
        _check_codes(codes, f"{where} codes (images {idx[0]}..{idx[-1]})")
        if token_labels:
            from stego_probe.store import pool_labels

            labels = pool_labels(labels, store.grid, scorer.n_classes)
        imgs = images(idx, list(ids)) if images is not None else None
        preds = scorer.update(codes, labels, size, imgs)
        if on_batch is not None:
            on_batch(preds, ids)
    return scorer


__all__ = ["Scorer", "score_store"]
