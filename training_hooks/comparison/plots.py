"""Scatter/line plots of variants with matplotlib (Agg: no display needed).

``scatter_plot(series, path, title=, xlabel=, ylabel=)`` writes a PNG: each
:class:`Series` is a set of points in one colour and marker, joined by a line in
x order when ``line`` is set, each point optionally labelled; the legend sits to
the right of the axes. ``xscale="log"`` with ``xticks`` (labelled as percents when
``xpercent``) spreads small ratios out instead of squashing them at the left edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PALETTE = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
MARKERS = {"circle": "o", "square": "s", "triangle": "^"}
SIZE_INCHES, DPI = (8.0, 5.2), 100  # 800 x 520 pixels
XSCALES = ("linear", "log")


@dataclass
class Series:
    """Points ``(x, y)`` with optional labels; ``marker`` is ``circle``, ``square`` or ``triangle``."""

    name: str
    points: list[tuple[float, float]]
    labels: list[str] = field(default_factory=list)
    colour: tuple[int, int, int] = PALETTE[0]
    marker: str = "circle"
    line: bool = True


def scatter_plot(
    series: list[Series],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xrange: tuple[float, float] | None = None,
    yrange: tuple[float, float] | None = None,
    xscale: str = "linear",
    xticks: Sequence[float] | None = None,
    xpercent: bool = False,
) -> Path:
    """Draw ``series`` into a PNG at ``path`` (parent folders created); returns the path.

    Non-finite points are skipped, and on a log x axis so are points with ``x <= 0``.
    ``xscale``, ``xrange``, ``xticks`` and ``xpercent`` go to :func:`set_x_axis`.
    """
    check_x_axis(xscale, xrange)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=SIZE_INCHES, dpi=DPI)
    try:
        for s in series:
            labels = s.labels or [""] * len(s.points)
            finite = sorted(
                (p, label)
                for p, label in zip(s.points, labels)
                if all(math.isfinite(v) for v in p) and (xscale != "log" or p[0] > 0)
            )
            xs, ys = [p[0] for p, _ in finite], [p[1] for p, _ in finite]
            colour = tuple(c / 255 for c in s.colour)
            axes.plot(
                xs,
                ys,
                linestyle="-" if s.line else "none",
                marker=MARKERS.get(s.marker, "o"),
                color=colour,
                label=s.name,
            )
            for (x, y), label in finite:
                if label:
                    axes.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8, color="0.25")
        set_x_axis(axes, xrange=xrange, xscale=xscale, xticks=xticks, percent=xpercent)
        if yrange:
            axes.set_ylim(*yrange)
        axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
        axes.grid(True, color="0.9")
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
    finally:
        pyplot.close(figure)
    return path


def percent_label(value: float) -> str:
    """A ratio as a percent tick label: ``0.03`` -> ``3%``, ``0.125`` -> ``12.5%``."""
    return f"{value * 100:.4g}%"


def check_x_axis(xscale: str, xrange: tuple[float, float] | None = None) -> None:
    """:class:`ValueError` unless ``xscale`` is known and, on a log axis, ``xrange`` is positive."""
    if xscale not in XSCALES:
        raise ValueError(f"xscale must be one of {', '.join(XSCALES)}, got {xscale!r}")
    if xscale == "log" and xrange and min(xrange) <= 0:
        raise ValueError(f"a log x axis needs a positive range, got {xrange}")


def set_x_axis(
    axes,
    *,
    xrange: tuple[float, float] | None = None,
    xscale: str = "linear",
    xticks: Sequence[float] | None = None,
    percent: bool = False,
) -> None:
    """Configure the x axis of matplotlib ``axes``: scale, limits and (only) the given ticks.

    With ``xticks`` the axis shows exactly those ticks, labelled ``f"{x:g}"`` or as
    percents (:func:`percent_label`); a log axis then draws no minor tick labels.
    """
    from matplotlib.ticker import NullFormatter

    check_x_axis(xscale, xrange)
    axes.set_xscale(xscale)
    if xrange:
        axes.set_xlim(*xrange)
    if xticks is not None:
        ticks = [float(t) for t in xticks]
        axes.set_xticks(ticks, labels=[percent_label(t) if percent else f"{t:g}" for t in ticks])
        axes.xaxis.set_minor_formatter(NullFormatter())
