"""The paper's qualitative claims, checked on a results table (what ``stego-probe demo`` prints).

Koenig et al. (2023) read their figures as five qualitative statements; :func:`check_claims`
tests each on the rows of a tidy results table (:mod:`stego_probe.results`) and says whether it
**holds**, **does not hold** or was **not measured** (the rows it needs are missing), with the
numbers behind the verdict. :func:`format_verdicts` prints one line per claim.

1. k-means, at each small D: STEGO's score above PCA's and above RP's, error bars separated.
2. k-means: STEGO's best score over D above the raw features' (full width), separated.
3. linear probe, at each small D: STEGO not below PCA (bars overlap or STEGO above) and PCA
   above RP (separated).
4. linear probe: PCA and RP at full width (their largest D, equal to the backbone width) agree
   with the raw features: ``|mean difference| <= max(1 point, combined std)``.
5. distinctness: STEGO's codes have the highest silhouette, above PCA's and RP's at the same
   small D and the raw features', separated.

Seeds are aggregated as in the figures (:func:`stego_probe.plots.tables.aggregate_seeds`: a
repeated seed counts once, the last wins): mean ± **sample** std (``ddof=1``) over the seeds; one
seed has no error bar (std 0), so "separated" is then a plain comparison of the means. Error bars
of ``a`` and ``b`` are *separated*, ``a`` above ``b``, when ``a.mean - a.std > b.mean + b.std``.
A claim checked at several D holds only if it holds at every D; one that fails anywhere does not
hold; otherwise, if rows are missing at some D, it is not measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Columns :func:`check_claims` needs.
NEEDED_COLUMNS = ("method", "dim", "seed", "probe", "metric", "value")

#: The verdicts, in the ``verdict`` column.
VERDICTS = ("holds", "does not hold", "not measured")

#: The widths that count as "small D" by default: those present up to this one.
SMALL_DIM_MAX = 12

#: Printed by the demo before the verdicts: what the synthetic demo can and cannot show.
FRAMING = (
    "This is a synthetic world: generated scenes seen, by default, through a hand-crafted "
    "descriptor backbone, not DINO on the paper's datasets. It illustrates the mechanism the "
    "paper's claims rest on: most of the feature variance is nuisance, and the semantic "
    "directions are few, so the top principal components and random projections need not keep "
    "them while STEGO's head is trained to. The paper's numbers need DINO features of "
    "CocoStuff, Cityscapes and Potsdam: see experiments/ and 'A first real run' in "
    "docs/getting_started.md."
)


@dataclass(frozen=True)
class _Stat:
    """One point: mean and sample std over ``n`` seeds (std 0 for one seed)."""

    mean: float
    std: float
    n: int

    def text(self, decimals: int) -> str:
        if self.n > 1:
            return f"{self.mean:.{decimals}f} ± {self.std:.{decimals}f}"
        return f"{self.mean:.{decimals}f}"


def _above(a: _Stat, b: _Stat) -> bool:
    """``a``'s error bar entirely above ``b``'s."""
    return a.mean - a.std > b.mean + b.std


def _relation(a: _Stat, b: _Stat) -> str:
    """Why ``a`` is not separated above ``b`` ("" when it is)."""
    if _above(a, b):
        return ""
    return " (bars overlap)" if a.mean > b.mean else " (not above)"


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    from stego_probe.results import coerce_types

    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df: expected a pandas DataFrame of results rows, got {type(df)}")
    missing = [c for c in NEEDED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"df: results table lacks column(s) {missing}; check_claims needs "
            f"{list(NEEDED_COLUMNS)} (RESULT_COLUMNS)"
        )
    d = coerce_types(df.reset_index(drop=True))
    keep = np.isfinite(d["value"].to_numpy(float)) & d["dim"].notna().to_numpy()
    keep &= d["seed"].notna().to_numpy()
    if "crf" in d.columns:
        keep &= ~d["crf"].to_numpy(bool)  # the paper's sweep: no CRF
    d = d.loc[keep]
    for col in ("dataset", "mode"):
        if col in d.columns and d[col].nunique() > 1:
            vals = sorted(map(str, d[col].unique()))
            raise ValueError(
                f"df: the table mixes {col} values {vals}; check one at a time, e.g. "
                f"df[df[{col!r}] == {vals[0]!r}]"
            )
    d = d.copy()
    d["dim"] = d["dim"].astype(float).astype(int)
    return d


def _stats(d: pd.DataFrame, probe: str, metric: str) -> dict[tuple[str, int], _Stat]:
    """(method, dim) -> seed statistics of ``metric`` under ``probe``."""
    from stego_probe.plots.tables import aggregate_seeds

    sel = d[(d["probe"] == probe) & (d["metric"] == metric)]
    if sel.empty:
        return {}
    agg = aggregate_seeds(sel, ["method", "dim"])
    return {
        (str(m), int(k)): _Stat(float(mu), 0.0 if pd.isna(s) else float(s), int(n))
        for m, k, mu, s, n in zip(agg["method"], agg["dim"], agg["mean"], agg["std"], agg["n"])
    }


def _join_dims(keys: list[str]) -> str:
    return ", ".join(k.removeprefix("D=") for k in keys)


class _Outcomes:
    """Per-item outcomes of one claim (True, False or None = not measured) and their numbers.

    Items are keyed ``"D=3"`` (a claim checked at each small D) or by a method label.
    """

    def __init__(self, by_dim: bool = True):
        self.items: list[tuple[str, bool | None, str]] = []
        self.ns: list[int] = []
        self.by_dim = by_dim

    def add(self, key, ok: bool | None, text: str, stats: Iterable[_Stat] = ()) -> None:
        self.items.append((f"D={key}" if self.by_dim else str(key), ok, text))
        self.ns += [s.n for s in stats]

    def missing(self, key, what: str, methods: Iterable[str]) -> None:
        self.add(key, None, f"no {what} rows of " + ", ".join(methods))

    def result(self, nothing: str) -> tuple[str, str]:
        """(verdict, evidence); ``nothing`` is the evidence when there are no items."""
        if not self.items:
            return "not measured", nothing
        groups = {
            word: [k for k, o, _ in self.items if o is flag]
            for word, flag in (("holds", True), ("not", False), ("not measured", None))
        }
        if groups["not"]:
            verdict = "does not hold"
        else:
            verdict = "not measured" if groups["not measured"] else "holds"
        if not self.by_dim and len(self.items) == 1:  # one comparison: no keys to list
            word = {True: "holds", False: "does not hold", None: "not measured"}[self.items[0][1]]
            return verdict, f"{word} ({self.items[0][2]})" + _seed_note(self.ns)
        parts = []
        for word, keys in groups.items():
            if keys and self.by_dim:
                parts.append(f"{word} at D=" + ", ".join(k.removeprefix("D=") for k in keys))
            elif keys:
                parts.append(f"{word} for " + ", ".join(keys))
        texts = [t for _, _, t in self.items]
        if len(texts) > 1 and len(set(texts)) == 1:  # e.g. the same rows missing at every D
            detail = texts[0]
        else:
            detail = "; ".join(f"{k}: {t}" for k, _, t in self.items)
        return verdict, "; ".join(parts) + f" ({detail})" + _seed_note(self.ns)


def _seed_note(ns: list[int]) -> str:
    if not ns:
        return ""
    lo, hi = min(ns), max(ns)
    if hi == 1:
        return "; n=1 seed (no error bars)"
    return f"; n={lo if lo == hi else f'{lo}–{hi}'} seeds"


def _decimals(metric: str) -> int:
    """Percent metrics with 1 decimal, natural-unit statistics with 3."""
    return 1 if metric in ("miou", "accuracy") or ":" in metric else 3


def _small_dims(d: pd.DataFrame, small_dims, metric: str) -> list[int]:
    if small_dims is None:
        points = d["method"].isin(["stego", "pca", "rp"]) & (
            (d["probe"].isin(["kmeans", "linear"]) & (d["metric"] == metric))
            | ((d["probe"] == "none") & (d["metric"] == "silhouette"))
        )  # not e.g. the PCA spectrum's explained_variance_ratio rows (dim = component)
        dims = d.loc[points, "dim"]
        return sorted({int(k) for k in dims if int(k) <= SMALL_DIM_MAX})
    try:
        dims = sorted({int(k) for k in small_dims})
    except (TypeError, ValueError):
        raise ValueError(f"small_dims: expected widths D (ints), got {small_dims!r}") from None
    if any(k < 1 for k in dims):
        raise ValueError(f"small_dims: widths must be >= 1, got {dims}")
    return dims


def _raw(stats: dict[tuple[str, int], _Stat]) -> tuple[int, _Stat] | None:
    """The raw features' point (method ``dino``) at full width: (its largest D, statistics)."""
    dims = [k for m, k in stats if m == "dino"]
    return (max(dims), stats[("dino", max(dims))]) if dims else None


def _stego_above(stats, dims, others, label, what: str, dec: int, raw=False) -> _Outcomes:
    """At each D: STEGO separated above each of ``others`` at that D (and the raw features)."""
    out = _Outcomes()
    full = _raw(stats) if raw else None
    for k in dims:
        gone = [label(m) for m in ("stego", *others) if (m, k) not in stats]
        if raw and full is None:
            gone.append(label("dino"))
        if gone:
            out.missing(k, what, gone)
            continue
        a = stats[("stego", k)]
        cmp = [(label(m), stats[(m, k)], "") for m in others]
        if full is not None:
            cmp.append((label("dino"), full[1], f" at D={full[0]}"))
        text = f"STEGO {a.text(dec)} vs " + ", ".join(
            f"{name} {b.text(dec)}{at}{_relation(a, b)}" for name, b, at in cmp
        )
        out.add(k, all(_above(a, b) for _, b, _ in cmp), text, [a, *(b for _, b, _ in cmp)])
    return out


def _claim_best_stego(km, label, metric: str, dec: int) -> tuple[_Outcomes, str]:
    """Claim 2: STEGO's best D above the raw features at full width (k-means)."""
    out = _Outcomes(by_dim=False)
    stego = {k: s for (m, k), s in km.items() if m == "stego"}
    raw = _raw(km)
    if stego and raw:
        best = max(stego, key=lambda k: (stego[k].mean, -k))  # ties: the smallest D
        a, (w, b) = stego[best], raw
        text = (
            f"STEGO {a.text(dec)} at D={best} vs {label('dino')} {b.text(dec)} at D={w}"
            f"{_relation(a, b)}"
        )
        out.add("best D", _above(a, b), text, [a, b])
    gone = [label(m) for m, there in (("stego", stego), ("dino", raw)) if not there]
    return out, f"no k-means {metric} rows of " + ", ".join(gone)


def _claim_linear_order(lin, dims, label, metric: str, dec: int) -> _Outcomes:
    """Claim 3: at each D, STEGO not below PCA (bars) and PCA separated above RP."""
    out = _Outcomes()
    for k in dims:
        gone = [label(m) for m in ("stego", "pca", "rp") if (m, k) not in lin]
        if gone:
            out.missing(k, f"linear {metric}", gone)
            continue
        s, p, r = lin[("stego", k)], lin[("pca", k)], lin[("rp", k)]
        not_below = s.mean + s.std >= p.mean - p.std
        below = " (STEGO below, bars separated)" if s.n > 1 or p.n > 1 else " (STEGO below)"
        text = (
            f"STEGO {s.text(dec)} vs PCA {p.text(dec)}"
            f"{'' if not_below else below}; "
            f"PCA vs RP {r.text(dec)}{_relation(p, r)}"
        )
        out.add(k, not_below and _above(p, r), text, [s, p, r])
    return out


def _claim_full_width(lin, label, metric: str, dec: int) -> tuple[_Outcomes, str]:
    """Claim 4: PCA and RP at full width within max(1, combined std) of the raw features."""
    out = _Outcomes(by_dim=False)
    raw = _raw(lin)
    have = [m for m in ("pca", "rp") if any(mm == m for mm, _ in lin)]
    for m in have if raw else ():
        w, b = raw
        largest = max(k for mm, k in lin if mm == m)
        if largest != w:
            out.add(label(m), None, f"largest D is {largest}, not the full width {w}")
            continue
        a = lin[(m, w)]
        diff, tol = abs(a.mean - b.mean), max(1.0, math.hypot(a.std, b.std))
        text = (
            f"{a.text(dec)} vs {label('dino')} {b.text(dec)} at D={w}: "
            f"|diff| {diff:.{dec}f} {'<=' if diff <= tol else '>'} {tol:.{dec}f}"
        )
        out.add(label(m), diff <= tol, text, [a, b])
    gone = ([] if raw else [label("dino")]) + ([] if have else ["PCA", "RP"])
    return out, f"no linear {metric} rows of " + ", ".join(gone)


def check_claims(
    df: pd.DataFrame, *, small_dims: Iterable[int] | None = None, metric: str = "miou"
) -> pd.DataFrame:
    """The paper's five qualitative claims (module docstring) checked on a results table.

    Args:
        df: results rows with at least ``method`` (``dino`` = the raw features, at full width;
            ``pca``, ``rp``, ``stego``), ``dim``, ``seed``, ``probe`` (``kmeans``, ``linear``,
            ``none`` for distinctness), ``metric`` and ``value``. CRF rows (``crf`` true) and
            non-finite values are ignored; repeated seeds count once (the last wins).
        small_dims: the widths D of the per-D claims (1, 3, 5); default: every D <= 12 of the
            STEGO / PCA / RP rows.
        metric: the segmentation metric of claims 1–4 (``miou`` or ``accuracy``, in percent:
            claim 4's tolerance is 1 point). Claim 5 always uses ``silhouette``.

    Returns:
        one row per claim: ``claim`` (int 1–5), ``statement``, ``verdict`` (one of
        :data:`VERDICTS`) and ``evidence`` (the numbers: mean ± sample std over seeds per
        point, the D at which the claim holds and fails, the seed count; or what is missing).

    Raises:
        ValueError: not a DataFrame; a column of :data:`NEEDED_COLUMNS` missing (named);
            several datasets or evaluation modes in one table; a series mixing backbones,
            weights, match or split (:func:`stego_probe.plots.tables.aggregate_seeds`); bad
            ``small_dims``.

    Examples:
        >>> rows = [("stego", 3, s, "kmeans", "miou", v) for s, v in enumerate([19, 20, 21])]
        >>> rows += [("pca", 3, s, "kmeans", "miou", v) for s, v in enumerate([14, 15, 16])]
        >>> rows += [("rp", 3, s, "kmeans", "miou", 10.0) for s in range(3)]
        >>> cols = ["method", "dim", "seed", "probe", "metric", "value"]
        >>> table = check_claims(pd.DataFrame(rows, columns=cols))
        >>> table.loc[0, "verdict"]
        'holds'
        >>> print(table.loc[0, "evidence"])
        holds at D=3 (D=3: STEGO 20.0 ± 1.0 vs PCA 15.0 ± 1.0, RP 10.0 ± 0.0); n=3 seeds
        >>> table["verdict"].tolist()[1:]
        ['not measured', 'not measured', 'not measured', 'not measured']
    """
    from stego_probe.plots.labels import METRIC_LABELS, method_label

    d = _prepare(df)
    dims = _small_dims(d, small_dims, metric)
    dec = _decimals(metric)
    name = METRIC_LABELS.get(metric, metric)

    def label(m: str) -> str:
        return method_label(m, d)

    if small_dims is None:
        no_small = f"no D <= {SMALL_DIM_MAX} among the STEGO / PCA / RP rows"
    else:
        no_small = "small_dims is empty"
    at = f"at each small D ({', '.join(map(str, dims)) or 'none'})"
    km, lin = _stats(d, "kmeans", metric), _stats(d, "linear", metric)
    sil = _stats(d, "none", "silhouette")
    best, no_best = _claim_best_stego(km, label, metric, dec)
    full, no_full = _claim_full_width(lin, label, metric, dec)
    rows = [
        (
            f"k-means {name} {at}: STEGO above PCA and above RP, error bars separated",
            _stego_above(km, dims, ("pca", "rp"), label, f"k-means {metric}", dec),
            no_small,
        ),
        (
            f"k-means {name}: STEGO's best over D above the raw features' (full width), "
            "error bars separated",
            best,
            no_best,
        ),
        (
            f"linear-probe {name} {at}: STEGO not below PCA (bars overlap or above), "
            "PCA above RP (separated)",
            _claim_linear_order(lin, dims, label, metric, dec),
            no_small,
        ),
        (
            f"linear-probe {name}: PCA and RP at full width equal the raw features "
            "(|mean difference| <= max(1 point, combined std))",
            full,
            no_full,
        ),
        (
            f"silhouette {at}: STEGO's codes above PCA's, RP's (same D) and the raw features', "
            "error bars separated",
            _stego_above(sil, dims, ("pca", "rp"), label, "silhouette", 3, raw=True),
            no_small,
        ),
    ]
    out = []
    for i, (statement, outcomes, nothing) in enumerate(rows, start=1):
        verdict, evidence = outcomes.result(nothing)
        out.append((i, statement, verdict, evidence))
    return pd.DataFrame(out, columns=["claim", "statement", "verdict", "evidence"])


def format_verdicts(table: pd.DataFrame) -> str:
    """One line per claim of a :func:`check_claims` table: ``claim N <verdict>: statement.
    Evidence: ...``.

    Raises:
        ValueError: ``table`` lacks a ``claim``, ``statement``, ``verdict`` or ``evidence``
            column.

    Examples:
        >>> t = pd.DataFrame([(1, "STEGO above PCA", "holds", "20.0 vs 15.0")],
        ...                  columns=["claim", "statement", "verdict", "evidence"])
        >>> print(format_verdicts(t))
        claim 1 holds: STEGO above PCA. Evidence: 20.0 vs 15.0
    """
    need = ["claim", "statement", "verdict", "evidence"]
    missing = [c for c in need if c not in getattr(table, "columns", [])]
    if missing:
        raise ValueError(f"table: lacks column(s) {missing}; expected check_claims' {need}")
    return "\n".join(
        f"claim {c} {v}: {s}. Evidence: {e}"
        for c, s, v, e in zip(
            table["claim"], table["statement"], table["verdict"], table["evidence"]
        )
    )
