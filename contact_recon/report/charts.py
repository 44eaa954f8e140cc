"""Inline SVG charts for the run report: pure functions from numbers to one `<svg>` element as text.

The report must be one self-contained file that opens without a network, so charts are drawn here, in
Python, as plain SVG (no JavaScript, no external CSS). Two shapes cover the report:

- `hbars`: one horizontal bar per row, optionally stacked by series, with a text note at the end of
  the bar and an optional marker line per row (e.g. the request budget);
- `columns`: vertical stacked columns over an ordered axis (runs over time), one column highlighted; with
  `log=True` the series stand side by side on a log scale (gridlines at 1, 10, 100...), so a first run
  of thousands of ops does not flatten every night after it;
- `multiples`: small multiples, one small column chart per panel (ops of one kind, conflicts open...)
  over the same runs, each panel to its own scale (its maximum written in its corner).

Every label is user data or derived from it (names, expectation names, run ids), so every text node and
attribute goes through `html.escape`. Sizes are fixed in user units with a `viewBox`, so the browser
scales them; an empty chart still draws its frame and says "no data", so it never collapses to 0x0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif"
WIDTH = 640
ROW_H, BAR_H = 26, 16
LABEL_CHARS = 40  # longer labels are clipped (the full text is in the bar's tooltip)
COL_AREA_H = 180


@dataclass(frozen=True)
class Series:
    name: str
    color: str


@dataclass(frozen=True)
class Row:
    """One bar: a label, one value per series (stacked), a note after the bar, an optional marker value."""

    label: str
    values: Sequence[float]
    note: str = ""
    marker: float | None = None
    tooltip: str = ""


@dataclass(frozen=True)
class Chart:
    name: str  # machine name, becomes data-chart="..."
    title: str
    series: Sequence[Series]
    rows: Sequence[Row] = field(default_factory=tuple)


def _svg(chart: Chart, height: int, body: list[str]) -> str:
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{escape(chart.name)}" '
            f'viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" '
            f'aria-label="{escape(chart.title)}" style="{FONT};font-size:12px">')
    return "\n".join([head, f"<title>{escape(chart.title)}</title>",
                      f'<text x="0" y="16" font-size="14" font-weight="600">{escape(chart.title)}</text>',
                      *body, "</svg>"])


def _legend(series: Sequence[Series], y: int) -> list[str]:
    out, x = [], 0
    for s in series:
        out.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{escape(s.color)}"/>'
                   f'<text x="{x + 16}" y="{y}">{escape(s.name)}</text>')
        x += 24 + 7 * len(s.name)
    return out


def _no_data(y: int, text: str = "no data") -> str:
    return f'<text x="{WIDTH // 2}" y="{y}" text-anchor="middle" fill="#777">{escape(text)}</text>'


def hbars(chart: Chart, *, empty: str = "no data", per_row: bool = False) -> str:
    """Horizontal (stacked) bars, one per row, scaled to the largest total or marker (`per_row`: each row to
    its own, e.g. requests against each system's budget)."""
    top = 44 if len(chart.series) > 1 else 28
    height = top + max(len(chart.rows), 1) * ROW_H + 8
    body = _legend(chart.series, 36) if len(chart.series) > 1 else []
    scale_max = max([sum(r.values) for r in chart.rows] + [r.marker or 0 for r in chart.rows] + [0])
    if not chart.rows or scale_max <= 0:
        body.append(_no_data(top + ROW_H // 2 + 4, empty))
        return _svg(chart, height, body)
    label_w = _text_width([_clip(r.label, LABEL_CHARS) for r in chart.rows], 80, 300)
    note_w = _text_width([r.note for r in chart.rows], 40, 300)
    span = WIDTH - label_w - note_w
    for i, row in enumerate(chart.rows):
        row_max = max(sum(row.values), row.marker or 0) if per_row else scale_max
        body.extend(_hbar_row(chart.series, row, top + i * ROW_H, label_w, span / (row_max or 1)))
    return _svg(chart, height, body)


def _text_width(texts: Sequence[str], least: int, most: int) -> int:
    """Room for the longest text at 12px (about 6.8 px a character), within [least, most]."""
    return int(min(max(max((len(t) for t in texts), default=0) * 6.8 + 14, least), most))


def _hbar_row(series: Sequence[Series], row: Row, y: int, label_w: int, per_unit: float) -> list[str]:
    out = [f'<text x="{label_w - 8}" y="{y + BAR_H - 3}" text-anchor="end">{escape(_clip(row.label, LABEL_CHARS))}'
           "</text>"]
    x = float(label_w)
    for s, value in zip(series, row.values, strict=True):
        w = value * per_unit
        if w > 0:
            tip = escape(row.tooltip or f"{row.label} · {s.name}: {value:,.0f}")
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{max(w, 1):.1f}" height="{BAR_H}" fill="{escape(s.color)}">'
                       f"<title>{tip}</title></rect>")
            x += w
    if row.marker is not None:
        mx = label_w + row.marker * per_unit
        out.append(f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{y - 3}" y2="{y + BAR_H + 3}" stroke="#c0392b" '
                   f'stroke-width="2" stroke-dasharray="3,2"/>')
    out.append(f'<text x="{x + 6:.1f}" y="{y + BAR_H - 3}" fill="#333">{escape(row.note)}</text>')
    return out


def columns(chart: Chart, *, highlight: str | None = None, empty: str = "no data", log: bool = False) -> str:
    """Vertical stacked columns in row order (oldest first); the row labelled `highlight` is outlined
    (`log`: side by side on a log scale, `_log_columns`)."""
    if log:
        return _log_columns(chart, highlight, empty)
    top, bottom = 48, 40
    height = top + COL_AREA_H + bottom
    body = _legend(chart.series, 36)
    totals = [sum(r.values) for r in chart.rows]
    if not chart.rows or max(totals) <= 0:
        body.append(_no_data(top + COL_AREA_H // 2, empty))
        return _svg(chart, height, body)
    left, step = 48, (WIDTH - 56) / len(chart.rows)
    per_unit = COL_AREA_H / max(totals)
    body.extend(_axis(left, top, max(totals)))
    for i, row in enumerate(chart.rows):
        body.extend(_column(chart.series, row, left + i * step, step, top + COL_AREA_H, per_unit,
                            row.label == highlight))
    return _svg(chart, height, body)


def _axis(left: int, top: int, maximum: float) -> list[str]:
    base = top + COL_AREA_H
    return [f'<line x1="{left}" x2="{WIDTH - 4}" y1="{base}" y2="{base}" stroke="#999"/>',
            f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" fill="#555">{maximum:,.0f}</text>',
            f'<text x="{left - 6}" y="{base}" text-anchor="end" fill="#555">0</text>']


def _column(series: Sequence[Series], row: Row, x: float, step: float, base: int, per_unit: float,
            current: bool) -> list[str]:
    width, y = max(step * 0.7, 2.0), float(base)
    out = []
    for s, value in zip(series, row.values, strict=True):
        h = value * per_unit
        if h > 0:
            y -= h
            out.append(_segment(x, y, width, h, s, row, value))
    if current:
        out.append(_outline(x, y, width, base - y))
    if row.note:
        out.append(_column_note(x + width / 2, base, row.note))
    return out


def _segment(x: float, y: float, width: float, h: float, s: Series, row: Row, value: float) -> str:
    """One series' part of a column, with its tooltip."""
    return (f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{max(h, 1):.1f}" '
            f'fill="{escape(s.color)}"><title>{escape(row.tooltip or row.label)} · {escape(s.name)}: '
            f"{value:,.0f}</title></rect>")


def _outline(x: float, top: float, width: float, height: float) -> str:
    """The frame around this run's column."""
    return (f'<rect x="{x - 2:.1f}" y="{top - 2:.1f}" width="{width + 4:.1f}" height="{height + 2:.1f}" '
            f'fill="none" stroke="#111" stroke-width="1.5"/>')


def _column_note(center: float, base: int, note: str) -> str:
    return (f'<text x="{center:.1f}" y="{base + 14}" text-anchor="middle" fill="#555" '
            f'font-size="10">{escape(note)}</text>')


def _log_height(value: float, maximum: float) -> float:
    return COL_AREA_H * math.log10(1 + value) / math.log10(1 + maximum) if value > 0 else 0.0


def _log_columns(chart: Chart, highlight: str | None, empty: str) -> str:
    top, bottom = 48, 40
    body = _legend(chart.series, 36)
    maximum = max((v for r in chart.rows for v in r.values), default=0)
    if maximum <= 0:
        body.append(_no_data(top + COL_AREA_H // 2, empty))
        return _svg(chart, top + COL_AREA_H + bottom, body)
    left, step = 48, (WIDTH - 56) / len(chart.rows)
    base = top + COL_AREA_H
    body.append(f'<line x1="{left}" x2="{WIDTH - 4}" y1="{base}" y2="{base}" stroke="#999"/>')
    for power in range(int(math.log10(maximum)) + 1):  # gridlines at 1, 10, 100... up to the maximum
        y = base - _log_height(10 ** power, maximum)
        body.append(f'<line x1="{left}" x2="{WIDTH - 4}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                    f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{10 ** power:,}</text>')
    for i, row in enumerate(chart.rows):
        body.extend(_log_column(chart.series, row, left + i * step, step, base, maximum, row.label == highlight))
    return _svg(chart, top + COL_AREA_H + bottom, body)


def _log_column(series: Sequence[Series], row: Row, x: float, step: float, base: int, maximum: float,
                current: bool) -> list[str]:
    width = max(step * 0.8 / max(len(series), 1), 1.5)
    out, tallest = [], 0.0
    for j, (s, value) in enumerate(zip(series, row.values, strict=True)):
        h = _log_height(value, maximum)
        tallest = max(tallest, h)
        if h > 0:
            out.append(_segment(x + j * width, base - h, width, h, s, row, value))
    if current:
        out.append(_outline(x, base - tallest, width * len(series), tallest))
    if row.note:
        out.append(_column_note(x + width * len(series) / 2, base, row.note))
    return out


@dataclass(frozen=True)
class Panel:
    """One small chart of `multiples`: a value per run."""

    name: str
    values: Sequence[float]
    color: str


PANEL_COLUMNS, PANEL_H, PANEL_GAP = 2, 64, 34


def multiples(name: str, title: str, labels: Sequence[str], panels: Sequence[Panel], *,
              highlight: int | None = None, empty: str = "no data") -> str:
    """Small multiples: one column chart per panel over the runs `labels` (oldest first), each to its own
    scale; the run at index `highlight` is outlined in every panel."""
    chart = Chart(name, title, [])
    shown = [p for p in panels if any(v > 0 for v in p.values)] or list(panels[:1])
    rows_of_panels = max(math.ceil(len(shown) / PANEL_COLUMNS), 1)
    height = 32 + rows_of_panels * (PANEL_H + PANEL_GAP)
    if not labels or not shown:
        return _svg(chart, height, [_no_data(height // 2, empty)])
    body: list[str] = []
    panel_w = (WIDTH - 16 * (PANEL_COLUMNS - 1)) / PANEL_COLUMNS
    for i, panel in enumerate(shown):
        x0, y0 = (i % PANEL_COLUMNS) * (panel_w + 16), 32 + (i // PANEL_COLUMNS) * (PANEL_H + PANEL_GAP) + 16
        body.extend(_panel(panel, labels, x0, y0, panel_w, highlight))
    return _svg(chart, height, body)


def _panel(panel: Panel, labels: Sequence[str], x0: float, y0: float, width: float, highlight: int | None) -> list[str]:
    maximum = max(panel.values, default=0)
    base = y0 + PANEL_H
    out = [f'<text x="{x0:.1f}" y="{y0 - 4:.1f}" font-weight="600">{escape(panel.name)}</text>',
           f'<text x="{x0 + width:.1f}" y="{y0 - 4:.1f}" text-anchor="end" fill="#555">max {maximum:,.0f}</text>',
           f'<line x1="{x0:.1f}" x2="{x0 + width:.1f}" y1="{base:.1f}" y2="{base:.1f}" stroke="#999"/>']
    step = width / max(len(labels), 1)
    for j, (label, value) in enumerate(zip(labels, panel.values, strict=True)):
        h = PANEL_H * value / maximum if maximum > 0 else 0
        x = x0 + j * step
        if h > 0:
            out.append(f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{max(step * 0.75, 1.5):.1f}" '
                       f'height="{max(h, 1):.1f}" fill="{escape(panel.color)}"><title>{escape(label)} · '
                       f"{escape(panel.name)}: {value:,.0f}</title></rect>")
        if j == highlight:
            out.append(f'<rect x="{x - 1:.1f}" y="{y0:.1f}" width="{max(step * 0.75, 1.5) + 2:.1f}" '
                       f'height="{PANEL_H:.1f}" fill="none" stroke="#111" stroke-width="1"/>')
    return out


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
