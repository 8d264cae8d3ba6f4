"""The operator page's plots as SVG geometry: pure functions from numbers to shapes (rectangles,
polyline points, axis ticks with labels); templates/_plots.html draws them. No charting library: three
plot shapes, read at a glance, server-side, no script in the browser.

Rules: the y axis starts at 0 and ends at a "nice" number (1, 2 or 5 times a power of ten) at or above
the largest value, so bars compare by length; an empty series still draws its axes and says "no data".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 28
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
COLORS = {"bounce": "#c0392b", "autoreply": "#2471a3", "challenge": "#7d3c98", "callout": "#d68910"}
OTHER_COLOR = "#566573"


@dataclass
class Plot:
    title: str
    width: int = WIDTH
    height: int = HEIGHT
    y_ticks: list[tuple[float, str]] = field(default_factory=list)  # (y, label)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)  # (x, label)
    bars: list[tuple[float, float, float, float, str, str]] = field(
        default_factory=list
    )  # x, y, w, h, color, tip
    line: str = ""  # polyline points
    labels: list[tuple[float, float, str]] = field(default_factory=list)  # x, y, text (bar names)
    legend: list[tuple[str, str]] = field(default_factory=list)  # (color, name)
    empty: bool = False
    left: int = LEFT
    top: int = TOP
    plot_w: int = PLOT_W
    plot_h: int = PLOT_H


def nice_max(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above `value` (1 for nothing)."""
    if value <= 1:
        return 1
    power = 10.0 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value)


def steps(top_value: float) -> int:
    """How many grid steps up to `top_value`: whole numbers for small counts, else round fifths or
    quarters (2 x 10^k)."""
    if top_value <= 5:
        return int(top_value)
    return 4 if str(int(top_value))[0] == "2" else 5


def _y_axis(top_value: float) -> list[tuple[float, str]]:
    n = steps(top_value)
    return [(TOP + PLOT_H - PLOT_H * i / n, f"{top_value * i / n:g}") for i in range(n + 1)]


def _day_ticks(days: list[float], x_of: list[float]) -> list[tuple[float, str]]:
    step = max(1, len(days) // 6)
    return [(x_of[i], time.strftime("%m-%d", time.gmtime(days[i]))) for i in range(0, len(days), step)]


def line_plot(title: str, points: list[tuple[float, int]]) -> Plot:
    """A value per day as a line (listings alive)."""
    plot = Plot(title, empty=not any(v for _, v in points))
    top_value = nice_max(max((v for _, v in points), default=0))
    n = max(len(points) - 1, 1)
    xs = [LEFT + PLOT_W * i / n for i in range(len(points))]
    ys = [TOP + PLOT_H - PLOT_H * v / top_value for _, v in points]
    plot.line = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    plot.y_ticks, plot.x_ticks = _y_axis(top_value), _day_ticks([d for d, _ in points], xs)
    return plot


def stacked_bars(title: str, days: list[float], series: dict[str, list[int]]) -> Plot:
    """Per day, one bar stacked by kind (hits per day by kind)."""
    totals = [sum(col) for col in zip(*series.values(), strict=True)] if series else [0] * len(days)
    top_value = nice_max(max(totals, default=0))
    plot = Plot(title, empty=not any(totals))
    slot = PLOT_W / max(len(days), 1)
    xs = [LEFT + slot * i for i in range(len(days))]
    base = [0] * len(days)
    for kind, values in series.items():
        color = COLORS.get(kind, OTHER_COLOR)
        plot.legend.append((color, kind))
        for i, v in enumerate(values):
            if v:
                h = PLOT_H * v / top_value
                y = TOP + PLOT_H - PLOT_H * base[i] / top_value - h
                day = time.strftime("%Y-%m-%d", time.gmtime(days[i]))
                plot.bars.append((xs[i] + slot * 0.1, y, slot * 0.8, h, color, f"{day}: {v} {kind}"))
                base[i] += v
    plot.y_ticks, plot.x_ticks = _y_axis(top_value), _day_ticks(days, [x + slot / 2 for x in xs])
    return plot


def ranked_bars(title: str, items: list[tuple[str, int]]) -> Plot:
    """Horizontal bars, largest first, each named (top sources)."""
    label_w = 150
    top_value = nice_max(max((n for _, n in items), default=0))
    height = TOP + BOTTOM + 22 * max(len(items), 1)
    plot = Plot(title, height=height, empty=not items, left=LEFT + label_w, plot_w=PLOT_W - label_w)
    plot.plot_h = height - TOP - BOTTOM
    for i, (name, n) in enumerate(items):
        y = TOP + 22 * i + 3
        w = plot.plot_w * n / top_value
        plot.bars.append((plot.left, y, w, 16, OTHER_COLOR, f"{name}: {n} hits"))
        plot.labels.append((plot.left - 6, y + 12, f"{name} ({n})"))
    n = steps(top_value)
    plot.x_ticks = [(plot.left + plot.plot_w * i / n, f"{top_value * i / n:g}") for i in range(n + 1)]
    return plot
