"""Scatter/line plots of variants with matplotlib (Agg: no display needed).

``scatter_plot(series, path, title=, xlabel=, ylabel=)`` writes a PNG: each
:class:`Series` is a set of points in one colour and marker, joined by a line in
x order when ``line`` is set, each point optionally labelled; the legend sits to
the right of the axes.
"""

from __future__ import annotations

import math
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
) -> Path:
    """Draw ``series`` into a PNG at ``path`` (parent folders created); returns the path. Non-finite points are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=SIZE_INCHES, dpi=DPI)
    try:
        for s in series:
            labels = s.labels or [""] * len(s.points)
            finite = sorted((p, label) for p, label in zip(s.points, labels) if all(math.isfinite(v) for v in p))
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
        if xrange:
            axes.set_xlim(*xrange)
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
