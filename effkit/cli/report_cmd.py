"""`effkit report`: render saved results as one HTML page, or several (one per commit) as a history."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from effkit.cli.common import ForceOpt, check_outputs_free, command, err
from effkit.files import write_text
from effkit.report.history import history_html, read_results
from effkit.report.render import render_html


@command("report")
def report_command(
    results: Annotated[list[Path], typer.Argument(
        help="Result JSON files written by any effkit command's --json, or a folder of them (one per commit, "
             "as CI saves them).", show_default=False, metavar="RESULT...")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML page to write.", metavar="PATH")],
    force: ForceOpt = False,
) -> None:
    """Render saved results as a self-contained HTML page.

    One result gives its own report.

    Several (or a folder) give a history: p50/p90 latency with 95% intervals, size and accuracy per
    result, regressions marked."""
    check_outputs_free([output], force, inputs=tuple(results))
    found, skipped = read_results(results)
    if len(found) == 1 and not any(p.is_dir() for p in results):
        html = render_html(found[0][1])
    else:
        html = history_html(found, skipped)
    for note in skipped:
        err.print(note, markup=False, highlight=False, soft_wrap=True)
    write_text(output, html, force)
    err.print(f"wrote {output}", markup=False, highlight=False, soft_wrap=True)
