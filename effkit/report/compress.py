"""The summary of a compress result, for the terminal (Rich) and for pull requests (Markdown).

Both read the same rows (`CompressResult.rows()`): one per model state and runtime, with the change
against the previous step on the same runtime and against the original's torch fp32 eager time.
Those changes are paired speedups with their 95% intervals ("2.07x faster [1.95, 2.20]", or
"inconclusive"), the same text in every format.
"""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text

from effkit.report.text import _num, fmt_ms, warnings_markdown
from effkit.util import fmt_bytes, fmt_speedup

HEADER = ["step", "runtime", "p50", "p90", "speedup (step)", "vs torch fp32", "size", "size (step)",
          "accuracy", "Δ accuracy", "cosine"]


def _x(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}x" if value >= 100 else f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def summary_cells(result) -> list[list[str]]:
    """The summary rows as text cells, in HEADER order."""
    cells = []
    for row in result.rows():
        cells.append([
            row["state"], row["runtime"], fmt_ms(row["p50_ms"]), fmt_ms(row["p90_ms"]),
            fmt_speedup(row["speedup_step_paired"]), fmt_speedup(row["speedup_vs_torch_fp32_paired"]),
            fmt_bytes(row["size_bytes"]),
            _x(row["size_ratio_step"]),
            f"{100 * row['accuracy']:.2f}%" if row["accuracy"] is not None else "-",
            f"{row['accuracy_change_pt']:+.2f} pt" if row["accuracy_change_pt"] is not None else "-",
            f"{row['cosine_min']:.5f}" if row["cosine_min"] is not None else "-",
        ])
    return cells


def _unsure(speedup: dict) -> str:
    """The reason an inconclusive speedup is one, in brackets; empty otherwise."""
    return f" ({'; '.join(speedup['reasons'])})" if speedup["verdict"] == "inconclusive" and speedup["reasons"] else ""


def headline(result) -> str:
    """One sentence: the whole pipeline's speedup, size and accuracy change (or why it failed)."""
    o = result.overall()
    parts = []
    speed = o.get("speedup", {}).get("vs_torch_fp32")
    if speed:
        parts.append(f"{fmt_speedup(speed['p50'])} at p50 ({fmt_speedup(speed['p90'])} at p90) against torch fp32 "
                     f"eager, on {o['final_runtime']}" + _unsure(speed["p50"]))
    same = o.get("speedup", {}).get("same_runtime")
    if same and o["final_runtime"] != "torch":
        parts.append(f"{fmt_speedup(same['p50'])} against the original on {o['final_runtime']}"
                     + _unsure(same["p50"]))
    if o.get("size_ratio"):
        parts.append(f"size {fmt_bytes(o['size_before'])} -> {fmt_bytes(o['size_after'])} "
                     f"({1 / o['size_ratio']:.2f}x smaller)")
    if o.get("accuracy_before") is not None:
        parts.append(f"accuracy {100 * o['accuracy_before']:.2f}% -> {100 * o['accuracy_after']:.2f}% "
                     f"({o['accuracy_change_pt']:+.2f} pt)")
    elif o.get("fidelity"):
        parts.append(f"cosine to the original {o['fidelity']['cosine_min']:.5f} (min)")
    if result.status != "ok":
        return f"{result.message}" + (f" ({result.hint})" if result.hint else "")
    return "; ".join(parts)


def step_lines(result) -> list[str]:
    """One line per step: its setting, the attempts (back-off) and its notes."""
    lines = []
    for step in result.steps:
        tried = step.attempts
        text = f"{step.name}"
        if tried:
            text += ": " + ", ".join(_attempt(a) for a in tried)
        lines.append(text)
        lines += [f"  {note}" for note in step.notes]
    return lines


def _attempt(a: dict) -> str:
    what = a.get("setting") or (f"tolerance {a['tolerance']}" if a.get("tolerance") else "as configured")
    verdict = "kept" if a["accepted"] else "broke the bar: " + "; ".join(a["violations"])
    return f"try {a['attempt']} ({what}) {verdict}"


def terminal_cells(result) -> list[list[str]]:
    """The rows for an 80-column terminal: units in the header, short runtime names; the last
    columns are accuracy and its change with --eval data, else cosine to the original's outputs."""
    cells = []
    for row in result.rows():
        quality = ([f"{100 * row['accuracy']:.2f}%", f"{row['accuracy_change_pt']:+.2f}"]
                   if row["accuracy"] is not None else
                   [f"{row['cosine_min']:.5f}" if row["cosine_min"] is not None else "1", ""])
        cells.append([
            row["state"], "ort" if row["runtime"] == "onnxruntime" else row["runtime"],
            _num(row["p50_ms"]), _num(row["p90_ms"]), fmt_speedup(row["speedup_step_paired"], "\n"),
            fmt_speedup(row["speedup_vs_torch_fp32_paired"], "\n"),
            fmt_bytes(row["size_bytes"]), *quality,
        ])
    return cells


def compress_table(result) -> Table:
    """The summary table printed at the end of `effkit compress` (ort = ONNX Runtime)."""
    table = Table(title=Text(f"effkit compress: {result.source}"), title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    quality = ("acc", "Δ pt") if result.original.accuracy is not None else ("cosine", "")
    for i, h in enumerate(("step", "runtime", "p50 ms", "p90 ms", "step", "vs fp32", "size", *quality)):
        table.add_column(h, justify="left" if i < 2 else "right", no_wrap=True)
    for cells in terminal_cells(result):
        table.add_row(*cells)
    # a failed run's reason is its Error: line, printed once, after the table
    notes = [n for n in result.notes if n != f"stopped: {result.message}"]
    lines = ([headline(result)] if result.status == "ok" else []) + step_lines(result) + notes
    lines += [f"quality bar: {result.bar}"] if result.bar else []  # the warnings are printed below the table
    caption = Text("\n".join(c for c in lines if c))  # Text, not markup: notes hold [section] names
    if result.status != "ok":  # red, so that nobody mistakes it for a result; the reason is the Error: line
        caption = Text.assemble(("FAILED: no model was written (the reason follows)", "bold red"), "\n", caption)
    table.caption = caption
    table.caption_justify = "left"
    return table


def compress_markdown(result) -> str:
    """A compact Markdown report that fits a pull-request comment."""
    lines = [f"### effkit compress: `{result.source}`", "",
             *(["> [!CAUTION]", f"> **Failed:** {headline(result)}"] if result.status != "ok" else
               [f"**Result:** {headline(result)}"]), "",
             "| " + " | ".join(HEADER) + " |",
             "|---|---|" + "---:|" * (len(HEADER) - 2)]
    lines += ["| " + " | ".join(cells) + " |" for cells in summary_cells(result)]
    lines += ["", "Speedups compare p50 latencies measured in one run, same threads and inputs; "
              "\"vs torch fp32\" is against the original model on torch eager. Cosine: against the "
              "original's outputs (minimum over samples).", ""]
    if result.steps:
        lines.append("**Steps**")
        lines.append("")
        for step in result.steps:
            lines.append(f"- **{step.name}**" + (": " + ", ".join(_attempt(a) for a in step.attempts)
                                                  if step.attempts else ""))
            lines += [f"  - {note}" for note in step.notes]
    lines += [f"- {note}" for note in result.notes]
    if result.bar:
        lines.append(f"- quality bar: {result.bar}")
    lines += warnings_markdown(result.warnings())
    if result.original.bench is not None:
        env = result.original.bench.environment
        lines += ["", f"<sub>{env['cpu']['model']}, {result.original.bench.runs[0]['threads']} threads, "
                  f"torch {env['versions']['torch']}, onnxruntime {env['versions']['onnxruntime']}, "
                  f"{env['time']}</sub>"]
    return "\n".join(lines) + "\n"
