"""How the figures look: series styles, the palette, the seaborn theme and legend placement.

What is drawn is decided elsewhere (:mod:`stego_probe.plots.dims`, ``.spectrum``, ``.maps``);
what it is called is :mod:`stego_probe.plots.labels`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

from matplotlib import rc_context


@dataclass(frozen=True)
class SeriesStyle:
    """How one series of Figure 4 is drawn (PROTOCOL §7.2 style table).

    Attributes:
        label: the paper's legend label (PROTOCOL §7.2). Figures label series from the table's
            provenance instead (:func:`stego_probe.plots.labels.method_label`, CRF wording
            only with CRF rows).
        marker: matplotlib marker.
        linestyle: matplotlib line style, ``""`` for markers only.
        color: index into the seaborn ``"colorblind"`` palette.
        hline: also draw a dashed horizontal line at the (single) value.
        order: legend order.
        paper_mode: the evaluation mode the paper used for this series.
    """

    label: str
    marker: str
    linestyle: str
    color: int
    hline: bool = False
    order: float = 100.0
    paper_mode: str = "pixel"


_STYLES = {
    ("stego_released", True): SeriesStyle("STEGO (theirs)", "v", "", 3, False, 0, "pixel_flip"),
    ("stego_released", False): SeriesStyle(
        "STEGO (theirs) w/o CRF", "o", "--", 3, True, 1, "pixel_flip"
    ),
    ("stego", False): SeriesStyle("STEGO", "x", "-", 3, False, 2),
    ("dino", True): SeriesStyle("DINO (ours)", "v", "", 0, False, 3, "pixel_flip"),
    ("dino", False): SeriesStyle("DINO (ours) w/o CRF", "o", "--", 0, True, 4, "pixel"),
    ("pca", False): SeriesStyle("PCA", "x", "-", 2, False, 5),
    ("rp", False): SeriesStyle("RP", "x", "-", 6, False, 6),
    ("hnne", False): SeriesStyle("h-NNE", "x", "-", 8, False, 7),
    ("rp_sparse", False): SeriesStyle("RP (sparse)", "x", "-", 5, False, 8),
    ("umap", False): SeriesStyle("UMAP", "x", "-", 4, False, 9),
}
_SPARE_COLORS = (1, 7, 9)


def series_style(method: str, crf: bool) -> SeriesStyle:
    """Style of the Figure 4 series ``(method, crf)``.

    The paper's series follow PROTOCOL §7.2; a sweep method evaluated with CRF gets
    ``"<name> + CRF"`` with a dotted line; unknown methods get a spare palette colour chosen
    deterministically from their name.

    Args:
        method: results-table method (``stego``, ``pca``, ``rp``, ``dino``, ``stego_released`` ...).
        crf: whether the rows were evaluated with the dense CRF.

    Returns:
        :class:`SeriesStyle`.
    """
    crf = bool(crf)
    if (method, crf) in _STYLES:
        return _STYLES[(method, crf)]
    if (method, False) in _STYLES and crf:
        base = _STYLES[(method, False)]
        return SeriesStyle(f"{base.label} + CRF", "v", ":", base.color, False, base.order + 0.5)
    color = _SPARE_COLORS[sum(method.encode()) % len(_SPARE_COLORS)]
    label = method + (" + CRF" if crf else "")
    return SeriesStyle(label, "v" if crf else "x", ":" if crf else "-", color, False, 50.0)


def title_chars(fig_width: float) -> int:
    """Characters of a small-font legend title line that fit in ``fig_width`` inches."""
    return max(30, int(11 * fig_width))


def colorblind_palette() -> list[tuple[float, float, float]]:
    """The seaborn ``"colorblind"`` palette: 10 RGB triples in [0, 1].

    :attr:`SeriesStyle.color` indexes it.
    """
    import seaborn as sns

    return list(sns.color_palette("colorblind"))


@contextlib.contextmanager
def theme():
    """Seaborn darkgrid theme for the duration of a figure's construction only.

    Use as ``with theme() as palette:``; yields :func:`colorblind_palette`. The previous
    rcParams are restored on exit, so user settings are left untouched.
    """
    import seaborn as sns

    with rc_context():
        sns.set_theme(style="darkgrid", palette="colorblind")
        yield colorblind_palette()


def legend_rect_bottom(n_entries: int, ncol: int, fig_height: float) -> float:
    """Bottom of the axes area (figure fraction) that leaves room for a lower-centre legend.

    Args:
        n_entries: legend entries (count a title line as ``ncol`` entries).
        ncol: legend columns.
        fig_height: figure height in inches.

    Returns:
        the ``rect`` bottom for ``fig.tight_layout``, at least 0.13.
    """
    rows = max(1, math.ceil(n_entries / ncol))
    return max(0.13, (0.2 + 0.22 * rows) / fig_height)


def finish_legend(fig, legend: dict, title: str = "", **kw):
    """Draw a figure legend from ``{label: (order, handle)}``, sorted by order then label.

    Args:
        fig: the figure.
        legend: label -> (sort key, matplotlib artist), as collected while drawing the panels.
        title: legend title (small font); none if empty.
        **kw: passed to ``Figure.legend`` (``loc``, ``ncol`` ...).

    Returns:
        the ``matplotlib.legend.Legend``.
    """
    items = sorted(legend.items(), key=lambda kv: (kv[1][0], kv[0]))
    handles = [h for _, (_, h) in items]
    labels = [lab for lab, _ in items]
    return fig.legend(handles, labels, title=title or None, title_fontsize="small", **kw)
