"""Small inline SVG charts for the report: grouped bars, lines against steps, a histogram.

    svg = line_chart([Series("train/loss", "#2e86ab", steps, losses)], "SFT loss", "step")

Each function returns one `<svg>` element as text, drawn in the page's coordinates (no script, no
external font or image), so the report stays one file that opens offline. Every text that reaches
the SVG goes through `esc`: series names and titles may come from a run's logs.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

COLORS = {"harmful": "#d1495b", "helpful": "#2e86ab", "evasive": "#edae49", "good_refusal": "#3a9d5d", "garbled": "#8d8d8d"}
SERIES_COLORS = ("#2e86ab", "#d1495b", "#edae49", "#3a9d5d", "#7b5ea7", "#5f6b7a")
HIST_BINS = 10
MAX_POINTS = 500  # points per line; longer logs are averaged over consecutive steps


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


@dataclass(frozen=True)
class Series:
    """One line of a line chart: y against x (steps); a non-finite y is a gap, never drawn."""

    name: str
    color: str
    xs: Sequence[float]
    ys: Sequence[float | None]


def fmt_value(v: float, pct: bool) -> str:
    if pct:
        return f"{100 * v:.0f}%"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] in about n steps of 1, 2, 2.5 or 5 times a power of ten."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    first = math.floor(lo / step)
    count = math.ceil(hi / step - 1e-9) - first + 1  # the last tick is at or above hi
    digits = max(0, 2 - math.floor(math.log10(step)))  # rounding away float noise (0.1 + 0.2), never a digit of the step
    return [round((first + i) * step, digits) + 0.0 for i in range(max(count, 2))]


def downsample(xs: Sequence[float], ys: Sequence[float], n: int = MAX_POINTS) -> tuple[list[float], list[float], int]:
    """At most n points: means of consecutive buckets of `width` points. Returns (xs, ys, width)."""
    if len(xs) <= n:
        return list(xs), list(ys), 1
    width = math.ceil(len(xs) / n)
    bx, by = [], []
    for i in range(0, len(xs), width):
        bx.append(sum(xs[i : i + width]) / len(xs[i : i + width]))
        by.append(sum(ys[i : i + width]) / len(ys[i : i + width]))
    return bx, by, width


def svg(width: int, height: int, body: list[str], label: str) -> str:
    return (
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{esc(label)}">'
        f"<title>{esc(label)}</title>{''.join(body)}</svg>"
    )


def _legend(names_colors: Sequence[tuple[str, str]], x: float, y: float) -> list[str]:
    out = []
    for name, color in names_colors:
        out.append(
            f'<rect x="{x:.0f}" y="{y - 9:.0f}" width="10" height="10" fill="{color}"/><text x="{x + 14:.0f}" y="{y:.0f}" class="tick">{esc(name)}</text>'
        )
        x += 24 + 6.5 * len(name)
    return out


def bar_chart(
    groups: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float | None]]],
    title: str,
    pct: bool = True,
    ymax: float | None = None,
    ymin: float = 0.0,
    ref: tuple[float, str] | None = None,
) -> str:
    """Grouped bars: one group per x label, one bar per series (name, color, values; None = no bar);
    `ref` = (value, label) draws a dashed reference line."""
    series = [(n, c, [v if isinstance(v, (int, float)) and math.isfinite(v) else None for v in vs]) for n, c, vs in series]
    W, H, L, R, T, B = 560, 280, 48, 12, 34, 46
    vals = [v for _, _, vs in series for v in vs if v is not None]
    top = ymax if ymax is not None else nice_ticks(ymin, max(vals, default=ymin + 1.0))[-1]
    if top <= ymin:
        top = ymin + 1.0
    y = lambda v: T + (H - T - B) * (1 - (min(max(v, ymin), top) - ymin) / (top - ymin))  # noqa: E731
    body = [f'<text x="{L}" y="18" class="ptitle">{esc(title)}</text>']
    for t in nice_ticks(ymin, top, 4):
        if t <= top + 1e-12:
            body.append(f'<line x1="{L}" x2="{W - R}" y1="{y(t):.1f}" y2="{y(t):.1f}" class="grid"/>')
            body.append(f'<text x="{L - 6}" y="{y(t) + 4:.1f}" class="tick" text-anchor="end">{esc(fmt_value(t, pct))}</text>')
    gw = (W - L - R) / max(1, len(groups))
    bw = min(36.0, gw * 0.8 / max(1, len(series)))
    for g, name in enumerate(groups):
        x0 = L + g * gw + (gw - bw * len(series)) / 2
        for s, (sname, color, vs) in enumerate(series):
            v = vs[g]
            if v is None:
                continue
            x = x0 + s * bw
            exact = f"{100 * v:.1f}%" if pct else f"{v:.4g}"
            body.append(
                f'<rect x="{x:.1f}" y="{y(v):.1f}" width="{bw - 4:.1f}" height="{max(0.0, y(ymin) - y(v)):.1f}" fill="{color}">'
                f"<title>{esc(name)} / {esc(sname)}: {esc(exact)}</title></rect>"
            )
            body.append(f'<text x="{x + (bw - 4) / 2:.1f}" y="{y(v) - 4:.1f}" class="val" text-anchor="middle">{esc(fmt_value(v, pct))}</text>')
        body.append(f'<text x="{L + g * gw + gw / 2:.1f}" y="{H - B + 18}" class="tick" text-anchor="middle">{esc(name)}</text>')
    body.append(f'<line x1="{L}" x2="{W - R}" y1="{y(ymin):.1f}" y2="{y(ymin):.1f}" class="axis"/>')
    if ref is not None:
        body.append(f'<line x1="{L}" x2="{W - R}" y1="{y(ref[0]):.1f}" y2="{y(ref[0]):.1f}" class="ref"/>')
        body.append(f'<text x="{L + 4}" y="{y(ref[0]) - 4:.1f}" class="tick">{esc(ref[1])}</text>')
    if len(series) > 1:
        body += _legend([(n, c) for n, c, _ in series], L, H - 7)
    return svg(W, H, body, title)


def line_chart(series: Sequence[Series], title: str, xlabel: str) -> str:
    """Lines against steps with round ticks on both axes; a legend when there is more than one line.
    A series with a single point is drawn as a dot (a held-out evaluation at the end, say)."""
    W, H, L, R, T, B = 560, 260, 58, 14, 34, 52
    lines = []
    for s in series:
        pts = [(float(x), float(y)) for x, y in zip(s.xs, s.ys) if isinstance(y, (int, float)) and math.isfinite(y)]
        xs, ys, width = downsample([p[0] for p in pts], [p[1] for p in pts])
        lines.append((s, list(zip(xs, ys)), width))
    body = [f'<text x="{L}" y="18" class="ptitle">{esc(title)}</text>']
    every = max(w for _, _, w in lines) if lines else 1
    if every > 1:
        body.append(f'<text x="{W - R}" y="18" class="tick" text-anchor="end">mean of every {every} logged steps</text>')
    allpts = [p for _, pts, _ in lines for p in pts]
    if not allpts:
        body.append(f'<text x="{W / 2}" y="{H / 2}" class="tick" text-anchor="middle">no finite values</text>')
        return svg(W, H, body, title)
    x0, x1 = min(p[0] for p in allpts), max(p[0] for p in allpts)
    xt = nice_ticks(x0 - 1, x1 + 1, 2) if x1 == x0 else nice_ticks(x0, x1, 6)  # one step: centred
    lo, hi = min(p[1] for p in allpts), max(p[1] for p in allpts)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    yt = nice_ticks(lo, hi, 4)
    X = lambda v: L + (W - L - R) * (v - xt[0]) / ((xt[-1] - xt[0]) or 1)  # noqa: E731
    Y = lambda v: T + (H - T - B) * (1 - (v - yt[0]) / ((yt[-1] - yt[0]) or 1))  # noqa: E731
    for t in yt:
        body.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" class="grid"/>')
        body.append(f'<text x="{L - 6}" y="{Y(t) + 4:.1f}" class="tick" text-anchor="end">{esc(f"{t:.4g}")}</text>')
    for t in xt:
        body.append(f'<text x="{X(t):.1f}" y="{H - B + 16}" class="tick" text-anchor="middle">{esc(f"{t:g}")}</text>')
    body.append(f'<line x1="{L}" x2="{W - R}" y1="{H - B}" y2="{H - B}" class="axis"/>')
    body.append(f'<text x="{(L + W - R) / 2:.1f}" y="{H - B + 32}" class="tick" text-anchor="middle">{esc(xlabel)}</text>')
    for s, pts, _ in lines:
        if len(pts) > 1:
            path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts)
            body.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="2"><title>{esc(s.name)}</title></polyline>')
        if len(pts) <= 60:
            body += [
                f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.5" fill="{s.color}"><title>{esc(s.name)}, step {x:g}: {y:.4g}</title></circle>' for x, y in pts
            ]
    if len(series) > 1:
        body += _legend([(s.name, s.color) for s in series], L, H - 6)
    return svg(W, H, body, title)


def histogram(values: Sequence[float], lo: float, hi: float, title: str, xlabel: str, bins: int = HIST_BINS, color: str = SERIES_COLORS[0]) -> str:
    """Counts of `values` in `bins` equal bins over [lo, hi] (the top edge belongs to the last bin)."""
    counts = [0] * bins
    for v in values:
        if lo <= v <= hi:
            counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    W, H, L, R, T, B = 560, 250, 48, 14, 34, 40
    ticks = [t for t in nice_ticks(0, max(max(counts, default=1), 4), 4) if t == int(t)]  # counts: whole numbers
    top = ticks[-1]
    Y = lambda c: T + (H - T - B) * (1 - c / top)  # noqa: E731
    bw = (W - L - R) / bins
    body = [f'<text x="{L}" y="18" class="ptitle">{esc(title)}</text>']
    for t in ticks:
        body.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" class="grid"/>')
        body.append(f'<text x="{L - 6}" y="{Y(t) + 4:.1f}" class="tick" text-anchor="end">{t:g}</text>')
    for i, c in enumerate(counts):
        a, b = lo + (hi - lo) * i / bins, lo + (hi - lo) * (i + 1) / bins
        body.append(
            f'<rect x="{L + i * bw + 1:.1f}" y="{Y(c):.1f}" width="{bw - 2:.1f}" height="{Y(0) - Y(c):.1f}" fill="{color}"><title>{a:.2f}-{b:.2f}: {c}</title></rect>'
        )
    for i in range(0, bins + 1, max(1, bins // 5)):
        body.append(f'<text x="{L + i * bw:.1f}" y="{H - B + 16}" class="tick" text-anchor="middle">{lo + (hi - lo) * i / bins:.2f}</text>')
    body.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(0):.1f}" y2="{Y(0):.1f}" class="axis"/>')
    body.append(f'<text x="{(L + W - R) / 2:.1f}" y="{H - 6}" class="tick" text-anchor="middle">{esc(xlabel)}</text>')
    return svg(W, H, body, title)
