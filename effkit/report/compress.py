"""The summary of a compress result, for the terminal (Rich) and for pull requests (Markdown).

Both render the result's JSON document (`CompressResult.to_dict()`, what report.json holds), as the
HTML report does, so a saved result renders the same. Its `summary` rows, one per model state and
runtime, hold the change against the previous step on the same runtime and against the original's
torch fp32 eager time: paired speedups with their 95% intervals ("2.07x faster [1.95, 2.20]", or
"inconclusive"), the same text in every format.

The terminal summary fits 80 columns without cutting a figure: latency per state and runtime in one
table, size and quality per state (they do not depend on the runtime) in a second, then the headline,
steps and notes as text that wraps (the command prints the warnings after it, once each).
"""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.padding import Padding
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


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f}%"


def summary_cells(doc: dict) -> list[list[str]]:
    """The summary rows as text cells, in HEADER order."""
    return [[row["state"], row["runtime"], fmt_ms(row["p50_ms"]), fmt_ms(row["p90_ms"]),
             fmt_speedup(row["speedup_step_paired"]), fmt_speedup(row["speedup_vs_torch_fp32_paired"]),
             fmt_bytes(row["size_bytes"]), _x(row["size_ratio_step"]), _pct(row["accuracy"]),
             f"{row['accuracy_change_pt']:+.2f} pt" if row["accuracy_change_pt"] is not None else "-",
             f"{row['cosine_min']:.5f}" if row["cosine_min"] is not None else "-"] for row in doc["summary"]]


def _unsure(speedup: dict) -> str:
    """The reason an inconclusive speedup is one, in brackets; empty otherwise."""
    reasons = speedup.get("reasons") or []
    return f" ({'; '.join(reasons)})" if speedup.get("verdict") == "inconclusive" and reasons else ""


def headline(doc: dict) -> str:
    """One sentence: the whole pipeline's speedup, size and accuracy change (or why it failed)."""
    if doc.get("status") != "ok":
        return (doc.get("message") or "failed") + (f" ({doc['hint']})" if doc.get("hint") else "")
    o = doc.get("overall") or {}
    speedup = o.get("speedup") or {}
    parts = []
    speed = speedup.get("vs_torch_fp32")
    if speed:
        parts.append(f"{fmt_speedup(speed['p50'])} at p50 ({fmt_speedup(speed['p90'])} at p90) against torch fp32 "
                     f"eager, on {o['final_runtime']}" + _unsure(speed["p50"]))
    same = speedup.get("same_runtime")
    if same and o.get("final_runtime") != "torch":
        parts.append(f"{fmt_speedup(same['p50'])} against the original on {o['final_runtime']}" + _unsure(same["p50"]))
    if o.get("size_ratio"):
        parts.append(f"size {fmt_bytes(o['size_before'])} -> {fmt_bytes(o['size_after'])} "
                     f"({1 / o['size_ratio']:.2f}x smaller)")
    if o.get("accuracy_before") is not None:
        parts.append(f"accuracy {_pct(o['accuracy_before'])} -> {_pct(o['accuracy_after'])} "
                     f"({o['accuracy_change_pt']:+.2f} pt)")
    elif o.get("fidelity"):
        parts.append(f"cosine to the original {o['fidelity']['cosine_min']:.5f} (min)")
    return "; ".join(parts)


def _attempt(a: dict) -> str:
    what = a.get("setting") or (f"tolerance {a['tolerance']}" if a.get("tolerance") else "as configured")
    verdict = "kept" if a["accepted"] else "broke the bar: " + "; ".join(a["violations"])
    return f"try {a['attempt']} ({what}) {verdict}"


def _step_line(step: dict) -> str:
    """A step and its attempts (back-off), e.g. "prune: try 1 (ratio 0.5) kept"."""
    return step["step"] + (": " + ", ".join(_attempt(a) for a in step["attempts"]) if step.get("attempts") else "")


# ---------------------------------------------------------------- terminal

def _latency_table(doc: dict) -> Table:
    """p50, p90 and the paired speedups of every state on every runtime (ort = ONNX Runtime)."""
    table = Table(title=Text(f"effkit compress: {doc['source']}"), title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True, show_edge=False)
    for i, h in enumerate(("step", "runtime", "p50 ms", "p90 ms", "speedup (step)", "vs torch fp32")):
        # figures never wrap (a cut number is a wrong number); a long step name may
        table.add_column(h, justify="left" if i < 2 else "right", no_wrap=i >= 1)
    for row in doc["summary"]:
        table.add_row(Text(row["state"]), "ort" if row["runtime"] == "onnxruntime" else row["runtime"],
                      _num(row["p50_ms"]), _num(row["p90_ms"]), fmt_speedup(row["speedup_step_paired"], "\n"),
                      fmt_speedup(row["speedup_vs_torch_fp32_paired"], "\n"))
    return table


def _state_table(doc: dict) -> Table:
    """Size and quality once per state: accuracy and its change with --eval data, else the cosine
    similarity of the outputs to the original's."""
    first: dict[str, dict] = {}
    for row in doc["summary"]:
        first.setdefault(row["state"], row)
    states = list(first.values())
    labelled = any(row["accuracy"] is not None for row in states)
    quality = ("accuracy", "Δ pt") if labelled else ("cosine (min)",)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, show_edge=False)
    for i, h in enumerate(("step", "size", "size (step)", *quality)):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i >= 1)
    for i, row in enumerate(states):
        if labelled:
            figures = [_pct(row["accuracy"]), f"{row['accuracy_change_pt']:+.2f}"
                       if row["accuracy_change_pt"] is not None else "-"]
        else:  # the original is the reference: its outputs are its own
            figures = ["1" if i == 0 else f"{row['cosine_min']:.5f}" if row["cosine_min"] is not None else "-"]
        table.add_row(Text(row["state"]), fmt_bytes(row["size_bytes"]), _x(row["size_ratio_step"]), *figures)
    return table


def compress_summary(doc: dict) -> Group:
    """What `effkit compress` prints at the end, from its result document: the two tables, then the
    headline (or, for a failed run, a red FAILED line: the reason is the Error: line), the steps,
    notes and quality bar. The warnings follow it, printed once by the command (`cli.common.print_warnings`)."""
    parts: list = [_latency_table(doc), Text(), _state_table(doc), Text()] if doc["summary"] else [
        Text(f"effkit compress: {doc['source']}")]
    if doc.get("status") == "ok":
        parts.append(Text(headline(doc)))  # Text, not markup: notes and names may hold [brackets]
    else:  # red, so that nobody mistakes it for a result
        parts.append(Text("FAILED: no model was written (the reason follows)", style="bold red"))
    for step in doc.get("steps", []):
        parts.append(Text(_step_line(step)))
        parts += [Padding(Text(note), (0, 0, 0, 2)) for note in step.get("notes", [])]
    parts += [Text(n) for n in doc.get("notes", []) if n != f"stopped: {doc.get('message')}"]
    if doc.get("bar"):
        parts.append(Text(f"quality bar: {doc['bar']}"))
    return Group(*parts)


# ---------------------------------------------------------------- Markdown

def compress_markdown(doc: dict) -> str:
    """A compact Markdown report that fits a pull-request comment."""
    lines = [f"### effkit compress: `{doc['source']}`", "",
             *(["> [!CAUTION]", f"> **Failed:** {headline(doc)}"] if doc.get("status") != "ok" else
               [f"**Result:** {headline(doc)}"]), "",
             "| " + " | ".join(HEADER) + " |",
             "|---|---|" + "---:|" * (len(HEADER) - 2)]
    lines += ["| " + " | ".join(cells) + " |" for cells in summary_cells(doc)]
    lines += ["", "Speedups compare p50 latencies measured in one run, same threads and inputs; "
              "\"vs torch fp32\" is against the original model on torch eager. Cosine: against the "
              "original's outputs (minimum over samples).", ""]
    if doc.get("steps"):
        lines += ["**Steps**", ""]
        for step in doc["steps"]:
            lines.append(f"- **{step['step']}**" + (": " + ", ".join(_attempt(a) for a in step["attempts"])
                                                     if step.get("attempts") else ""))
            lines += [f"  - {note}" for note in step.get("notes", [])]
    lines += [f"- {note}" for note in doc.get("notes", [])]
    if doc.get("bar"):
        lines.append(f"- quality bar: {doc['bar']}")
    lines += warnings_markdown(doc.get("warnings") or [])
    original = (doc.get("states") or [{}])[0].get("bench")
    if original:
        env = original["environment"]
        lines += ["", f"<sub>{env['cpu']['model']}, {original['runs'][0]['threads']} threads, "
                  f"torch {env['versions']['torch']}, onnxruntime {env['versions']['onnxruntime']}, "
                  f"{env['time']}</sub>"]
    return "\n".join(lines) + "\n"
