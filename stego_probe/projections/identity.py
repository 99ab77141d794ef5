"""The DINO-only baseline: no projection (PROTOCOL §6.1)."""

from __future__ import annotations

from typing import Any

import torch

from stego_probe.projections.base import Projection
from stego_probe.projections.random import store_dim
from stego_probe.store import is_store


class Identity(Projection):
    """Pass backbone features through unchanged (method ``"dino"``); ``D = C``.

    ``fit`` only reads the width ``C`` (from the array, or the store's ``dim`` / one image).
    ``transform`` returns the input as float32 in the requested layout; for float32 numpy input
    the output may share memory with the input.

    Args:
        n_components: None (take ``C`` from the fit data) or ``C`` itself; any other value is an
            error at ``fit``.

    Examples:
        >>> import numpy as np
        >>> x = np.ones((4, 6), np.float32)
        >>> Identity().fit(x).transform(x).shape
        (4, 6)
    """

    method = "dino"
    _meta_attrs = ("n_features_in_",)

    def __init__(self, n_components: int | None = None) -> None:
        self.n_components = n_components

    def _fit(self, source: Any) -> None:
        c = store_dim(source) if is_store(source) else int(source.shape[1])
        if self.n_components is not None and self.n_components != c:
            raise ValueError(
                f"Identity: n_components={self.n_components} but the features have C={c}; "
                "the DINO baseline cannot change the width (use None)"
            )
        self.n_features_in_ = c
        self._fit_info["n_tokens"] = 0

    def _params_changed(self, changed: set[str]) -> None:
        if self.n_components is not None and self.n_components != self.n_features_in_:
            raise ValueError(
                f"Identity: n_components={self.n_components} but the features have "
                f"C={self.n_features_in_}"
            )

    def _transform_2d(self, x: torch.Tensor) -> torch.Tensor:
        return x
