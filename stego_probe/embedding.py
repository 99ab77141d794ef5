"""2-D coordinates of feature vectors (PCA or UMAP), for maps of patch features.

The input of :func:`stego_probe.plots.plot_embedding_map`; this module computes, it does not
draw.
"""

from __future__ import annotations

import numpy as np


def embedding_2d(
    codes: np.ndarray, method: str = "pca", random_state: int = 0, normalize: bool = True
) -> np.ndarray:
    """2-D coordinates of feature vectors for :func:`stego_probe.plots.plot_embedding_map`.

    Args:
        codes: float array (M, D), M >= 3 (patch features or codes).
        method: ``"pca"`` (scikit-learn PCA, deterministic up to sign, which is fixed so that the
            largest-magnitude loading of each component is positive) or ``"umap"`` (umap-learn,
            cosine metric, seeded; needs the ``umap`` extra).
        random_state: seed for UMAP.
        normalize: L2-normalise rows first (features are compared by cosine throughout).

    Returns:
        float32 array (M, 2).
    """
    x = np.asarray(codes, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3 or x.shape[1] < 2:
        raise ValueError(f"codes: expected an array (M>=3, D>=2), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("codes: contains NaN or inf")
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, svd_solver="full").fit(x)
        comps = pca.components_
        signs = np.sign(comps[np.arange(2), np.abs(comps).argmax(axis=1)])
        signs[signs == 0] = 1
        return ((x - pca.mean_) @ (comps * signs[:, None]).T).astype(np.float32)
    if method == "umap":
        try:
            import umap
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "embedding_2d(method='umap') needs umap-learn: pip install 'stego-probe[umap]'"
            ) from e
        reducer = umap.UMAP(n_components=2, metric="cosine", random_state=random_state)
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)
    raise ValueError(f"method: expected 'pca' or 'umap', got {method!r}")
