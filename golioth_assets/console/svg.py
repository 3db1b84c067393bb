"""Time-series charts as server-rendered SVG: no JavaScript, no external files, nothing inline that
the console's CSP forbids (colours and fonts are SVG presentation attributes, not `style`).

    time_chart(title="Sync duration", unit="seconds", start=..., end=..., series=[Series(...)], kind="line")

Kinds: "line" (points joined, dots on them), "step" (a level that holds until it changes) and
"bars" (one stacked bar per bucket, series stacked in the order given). Every mark carries its
value and time in data- attributes and a <title> tooltip, so tests and screen readers can read
the numbers the picture shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 34, 44
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
FONT = 'font-family="system-ui, sans-serif"'
AXIS, GRID, MUTED = "#5f6b7a", "#e3e8ef", "#5f6b7a"
TIME_STEPS = [timedelta(minutes=m) for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)]


@dataclass
class Series:
    name: str
    color: str
    points: list[tuple[datetime, float]] = field(default_factory=list)
    line: bool = True  # "line"/"step": join the points
    dots: bool = True  # "line"/"step": show them (hidden dots still give a tooltip on hover)


def nice_step(span: float, ticks: int = 4, *, whole: bool = False) -> float:
    """A round step (1, 2 or 5 × 10ⁿ) that covers `span` in about `ticks` steps."""
    raw = max(span, 1e-9) / ticks
    exponent = 10 ** math.floor(math.log10(raw))
    step = next(m * exponent for m in (1, 2, 2.5, 5, 10) if raw <= m * exponent)
    return max(step, 1.0) if whole else step


def number(value: float) -> str:
    if abs(value) >= 10_000:
        return f"{value / 1000:.0f}k"
    if abs(value) >= 1000:
        return f"{value / 1000:.1f}k".replace(".0k", "k")
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def time_step(span: timedelta, most: int = 7) -> timedelta:
    return next((step for step in TIME_STEPS if span / step <= most), TIME_STEPS[-1])


def time_label(at: datetime, step: timedelta) -> str:
    if step >= timedelta(days=1):
        return at.strftime("%b %d")
    if at.hour == 0 and at.minute == 0 and step >= timedelta(hours=1):
        return at.strftime("%b %d")
    return at.strftime("%H:%M")


def _utc(at: datetime) -> datetime:
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)


class _Frame:
    """Maps times and values to SVG coordinates."""

    def __init__(self, start: datetime, end: datetime, top: float) -> None:
        self.start, self.end, self.top = _utc(start), _utc(end), top
        self.seconds = max((self.end - self.start).total_seconds(), 1.0)

    def x(self, at: datetime) -> float:
        return LEFT + PLOT_W * (_utc(at) - self.start).total_seconds() / self.seconds

    def y(self, value: float) -> float:
        return TOP + PLOT_H * (1 - value / self.top)

    def width(self, span: timedelta) -> float:
        return PLOT_W * span.total_seconds() / self.seconds


def _axes(frame: _Frame, step: float, unit: str) -> list[str]:
    parts = []
    value = 0.0
    while value <= frame.top + step / 1000:
        y = frame.y(value)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="12" fill="{AXIS}" {FONT}>'
            f"{number(value)}</text>"
        )
        value += step
    span = frame.end - frame.start
    tick = time_step(span)
    at = datetime.fromtimestamp(math.ceil(frame.start.timestamp() / tick.total_seconds()) * tick.total_seconds(), UTC)
    while at <= frame.end:
        x = frame.x(at)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP + PLOT_H}" y2="{TOP + PLOT_H + 5}" stroke="{AXIS}"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{TOP + PLOT_H + 18}" text-anchor="middle" font-size="12" fill="{AXIS}" {FONT}>'
            f"{time_label(at, tick)}</text>"
        )
        at += tick
    bottom = TOP + PLOT_H
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{bottom}" y2="{bottom}" stroke="{AXIS}"/>')
    parts.append(
        f'<text x="{LEFT + PLOT_W / 2}" y="{HEIGHT - 6}" text-anchor="middle" font-size="12" fill="{MUTED}" {FONT}>'
        "time (UTC)</text>"
    )
    middle = TOP + PLOT_H / 2
    parts.append(
        f'<text x="14" y="{middle}" text-anchor="middle" font-size="12" fill="{MUTED}" {FONT} '
        f'transform="rotate(-90 14 {middle})">{escape(unit)}</text>'
    )
    return parts


def _legend(series: list[Series]) -> list[str]:
    parts: list[str] = []
    x = float(LEFT)
    for s in series:
        parts.append(f'<rect x="{x}" y="10" width="12" height="12" rx="2" fill="{s.color}"/>')
        parts.append(f'<text x="{x + 17}" y="20.5" font-size="12.5" fill="#1d2433" {FONT}>{escape(s.name)}</text>')
        x += 30 + 7.2 * len(s.name)
    return parts


def _mark_title(s: Series, at: datetime, value: float, unit: str) -> str:
    return f"<title>{escape(s.name)}: {number(value)} {escape(unit)} at {_utc(at):%Y-%m-%d %H:%M} UTC</title>"


def _data(s: Series, at: datetime, value: float) -> str:
    return f'data-series="{escape(s.name)}" data-at="{_utc(at).isoformat()}" data-value="{value:g}"'


def _lines(frame: _Frame, series: list[Series], unit: str, *, step: bool) -> list[str]:
    parts = []
    for s in series:
        points = sorted(s.points)
        coords = []
        for i, (at, value) in enumerate(points):
            if step and i:
                coords.append(f"{frame.x(at):.1f},{frame.y(points[i - 1][1]):.1f}")
            coords.append(f"{frame.x(at):.1f},{frame.y(value):.1f}")
        if s.line and len(coords) > 1:
            parts.append(
                f'<polyline points="{" ".join(coords)}" fill="none" stroke="{s.color}" stroke-width="2" '
                'stroke-linejoin="round"/>'
            )
        radius = (3.5 if len(points) <= 150 else 2) if s.dots else 5
        shown = "" if s.dots else ' fill-opacity="0"'
        for at, value in points:
            parts.append(
                f'<circle class="mark" cx="{frame.x(at):.1f}" cy="{frame.y(value):.1f}" r="{radius}" '
                f'fill="{s.color}"{shown} {_data(s, at, value)}>{_mark_title(s, at, value, unit)}</circle>'
            )
    return parts


def _bars(frame: _Frame, series: list[Series], unit: str, bucket: timedelta) -> list[str]:
    parts = []
    width = max(frame.width(bucket) * 0.8, 1.5)
    stacked: dict[datetime, float] = {}
    for s in series:
        for at, value in sorted(s.points):
            if value <= 0:
                continue
            below = stacked.get(at, 0.0)
            stacked[at] = below + value
            # Above a cut axis a segment has no height (the bar's label says how tall it is), but
            # keeps its mark: the data and the tooltip stay.
            x = frame.x(at + bucket / 2) - width / 2
            y_top, y_bottom = frame.y(min(below + value, frame.top)), frame.y(min(below, frame.top))
            parts.append(
                f'<rect class="mark" x="{x:.1f}" y="{y_top:.1f}" width="{width:.1f}" height="{y_bottom - y_top:.1f}" '
                f'fill="{s.color}" {_data(s, at, value)}>{_mark_title(s, at, value, unit)}</rect>'
            )
    for at, height in stacked.items():
        if height > frame.top:  # cut: a white notch across the bar, and its real height beside it
            x = frame.x(at + bucket / 2)
            parts.append(
                f'<path d="M{x - width / 2 - 1:.1f},{TOP + 9} l{width + 2:.1f},-4 v3 l-{width + 2:.1f},4 z" '
                'fill="#ffffff"/>'
            )
            parts.append(
                f'<text class="cut" x="{x + width / 2 + 3:.1f}" y="{TOP + 10}" font-size="12" fill="#1d2433" '
                f"{FONT}>{number(height)}</text>"
            )
    return parts


def _bar_top(series: list[Series]) -> float:
    """The value axis of a bar chart. One bar far above the rest (a first import of the whole fleet)
    would flatten every other bar to nothing: then the axis is cut above the others, and the tall
    bars say their height in a label."""
    totals: dict[datetime, float] = {}
    for s in series:
        for at, value in s.points:
            totals[at] = totals.get(at, 0.0) + max(value, 0.0)
    heights = sorted(totals.values())
    if len(heights) < 8:
        return heights[-1] if heights else 0.0
    typical = heights[int(len(heights) * 0.9) - 1]
    return typical * 1.5 if typical > 0 and heights[-1] > 5 * typical else heights[-1]


def _top(series: list[Series], kind: str) -> float:
    if kind == "bars":
        return _bar_top(series)
    return max((value for s in series for _, value in s.points), default=0.0)


def time_chart(
    *,
    chart_id: str,
    title: str,
    unit: str,
    start: datetime,
    end: datetime,
    series: list[Series],
    kind: str = "line",
    bucket: timedelta | None = None,
    whole: bool = False,
) -> Markup:
    """One chart as an <svg> element. `whole`: the values are counts (no fractional axis steps)."""
    highest = _top(series, kind)
    step = nice_step(highest or 1.0, whole=whole)
    frame = _Frame(start, end, top=max(step * math.ceil(highest / step), step))
    parts = [
        f'<svg id="{escape(chart_id)}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)} ({escape(unit)})" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)} ({escape(unit)})</title>",
        *_axes(frame, step, unit),
        *_legend(series),
    ]
    if kind == "bars":
        parts += _bars(frame, series, unit, bucket or timedelta(minutes=1))
    else:
        parts += _lines(frame, series, unit, step=kind == "step")
    if not any(s.points for s in series):
        parts.append(
            f'<text class="empty" x="{LEFT + PLOT_W / 2}" y="{TOP + PLOT_H / 2}" text-anchor="middle" '
            f'font-size="14" fill="{MUTED}" {FONT}>nothing in this time window</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
