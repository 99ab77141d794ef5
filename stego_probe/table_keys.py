"""Which keys a results table already holds: the one resume check of the sweeps and experiments.

A resumable run skips the work whose rows are already in its results CSV. What "already there"
means is always the same question: the distinct values of some key columns (``method, dim,
seed`` for a sweep point, ``dataset, method, seed`` for a Table 2 evaluation, ``dataset`` for a
Figure 3 spectrum) among the rows that pass a filter. :func:`done_keys` answers it.

Examples:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"method": ["pca", "pca", "rp"], "dim": [3, 3, 6],
    ...                    "crf": ["True", "False", "False"]})
    >>> sorted(done_keys(df, ["method", "dim"]))
    [('pca', 3), ('rp', 6)]
    >>> done_keys(df, ["method"], where={"crf": True})
    {('pca',)}
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def _plain(value):
    """A cell as a plain Python value: bool, int (also for integral floats), float or str."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return int(value) if value.is_integer() else value
    return str(value)


def _matches(column: pd.Series, wanted) -> pd.Series:
    """Rows of ``column`` equal to ``wanted`` (a value or a list / tuple / set of values), both
    sides compared as :func:`stego_probe.results.key_value` (``True`` matches ``"True"`` /
    ``"true"``, ``3`` matches ``3.0`` / ``"3"``, empty matches NaN)."""
    from stego_probe.results import key_value

    name = str(column.name)
    values = list(wanted) if isinstance(wanted, list | tuple | set | frozenset) else [wanted]
    targets = {key_value(name, v) for v in values}
    return column.map(lambda v: key_value(name, v)).isin(targets)


def done_keys(
    table: pd.DataFrame | str | os.PathLike | None,
    key_columns: Sequence[str],
    *,
    where: Mapping[str, object] | None = None,
    exclude: Mapping[str, object] | None = None,
) -> set[tuple]:
    """The distinct key tuples among the rows of a results table (what a resumed run skips).

    Args:
        table: a results DataFrame; or the path of a results CSV
            (:func:`stego_probe.results.read_results`), where a path that does not exist holds
            no rows; or None (no rows).
        key_columns: the columns of the key, e.g. ``["method", "dim", "seed"]``.
        where: ``{column: value or list of values}``: keep only the rows matching every entry.
        exclude: ``{column: value or list of values}``: then drop the rows matching any entry.
            Values are compared as :func:`stego_probe.results.key_value` (the form that
            survives a CSV round trip: ``True`` = ``"true"``, ``3`` = ``3.0`` = ``"3"``).

    Returns:
        a set of tuples, one value per key column, as plain Python values (bool, int for
        integral numbers, float, str), so ``("pca", 3, 0) in done_keys(...)`` works whether the
        table came from a CSV or from memory.

    Raises:
        ValueError: ``key_columns`` is empty, or a key / filter column is not in the table.
    """
    keys = list(key_columns)
    if not keys:
        raise ValueError("done_keys: key_columns must name at least one column")
    if table is None:
        return set()
    if not isinstance(table, pd.DataFrame):
        path = Path(table)
        if not path.exists():
            return set()
        from stego_probe.results import read_results

        table = read_results(path)
    wanted = [*keys, *(where or {}), *(exclude or {})]
    missing = sorted({c for c in wanted if c not in table.columns})
    if missing:
        raise ValueError(
            f"done_keys: the table has no column(s) {missing}; it has {list(table.columns)}"
        )
    keep = pd.Series(True, index=table.index)
    for col, value in (where or {}).items():
        keep &= _matches(table[col], value)
    for col, value in (exclude or {}).items():
        keep &= ~_matches(table[col], value)
    rows = table.loc[keep, keys].drop_duplicates()
    return {tuple(_plain(v) for v in row) for row in rows.itertuples(index=False, name=None)}
