"""Tidy results tables: one row per measured number.

Every evaluation, sweep point and distinctness measurement becomes rows with the columns in
:data:`RESULT_COLUMNS`; figures are drawn only from such tables. Metric values are in percent for
segmentation metrics (``accuracy``, ``miou``, ``iou:<class>``, ``precision:<class>``,
``recall:<class>``) and in their natural unit otherwise (``silhouette``, ``kmeans_iterations``...).

Rows of the ``kmeans`` probe (and distinctness rows) also record the k-means protocol that
produced them (:data:`KMEANS_COLUMNS`): the stopping rule (``kmeans_tol``, ``kmeans_niter``), the
restarts (``kmeans_nredo``) and the iterations the fit actually ran (``kmeans_n_iter``); rows of
the ``linear`` probe record its solver, training images and iterations (:data:`LINEAR_COLUMNS`).
Tables written before these columns existed are read with them empty (NaN / ``""``). Rows of a transfer run
(:mod:`stego_probe.transfer`) name the dataset the projection was fitted on and the one it was
evaluated on (:data:`TRANSFER_COLUMNS`, empty text for every other row).

Tables come back typed (:func:`read_results`, :func:`coerce_types`): ``crf`` bool (the one parser
is :func:`as_bool`), :data:`INT_COLUMNS` int64 (float64 with NaN where a cell is empty),
:data:`FLOAT_COLUMNS` float64, :data:`TEXT_COLUMNS` str (empty = ``""``). :func:`done_keys` is
the resume check of the sweeps and the experiment scripts.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stego_probe.fileio import atomic_write

#: Stable column names of every results table (documented in docs/results.md).
RESULT_COLUMNS = [
    "dataset",  # cocostuff27, cityscapes27, potsdam3, synthetic, folder ...
    "backbone",  # backbone registry name
    "weights_sha256",  # sha256 of the backbone weights (empty for weight-free backbones)
    "method",  # dino (identity), pca, rp, stego, umap, hnne, stego_released ...
    "dim",  # embedding dimension D of the probed codes
    "seed",  # random_state of projection + probe
    "probe",  # kmeans, cluster, linear, none (distinctness)
    "crf",  # bool
    "mode",  # pixel (one pass), pixel_flip (flip-averaged), token (token-level approximation)
    "match",  # hungarian, majority, identity, reference
    "split",  # the split the metric was computed on
    "metric",  # accuracy, miou, iou:<class>, silhouette, ...
    "value",  # float
    "kmeans_niter",  # k-means: maximum Lloyd iterations per restart (empty for other probes)
    "kmeans_tol",  # k-means stopping tolerance: 0 = to a fixed point (or niter), > 0 early stop
    "kmeans_nredo",  # k-means restarts (the best final objective is kept)
    "kmeans_n_iter",  # k-means: iterations the chosen restart actually ran
    "stego_probe_version",
    "fit_dataset",  # transfer rows: the dataset the projection was fitted on (else empty)
    "eval_dataset",  # transfer rows: the dataset probed and scored (else empty)
    "linear_solver",  # linear rows: lbfgs, tokens or adam (empty for other probes)
    "linear_train_images",  # linear rows: train images the probe drew from (store or cap)
    "linear_n_iter",  # linear rows: L-BFGS iterations run, or Adam steps
    "kmeans_engine",  # kmeans rows: the Lloyd engine that ran (hamerly, faiss)
]

#: Columns that identify one measured number (every column except the value, the k-means
#: protocol and the package version): two rows agreeing on all of them measure the same thing.
IDENTITY_COLUMNS = [
    c
    for c in RESULT_COLUMNS
    if c not in ("value", "stego_probe_version") and not c.startswith(("kmeans_", "linear_"))
]

#: The k-means protocol columns (numeric; empty for rows that involve no k-means fit). They were
#: added after the first release: :func:`read_results` fills them with NaN in older tables.
KMEANS_COLUMNS = ["kmeans_niter", "kmeans_tol", "kmeans_nredo", "kmeans_n_iter"]

#: The transfer columns (text; empty for rows that are not transfer rows,
#: :mod:`stego_probe.transfer`): ``fit_dataset`` names the dataset whose train store the
#: projection was fitted on, ``eval_dataset`` the one whose stores were probed (its store's
#: dataset type is the ``dataset`` column). They are the last columns (added after the package
#: version, so the older columns keep their positions): :func:`read_results` fills them with
#: ``""`` in older tables.
TRANSFER_COLUMNS = ["fit_dataset", "eval_dataset"]

#: The linear-probe protocol columns (empty for rows of other probes, and NaN / ``""`` in
#: tables written before they were added, which :func:`read_results` fills): the solver
#: (``linear_solver``: ``lbfgs``, ``tokens``, ``adam``), the training images it drew from
#: (``linear_train_images``: the L-BFGS probe's ``max_images`` subset, else the store's size;
#: Adam's stream and the token sample draw from every image) and the iterations it ran (``linear_n_iter``: L-BFGS iterations or
#: Adam steps). Like the k-means columns they describe how a number was obtained and are not
#: part of its identity (:data:`IDENTITY_COLUMNS`).
LINEAR_COLUMNS = ["linear_solver", "linear_train_images", "linear_n_iter"]

#: The Lloyd engine of a ``kmeans`` row (``KMeansProbe.algorithm_``: ``hamerly`` on the CPU,
#: ``faiss`` on GPUs or with ``algorithm="faiss"``; text, empty for other rows and in older
#: tables).
KMEANS_ENGINE_COLUMN = "kmeans_engine"

#: Columns holding numbers: in row keys (:func:`row_key`) ``3``, ``3.0`` and ``"3"`` agree.
NUMERIC_COLUMNS = ("dim", "seed", "value", *KMEANS_COLUMNS, "linear_train_images", "linear_n_iter")

#: Numeric columns read as int64 (as float64, NaN where empty, when a cell is empty).
INT_COLUMNS = (
    "dim",
    "seed",
    "kmeans_niter",
    "kmeans_nredo",
    "kmeans_n_iter",
    "linear_train_images",
    "linear_n_iter",
)

#: Numeric columns read as float64 (NaN where empty; ``inf`` stays ``inf``).
FLOAT_COLUMNS = ("value", "kmeans_tol")

#: Columns read as text (``str``; an empty cell is ``""``).
TEXT_COLUMNS = tuple(c for c in RESULT_COLUMNS if c not in (*NUMERIC_COLUMNS, "crf"))

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")
_BOOL_TEXT = "true / 1 / yes or false / 0 / no / empty"


def as_bool(value, *, what: str = "crf") -> bool:
    """A boolean cell of a results table (the ``crf`` column) as a bool: the one parser.

    ``True`` for ``True``, ``1`` and the texts ``true`` / ``1`` / ``yes``; ``False`` for
    ``False``, ``0``, the texts ``false`` / ``0`` / ``no``, and empty cells (``""``, None, NaN).
    Texts are compared stripped and case-insensitively (``"True"``, the CSV form, is ``True``).

    Args:
        value: one cell (bool, number, text or missing).
        what: what to call the cell in the error message.

    Returns:
        the bool.

    Raises:
        ValueError: any other value (e.g. ``"maybe"``, ``2``, ``"t"``).

    Examples:
        >>> as_bool("True"), as_bool(" yes "), as_bool(0), as_bool(""), as_bool(float("nan"))
        (True, True, False, False, False)
    """
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if value is None:
        return False
    if isinstance(value, numbers.Number):
        f = float(value)
        if math.isnan(f):
            return False
        if f in (0.0, 1.0):
            return f == 1.0
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(f"{what}: {value!r} is not a boolean; expected {_BOOL_TEXT}")


def _numbers(col: pd.Series, name: str) -> pd.Series:
    """``col`` as numbers; a non-empty cell that is not a number is a ValueError."""
    if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
        num = pd.to_numeric(col.astype(object), errors="coerce")
        empty = col.isna() | col.astype(str).str.strip().str.lower().isin(["", "nan"])
        bad = num.isna() & ~empty
        if bad.any():
            value = col[bad].iloc[0]
            raise ValueError(
                f"{name}: column {col.name!r} has the value {value!r} (row index "
                f"{col.index[bad.to_numpy()][0]}); expected a number or an empty cell"
            )
        return num.astype("float64")
    return col


def coerce_types(df: pd.DataFrame, *, name: str = "df") -> pd.DataFrame:
    """A copy of a results table with the column types of :func:`read_results`.

    Only the :data:`RESULT_COLUMNS` present in ``df`` are converted (other columns are kept as
    they are), so in-memory tables with a subset of the columns (figures, summaries) work too:

    * ``crf``: bool, each cell through :func:`as_bool`;
    * :data:`INT_COLUMNS` (``dim``, ``seed``, ``kmeans_niter`` ...): int64 when every cell is
      an integral number, otherwise float64 (NaN for empty cells);
    * :data:`FLOAT_COLUMNS` (``value``, ``kmeans_tol``): float64 (NaN for empty cells);
    * :data:`TEXT_COLUMNS`: ``str``, empty / missing cells as ``""``; ``mode`` values of
      older versions renamed (:data:`LEGACY_MODE_VALUES`: ``val`` -> ``pixel``, ``eval`` ->
      ``pixel_flip``).

    Args:
        df: results rows.
        name: what to call ``df`` in error messages (:func:`read_results` passes the path).

    Returns:
        the typed copy (same index and column order).

    Raises:
        ValueError: a ``crf`` cell that is not a boolean, or a non-empty cell of a numeric
            column that is not a number; the message names ``name``, the column and the value.

    Examples:
        >>> t = coerce_types(pd.DataFrame({"crf": ["True", ""], "dim": ["3", 4.0],
        ...                                "match": ["hungarian", None]}))
        >>> t["crf"].tolist(), t["dim"].tolist(), t["match"].tolist()
        ([True, False], [3, 4], ['hungarian', ''])
    """
    d = df.copy()
    if "crf" in d.columns:
        cells = d["crf"].astype(object)
        present = cells.notna().to_numpy()  # missing cells are False
        parsed = {}
        for v in pd.unique(cells[present]):  # parse each distinct value once
            try:
                parsed[v] = as_bool(v)
            except ValueError:
                raise ValueError(
                    f"{name}: column 'crf' has the value {v!r}; expected {_BOOL_TEXT}"
                ) from None
        flags = np.zeros(len(d), dtype=bool)
        flags[present] = [parsed[v] for v in cells[present]]
        d["crf"] = flags
    for c in (*INT_COLUMNS, *FLOAT_COLUMNS):
        if c not in d.columns:
            continue
        num = _numbers(d[c], name)
        arr = num.to_numpy(dtype="float64")
        if c in INT_COLUMNS and np.isfinite(arr).all() and (arr == np.round(arr)).all():
            d[c] = num.astype("int64")
        else:
            d[c] = num.astype("float64")
    for c in TEXT_COLUMNS:
        if c in d.columns:
            d[c] = d[c].astype(object).where(d[c].notna(), "").astype(str)
    if "mode" in d.columns:
        d["mode"] = d["mode"].replace(LEGACY_MODE_VALUES)
    return d


#: Values of the ``mode`` column: which evaluation pass produced a row (:func:`mode_column`).
MODE_VALUES = ("pixel", "pixel_flip", "token")
#: ``mode`` values written before the rename (the reference's pass names, PROTOCOL §4.4):
#: ``val`` was the single pixel-level pass, ``eval`` the flip-averaged one. :func:`coerce_types`
#: (hence :func:`read_results`) maps them, so tables written by older versions resume and plot.
LEGACY_MODE_VALUES = {"val": "pixel", "eval": "pixel_flip"}


def mode_column(mode: str, flip: bool) -> str:
    """The ``mode`` column of a result row: which evaluation pass produced it.

    ``"token"`` for ``mode="token"`` (labels pooled to the token grid), ``"pixel"`` for
    ``mode="pixel"`` (codes upsampled to the label resolution; the reference's "val" pass) and
    ``"pixel_flip"`` for ``mode="pixel"`` with flip-averaged codes (the reference's final
    "eval" pass).

    Examples:
        >>> mode_column("pixel", False), mode_column("pixel", True), mode_column("token", False)
        ('pixel', 'pixel_flip', 'token')
    """
    return "token" if mode == "token" else ("pixel_flip" if flip else "pixel")


def kmeans_context(probe) -> dict:
    """The :data:`KMEANS_COLUMNS` values of a fitted :class:`~stego_probe.probes.KMeansProbe`.

    ``kmeans_tol`` is ``0`` for ``tol=None`` as well (exactly ``niter`` iterations: the same
    centroids as ``tol=0`` whenever a fixed point is reached; ``kmeans_n_iter == kmeans_niter``
    tells the two apart).

    Returns:
        ``{"kmeans_niter": int, "kmeans_tol": float, "kmeans_nredo": int, "kmeans_n_iter": int,
        "kmeans_engine": str}`` (the engine that ran, ``algorithm_``; ``""`` if unknown).
    """
    tol = getattr(probe, "tol", None)
    return {
        "kmeans_niter": int(probe.niter),
        "kmeans_tol": 0.0 if tol is None else float(tol),
        "kmeans_nredo": int(probe.nredo),
        "kmeans_n_iter": int(probe.n_iter_),
        KMEANS_ENGINE_COLUMN: str(getattr(probe, "algorithm_", "") or ""),
    }


def linear_context(probe, train_images: int | None = None) -> dict:
    """The :data:`LINEAR_COLUMNS` values of a fitted
    :class:`~stego_probe.probes.LinearProbe`: its ``solver``, ``train_images`` (the training
    images it drew from; None: unknown, e.g. a probe loaded from a file) and the iterations
    it ran (``n_iter_`` of L-BFGS, ``n_steps_`` of Adam; None when not recorded).

    Returns:
        ``{"linear_solver": str, "linear_train_images": int | "", "linear_n_iter": int | ""}``.
    """
    solver = str(getattr(probe, "solver", "") or "")
    n_iter = getattr(probe, "n_iter_", None) if solver in ("lbfgs", "tokens") else None
    if n_iter is None:
        n_iter = getattr(probe, "n_steps_", None)
    return {
        "linear_solver": solver,
        "linear_train_images": "" if train_images is None else int(train_images),
        "linear_n_iter": "" if n_iter is None else int(n_iter),
    }


def make_rows(context: Mapping, metrics: Mapping[str, float]) -> list[dict]:
    """Expand ``metrics`` (name -> value) into tidy rows sharing ``context`` columns.

    Args:
        context: values for the non-metric columns (missing ones are left empty).
        metrics: metric name -> float.

    Returns:
        list of dicts with exactly :data:`RESULT_COLUMNS` as keys.
    """
    from stego_probe import __version__

    unknown = set(context) - set(RESULT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown result columns {sorted(unknown)}; expected {RESULT_COLUMNS}")
    base = {c: context.get(c, "") for c in RESULT_COLUMNS}
    base["stego_probe_version"] = context.get("stego_probe_version", __version__)
    return [{**base, "metric": k, "value": float(v)} for k, v in metrics.items()]


def to_frame(rows: Iterable[Mapping]) -> pd.DataFrame:
    """Rows -> DataFrame with :data:`RESULT_COLUMNS` in order, typed as :func:`read_results`
    types a CSV (:func:`coerce_types`: ``crf`` bool, ``dim`` / ``seed`` int, ``value`` float,
    text ``str``; the :data:`KMEANS_COLUMNS` NaN where empty)."""
    return coerce_types(pd.DataFrame(list(rows), columns=RESULT_COLUMNS), name="rows")


def key_value(column: str, value) -> str:
    """The text form of one value in a row key, equal before and after a CSV round trip.

    The ``crf`` column through :func:`as_bool` (``True``, ``"True"``, ``"1"`` -> ``"true"``;
    empty -> ``"false"``; a value that is not a boolean is a ValueError). Otherwise: empty
    (None, NaN, ``""``, ``"nan"``) -> ``""``; in :data:`NUMERIC_COLUMNS` a number (``3``,
    ``3.0``, ``"3"`` -> ``"3"``; ``1e-4`` -> ``"0.0001"``); booleans as ``"true"`` /
    ``"false"``; anything else as its stripped text.

    Examples:
        >>> key_value("dim", 3.0), key_value("dim", "3"), key_value("crf", "True")
        ('3', '3', 'true')
        >>> key_value("kmeans_tol", float("nan")), key_value("method", " pca ")
        ('', 'pca')
    """
    if column == "crf":
        return "true" if as_bool(value) else "false"
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating) and math.isnan(float(value)):
        return ""
    text = str(value).strip()
    if text.lower() in ("", "nan"):
        return ""
    if column in NUMERIC_COLUMNS or isinstance(value, int | float | np.integer | np.floating):
        try:
            f = float(value)
        except (TypeError, ValueError):
            return text
        if math.isnan(f):
            return ""
        return str(int(f)) if f.is_integer() else repr(f)
    return text


def row_key(row: Mapping, columns: Sequence[str]) -> tuple[str, ...]:
    """The key of one result row (a mapping) over ``columns``: :func:`key_value` of each
    (missing columns count as empty). Two rows with equal keys measure the same thing when
    ``columns`` identify a measurement (:data:`IDENTITY_COLUMNS`, or the evaluate CLI's own
    point columns and ``metric``); :func:`append_csv` ``unique=`` compares these keys."""
    return tuple(key_value(c, row.get(c)) for c in columns)


def _key_strings(df: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """:func:`row_key` of every row of ``df``, joined into one string per row."""
    parts = [
        df[c].map(lambda v, c=c: key_value(c, v))
        if c in df.columns
        else pd.Series("", index=df.index)
        for c in columns
    ]
    out = parts[0]
    for p in parts[1:]:
        out = out + "\x1f" + p
    return out


def append_csv(
    rows: Iterable[Mapping], path: str | os.PathLike, unique: Sequence[str] | None = None
) -> pd.DataFrame:
    """Append rows to a results CSV atomically (write a temp file, then rename).

    An existing file is never truncated or left half-written: the new table is the old rows
    followed by the new ones.

    Args:
        rows: the new rows (dicts with :data:`RESULT_COLUMNS` keys).
        path: the CSV file (created with its parents if missing).
        unique: columns identifying a row: a new row whose key over them (:func:`row_key`,
            which normalises what a CSV round trip changes: ``3`` / ``3.0``, ``True`` /
            ``"True"``, NaN / empty) equals an existing row's is dropped, so appending the same
            rows twice leaves one copy (the first one written is kept). Sweeps pass
            :data:`IDENTITY_COLUMNS`; ``stego-probe evaluate`` its point columns and
            ``metric`` (they include the k-means protocol). None appends every row.

    Returns:
        the whole table after the append.
    """
    path = Path(path)
    new = to_frame(rows)
    if path.exists():
        old = read_results(path)
        if unique:
            seen = set(_key_strings(old, unique))
            new = new[~_key_strings(new, unique).isin(seen)]
            if new.empty:
                return old
        new = pd.concat([old, new], ignore_index=True)
    atomic_write(path, lambda tmp: new.to_csv(tmp, index=False))
    return new


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results CSV, check its columns and give them their types.

    Args:
        path: a CSV written by :func:`append_csv` (or any CSV with :data:`RESULT_COLUMNS`;
            the :data:`KMEANS_COLUMNS`, :data:`TRANSFER_COLUMNS` and :data:`LINEAR_COLUMNS`
            may be absent, as in tables written before they existed).

    Returns:
        DataFrame with :data:`RESULT_COLUMNS` first (in order), then any extra columns, typed
        by :func:`coerce_types`: ``crf`` bool; ``dim``, ``seed`` and the integral k-means
        columns int64 (float64 with NaN where a cell is empty, e.g. ``kmeans_niter`` of a
        ``linear`` row); ``value`` and ``kmeans_tol`` float64; text columns ``str`` with
        ``""`` for an empty cell (so ``df.match == ""`` selects the rows without matching).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a directory, not a readable CSV, lacks columns, or has a
            ``crf`` cell that is not a boolean (:func:`as_bool`) or a numeric cell that is not
            a number; the message names the file, the column and the value.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"results table {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; expected a results CSV file")
    # text columns and crf as text: a version "1.10" or an all-digit hash is not a number
    as_text = {c: str for c in (*TEXT_COLUMNS, "crf")}
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=as_text)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}: not a readable stego_probe results table (expected a CSV with columns "
            f"{', '.join(RESULT_COLUMNS[:3])}, ...): {msg}"
        ) from e
    optional = (*KMEANS_COLUMNS, *TRANSFER_COLUMNS, *LINEAR_COLUMNS, KMEANS_ENGINE_COLUMN)
    missing = [c for c in RESULT_COLUMNS if c not in df.columns and c not in optional]
    if missing:
        raise ValueError(f"{path}: not a stego_probe results table, missing columns {missing}")
    for c in KMEANS_COLUMNS:  # absent in tables written before they were added
        if c not in df.columns:
            df[c] = float("nan")
    for c in TRANSFER_COLUMNS:  # absent in tables written before they were added
        if c not in df.columns:
            df[c] = ""
    for c in LINEAR_COLUMNS:  # absent in tables written before they were added
        if c not in df.columns:
            df[c] = "" if c == "linear_solver" else float("nan")
    if KMEANS_ENGINE_COLUMN not in df.columns:
        df[KMEANS_ENGINE_COLUMN] = ""
    df = coerce_types(df, name=str(path))
    return df[RESULT_COLUMNS + [c for c in df.columns if c not in RESULT_COLUMNS]]


# ------------------------------------------------------------------------- resume check


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
    sides compared as :func:`key_value` (``True`` matches ``"True"`` / ``"true"``, ``3`` matches
    ``3.0`` / ``"3"``, empty matches NaN)."""
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

    The one resume check: ``method, dim, seed`` for a sweep point
    (:func:`stego_probe.sweep.done_points`), ``dataset, method, seed`` for a Table 2
    evaluation, ``dataset`` for a Figure 3 spectrum.

    Args:
        table: a results DataFrame; or the path of a results CSV (:func:`read_results`), where
            a path that does not exist holds no rows; or None (no rows).
        key_columns: the columns of the key, e.g. ``["method", "dim", "seed"]``.
        where: ``{column: value or list of values}``: keep only the rows matching every entry.
        exclude: ``{column: value or list of values}``: then drop the rows matching any entry.
            Values are compared as :func:`key_value` (the form that survives a CSV round trip:
            ``True`` = ``"true"``, ``3`` = ``3.0`` = ``"3"``).

    Returns:
        a set of tuples, one value per key column, as plain Python values (bool, int for
        integral numbers, float, str), so ``("pca", 3, 0) in done_keys(...)`` works whether the
        table came from a CSV or from memory.

    Raises:
        ValueError: ``key_columns`` is empty, or a key / filter column is not in the table.

    Examples:
        >>> df = pd.DataFrame({"method": ["pca", "pca", "rp"], "dim": [3, 3, 6],
        ...                    "crf": ["True", "False", "False"]})
        >>> sorted(done_keys(df, ["method", "dim"]))
        [('pca', 3), ('rp', 6)]
        >>> done_keys(df, ["method"], where={"crf": True})
        {('pca',)}
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
