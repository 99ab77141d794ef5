"""Parameter names shared across the library, and the old names they replaced.

One concept has one name. The number of tokens drawn from a store or an array for a fit or a
statistic is ``n_tokens`` everywhere: :class:`~stego_probe.probes.KMeansProbe` (``n_tokens``,
formerly ``n_train``), UMAP / h-NNE (formerly ``n_samples``), :func:`~stego_probe.evaluate.
evaluate_stores` and the distinctness functions (formerly ``n_train`` / ``sample_size``), the
sweep's ``distinctness.n_tokens`` and ``store.sample_tokens(n_tokens, seed)``.

Saved files, configs and scripts written with an old name keep working:
:func:`renamed_kwargs` maps old names to new ones in keyword dicts read from files or configs
(with a ``FutureWarning`` when the caller asks for one), and estimators' ``load`` apply it to
their saved parameters.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

#: ``{old name: new name}`` of renamed keyword arguments (estimator parameters and probe /
#: method kwargs in configs).
RENAMED = {
    "n_train": "n_tokens",
    "n_samples": "n_tokens",
    "sample_size": "n_tokens",
    "n_train_used_": "n_tokens_used_",
}


def renamed_kwargs(kwargs: Mapping, where: str, *, warn: bool = True) -> dict:
    """``kwargs`` with every old name of :data:`RENAMED` replaced by its new name.

    Args:
        kwargs: keyword arguments (e.g. ``probe_kwargs["kmeans"]`` of a config).
        where: what they are, for messages (e.g. ``"probe_kwargs['kmeans']"``).
        warn: issue a ``FutureWarning`` naming each renamed key (off for saved files, which
            the user cannot change by editing a script).

    Returns:
        a new dict (the input is not modified).

    Raises:
        ValueError: both an old name and its new name are given.

    Examples:
        >>> renamed_kwargs({"n_train": 5, "niter": 2}, "kmeans", warn=False) == {
        ...     "n_tokens": 5, "niter": 2}
        True
    """
    out = dict(kwargs)
    for old, new in RENAMED.items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(f"{where}: both {old!r} and its new name {new!r} are given")
        if warn:
            warnings.warn(
                f"{where}: {old!r} is now called {new!r}; the old name will stop working in a "
                "future release",
                FutureWarning,
                stacklevel=3,
            )
        out[new] = out.pop(old)
    return out
