"""`effkit compare A B`: measure two models interleaved in one process; ratios B/A with 95% intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from effkit.cli.data_options import (ImageOpt, ImageSizeOpt, MaxLengthOpt, MeanOpt, StdOpt, TextFileOpt, TextOpt,
                                     example_reading, example_texts)
from effkit.cli.common import (ArchOpt, ForceOpt, HtmlOpt, InputShapeOpt, InputsOpt, JsonOpt, MarkdownOpt, ThreadsOpt,
                               TimeoutOpt, TrustOpt, load, resolve_threads,
                               WarmupOpt, check_outputs_free, command, console_for, print_warnings, progress_bar,
                               warned)
from effkit.cli.gate_cmd import JunitOpt, StrictOpt, report_gates
from effkit.comparison import DEFAULT_BLOCK_TIME, DEFAULT_PAIRS, DEFAULT_THRESHOLD, compare
from effkit.errors import UsageError
from effkit.gate_config import thresholds_from
from effkit.gates import gate
from effkit.report.text import fmt_ms
from effkit.specs import parse_threshold
from effkit.util import plural


@command("compare")
def compare_command(
    model_a: Annotated[str, typer.Argument(help="The reference model (e.g. the main branch's).", show_default=False)],
    model_b: Annotated[str, typer.Argument(help="The candidate model (e.g. the pull request's).", show_default=False)],
    threshold: Annotated[str, typer.Option(
        "--threshold", help="Smallest change called faster/slower: B/A beyond 1+T (or below 1/(1+T)) with the whole "
                            "95% interval.")] = f"{100 * DEFAULT_THRESHOLD:g}%",
    fail_on: Annotated[Optional[list[str]], typer.Option(
        "--fail-on", help="A gate on the comparison, repeatable, decided on the 95% interval: latency.p50:+5%, "
                          "latency.p90:+10%, throughput:-5%, size:+0%, parameters:<=1M ... "
                          "\\[default: latency.p50:+THRESHOLD]")] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="Read the gates from this effkit.toml (\\[gates]) or pyproject.toml "
                         "(\\[tool.effkit.gates]) instead.")] = None,
    strict: StrictOpt = False,
    rerun_inconclusive: Annotated[int, typer.Option(
        "--rerun-inconclusive", help="While the verdict (or a gate) is inconclusive, measure up to N more rounds of "
                                     "pairs.", min=0)] = 0,
    runtime: Annotated[Optional[str], typer.Option(
        "--runtime", help="torch or onnxruntime (default: torch when both are torch models, else onnxruntime)")] = None,
    threads: ThreadsOpt = None,
    pairs: Annotated[int, typer.Option(
        "--pairs", help="A/B block pairs to keep per round (a verdict needs at least 10: fewer give inconclusive).",
        min=2)] = DEFAULT_PAIRS,
    block_time: Annotated[float, typer.Option(
        "--block-time", help="Seconds per block (one model's run of calls).", min=0.001)] = DEFAULT_BLOCK_TIME,
    iterations: Annotated[Optional[int], typer.Option(
        "--iterations", help="Timed calls per block \\[default: as many as fill --block-time]", min=1)] = None,
    warmup: WarmupOpt = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the A/B order and of the bootstrap.")] = 0,
    arch: ArchOpt = None,
    trust: TrustOpt = False,
    input_shape: InputShapeOpt = None,
    inputs: InputsOpt = None,
    text: TextOpt = None,
    text_file: TextFileOpt = None,
    image: ImageOpt = None,
    max_length: MaxLengthOpt = None,
    image_size: ImageSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    junit: JunitOpt = None,
    json: JsonOpt = None,
    html: HtmlOpt = None,
    markdown: MarkdownOpt = None,
    force: ForceOpt = False,
    timeout: TimeoutOpt = None,
) -> None:
    """Compare B with A, measured interleaved (A B / B A blocks, same inputs and threads) in one process.

    Ratios B/A of p50, p90 and mean latency with 95% intervals; verdict: faster, slower, same or inconclusive.

    Pairs measured while the load of other processes changed, or with fewer free cores than threads, are redone.

    Without --fail-on the gate is latency.p50:+THRESHOLD. Exit 0 pass, 1 a gate failed, 2 bad input.
    """

    try:
        limit = parse_threshold(f"latency.p50:+{threshold.strip().lstrip('+')}")
    except UsageError:
        limit = None
    if limit is None or limit.kind != "relative" or limit.value <= 0:
        raise UsageError(f"cannot parse --threshold {threshold!r}", "write a percentage, e.g. 5%")
    # Config files are read only when named: their gates are often written for bench results
    # (accuracy, memory) that a comparison does not measure.
    gates, config_strict = thresholds_from(fail_on, config) if fail_on or config else ([limit], False)
    strict = strict or config_strict
    check_outputs_free([json, html, markdown, junit], force)
    texts = example_texts(text, text_file)
    loaded_a = load(model_a, arch, trust, input_shape, inputs, texts=texts, images=image or [],
                    reading=example_reading(max_length, image_size, mean, std), console=console_for(json))
    loaded_b = load(model_b, arch, trust, input_shape, inputs, texts=texts, images=image or [],
                    reading=example_reading(max_length, image_size, mean, std), console=console_for(json))
    check_outputs_free([json, html, markdown, junit], force)  # against the files loading read (an ONNX model's data, ...)
    threads = resolve_threads(threads, console_for(json))
    with progress_bar() as progress:
        result = compare(loaded_a, loaded_b, runtime=runtime, threads=threads, pairs=pairs, block_time=block_time,
                         iterations=iterations, warmup=warmup, threshold=limit.value,
                         rerun_inconclusive=rerun_inconclusive,
                         conclusive=lambda r: r.verdict != "inconclusive" and not gate(r, gates).inconclusive,
                         seed=seed, progress=progress)
    result.warnings = list(dict.fromkeys(warned() + result.warnings))  # the command's own, then the timing's
    console = console_for(json)
    console.print(compare_table(result))
    print_warnings(console, result.warnings)
    report = gate(result, gates, strict=strict)
    report.warnings = [w for w in report.warnings if not w.startswith("this run: ")]  # the comparison's, above

    def json_text() -> str:
        import json as jsonlib

        data = jsonlib.loads(result.to_json())
        data["gates"] = report.to_dict()
        return jsonlib.dumps(data, indent=2)

    report_gates(report, json=json, markdown=markdown, junit=junit, force=force, html=html, json_text=json_text,
                 markdown_text=lambda: compare_markdown(result) + "\n" + report.markdown())


def compare_table(result):
    """Rich table: each statistic's A, B, ratio B/A, 95% interval and verdict."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"effkit compare: B {result.b['source']} vs A {result.a['source']}"), title_justify="left",
                  box=box.SIMPLE_HEAD)
    for h in ("latency", "A", "B", "B/A", "95% interval", "verdict"):
        table.add_column(h, justify="left" if h in ("latency", "verdict") else "right")
    style = {"faster": "green", "slower": "bold red", "same": "none", "inconclusive": "yellow"}
    for stat, s in result.stats.items():
        table.add_row(stat, fmt_ms(s["a_ms"]), fmt_ms(s["b_ms"]), f"{s['ratio']:.3f}",
                      f"[{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]", Text(s["verdict"], style=style[s["verdict"]]))
    table.caption = Text(f"verdict: {result.verdict}" + (f" ({'; '.join(result.reasons)})" if result.reasons else "")
                     + f"\n{result.runtime}, {plural(result.threads, 'thread')}, {len(result.pairs)} pairs kept of "
                       f"{result.attempts} measured, {result.calls_per_block} calls per block, threshold "
                       f"±{100 * result.threshold:g}%, {result.duration_s:.1f} s")
    table.caption_justify = "left"
    return table


def compare_markdown(result) -> str:
    """The same table in Markdown, for pull requests and $GITHUB_STEP_SUMMARY."""
    lines = [f"### effkit compare: B `{result.b['source']}` vs A `{result.a['source']}`", "",
             "| latency | A | B | B/A | 95% interval | verdict |", "|---|---:|---:|---:|---|---|"]
    for stat, s in result.stats.items():
        lines.append(f"| {stat} | {fmt_ms(s['a_ms'])} | {fmt_ms(s['b_ms'])} | {s['ratio']:.3f} | "
                     f"[{s['ci'][0]:.3f}, {s['ci'][1]:.3f}] | {s['verdict']} |")
    lines += ["", f"Verdict: **{result.verdict}**" + (f" ({'; '.join(result.reasons)})" if result.reasons else "")
              + f". {result.runtime}, {plural(result.threads, 'thread')}, {len(result.pairs)} of {result.attempts} pairs kept, "
                f"threshold ±{100 * result.threshold:g}%."]
    lines += [f"- warning: {w}" for w in result.warnings]
    return "\n".join(lines) + "\n"
