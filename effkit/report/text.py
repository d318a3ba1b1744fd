"""Terminal (Rich) and Markdown renderings of bench results and before/after outcomes."""

from __future__ import annotations

import math

from rich import box
from rich.table import Table
from rich.text import Text  # names and paths in tables: printed as they are, never read as markup

from effkit.util import fmt_bytes, fmt_speedup, plural


def fmt_ms(ms: float | None) -> str:
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "-"
    return f"{ms:.3f} ms" if ms < 10 else f"{ms:.1f} ms"


def fmt_count(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


# ---------------------------------------------------------------- bench

def _bench_rows(result) -> list[list[str]]:
    rows = []
    for r in result.runs:
        lat = r["latency_ms"]
        rows.append([r["runtime"], str(r["batch_size"])]
                    + [_num(lat[k]) for k in ("p50", "p90", "p99", "mean")]
                    + [f"{r['throughput_per_s']:,.0f}", fmt_bytes(r["peak_rss_bytes"])])
    return rows


def _num(x: float) -> str:
    """Three significant digits, no exponent for everyday sizes: 0.0123, 1.23, 123, 12300."""
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e5 or x == 0 else f"{x:.2e}"


_BENCH_HEADER = ["runtime", "batch", "p50 ms", "p90", "p99", "mean", "items/s", "peak RSS"]


def bench_table(result) -> Table:
    """Latency per runtime and batch size, with size in the caption."""
    table = Table(title=Text(f"effkit bench: {result.model['source']}"), title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for h in _BENCH_HEADER:
        table.add_column(h, justify="left" if h == "runtime" else "right", no_wrap=True)
    for row in _bench_rows(result):
        table.add_row(*row)
    s = result.size
    threads = ", ".join(sorted({str(r["threads"]) for r in result.runs}))
    table.caption = (f"{plural(threads, 'thread')}; {fmt_count(s['parameters'])} parameters ({fmt_count(s['nonzero_parameters'])} non-zero), "
                     f"{fmt_bytes(s['bytes_on_disk'])} on disk, {fmt_bytes(s['gzip_bytes'])} gzipped")
    table.caption_justify = "left"
    return table


def bench_markdown(result) -> str:
    lines = [f"### effkit bench: `{result.model['source']}`", "",
             "| " + " | ".join(_BENCH_HEADER) + " |", "|" + "---|" * len(_BENCH_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in _bench_rows(result)]
    s = result.size
    lines += ["", f"{s['parameters']:,} parameters ({s['nonzero_parameters']:,} non-zero), "
              f"{fmt_bytes(s['bytes_on_disk'])} on disk, {fmt_bytes(s['gzip_bytes'])} gzipped."]
    lines += warnings_markdown(result.warnings)
    env = result.environment
    lines += ["", f"<sub>{env['cpu']['model']}, {env['cores']} cores, ISA {' '.join(env['cpu']['isa']) or '-'}, "
              f"torch {env['versions']['torch']}, onnxruntime {env['versions']['onnxruntime']}, {env['time']}</sub>"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- generation

_GENERATION_HEADER = ["runtime", "batch", "TTFT ms", "ms/tok p50", "p90", "p99", "prefill tok/s",
                      "decode tok/s", "peak RSS"]


def _generation_rows(result) -> list[list[str]]:
    rows = []
    for r in result.runs:
        g = r["generation"]
        decode = g["decode_ms_per_token"]
        rows.append([r["runtime"], str(r["batch_size"]), _num(g["time_to_first_token_ms"]["median"]),
                     _num(decode["p50"]), _num(decode["p90"]), _num(decode["p99"]),
                     f"{g['prefill_tokens_per_s']:,.0f}",
                     f"{g['decode_tokens_per_s']:,.1f}" if g["decode_tokens_per_s"] else "-",
                     fmt_bytes(r["peak_rss_bytes"])])
    return rows


def _generation_caption(result) -> str:
    g, s = result.extra["generation"], result.size
    threads = ", ".join(sorted({str(r["threads"]) for r in result.runs}))
    ratios = "".join(f"; onnxruntime decodes {r['decode_tokens_per_s_ratio']:.2f}x torch's tokens/s at batch "
                     f"{r['batch_size']}" for r in g.get("onnxruntime_vs_torch", []))
    export = g.get("onnx_export")
    verified = (f"; exported in {export['export_seconds']:.1f} s (untimed), {export['verification']['tokens_equal']}"
                f"/{export['verification']['tokens']} greedy tokens equal to torch's, logits within "
                f"{export['verification']['max_abs_diff']:.2g}") if export else ""
    return (f"{g['loop']}; prompt {g['prompt']}, {g['new_tokens']} new tokens; {plural(threads, 'thread')}; "
            f"{s['parameters']:,} parameters, {fmt_bytes(s['bytes_on_disk'])} on disk{verified}{ratios}")


def generation_table(result) -> Table:
    """Time to first token, decode latency per token and tokens/s per batch size."""
    table = Table(title=Text(f"effkit bench --generate: {result.model['source']}"), title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, caption=_generation_caption(result), caption_justify="left")
    for h in _GENERATION_HEADER:
        table.add_column(h, justify="left" if h == "runtime" else "right", no_wrap=True)
    for row in _generation_rows(result):
        table.add_row(*row)
    return table


def generation_markdown(result) -> str:
    lines = [f"### effkit bench --generate: `{result.model['source']}`", "",
             "| " + " | ".join(_GENERATION_HEADER) + " |", "|" + "---|" * len(_GENERATION_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in _generation_rows(result)]
    lines += ["", _generation_caption(result) + "."]
    lines += warnings_markdown(result.warnings)
    env = result.environment
    lines += ["", f"<sub>{env['cpu']['model']}, {env['cores']} cores, torch {env['versions']['torch']}, "
              f"{env['time']}</sub>"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- before / after

def _outcome_rows(outcome, sep: str = " ") -> list[list[str]]:
    b, a = outcome.before, outcome.after
    rows = []
    for run_a in a.runs:  # side by side: the latencies of the quiet A/B pairs, the paired speedup
        run_b = b.run(run_a["runtime"], run_a["batch_size"])
        for stat in ("p50", "p90"):
            vb, va = run_b["latency_ms"].get(stat), run_a["latency_ms"].get(stat)
            label = f"latency {stat} ({run_a['runtime']}, batch {run_a['batch_size']})"
            rows.append([label, fmt_ms(vb), fmt_ms(va), fmt_speedup(outcome.comparison(run_a["runtime"], stat), sep)])
    sb, sa = b.size, a.size
    rows.append(["size on disk", fmt_bytes(sb["bytes_on_disk"]), fmt_bytes(sa["bytes_on_disk"]),
                 _ratio(sa["bytes_on_disk"], sb["bytes_on_disk"])])
    rows.append(["size gzipped", fmt_bytes(sb["gzip_bytes"]), fmt_bytes(sa["gzip_bytes"]),
                 _ratio(sa["gzip_bytes"], sb["gzip_bytes"])])
    rows.append(["parameters", f"{sb['parameters']:,}", f"{sa['parameters']:,}",
                 _ratio(sa["parameters"], sb["parameters"])])
    if sb.get("nonzero_parameters") != sb.get("parameters") or sa.get("nonzero_parameters") != sa.get("parameters"):
        rows.append(["non-zero parameters", f"{sb['nonzero_parameters']:,}", f"{sa['nonzero_parameters']:,}",
                     _ratio(sa["nonzero_parameters"], sb["nonzero_parameters"])])
    if "macs" in outcome.details:
        mb, ma = outcome.details["macs"].get("before"), outcome.details["macs"].get("after")
        rows.append(["MACs", fmt_count(mb), fmt_count(ma), _ratio(ma, mb)])
    f = outcome.fidelity or {}
    if f:
        rows.append(["cosine (min / mean)", "1", f"{f['cosine_min']:.5f} / {f['cosine_mean']:.5f}", ""])
        rows.append(["SQNR", "inf", f"{f['sqnr_db']:.1f} dB", ""])
        rows.append(["max abs diff", "0", f"{f['max_abs_diff']:.3g}", ""])
        if "top1_agreement" in f:
            rows.append(["top-1 agreement", "100%", f"{100 * f['top1_agreement']:.2f}%", ""])
        if "token_agreement" in f:  # a language model: its next-token choices and distributions
            rows.append(["next-token agreement", "100%", f"{100 * f['token_agreement']:.2f}%", ""])
            rows.append(["next-token KL", "0", f"{f['kl_mean']:.3g} nats", ""])
    if outcome.perplexity:
        ppl = outcome.perplexity
        if "right_after_pruning" in ppl:  # recovered by fine-tuning since
            rows.append(["perplexity (right after pruning)", "", f"{ppl['right_after_pruning']:.3f}", ""])
        rows.append([f"perplexity ({ppl['tokens']:,} tokens)", f"{ppl['before']:.3f}", f"{ppl['after']:.3f}",
                     f"{100 * (ppl['after'] / ppl['before'] - 1):+.2f}%"])
    if outcome.accuracy:
        acc = outcome.accuracy
        for key in [k for k in acc if k not in ("before", "after")]:
            rows.append([f"accuracy ({key.replace('_', ' ')})", "", f"{100 * acc[key]:.2f}%", ""])
        rows.append(["accuracy", f"{100 * acc['before']:.2f}%", f"{100 * acc['after']:.2f}%",
                     f"{100 * (acc['after'] - acc['before']):+.2f} pt"])
    return rows


def outcome_table(outcome) -> Table:
    """The before/after table every pass prints."""
    table = Table(title=Text(f"effkit {outcome.step}: {outcome.before.model['source']}"), title_justify="left")
    for h in ("", "before", "after", "change"):
        table.add_column(h, justify="left" if not h else "right", no_wrap=h == "change")
    for row in _outcome_rows(outcome, sep="\n"):
        table.add_row(*row)
    # the warnings are printed below the table (the command's warnings as they arose, then these)
    lines = outcome.timing_notes() + outcome.notes + ([f"quality bar: {outcome.bar}"] if outcome.bar else [])
    caption = Text("\n".join(lines))  # Text, not markup: notes may hold [brackets]
    if outcome.status != "ok":  # red, so that a model that misses the bar is never read as a result
        caption = Text.assemble(("FAILED: ", "bold red"), (outcome.failure or "", "red"), "\n" if lines else "",
                                caption)
    if caption.plain:
        table.caption = caption
        table.caption_justify = "left"
    return table


def outcome_markdown(outcome) -> str:
    lines = [f"### effkit {outcome.step}: `{outcome.before.model['source']}`", ""]
    if outcome.status != "ok":
        lines += ["> [!CAUTION]", f"> **Failed:** {outcome.failure}", ""]
    lines += ["| | before | after | change |", "|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in _outcome_rows(outcome)]
    lines += [""] + [f"- {n}" for n in outcome.timing_notes() + outcome.notes]
    lines += [f"- quality bar: {outcome.bar}"] if outcome.bar else []
    lines += warnings_markdown(outcome.warnings())
    return "\n".join(lines) + "\n"


def warnings_markdown(warnings: list[str]) -> list[str]:
    """A result's warnings as a Markdown list under a bold heading (nothing when there are none)."""
    if not warnings:
        return []
    return ["", f"**Warnings ({len(warnings)})**: the figures may be off", ""] + [f"- warning: {w}" for w in warnings]


# ---------------------------------------------------------------- inspect

def inspect_tables(info: dict) -> list[Table]:
    summary = Table(title=Text(f"effkit inspect: {info['source']}"), title_justify="left", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("format", f"{info['format']} ({info['kind']})")
    summary.add_row("parameters", f"{info['parameters']:,} ({info['nonzero_parameters']:,} non-zero)")
    if info.get("macs") is not None:
        summary.add_row("MACs", fmt_count(info["macs"]))
    for i in info["inputs"]:
        summary.add_row(Text(f"input {i['name']}"), f"{'x'.join(map(str, i['shape']))} {i['dtype']}")
    for o in info["outputs"]:
        summary.add_row(Text(f"output {o['name']}"), f"{'x'.join(map(str, o['shape']))} {o['dtype']}")
    summary.add_row("int8-quantizable", f"{len(info['quantizable_layers'])} layers")
    summary.add_row("channel-prunable", f"{len(info['prunable_layers'])} layers")
    types = Table(title="layer types", title_justify="left")
    for h in ("type", "count", "parameters"):
        types.add_column(h, justify="left" if h == "type" else "right")
    for t in info["layer_types"]:
        types.add_row(Text(t["type"]), str(t["count"]), f"{t['parameters']:,}")
    layers = Table(title="layers", title_justify="left")
    for h in ("name", "type", "parameters", "sparsity", "int8", "prune"):
        layers.add_column(h, justify="left" if h in ("name", "type") else "right")
    for l in info["layers"]:
        layers.add_row(Text(l["name"]), Text(l["type"]), f"{l['parameters']:,}", f"{100 * l['sparsity']:.1f}%",
                       "yes" if l["quantizable"] else "", "yes" if l["prunable"] else "")
    if info.get("notes"):
        layers.caption = Text("\n".join(info["notes"]))
        layers.caption_justify = "left"
    return [summary, types, layers]
