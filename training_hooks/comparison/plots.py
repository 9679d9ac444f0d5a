"""Small scatter/line plots drawn with Pillow (no plotting library needed).

``scatter_plot(series, path, title=, xlabel=, ylabel=)`` writes a PNG: each
:class:`Series` is a set of points in one colour and marker, joined by a line in
x order when ``line`` is set, each point optionally labelled. Axes are linear;
ticks are "nice" steps (1, 2, 2.5, 5 x 10^k) covering the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip
SIZE = (800, 520)
MARGIN = (80, 40, 190, 60)  # left, top, right (legend), bottom, pixels


@dataclass
class Series:
    """Points ``(x, y)`` with optional labels; ``marker`` is ``circle``, ``square`` or ``triangle``."""

    name: str
    points: list[tuple[float, float]]
    labels: list[str] = field(default_factory=list)
    colour: tuple[int, int, int] = PALETTE[0]
    marker: str = "circle"
    line: bool = True


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` evenly spaced round values covering ``[low, high]``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value < high + step * 0.999:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, kind: str, colour, r: int = 5) -> None:
    if kind == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
    elif kind == "triangle":
        draw.polygon([(x, y - r - 1), (x + r + 1, y + r), (x - r - 1, y + r)], fill=colour)
    else:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def scatter_plot(series: list[Series], path: str | Path, *, title: str, xlabel: str, ylabel: str,
                 xrange: tuple[float, float] | None = None, yrange: tuple[float, float] | None = None) -> Path:  # fmt: skip
    """Draw ``series`` into a PNG at ``path`` (parent folders created); returns the path."""
    points = [p for s in series for p in s.points if all(math.isfinite(v) for v in p)]
    xs, ys = [p[0] for p in points] or [0.0, 1.0], [p[1] for p in points] or [0.0, 1.0]
    xticks = nice_ticks(*(xrange or (min(xs), max(xs))))
    yticks = nice_ticks(*(yrange or (min(0.0, min(ys)), max(ys))))
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = MARGIN
    width, height = SIZE[0] - left - right, SIZE[1] - top - bottom

    def to_px(x: float, y: float) -> tuple[float, float]:
        fx = (x - xticks[0]) / (xticks[-1] - xticks[0])
        fy = (y - yticks[0]) / (yticks[-1] - yticks[0])
        return left + fx * width, top + (1 - fy) * height

    for x in xticks:
        px, _ = to_px(x, yticks[0])
        draw.line((px, top, px, top + height), fill=(230, 230, 230))
        draw.text((px, top + height + 6), f"{x:g}", fill="black", font=font, anchor="mt")
    for y in yticks:
        _, py = to_px(xticks[0], y)
        draw.line((left, py, left + width, py), fill=(230, 230, 230))
        draw.text((left - 6, py), f"{y:g}", fill="black", font=font, anchor="rm")
    draw.rectangle((left, top, left + width, top + height), outline="black")
    draw.text((left + width / 2, 8), title, fill="black", font=font, anchor="mt")
    draw.text((left + width / 2, SIZE[1] - 18), xlabel, fill="black", font=font, anchor="mm")
    draw.text((left, top - 6), ylabel, fill="black", font=font, anchor="lb")

    for s in series:
        finite = [(p, lbl) for p, lbl in zip(s.points, s.labels or [""] * len(s.points))
                  if all(math.isfinite(v) for v in p)]  # fmt: skip
        finite.sort(key=lambda item: item[0])
        pixels = [to_px(*p) for p, _ in finite]
        if s.line and len(pixels) > 1:
            draw.line(pixels, fill=s.colour, width=2)
        for (px, py), (_, label) in zip(pixels, finite):
            _marker(draw, px, py, s.marker, s.colour)
            if label:
                draw.text((px + 7, py - 7), label, fill=(60, 60, 60), font=font, anchor="lb")
    for i, s in enumerate(series):
        y = top + 10 + i * 18
        _marker(draw, left + width + 20, y, s.marker, s.colour)
        draw.text((left + width + 32, y), s.name, fill="black", font=font, anchor="lm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
