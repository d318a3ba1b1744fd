"""HTML reports of every effkit result, rendered from its JSON document (what `--json` writes).

`render_html(doc)` picks the page by the document's schema: bench, inspect, export, a step
(quantize, prune, distill), compress, compare, gate. Commands render the same document they write
with `--json`, and `effkit report RESULT.json` renders a saved one, so a page never depends on
anything that was not saved. Each page shows the verdict first, then the chosen method and why,
then charts, then tables, warnings, and the configuration collapsed.
"""

from __future__ import annotations

from html import escape

from effkit.errors import UsageError
from effkit.export import describe_export
from effkit.report.compress import headline
from effkit.report.page import bar_chart, bullets, collapsed, distribution, page, scatter, table, verdict, warnings
from effkit.util import fmt_bytes, fmt_speedup

# A step or pipeline that loses more accuracy than this (points) is shown as failed, whatever its bar.
LARGE_LOSS_PT = 5.0
# Candidates whose latencies are within this fraction of the chosen one's are shown as ties.
TIE = 0.03
# Why a latency distribution has no samples: paired timings keep only pairs measured on a quiet machine.
QUIET = "no pair was measured on a quiet enough machine"
NO_SAMPLES = "this result holds no latency samples"


def render_html(doc: dict) -> str:
    """One result document as a self-contained HTML page."""
    schema = str(doc.get("schema", "")) if isinstance(doc, dict) else ""
    renderer = _RENDERERS.get(schema.split("/")[0])
    if renderer is None:
        raise UsageError(f"cannot render a result with schema {schema or 'none'!r}",
                         "pass a JSON file written by an effkit command's --json")
    return renderer(doc)


def can_render(doc) -> bool:
    """Whether `doc` is an effkit result document this module renders."""
    return isinstance(doc, dict) and str(doc.get("schema", "")).split("/")[0] in _RENDERERS


def fmt_ms(ms: float | None) -> str:
    """Milliseconds with three significant digits."""
    return "-" if ms is None else f"{ms:.3g} ms"


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f}%"


# ---------------------------------------------------------------- bench

def bench_page(doc: dict) -> str:
    runs = doc.get("runs", [])
    status = "warn" if doc.get("warnings") else "ok"
    p50 = "; ".join(f"{r['runtime']} (batch {r['batch_size']}) p50 {fmt_ms(r['latency_ms']['p50'])}" for r in runs)
    body = [verdict(status, f"{p50}; {fmt_bytes(doc['size'].get('bytes_on_disk'))} on disk")]
    body += warnings(doc.get("warnings", []))
    body += ["<h2>Latency</h2>", distribution(
        "latency-distribution", "Latency per call of every timed call (ms), per runtime and batch size.",
        [_side(f"{r['runtime']}, batch {r['batch_size']}", r, NO_SAMPLES, r["runtime"]) for r in runs])]
    body.append(table(["runtime", "batch", "p50", "p90", "p99", "mean", "items/s", "peak RSS"],
                      [[r["runtime"], r["batch_size"], *(fmt_ms(r["latency_ms"][k]) for k in ("p50", "p90", "p99", "mean")),
                        f"{r['throughput_per_s']:,.0f}", fmt_bytes(r.get("peak_rss_bytes"))] for r in runs]))
    body += _size_section(doc["size"])
    body += _environment(doc.get("environment"))
    return page(f"effkit bench: {doc['model']['source']}", body)


def _side(label: str, run: dict | None, why: str, series: str | None = None) -> dict:
    """A bench run (or None) as a side of a latency distribution: its samples and recorded p50 and p90;
    `why` is said in its place when it has no samples."""
    latency = (run or {}).get("latency_ms") or {}
    return {"label": label, "samples": (run or {}).get("samples_ms"), "p50": latency.get("p50"),
            "p90": latency.get("p90"), "series": series, "why": why}


def _size_section(size: dict) -> list[str]:
    return ["<h2>Size</h2>", table(["", "value"], [
        ["parameters", f"{size['parameters']:,}"], ["non-zero parameters", f"{size['nonzero_parameters']:,}"],
        ["on disk", fmt_bytes(size.get("bytes_on_disk"))], ["gzipped", fmt_bytes(size.get("gzip_bytes"))]])]


def _environment(env: dict | None) -> list[str]:
    if not env:
        return []
    cpu = env.get("cpu", {})
    rows = [["CPU", cpu.get("model")], ["ISA", " ".join(cpu.get("isa", [])) or "-"], ["cores", env.get("cores")],
            ["threads", env.get("threads")], ["python", env.get("python")],
            *[[name, version] for name, version in env.get("versions", {}).items()],
            ["git commit", env.get("git_commit")], ["time", env.get("time")]]
    rows = [r for r in rows if r[1] is not None]
    return ["<details><summary>Environment</summary>", table(["", "value"], rows), "</details>"]


# ---------------------------------------------------------------- inspect and export

def inspect_page(doc: dict) -> str:
    body = [verdict("info", f"{doc['format']} model ({doc['kind']}): {doc['parameters']:,} parameters "
                            f"({doc['nonzero_parameters']:,} non-zero), {len(doc['layers'])} weight layers")]
    body += warnings(doc.get("warnings", []))
    io_rows = [[f"{side} {t['name']}", "x".join(map(str, t["shape"])), t["dtype"]]
               for side, key in (("input", "inputs"), ("output", "outputs")) for t in doc.get(key, [])]
    body += ["<h2>Inputs and outputs</h2>", table(["tensor", "shape", "dtype"], io_rows, left=1)]
    layers = doc.get("layers", [])
    if layers:
        body += ["<h2>Parameters per layer</h2>", bar_chart(
            "parameters", "Parameters of each weight layer.",
            [{"label": f"{l['name']} ({l['type']})", "value": l["parameters"], "text": f"{l['parameters']:,}"}
             for l in layers])]
        body.append(table(["layer", "type", "parameters", "sparsity", "int8", "prune"],
                          [[l["name"], l["type"], f"{l['parameters']:,}", _pct(l["sparsity"]),
                            "yes" if l["quantizable"] else "no", "yes" if l["prunable"] else "no"] for l in layers],
                          left=2))
    body += ["<h2>Layer types</h2>", table(["type", "count", "parameters"],
                                            [[t["type"], t["count"], f"{t['parameters']:,}"]
                                             for t in doc.get("layer_types", [])])]
    body.append(bullets(doc.get("notes", [])))
    return page(f"effkit inspect: {doc['source']}", body)


def export_page(doc: dict) -> str:
    _, checked, _ = describe_export(doc)
    body = [verdict("warn" if doc.get("warnings") else "ok", f"{doc['output']}: opset {doc['opset']}, verified in ONNX Runtime, max abs diff "
                          f"{doc['max_abs_diff']:.3g} at {checked}")]
    body += warnings(doc.get("warnings", []))
    body.append(collapsed("Configuration", {k: v for k, v in doc.items() if k not in ("schema", "warnings")}))
    return page(f"effkit export: {doc['output']}", body)


# ---------------------------------------------------------------- a step (quantize, prune, distill)

def step_page(doc: dict) -> str:
    before, after = doc["before"], doc["after"]
    acc = doc.get("accuracy") or {}
    change = 100 * (acc["after"] - acc["before"]) if acc.get("before") is not None else None
    speed = "; ".join(f"{rt}: {fmt_speedup(s)}" for rt, s in doc.get("speedup", {}).items())
    parts = [speed, f"size {fmt_bytes(before['size'].get('bytes_on_disk'))} -> "
                    f"{fmt_bytes(after['size'].get('bytes_on_disk'))}"]
    if change is not None:
        parts.append(f"accuracy {_pct(acc['before'])} -> {_pct(acc['after'])} ({change:+.2f} pt)")
    elif doc.get("fidelity"):
        parts.append(f"cosine to the original {doc['fidelity']['cosine_min']:.5f} (min)")
    every_warning = doc.get("warnings", [])  # the command's, the pass's and both sides' measurement warnings
    slower = [f"slower on {rt}" for rt, sp in doc.get("speedup", {}).items() if sp.get("verdict") == "slower"]
    status = _status(doc.get("status"), change, every_warning + slower)
    body = [verdict(status, "; ".join(p for p in parts if p))]
    body += _chosen_method(doc.get("details", {}))
    sides = []
    for run in after.get("runs", []):
        found = next((r for r in before.get("runs", []) if r["runtime"] == run["runtime"]), None)
        sides += [_side(f"{side}, {run['runtime']}", r, QUIET if r else "not measured on this runtime", side)
                  for side, r in (("before", found), ("after", run))]
    body += ["<h2>Latency, before and after</h2>", distribution(
        "latency-distribution", "Latency per call before and after (ms), from the quiet interleaved pairs.", sides)]
    body.append(table(["runtime", "p50 before", "p50 after", "paired speedup (p50)"],
                      [[rt, fmt_ms(s.get("before_ms")), fmt_ms(s.get("after_ms")), fmt_speedup(s)]
                       for rt, s in doc.get("speedup", {}).items()]))
    body += ["<h2>Size</h2>", bar_chart("size", "Bytes on disk, before and after.", [
        {"label": label, "value": side["size"].get("bytes_on_disk"), "text": fmt_bytes(side["size"].get("bytes_on_disk")),
         "why": "not measured"} for label, side in (("before", before), ("after", after))])]
    body.append(table(["", "before", "after"], [
        ["parameters", f"{before['size']['parameters']:,}", f"{after['size']['parameters']:,}"],
        ["non-zero parameters", f"{before['size']['nonzero_parameters']:,}", f"{after['size']['nonzero_parameters']:,}"],
        ["gzipped", fmt_bytes(before["size"].get("gzip_bytes")), fmt_bytes(after["size"].get("gzip_bytes"))]]))
    body += _quality(doc)
    body += _widths(doc.get("details", {}))
    body += warnings(every_warning)
    body.append(bullets(doc.get("notes", [])))
    body.append(collapsed("Details", {k: v for k, v in doc.get("details", {}).items()
                                      if k not in ("candidates", "widths")}))
    body += _environment(after.get("environment"))
    return page(f"effkit {doc['step']}: {before['model']['source']}", body)


def _status(explicit: str | None, change_pt: float | None, warnings_: list[str]) -> str:
    """fail for a failed result or a large accuracy loss, warn with warnings, else ok."""
    if explicit in ("failed", "fail") or (change_pt is not None and change_pt < -LARGE_LOSS_PT):
        return "fail"
    return "warn" if warnings_ else "ok"


def _chosen_method(details: dict) -> list[str]:
    """The method a step chose, why, and every candidate it weighed; candidates as fast as the chosen
    one (within TIE) are marked as ties."""
    candidates = details.get("candidates") or []
    method = details.get("label") or details.get("method")
    if not candidates and not method:
        return []
    chosen = next((c for c in candidates if c.get("status") == "chosen"), None)
    why = ("the fastest candidate that met the quality bar" if chosen else "")
    if details.get("slower_than_original"):
        why += (", though slower than the original" if why else "slower than the original")
    out = ["<h2>Chosen method</h2>", f"<p><strong>{escape(str(method))}</strong>"
           + (f": {escape(why)}" if why else "") + "</p>"]
    if candidates:
        reference = (details.get("baselines_ms") or {}).get("torch fp32")
        rows = [[name, fmt_ms(ms), f"{reference / ms:.2f}x" if reference and ms else "-", "-", "-", "baseline"]
                for name, ms in (details.get("baselines_ms") or {}).items()]
        for c in candidates:
            tie = (chosen is not None and c is not chosen and c.get("latency_ms") and chosen.get("latency_ms")
                   and abs(c["latency_ms"] / chosen["latency_ms"] - 1) <= TIE)
            size = details.get("original_size_bytes")
            rows.append([c["label"], fmt_ms(c.get("latency_ms")),
                         f"{reference / c['latency_ms']:.2f}x" if reference and c.get("latency_ms") else "-",
                         f"{c['size_bytes'] / size:.2f}x" if size and c.get("size_bytes") else "-",
                         f"{c['fidelity']['cosine_min']:.5f}" if c.get("fidelity") else "-",
                         c.get("status", "-") + (" (tie with the chosen one)" if tie else "")
                         + (f": {c['error']}" if c.get("error") else "")])
        out.append(table(["candidate", "p50", "speedup vs torch fp32", "size vs original", "cosine (min)", "status"],
                         rows))
    return out


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _quality(doc: dict) -> list[str]:
    fid, acc = doc.get("fidelity") or {}, doc.get("accuracy") or {}
    rows = [[f"accuracy ({k.replace('_', ' ')})", _pct(v)] for k, v in acc.items() if isinstance(v, (int, float))]
    rows += [[k.replace("_", " "), _cell(v)] for k, v in fid.items() if k != "inputs"]
    ppl = doc.get("perplexity") or {}
    rows += [[f"perplexity {side.replace('_', ' ')} ({ppl['source']}, {ppl['tokens']:,} tokens)", _cell(ppl[side])]
             for side in ("before", "right_after_pruning", "after") if side in ppl]
    if not rows:
        return []
    return ["<h2>Quality</h2>", table(["", "value"], rows)]


def _widths(details: dict) -> list[str]:
    widths = details.get("widths") or {}
    if not widths:
        return []
    rows = [{"label": name, "value": _product(w["after"]) / max(1, _product(w["before"])),
             "text": f"{'x'.join(map(str, w['before']))} -> {'x'.join(map(str, w['after']))} "
                     f"({100 * _product(w['after']) / max(1, _product(w['before'])):.0f}%)"}
            for name, w in widths.items()]
    return ["<h2>Per layer</h2>", bar_chart("layers", "Share of each layer's weight shape kept (out x in).", rows, top=1)]


def _product(shape: list[int]) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


# ---------------------------------------------------------------- compress

def compress_page(doc: dict) -> str:
    overall = doc.get("overall", {})
    summary = doc.get("summary", [])
    every_warning = doc.get("warnings", [])
    change = overall.get("accuracy_change_pt")
    status = _status(doc.get("status"), change, every_warning)
    body = [verdict(status, headline(doc) or "done")]
    for step in doc.get("steps", []):
        body += _chosen_method(step.get("details", {})) if step["step"] == "quantize" else []
    body += warnings(every_warning)
    body += ["<h2>Summary</h2>", table(
        ["step", "runtime", "p50", "p90", "speedup (step)", "vs torch fp32", "size", "accuracy", "Δ accuracy", "cosine"],
        [[r["state"], r["runtime"], fmt_ms(r["p50_ms"]), fmt_ms(r["p90_ms"]), fmt_speedup(r["speedup_step_paired"]),
          fmt_speedup(r["speedup_vs_torch_fp32_paired"]), fmt_bytes(r["size_bytes"]), _pct(r["accuracy"]),
          f"{r['accuracy_change_pt']:+.2f} pt" if r["accuracy_change_pt"] is not None else "-",
          f"{r['cosine_min']:.5f}" if r["cosine_min"] is not None else "-"] for r in summary], left=2),
        "<p class=\"note\">Speedups are paired: the two models timed in turns in one run, same threads and inputs, "
        "with 95% intervals. &ldquo;vs torch fp32&rdquo; is against the original model on torch eager.</p>"]
    body += _compress_charts(doc)
    body += _compress_steps(doc)
    body += _compress_layers(doc)
    if doc.get("outputs"):
        body += ["<h2>Files</h2>", bullets(doc["outputs"])]
    body.append(bullets(doc.get("notes", [])))
    body.append(collapsed("Recipe", doc.get("recipe", {})))
    body += _environment(doc.get("environment"))
    return page(f"effkit compress: {doc['source']}", body)


def _compress_charts(doc: dict) -> list[str]:
    states = [s for s in doc.get("states", []) if s.get("bench")]
    if not states:
        return []
    runtimes = list(dict.fromkeys(r["runtime"] for s in states for r in s["bench"]["runs"]))
    latency_rows, sides = [], []
    for s in states:
        for rt in runtimes:
            run = next((r for r in s["bench"]["runs"] if r["runtime"] == rt), None)
            value = run["latency_ms"]["p50"] if run else None
            latency_rows.append({"label": f"{s['name']}, {rt}", "value": value, "text": fmt_ms(value), "series": rt,
                                 "why": _missing_run(s, rt)})
            sides.append(_side(f"{s['name']}, {rt}", run, NO_SAMPLES if run else _missing_run(s, rt), rt))
    size_rows = [{"label": s["name"], "value": s["bench"]["size"].get("bytes_on_disk"),
                  "text": fmt_bytes(s["bench"]["size"].get("bytes_on_disk")), "why": "not measured"} for s in states]
    out = ["<h2>Charts</h2>",
           bar_chart("latency", "p50 latency per call after each step, per runtime (ms, from zero).", latency_rows,
                     series=runtimes),
           distribution("latency-distribution", "Latency per call of every timed call after each step, per "
                        "runtime (ms).", sides),
           bar_chart("size", "Size on disk after each step.", size_rows)]
    accurate = all(s.get("accuracy") is not None for s in states)
    points = []
    for s in states:
        for run in s["bench"]["runs"]:
            quality = 100 * s["accuracy"] if accurate else (s.get("fidelity") or {}).get("cosine_min", 1.0)
            points.append({"x": run["latency_ms"]["p50"], "y": quality, "label": s["name"], "series": run["runtime"]})
    if points:
        lowest = min(p["y"] for p in points)
        # honest axis: accuracy spans at least 10 points up to 100%, cosine at least 0.1 up to 1
        y_range = ((max(0.0, min(lowest - 2, 90.0)) // 5 * 5, 100.0) if accurate
                   else (max(-1.0, min(lowest - 0.02, 0.9)), 1.0))
        out.append(scatter("tradeoff", "Accuracy against p50 latency, per runtime; the axis starts well below the "
                           "values so small changes look small." if accurate else
                           "Cosine similarity to the original's outputs (min) against p50 latency, per runtime.",
                           points, "p50 latency (ms)", "accuracy (%)" if accurate else "cosine (min)", y_range))
    return out


def _missing_run(state: dict, runtime: str) -> str:
    if runtime == "torch" and state.get("kind") == "onnx":
        return "this model is ONNX-only (int8 and exported models run on ONNX Runtime, not torch)"
    return f"not timed on {runtime}"


def _compress_steps(doc: dict) -> list[str]:
    out = ["<h2>Steps</h2>"]
    for step in doc.get("steps", []):
        out.append(f"<h3>{escape(step['step'])}</h3>")
        out.append(bullets(step.get("notes", [])))
        if step.get("attempts"):
            out.append(table(["try", "setting", "accuracy", "cosine", "verdict"], [
                [a["attempt"], a.get("setting") or a.get("tolerance") or "as configured", _pct(a.get("accuracy")),
                 f"{a['fidelity']['cosine_min']:.5f}" if a.get("fidelity") else "-",
                 "kept" if a["accepted"] else "; ".join(a["violations"])] for a in step["attempts"]], left=2))
        out.append(collapsed(f"{step['step']} settings", step.get("config", {})))
    return out


def _compress_layers(doc: dict) -> list[str]:
    layers = doc.get("layers") or []
    if not layers:
        return []
    rows = [{"label": f"{l['name']} ({l['type']})", "value": 100 * l["kept"],
             "text": f"{100 * l['kept']:.0f}% ({l['nonzero_after']:,} of {l['weights_before']:,})"
                     + {True: ", kept in float", False: ", int8", None: ""}[l.get("float")]} for l in layers]
    return ["<h2>Per layer</h2>", bar_chart(
        "layers", "Weights kept per layer after the last torch step (% non-zero). A layer kept whole by pruning "
        "can still lose inputs when the layer before it is pruned.", rows, top=100)]


# ---------------------------------------------------------------- compare and gate

def compare_page(doc: dict) -> str:
    p50 = doc["stats"].get("p50")
    status = {"slower": "fail", "inconclusive": "warn"}.get(doc["verdict"], "ok")
    if doc.get("warnings") and status == "ok":
        status = "warn"
    relation = "the same as" if doc["verdict"] == "same" else f"{doc['verdict']} than"
    if doc["verdict"] == "inconclusive":
        relation = "not clearly faster or slower than"
    text = f"B is {relation} A on {doc['runtime']}"
    if p50 and p50.get("ci"):
        text += (f": p50 {fmt_ms(p50['a_ms'])} -> {fmt_ms(p50['b_ms'])}, B/A {p50['ratio']:.3f} "
                 f"[{p50['ci'][0]:.3f}, {p50['ci'][1]:.3f}]")
    body = [verdict(status, text), bullets(doc.get("reasons", []))]
    body += warnings(doc.get("warnings", []) + (doc.get("gates") or {}).get("warnings", []))
    sides = [{"label": side.upper(), "samples": [ms for pair in doc.get("pairs", []) for ms in pair[f"{side}_ms"]],
              **{stat: (doc["stats"].get(stat) or {}).get(f"{side}_ms") for stat in ("p50", "p90")}, "why": QUIET}
             for side in ("a", "b")]
    body += ["<h2>Latency, A against B</h2>", distribution(
        "latency-distribution", "Latency per call of A and B (ms), from the quiet interleaved pairs.", sides)]
    body.append(table(["statistic", "A", "B", "B/A", "95% interval", "verdict"],
                      [[k, fmt_ms(s["a_ms"]), fmt_ms(s["b_ms"]), f"{s['ratio']:.3f}",
                        f"[{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]" if s.get("ci") else "-", s["verdict"]]
                       for k, s in doc["stats"].items()]))
    if doc.get("gates"):
        gates = doc["gates"]
        body += ["<h2>Gates</h2>", _gate_table(gates),
                 f"<p>{'passed' if gates.get('passed') else 'failed'}: {escape(gates.get('summary', ''))}</p>"]
    body += ["<h2>Models</h2>", table(["", "source", "format"], [["A", doc["a"]["source"], doc["a"]["format"]],
                                                               ["B", doc["b"]["source"], doc["b"]["format"]]], left=3)]
    body += _environment(doc.get("environment"))
    return page(f"effkit compare: {doc['a']['source']} vs {doc['b']['source']}", body)


def gate_page(doc: dict) -> str:
    statuses = [v["status"] for v in doc.get("verdicts", [])]
    status = "fail" if not doc.get("passed") else "warn" if "inconclusive" in statuses or doc.get("warnings") else "ok"
    body = [verdict(status, f"gates {'passed' if doc.get('passed') else 'failed'}: {doc.get('summary', '')}")]
    body += warnings(doc.get("warnings", []))
    body += ["<h2>Gates</h2>", _gate_table(doc)]
    return page(f"effkit gate: {doc.get('subject', '')}", body)


def _gate_table(doc: dict) -> str:
    icons = {"pass": "✔ pass", "passed": "✔ passed", "fail": "✖ fail", "failed": "✖ failed",
             "inconclusive": "▲ inconclusive"}
    return table(["gate", "status", "value", "baseline", "limit", "message"], [
        [v["gate"], icons.get(v["status"], v["status"]), _cell(v.get("value")), _cell(v.get("baseline")),
         _cell(v.get("limit")), v.get("message")] for v in doc.get("verdicts", [])], left=2)


_RENDERERS = {"effkit.bench": bench_page, "effkit.inspect": inspect_page, "effkit.export": export_page,
              "effkit.step": step_page, "effkit.compress": compress_page, "effkit.compare": compare_page,
              "effkit.gate": gate_page}
