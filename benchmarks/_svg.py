"""A grouped bar chart with range whiskers, as a standalone SVG string.

Hand-written, so the suite needs no plotting library: a title, a y axis
with round ticks, one group of bars per x value, one colour per series, a
whisker from the lowest to the highest round, and a legend, one series a
line, below the plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

WIDTH = 720
PLOT_HEIGHT = 260
MARGIN_LEFT = 70
MARGIN_RIGHT = 20
MARGIN_TOP = 62
AXIS_SPACE = 40  # below the plot: the group labels
LEGEND_ROW = 18
PALETTE = ("#9aa0a6", "#1a73e8", "#0b8043", "#e8710a", "#a142f4", "#d93025")

# (median, low, high) for one bar.
Bar = tuple[float, float, float]


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return float(factor * magnitude)
    return 10.0 * magnitude


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == 0 else f"{value:g}"


def grouped_bars(
    *,
    title: str,
    subtitle: str = "",
    y_label: str,
    groups: Sequence[str],
    series: Sequence[tuple[str, Sequence[Bar | None]]],
) -> str:
    """``series`` is (label, one bar per group, or None where not measured)."""
    tops = [bar[2] for _, bars in series for bar in bars if bar is not None]
    top = max([*tops, 1.0])
    step = _nice_step(top)
    y_max = step * math.ceil(top / step)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = PLOT_HEIGHT
    height = MARGIN_TOP + plot_h + AXIS_SPACE + LEGEND_ROW * len(series) + 10

    def y(value: float) -> float:
        return MARGIN_TOP + plot_h * (1 - value / y_max)

    out = _opening(title, subtitle, height)
    tick = 0.0
    while tick <= y_max + step / 2:
        ty = y(tick)
        out.append(
            f'<line x1="{MARGIN_LEFT}" y1="{ty:.1f}" x2="{WIDTH - MARGIN_RIGHT}" y2="{ty:.1f}" '
            'stroke="#e0e0e0"/>'
        )
        out.append(
            f'<text x="{MARGIN_LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>'
        )
        tick += step
    out.append(
        f'<text transform="translate(16 {MARGIN_TOP + plot_h / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )

    group_w = plot_w / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for g, group in enumerate(groups):
        left = MARGIN_LEFT + g * group_w + group_w * 0.1
        for s, (label, bars) in enumerate(series):
            bar = bars[g] if g < len(bars) else None
            if bar is None:
                continue
            value, low, high = bar
            colour = PALETTE[s % len(PALETTE)]
            x = left + s * bar_w
            out.append(
                f'<rect x="{x + 2:.1f}" y="{y(value):.1f}" width="{bar_w - 4:.1f}" '
                f'height="{y(0) - y(value):.1f}" fill="{colour}">'
                f"<title>{escape(label)}: {_fmt(value)}</title></rect>"
            )
            mid = x + bar_w / 2
            out.append(
                f'<path d="M{mid:.1f} {y(low):.1f}V{y(high):.1f}M{mid - 5:.1f} {y(low):.1f}'
                f'h10M{mid - 5:.1f} {y(high):.1f}h10" stroke="#202124" fill="none"/>'
            )
            out.append(
                f'<text x="{mid:.1f}" y="{y(high) - 5:.1f}" text-anchor="middle" '
                f'font-size="10">{_fmt(value)}</text>'
            )
        out.append(
            f'<text x="{MARGIN_LEFT + (g + 0.5) * group_w:.1f}" y="{y(0) + 18:.1f}" '
            f'text-anchor="middle">{escape(group)}</text>'
        )
    out.append(
        f'<line x1="{MARGIN_LEFT}" y1="{y(0):.1f}" x2="{WIDTH - MARGIN_RIGHT}" y2="{y(0):.1f}" '
        'stroke="#5f6368"/>'
    )

    for s, (label, _) in enumerate(series):
        lx = MARGIN_LEFT
        ly = MARGIN_TOP + plot_h + AXIS_SPACE + s * LEGEND_ROW
        out.append(
            f'<rect x="{lx:.1f}" y="{ly - 10:.1f}" width="12" height="12" '
            f'fill="{PALETTE[s % len(PALETTE)]}"/>'
        )
        out.append(f'<text x="{lx + 18:.1f}" y="{ly:.1f}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def lines(
    *,
    title: str,
    subtitle: str = "",
    y_label: str,
    x_label: str = "seconds into the run",
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
) -> str:
    """A line chart of time series, as a standalone SVG string: ``series``
    is (label, (x, y) points in order)."""
    points = [point for _, values in series for point in values]
    x_max = max([x for x, _ in points] + [1.0])
    top = max([y for _, y in points] + [0.0])
    step = _nice_step(top) if top > 0 else 1.0
    y_max = step * max(1, math.ceil(top / step))
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = PLOT_HEIGHT
    height = MARGIN_TOP + plot_h + AXIS_SPACE + LEGEND_ROW * len(series) + 10

    def px(x: float) -> float:
        return MARGIN_LEFT + plot_w * x / x_max

    def py(y: float) -> float:
        return MARGIN_TOP + plot_h * (1 - y / y_max)

    out = _opening(title, subtitle, height)
    tick = 0.0
    while tick <= y_max + step / 2:
        out.append(
            f'<line x1="{MARGIN_LEFT}" y1="{py(tick):.1f}" x2="{WIDTH - MARGIN_RIGHT}" '
            f'y2="{py(tick):.1f}" stroke="#e0e0e0"/>'
        )
        label = f"{tick:.3g}" if y_max < 10 else _fmt(tick)
        out.append(
            f'<text x="{MARGIN_LEFT - 6}" y="{py(tick) + 4:.1f}" text-anchor="end">{label}</text>'
        )
        tick += step
    x_step = _nice_step(x_max)
    tick = 0.0
    while tick <= x_max + x_step / 2:
        out.append(
            f'<text x="{px(tick):.1f}" y="{py(0) + 16:.1f}" text-anchor="middle">'
            f"{_fmt(tick)}</text>"
        )
        tick += x_step
    out.append(
        f'<text x="{MARGIN_LEFT + plot_w / 2}" y="{py(0) + 32:.1f}" text-anchor="middle" '
        f'fill="#5f6368">{escape(x_label)}</text>'
    )
    out.append(
        f'<text transform="translate(16 {MARGIN_TOP + plot_h / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    out.append(
        f'<line x1="{MARGIN_LEFT}" y1="{py(0):.1f}" x2="{WIDTH - MARGIN_RIGHT}" '
        f'y2="{py(0):.1f}" stroke="#5f6368"/>'
    )
    for index, (label, values) in enumerate(series):
        colour = PALETTE[(index + 1) % len(PALETTE)]
        if values:
            path = " ".join(
                f"{'M' if i == 0 else 'L'}{px(x):.1f} {py(y):.1f}"
                for i, (x, y) in enumerate(values)
            )
            out.append(f'<path d="{path}" stroke="{colour}" stroke-width="2" fill="none"/>')
        legend_y = MARGIN_TOP + plot_h + AXIS_SPACE + LEGEND_ROW * index + 4
        out.append(
            f'<rect x="{MARGIN_LEFT}" y="{legend_y - 9}" width="14" height="3" fill="{colour}"/>'
        )
        out.append(f'<text x="{MARGIN_LEFT + 20}" y="{legend_y}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _opening(title: str, subtitle: str, height: float) -> list[str]:
    """A chart's first lines: the canvas, its title and subtitle."""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{escape(title)}</text>',
        f'<text x="{WIDTH / 2}" y="44" text-anchor="middle" fill="#5f6368">'
        f"{escape(subtitle)}</text>",
    ]
