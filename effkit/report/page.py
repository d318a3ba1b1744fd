"""The building blocks of effkit's HTML reports: one self-contained page, tables, bar charts, a verdict.

A page has no scripts and no external references: styles are inline and charts are HTML and inline
SVG, so it opens offline and prints. It reads from 360 px to 1920 px wide: tables scroll inside
their own box instead of widening the page, bars are percentages of their row. Status is said in
words and with an icon, never by colour alone.
"""

from __future__ import annotations

import json
import math
from html import escape

# status -> (icon, word); the colour comes from the CSS class of the same name
STATUS = {"ok": ("✔", "OK"), "warn": ("▲", "Warning"), "fail": ("✖", "Failed"), "info": ("ℹ", "Info")}
# one colour per series, distinguishable without red/green (Okabe-Ito palette)
SERIES_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")

_STYLE = """
*, *::before, *::after { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1em; color: #1d1d1d; overflow-wrap: anywhere; }
h1 { font-size: 1.35em; margin: 0.2em 0 0.6em; } h2 { font-size: 1.12em; margin-top: 1.8em;
  border-bottom: 1px solid #ddd; } h3 { font-size: 1em; }
code { font-size: 0.92em; }
.scroll { overflow-x: auto; max-width: 100%; margin: 0.5em 0; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 3px 10px; text-align: right; white-space: nowrap; }
th.l, td.l { text-align: left; }
th { background: #f3f3f3; }
.verdict { padding: 0.7em 0.9em; border-radius: 4px; border-left: 6px solid; margin: 0.5em 0 1em; }
.verdict.ok { background: #e8f1fa; border-color: #0072B2; }
.verdict.warn { background: #fdf3dc; border-color: #b07800; }
.verdict.fail { background: #fbe6e6; border-color: #b3261e; }
.verdict.info { background: #f1f1f1; border-color: #777; }
.badge { font-weight: 600; }
ul.warnings { background: #fdf3dc; border-left: 6px solid #b07800; padding: 0.5em 0.5em 0.5em 2em; }
figure.chart { margin: 1.2em 0; }
figcaption { color: #444; font-size: 0.92em; margin-bottom: 0.4em; }
.bars { display: grid; grid-template-columns: minmax(6em, max-content) 1fr; gap: 3px 8px; align-items: center; }
.bars .label { font-size: 0.9em; text-align: right; }
.bars .track { position: relative; min-height: 1.3em; display: flex; flex-wrap: wrap; align-items: center;
  gap: 0 6px; }
.bars .bar { height: 1.1em; min-width: 1px; border-radius: 2px; }
.bars .value { font-size: 0.85em; white-space: nowrap; }
.bars .missing { font-size: 0.85em; color: #555; font-style: italic; }
.legend { font-size: 0.85em; margin: 0.3em 0; } .legend span { display: inline-block; margin-right: 1em; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; vertical-align: -0.1em; margin-right: 0.3em; }
svg.plot { width: 100%; max-width: 720px; height: auto; display: block; }
.dist { max-width: 520px; font-size: 0.9em; } .dist .side { margin-top: 0.4em; }
.dist svg.plot { max-width: 520px; } .dist .axis { text-align: center; color: #444; }
.dist .missing { color: #555; font-style: italic; margin-bottom: 0.3em; }
figure .note { font-size: 0.85em; }
details { margin: 0.6em 0; } summary { cursor: pointer; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.note { color: #444; }
.regression { font-weight: 600; color: #b3261e; }
@media print { body { max-width: none; } details > *:not(summary) { display: block; } .scroll { overflow: visible; }
  figure.chart { break-inside: avoid; } }
"""


def page(title: str, body: list[str]) -> str:
    """A whole HTML document: viewport meta, inline styles, no scripts, no external references."""
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>\n"
            f"<h1>{escape(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n")


def verdict(status: str, text: str) -> str:
    """The first thing a report shows: the outcome in one sentence, coloured and labelled by status."""
    icon, word = STATUS[status]
    return (f"<p class=\"verdict {status}\" data-status=\"{status}\"><span class=\"badge\">"
            f"<span aria-hidden=\"true\">{icon}</span> {word}:</span> {escape(text)}</p>")


def table(header: list[str], rows: list[list], left: int = 1) -> str:
    """A table in its own scrolling box; the first `left` columns are names (left-aligned)."""
    def cell(tag: str, i: int, value) -> str:
        align = ' class="l"' if i < left else ""
        return f"<{tag}{align}>{escape(_text(value))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<div class=\"scroll\"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _text(value) -> str:
    return "-" if value is None else str(value)


def warnings(items: list[str]) -> list[str]:
    """Measurement and other warnings, as a list under a heading (nothing when there are none)."""
    if not items:
        return []
    return ["<h2>Warnings</h2>", "<ul class=\"warnings\">" + "".join(f"<li>{escape(w)}</li>" for w in items) + "</ul>"]


def bullets(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>" if items else ""


def collapsed(summary: str, values: dict) -> str:
    """Configuration in a closed <details>, as option/value rows, without the options left unset."""
    rows = [[k, v if isinstance(v, str) else json.dumps(v)] for k, v in _flat(values).items()
            if v is not None and v != [] and v != {}]
    if not rows:
        return ""
    return f"<details><summary>{escape(summary)}</summary>{table(['option', 'value'], rows)}</details>"


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in values.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def bar_chart(name: str, caption: str, rows: list[dict], series: list[str] | None = None,
              top: float | None = None) -> str:
    """Horizontal bars from zero, each with its value written beside it.

    rows: {"label", "value" (number or None), "text" (the value label), "series" (optional),
    "why" (shown instead of a bar when value is None)}. Bars scale to `top` (a full bar), by default
    the largest value.
    """
    top = top or max((r["value"] for r in rows if r.get("value") is not None), default=0) or 1
    colors = {s: SERIES_COLORS[i % len(SERIES_COLORS)] for i, s in enumerate(series or [])}
    cells = []
    for r in rows:
        cells.append(f"<div class=\"label\">{escape(r['label'])}</div>")
        if r.get("value") is None:
            cells.append(f"<div class=\"track\"><span class=\"missing\">no bar: {escape(r.get('why') or 'not measured')}"
                         "</span></div>")
            continue
        color = colors.get(r.get("series"), SERIES_COLORS[0])
        width = max(0.0, 100 * r["value"] / top)
        cells.append(f"<div class=\"track\"><div class=\"bar\" style=\"width:calc({width:.2f}% - {width / 100 * 9:.1f}em);"
                     f"background:{color}\"></div><span class=\"value\">{escape(r['text'])}</span></div>")
    legend = ""
    if series and len(series) > 1:
        legend = "<div class=\"legend\">" + "".join(
            f"<span><i class=\"swatch\" style=\"background:{colors[s]}\"></i>{escape(s)}</span>" for s in series) + "</div>"
    return (f"<figure class=\"chart\" data-chart=\"{escape(name)}\"><figcaption>{escape(caption)}</figcaption>"
            f"{legend}<div class=\"bars\">{''.join(cells)}</div></figure>")


def scatter(name: str, caption: str, points: list[dict], x_label: str, y_label: str,
            y_range: tuple[float, float], x_range: tuple[float, float] | None = None,
            x_ticks: list[float] | None = None) -> str:
    """A small SVG scatter with labelled points, axes from the given ranges (never zoomed to the data).

    points: {"x", "y", "label", "series"}; points of one series are joined in order. x_ticks: where
    the x axis is labelled (default: five even steps).
    """
    width, height, left, bottom, top, right = 640, 300, 60, 40, 12, 110
    xs = [p["x"] for p in points]
    x0, x1 = x_range or (0.0, max(xs) * 1.1 if xs and max(xs) > 0 else 1.0)
    y0, y1 = y_range

    def px(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * (width - left - right)

    def py(y: float) -> float:
        return height - bottom - (y - y0) / ((y1 - y0) or 1) * (height - top - bottom)

    out = [f"<svg class=\"plot\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{escape(caption)}\" "
           "font-size=\"12\" font-family=\"sans-serif\">",
           f"<line x1=\"{left}\" y1=\"{py(y0)}\" x2=\"{width - right}\" y2=\"{py(y0)}\" stroke=\"#444\"/>",
           f"<line x1=\"{left}\" y1=\"{py(y0)}\" x2=\"{left}\" y2=\"{top}\" stroke=\"#444\"/>"]
    steps = (0, 0.25, 0.5, 0.75, 1)
    for y in (y0 + frac * (y1 - y0) for frac in steps):
        out.append(f"<text x=\"{left - 4}\" y=\"{py(y) + 4:.1f}\" text-anchor=\"end\">{_tick(y)}</text>")
    for x in x_ticks if x_ticks is not None else (x0 + frac * (x1 - x0) for frac in steps):
        out.append(f"<text x=\"{px(x):.1f}\" y=\"{height - bottom + 15}\" text-anchor=\"middle\">{_tick(x)}</text>")
    out.append(f"<text x=\"{(left + width - right) / 2}\" y=\"{height - 6}\" text-anchor=\"middle\">{escape(x_label)}</text>")
    out.append(f"<text transform=\"translate(14 {(top + height - bottom) / 2}) rotate(-90)\" "
               f"text-anchor=\"middle\">{escape(y_label)}</text>")
    series = list(dict.fromkeys(p["series"] for p in points))
    for i, s in enumerate(series):
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        mine = [p for p in points if p["series"] == s]
        path = " ".join(f"{px(p['x']):.1f},{py(p['y']):.1f}" for p in mine)
        out.append(f"<polyline points=\"{path}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>")
        for j, p in enumerate(mine):
            out.append(f"<circle cx=\"{px(p['x']):.1f}\" cy=\"{py(p['y']):.1f}\" r=\"4\" fill=\"{color}\"/>"
                       f"<text x=\"{px(p['x']) + 6:.1f}\" y=\"{py(p['y']) - 6 + 14 * (j % 2):.1f}\">"
                       f"{escape(p['label'])}</text>")
        out.append(f"<text x=\"{width - right + 8}\" y=\"{top + 14 + 16 * i}\" fill=\"{color}\">● {escape(s)}</text>")
    out.append("</svg>")
    return (f"<figure class=\"chart\" data-chart=\"{escape(name)}\"><figcaption>{escape(caption)}</figcaption>"
            + "".join(out) + "</figure>")


def _tick(v: float) -> str:
    return f"{v:.3g}"


# The latency distribution: histogram bins across the axis, and the SVGs' coordinates (the histograms
# and the axis share them, so they align at any width).
BINS = 48
_WIDTH, _PAD, _BAND = 400, 8, 36


def distribution(name: str, caption: str, sides: list[dict]) -> str:
    """Latency distributions on one axis from zero: a histogram of each side's samples with its p50
    (solid line) and p90 (dashed) marked and written above it, so no colour is needed to read it.

    sides: {"label", "samples" (ms; None or empty when there are none), "p50", "p90" (ms, the
    recorded statistics, written as they are), "series" (the colour group, default the label),
    "why" (said in the side's place when it has no samples)}. The axis ends past the largest p99
    and p90, so that a few very slow calls do not squash the rest; the share of calls beyond it
    is written under the chart. Each histogram is scaled to its own tallest bin. Labels are HTML:
    they wrap and keep the page's font size.
    """
    drawn = [s for s in sides if s.get("samples")]
    ends = [_quantile(sorted(s["samples"]), 0.99) for s in drawn] + [s["p90"] for s in drawn if s.get("p90")]
    top, step = _axis(1.02 * max(ends, default=0.0))  # a little room: no bar sits on the axis's end
    series = list(dict.fromkeys(s.get("series") or s["label"] for s in sides))
    colors = {k: SERIES_COLORS[i % len(SERIES_COLORS)] for i, k in enumerate(series)}
    rows, beyond = [], []
    for side in sides:
        samples = side.get("samples") or []
        label = f"<strong>{escape(side['label'])}</strong>"
        if not samples:
            rows.append(f"<div class=\"side\">{label}<div class=\"missing\">no samples: "
                        f"{escape(side.get('why') or 'none saved in this result')}</div></div>")
            continue
        stats = ", ".join(f"{k} {_tick(side[k])} ms" for k in ("p50", "p90") if side.get(k) is not None)
        svg = _histogram(samples, side, top, colors[side.get("series") or side["label"]],
                         f"{side['label']}: histogram of {len(samples):,} calls; {stats}")
        rows.append(f"<div class=\"side\">{label}{': ' + stats if stats else ''}{svg}</div>")
        over = sum(ms > top for ms in samples)
        if over:
            beyond.append(f"{side['label']}: {100 * over / len(samples):.2g}% of the calls "
                          f"(slowest {_tick(max(samples))} ms)")
    axis = _axis_svg(top, step) + "<div class=\"axis\">latency per call (ms), from zero</div>" if drawn else ""
    legend = ("<div class=\"legend\">Solid line: p50; dashed line: p90; each histogram is scaled to its tallest bar."
              "</div>" if drawn else "")
    notes = f"<p class=\"note\">Beyond the axis: {escape('; '.join(beyond))}.</p>" if beyond else ""
    return (f"<figure class=\"chart\" data-chart=\"{escape(name)}\" data-sides=\"{len(sides)}\">"
            f"<figcaption>{escape(caption)}</figcaption>{legend}<div class=\"dist\">{''.join(rows)}{axis}</div>"
            f"{notes}</figure>")


def _x(ms: float, top: float) -> float:
    return _PAD + min(ms, top) / top * (_WIDTH - 2 * _PAD)


def _histogram(samples: list[float], side: dict, top: float, color: str, spoken: str) -> str:
    """One side's samples in BINS bins from 0 to `top`, its p50 and p90 as lines."""
    counts = [0] * BINS
    for ms in samples:
        if ms <= top:
            counts[min(BINS - 1, int(ms / top * BINS))] += 1
    tallest, bin_width = max(counts) or 1, (_WIDTH - 2 * _PAD) / BINS
    marks = []
    for b, n in enumerate(counts):
        if n:
            h = max(1.0, n / tallest * _BAND)
            marks.append(f"<rect class=\"bin\" x=\"{_PAD + b * bin_width:.1f}\" y=\"{_BAND - h:.1f}\" "
                         f"width=\"{bin_width:.1f}\" height=\"{h:.1f}\" fill=\"{color}\"/>")
    for stat, dash in (("p50", ""), ("p90", " stroke-dasharray=\"4 3\"")):
        if side.get(stat) is not None:
            x = _x(side[stat], top)
            marks.append(f"<line x1=\"{x:.1f}\" y1=\"0\" x2=\"{x:.1f}\" y2=\"{_BAND}\" stroke=\"#1d1d1d\" "
                         f"stroke-width=\"2\"{dash}/>")
    marks.append(f"<line x1=\"{_PAD}\" y1=\"{_BAND}\" x2=\"{_WIDTH - _PAD}\" y2=\"{_BAND}\" stroke=\"#999\"/>")
    return (f"<svg class=\"plot dist\" viewBox=\"0 0 {_WIDTH} {_BAND + 1}\" role=\"img\" "
            f"aria-label=\"{escape(spoken)}\">{''.join(marks)}</svg>")


def _axis_svg(top: float, step: float) -> str:
    """The shared time axis under the histograms, ticked every `step` ms from 0 to `top`."""
    ticks = [k * step for k in range(round(top / step) + 1)]
    out = [f"<svg class=\"plot dist\" viewBox=\"0 0 {_WIDTH} 22\" role=\"img\" aria-label=\"axis: 0 to "
           f"{_tick(top)} ms\" font-size=\"12\" font-family=\"sans-serif\">"
           f"<line x1=\"{_PAD}\" y1=\"1\" x2=\"{_WIDTH - _PAD}\" y2=\"1\" stroke=\"#444\"/>"]
    for t in ticks:
        anchor = "start" if t == 0 else "end" if t == ticks[-1] else "middle"
        out.append(f"<line x1=\"{_x(t, top):.1f}\" y1=\"1\" x2=\"{_x(t, top):.1f}\" y2=\"5\" stroke=\"#444\"/>"
                   f"<text x=\"{_x(t, top):.1f}\" y=\"18\" text-anchor=\"{anchor}\">{_tick(t)}</text>")
    return "".join(out) + "</svg>"


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[int(q * (len(ordered) - 1))]


def _axis(value: float) -> tuple[float, float]:
    """The end of an axis from zero that holds `value`, and its tick step: 1, 2, 2.5 or 5 times a power
    of ten, in at most four steps."""
    if value <= 0:
        return 1.0, 0.25
    power = 10 ** math.floor(math.log10(value / 4))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value / 4)
    return math.ceil(value / step - 1e-9) * step, step
