"""UMAP on a seeded token sample (PROTOCOL §6.8; optional extra ``umap``)."""

from __future__ import annotations

from typing import Any

from stego_probe.projections.base import SampledEmbedding


def _import_umap() -> Any:
    try:
        import umap
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "UMAPProjection needs umap-learn: pip install 'stego-probe[umap]'"
        ) from exc
    return umap


class UMAPProjection(SampledEmbedding):
    """UMAP fitted on ``n_tokens`` seeded tokens, applied with ``umap.UMAP.transform``.

    The reference fits UMAP on 10,000 random standardised tokens with ``n_neighbors=15,
    min_dist=0.1, metric="cosine"`` (PROTOCOL §6.8, not in the paper's figures). Here the sample
    is drawn with ``random_state`` (for a store: ``store.sample_tokens(n_tokens, seed,
    images=...)``, uniform over the tokens of the ``n_images`` images chosen as for PCA; for an
    array: seeded rows), and ``mean_`` / ``scale_`` are the
    per-channel mean / population std **of that sample**. ``standardize`` then applies as for PCA
    (``"train"``: sample statistics; ``"batch"``: each call's own; None: raw). UMAP's own
    ``random_state`` and ``transform_seed`` are set to ``random_state``, so fit and transform are
    deterministic (and single-threaded in umap-learn).

    Args:
        n_components: output width ``D``.
        n_neighbors, min_dist, metric, n_epochs: passed to ``umap.UMAP`` (``n_epochs=None``: UMAP's
            default schedule).
        n_tokens: tokens to fit on.
        n_images, subset: the store images the sample is drawn from (as PCA; None: all).
        standardize: ``"train"``, ``"batch"`` or None.
        random_state: seed of the sample and of UMAP.

    Attributes:
        umap_: the fitted ``umap.UMAP``.
        mean_, scale_: (C,) float64 sample statistics.

    Persistence: :meth:`save` stores the fitted UMAP object pickled into a uint8 array; loading it
    unpickles it, so only load files you trust.
    """

    method = "umap"
    _model_attr = "umap_"
    _model_name = "UMAP"
    _import_model = staticmethod(_import_umap)

    def __init__(
        self,
        n_components: int = 2,
        *,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        metric: str = "cosine",
        n_epochs: int | None = None,
        n_tokens: int = 10_000,
        n_images: int | None = 5000,
        subset: str = "random",
        standardize: str | None = "train",
        random_state: int | None = 0,
    ) -> None:
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.n_epochs = n_epochs
        self.n_tokens = n_tokens
        self.n_images = n_images
        self.subset = subset
        self.standardize = standardize
        self.random_state = random_state

    def _fit(self, source: Any) -> None:
        umap = _import_umap()
        if self.n_components is None:
            raise ValueError("UMAPProjection: n_components is required")
        x = self._sample(source, self.n_tokens)
        if x.shape[0] <= self.n_neighbors:
            raise ValueError(
                f"UMAPProjection: {x.shape[0]} fit tokens is not more than "
                f"n_neighbors={self.n_neighbors}"
            )
        z = self._sample_statistics(x, "UMAP fit sample")
        self.umap_ = umap.UMAP(
            n_components=int(self.n_components),
            n_neighbors=self.n_neighbors,
            min_dist=self.min_dist,
            metric=self.metric,
            n_epochs=self.n_epochs,
            random_state=self.random_state,
            n_jobs=1 if self.random_state is not None else -1,
            transform_seed=self.random_state if self.random_state is not None else 42,
        ).fit(z)
        self.fitted_n_components_ = int(self.n_components)
