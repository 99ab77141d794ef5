"""h-NNE on a seeded token sample (PROTOCOL §6.7, quirk Q37; optional extra ``hnne``)."""

from __future__ import annotations

import inspect
from typing import Any

from stego_probe.projections.base import SampledEmbedding


def _import_hnne() -> Any:
    try:
        import hnne
    except ImportError as exc:
        raise ImportError(
            "HNNEProjection needs the h-NNE package, which is an optional extra: "
            "pip install 'stego-probe[hnne]'"
        ) from exc
    return hnne


class HNNEProjection(SampledEmbedding):
    """Hierarchical nearest-neighbour embedding (h-NNE) fitted on a seeded token sample.

    The reference (Appendix Figure 2, Cityscapes) fits ``hnne.HNNE(dim=D, metric="cosine")`` on
    1,000,000 tokens drawn from the standardised 5,000-image fit matrix, then projects batches of
    512 images, each standardised with its own statistics (quirk Q37; parity:
    ``standardize="batch"`` with 512-image calls). Here the sample comes from
    ``store.sample_tokens(n_tokens, seed, images=...)`` over the ``n_images`` images chosen as
    for PCA (or seeded array rows), ``mean_`` / ``scale_`` are
    the sample's per-channel mean / population std, and the default ``standardize="train"``
    applies those to every call.

    The output width is passed as ``n_components`` (h-NNE ≥ 0.1.7) or ``dim`` (older h-NNE),
    whichever the installed ``HNNE`` accepts, and ``random_state`` is passed where supported.

    Args:
        n_components: output width ``D``.
        metric: h-NNE metric (``"cosine"`` as the reference).
        n_tokens: tokens to fit on (reference: 1,000,000; 2M exhausted a 16-vCPU machine).
        n_images, subset: the store images the sample is drawn from (as PCA; None: all).
        standardize: ``"train"``, ``"batch"`` or None.
        random_state: seed of the sample (and of h-NNE where supported).
        hnne_params: extra keyword arguments for ``hnne.HNNE`` (e.g. ``{"radius": 0.45}``).

    Attributes:
        hnne_: the fitted ``hnne.HNNE``.
        mean_, scale_: (C,) float64 sample statistics.

    Persistence: :meth:`save` pickles the fitted h-NNE object into a uint8 array; loading
    unpickles it, so only load files you trust.
    """

    method = "hnne"
    _model_attr = "hnne_"
    _model_name = "h-NNE"
    _import_model = staticmethod(_import_hnne)

    def __init__(
        self,
        n_components: int = 2,
        *,
        metric: str = "cosine",
        n_tokens: int = 1_000_000,
        n_images: int | None = 5000,
        subset: str = "random",
        standardize: str | None = "train",
        random_state: int | None = 0,
        hnne_params: dict | None = None,
    ) -> None:
        self.n_components = n_components
        self.metric = metric
        self.n_tokens = n_tokens
        self.n_images = n_images
        self.subset = subset
        self.standardize = standardize
        self.random_state = random_state
        self.hnne_params = hnne_params

    def _make_model(self, hnne: Any) -> Any:
        sig = inspect.signature(hnne.HNNE.__init__).parameters
        kw: dict[str, Any] = {"metric": self.metric, **(self.hnne_params or {})}
        if "n_components" in sig:
            kw["n_components"] = int(self.n_components)
        else:
            kw["dim"] = int(self.n_components)
        if "random_state" in sig and "random_state" not in kw:
            kw["random_state"] = self.random_state
        return hnne.HNNE(**kw)

    def _fit(self, source: Any) -> None:
        hnne = _import_hnne()
        if self.n_components is None:
            raise ValueError("HNNEProjection: n_components is required")
        x = self._sample(source, self.n_tokens)
        z = self._sample_statistics(x, "h-NNE fit sample")
        model = self._make_model(hnne)
        model.fit(z)
        self.hnne_ = model
        self.fitted_n_components_ = int(self.n_components)
