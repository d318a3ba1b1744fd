"""HTML reports without a browser: what each page says first, and `effkit report` with its history.

The pages are rendered from result documents written by the commands themselves (one bench run,
copied with changed numbers for a history); the browser checks are in test_browser_reports.py.
"""

from __future__ import annotations

import copy
import json
import re

import pytest

from conftest import FAST, spec


@pytest.fixture(scope="module")
def bench_doc(tmp_path_factory):
    from typer.testing import CliRunner

    from effkit.cli import app

    path = tmp_path_factory.mktemp("bench") / "bench.json"
    result = CliRunner().invoke(app, ["bench", spec("mlp"), "--warmup", "1", "--iterations", "20", "--json",
                                      str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return json.loads(path.read_text())


def _slower(doc: dict, factor: float, commit: str, time: str) -> dict:
    """The same result with every latency sample `factor` times longer, as if measured at `commit`."""
    doc = copy.deepcopy(doc)
    run = doc["runs"][0]
    run["samples_ms"] = [s * factor for s in run["samples_ms"]]
    run["latency_ms"] = {k: v * factor if k not in ("n",) else v for k, v in run["latency_ms"].items()}
    doc["environment"].update(git_commit=commit, time=time)
    return doc


def test_bench_page_says_its_verdict_first_and_lists_warnings(bench_doc):
    from effkit.report.render import render_html

    doc = dict(bench_doc, warnings=["noisy: IQR is 40% of the median"])
    html = render_html(doc)
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    first = html.index('class="verdict')
    assert first < html.index("<h2>") and 'data-status="warn"' in html and "Warning:</span>" in html
    assert "<li>noisy: IQR is 40% of the median</li>" in html
    assert re.search(r'</strong>: p50 [0-9.]+ ms, p90 [0-9.]+ ms<svg', html)  # charts carry their values
    assert "<script" not in html and "http" not in html


def _figure(html: str, chart: str) -> str:
    found = re.findall(rf'<figure class="chart" data-chart="{chart}".*?</figure>', html, re.S)
    assert len(found) == 1, f"{len(found)} {chart} charts"
    return found[0]


def _side_labels(figure: str) -> list[str]:
    return re.findall(r'<div class="side"><strong>([^<]*)</strong>', figure)


def test_latency_distributions_have_one_histogram_per_side(bench_doc):
    from effkit.report.render import render_html

    runs = bench_doc["runs"]
    figure = _figure(render_html(bench_doc), "latency-distribution")
    assert _side_labels(figure) == [f"{r['runtime']}, batch {r['batch_size']}" for r in runs]
    assert figure.count('<svg class="plot dist"') == len(runs) + 1  # a histogram per run, and the axis
    for run in runs:  # the recorded p50 and p90, written
        assert f"p50 {run['latency_ms']['p50']:.3g} ms, p90 {run['latency_ms']['p90']:.3g} ms" in figure
    assert '<div class="axis">latency per call (ms), from zero</div>' in figure and 'text-anchor="start">0</text>' in figure

    step = {"schema": "effkit.step/1", "step": "prune", "before": bench_doc,
            "after": _slower(bench_doc, 0.5, "bbbbbbbbbbbb2", "2026-01-02T00:00"), "speedup": {}, "details": {}}
    figure = _figure(render_html(step), "latency-distribution")
    assert _side_labels(figure) == [f"{side}, {r['runtime']}" for r in runs for side in ("before", "after")]
    assert figure.count("<rect class=\"bin\"") > 2 * len(runs)


def test_a_side_without_samples_says_why_and_slow_outliers_are_counted_not_drawn():
    from effkit.report.page import distribution

    figure = distribution("latency-distribution", "A and B.", [
        {"label": "A", "samples": [1.0] * 199 + [50.0], "p50": 1.0, "p90": 1.0},
        {"label": "B", "samples": [], "why": "no pair was measured on a quiet enough machine"}])
    assert _side_labels(figure) == ["A", "B"] and figure.count('<svg class="plot dist"') == 2  # A's, the axis
    assert '<div class="missing">no samples: no pair was measured on a quiet enough machine</div>' in figure
    assert 'aria-label="axis: 0 to 1.5 ms"' in figure  # past the p99, not stretched to the 50 ms call
    assert "Beyond the axis: A: 0.5% of the calls (slowest 50 ms)." in figure


def test_unknown_documents_are_refused_with_one_line():
    from effkit.errors import UsageError
    from effkit.report.render import render_html

    with pytest.raises(UsageError) as e:
        render_html({"schema": "other/1"})
    assert str(e.value) == ("cannot render a result with schema 'other/1' (pass a JSON file written by an effkit "
                            "command's --json)")


def test_report_renders_one_result_and_a_folder_as_a_history(cli, tmp_path, bench_doc):
    history = tmp_path / "history"
    history.mkdir()
    for i, (factor, commit) in enumerate([(1.0, "aaaaaaaaaaaa1"), (1.01, "bbbbbbbbbbbb2"), (3.0, "cccccccccccc3")]):
        (history / f"{i}.json").write_text(json.dumps(_slower(bench_doc, factor, commit, f"2026-01-0{i + 1}T00:00")))
    (history / "notes.json").write_text('{"not": "a result"}')

    code, _, stderr = cli("report", history / "0.json", "-o", "one.html")
    assert code == 0 and stderr.strip() == "wrote one.html"
    assert "<title>effkit bench: " in (tmp_path / "one.html").read_text()

    code, _, stderr = cli("report", history, "-o", "history.html")
    assert code == 0, stderr
    assert stderr.splitlines() == [f"skipped {history / 'notes.json'}: not an effkit result", "wrote history.html"]
    html = (tmp_path / "history.html").read_text()
    assert 'data-status="fail"' in html and "the latest result (cccccccccc) regressed: p50 2.97x slower" in html  # against b
    # the 1% change is within noise: not marked
    assert "bbbbbbbbbb: " not in html
    assert re.search(r"bbbbbbbbbb</td><td[^>]*>2026-01-02T00:00</td><td[^>]*>torch</td><td>[0-9.]+ ms</td>"
                     r"<td>[0-9.]+, [0-9.]+</td>", html)  # p50 with its interval


def test_report_errors_are_one_line(cli, tmp_path, bench_doc):
    (tmp_path / "gate.json").write_text('{"schema": "effkit.gate/1", "passed": true, "verdicts": []}')
    (tmp_path / "b.json").write_text(json.dumps(bench_doc))
    code, _, stderr = cli("report", "b.json", "gate.json", "-o", "h.html")
    assert (code, stderr.strip()) == (2, "Error: gate is a effkit.gate/1 result, which has no measurements for a "
                                         "history (pass bench, compare, compress or a step's --json results)")
    code, _, stderr = cli("report", "missing.json", "-o", "h.html")
    assert (code, stderr.strip()) == (2, "Error: no such result file: missing.json")
    (tmp_path / "h.html").write_text("mine")
    code, _, stderr = cli("report", "b.json", "-o", "h.html")
    assert (code, stderr.strip()) == (2, "Error: h.html already exists (pass --force to overwrite it)")
    assert (tmp_path / "h.html").read_text() == "mine"


def test_one_parameter_count_everywhere(cli):
    """inspect and the size every step reports count the same parameters: weights, not BatchNorm buffers."""
    from effkit.load import load_model
    from effkit.size import size_info
    from effkit.structure import describe

    model = load_model(spec("cnn"))
    assert sum(b.numel() for b in model.module.buffers()) > 0  # the model has buffers to leave out
    assert size_info(model)["parameters"] == describe(model)["parameters"] == sum(
        p.numel() for p in model.module.parameters())


@pytest.mark.parametrize("n, text", [(4_510_000, "4.51 MB"), (309_390, "309 KB"), (10_185, "10.2 KB"),
                                     (45_600, "45.6 KB"), (512, "512 B"), (None, "-")])
def test_sizes_have_three_significant_digits(n, text):
    from effkit.util import fmt_bytes

    assert fmt_bytes(n) == text
