"""`effkit gate`: check a result file against thresholds; exit 0 pass, 1 a gate failed, 2 bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from effkit.cli.common import (ForceOpt, HtmlOpt, JsonOpt, MarkdownOpt, check_outputs_free, command, console_for, err,
                               warning_text, write_outputs)
from effkit.gate_config import thresholds_from, write_reports
from effkit.gates import gate

FailOnOpt = Annotated[Optional[list[str]], typer.Option(
    "--fail-on", help="A gate, repeatable: METRIC:+5% (relative to the baseline), METRIC:<=12MB / <=3ms (absolute), "
                      "accuracy:-0.5pt (points). METRIC is a name in the result's metrics (latency.p50, size, "
                      "accuracy, ...) or any dotted path in its JSON. \\[default: fail-on from effkit.toml "
                      "\\[gates] or pyproject.toml \\[tool.effkit.gates]]")]
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="Read gates from this effkit.toml or pyproject.toml "
                     "\\[default: ./effkit.toml, ./pyproject.toml].")]
StrictOpt = Annotated[bool, typer.Option(
    "--strict", help="Fail (exit 1) on inconclusive gates too. By default they are warnings: noise must not fail CI "
                     "at random.")]
JunitOpt = Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML to PATH (one test case per gate).")]


def report_gates(report, *, json: str | None, markdown: Path | None, junit: Path | None, force: bool,
                 html: Path | None = None,
                 json_text: Callable[[], str] | None = None, markdown_text: Callable[[], str] | None = None) -> None:
    """Print one line per gate and the summary; write --json, --markdown, --html, --junit and $GITHUB_STEP_SUMMARY; exit.

    `json_text`/`markdown_text` replace the gate report's own (compare writes its measurements too).
    """
    from rich.text import Text

    console = console_for(json)
    style = {"pass": "green", "fail": "bold red", "inconclusive": "yellow"}
    for v in report.verdicts:
        console.print(Text.assemble((f"{v.status.upper():<12}", style[v.status]), f" {v.name}: {v.message}"),
                      soft_wrap=True)
    for w in report.warnings:
        console.print(warning_text(w), soft_wrap=True)
    console.print(Text.assemble(("gates passed", "green") if report.passed else ("gates failed", "bold red"),
                                f": {report.summary()}"))
    markdown_text = markdown_text or report.markdown
    write_outputs(json, json_text or report.to_json, markdown, markdown_text, force, html_path=html)
    for path in write_reports(report, junit=junit, force=force, summary_text=markdown_text()):
        err.print(f"wrote {path}", highlight=False)
    raise typer.Exit(report.exit_code)


@command("gate")
def gate_command(
    result: Annotated[Path, typer.Argument(help="A result JSON: effkit bench --json, a step's --json (its 'before' "
                                                "is the baseline), effkit compress --json (the final state against "
                                                "the original) or effkit compare --json.", show_default=False)],
    baseline: Annotated[Optional[Path], typer.Option(
        "--baseline", help="A saved result to compare with (relative and points gates).")] = None,
    fail_on: FailOnOpt = None,
    config: ConfigOpt = None,
    strict: StrictOpt = False,
    junit: JunitOpt = None,
    json: JsonOpt = None,
    html: HtmlOpt = None,
    markdown: MarkdownOpt = None,
    force: ForceOpt = False,
) -> None:
    """Check a result against performance gates, deciding on 95% confidence bounds.

    Exit 0 when no gate failed (inconclusive gates warn, unless --strict), 1 when a gate failed, 2 for bad input.

    The Markdown table is appended to $GITHUB_STEP_SUMMARY when it is set.
    """
    thresholds, config_strict = thresholds_from(fail_on, config)
    check_outputs_free([json, html, markdown, junit], force, (result, baseline))
    report = gate(result, thresholds, baseline, strict=strict or config_strict)
    report_gates(report, json=json, markdown=markdown, junit=junit, force=force, html=html)
