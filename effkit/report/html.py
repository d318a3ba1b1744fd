"""A self-contained HTML report of a compress result: one file that opens offline.

Styles are inline, charts are PNGs embedded as base64 data URIs (see effkit.report.charts), and
there are no scripts and no external references. Without matplotlib the report keeps its tables
and says how to get the charts.
"""

from __future__ import annotations

import base64
import json
from html import escape

from effkit.report.charts import INSTALL_HINT, compress_charts
from effkit.report.compress import HEADER, _attempt, headline, summary_cells
from effkit.util import fmt_bytes, jsonable

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 3px 10px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, td.l, th.l { text-align: left; }
th { background: #f5f5f5; }
.verdict { font-size: 1.05em; padding: 0.6em 0.9em; border-radius: 4px; background: #eef6ee; }
.failed { background: #fbeaea; color: #a31515; border-left: 4px solid #c62828; }
.warnings { background: #fff8e1; padding: 0.4em 0.9em; border-radius: 4px; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.92em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.note { color: #555; }
"""


def compress_html(result) -> str:
    """The whole report as one HTML document."""
    parts = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>effkit compress: {escape(result.source)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>effkit compress: <code>{escape(result.source)}</code></h1>",
             f"<p class=\"verdict{'' if result.status == 'ok' else ' failed'}\">"
             f"<strong>{'Result' if result.status == 'ok' else 'Failed'}:</strong> {escape(headline(result))}</p>",
             *_bar_and_warnings(result),
             "<h2>Summary</h2>", _table(HEADER, summary_cells(result), left=2),
             "<p class=\"note\">Speedups compare p50 latencies measured in one run with the same threads and inputs; "
             "&ldquo;vs torch fp32&rdquo; is against the original model on torch eager. Cosine: against the original's "
             "outputs (minimum over samples).</p>"]
    parts += _charts(result)
    parts += _steps(result)
    parts += _layers(result)
    parts += ["<h2>Recipe</h2>", f"<pre>{escape(result.recipe.to_toml())}</pre>"]
    if result.outputs:
        parts += ["<h2>Files</h2><ul>"] + [f"<li><code>{escape(p)}</code></li>" for p in result.outputs] + ["</ul>"]
    parts += _environment(result)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _bar_and_warnings(result) -> list[str]:
    """The quality bar in force, and every measurement warning (the timings they make doubtful)."""
    parts = [f"<p class=\"note\">Quality bar: {escape(result.bar)}</p>"] if result.bar else []
    warnings = result.warnings()
    if warnings:
        parts += [f"<div class=\"warnings\"><strong>Measurement warnings ({len(warnings)})</strong>: the timings "
                  "may be off<ul>"] + [f"<li>{escape(w)}</li>" for w in warnings] + ["</ul></div>"]
    return parts


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """An HTML table; the first `left` columns are left-aligned (names), the rest right (numbers)."""
    cls = ' class="l"'
    head = "".join(f"<th{cls if i < left else ''}>{escape(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls if i < left else ''}>{escape(str(c))}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _charts(result) -> list[str]:
    charts = compress_charts(result)
    if charts is None:
        return ["<h2>Charts</h2>", f"<p class=\"note\">Charts need matplotlib: <code>{escape(INSTALL_HINT)}</code>, "
                "then run compress again. The tables above and below hold every figure.</p>"]
    out = ["<h2>Charts</h2>"]
    for chart in charts:
        data = base64.b64encode(chart["png"]).decode("ascii")
        out.append(f"<figure id=\"chart-{escape(chart['name'])}\"><img alt=\"{escape(chart['title'])}\" "
                   f"src=\"data:image/png;base64,{data}\"><figcaption><strong>{escape(chart['title'])}.</strong> "
                   f"{escape(chart['caption'])}</figcaption></figure>")
    return out


def _steps(result) -> list[str]:
    out = ["<h2>Steps</h2>"]
    for step in result.steps:
        out.append(f"<h3>{escape(step.name)}</h3>")
        if step.attempts:
            rows = [[a["attempt"], a.get("setting") or a.get("tolerance") or "as configured",
                     f"{100 * a['accuracy']:.2f}%" if a.get("accuracy") is not None else "-",
                     f"{a['fidelity']['cosine_min']:.5f}" if a.get("fidelity") else "-",
                     "kept" if a["accepted"] else "; ".join(a["violations"])] for a in step.attempts]
            out.append(_table(["try", "setting", "accuracy", "cosine", "verdict"], rows, left=2))
            if len(step.attempts) > 1:
                out.append(f"<p>Back-off: {escape(', '.join(_attempt(a) for a in step.attempts))}.</p>")
        if step.notes:
            out.append("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in step.notes) + "</ul>")
        if step.config:
            out.append(_table(["option", "value"], [[k, json.dumps(v)] for k, v in step.config.items()], left=1))
        if step.details:
            out.append(f"<details><summary>details</summary><pre>"
                       f"{escape(json.dumps(_plain(step.details), indent=2))}</pre></details>")
    if result.notes:
        out.append("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in result.notes) + "</ul>")
    return out


def _layers(result) -> list[str]:
    layers = result.layers()
    if not layers:
        return []
    rows = [[layer["name"], layer["type"], f"{layer['weights_before']:,}", f"{layer['weights_after']:,}",
             f"{100 * layer['kept']:.1f}%", {True: "float", False: "int8", None: "-"}[layer["float"]]]
            for layer in layers]
    return ["<h2>Layers</h2>", _table(["layer", "type", "weights before", "weights after", "kept (non-zero)",
                                       "quantized"], rows, left=2)]


def _environment(result) -> list[str]:
    if result.original.bench is None:
        return []
    env = result.original.bench.environment
    rows = [["CPU", env["cpu"]["model"]], ["ISA", " ".join(env["cpu"]["isa"]) or "-"],
            ["threads", str(result.original.bench.runs[0]["threads"])],
            ["torch", str(env["versions"].get("torch"))], ["onnxruntime", str(env["versions"].get("onnxruntime"))],
            ["original size", fmt_bytes(result.original.bench.size.get("bytes_on_disk"))],
            ["time", str(env.get("time"))]]
    return ["<h2>Environment</h2>", _table(["", ""], rows, left=2)]


def _plain(value):
    """Details as JSON-ready values (numpy numbers, tuples, infinities)."""
    return jsonable(json.loads(json.dumps(value, default=str)))
