"""Every kind of HTML report, opened in headless Chromium at 360, 800 and 1280 px wide: no horizontal
overflow of the page, no console errors or failed loads, every chart drawn. Screenshots are written
to the test's tmp folder (the path is printed) for a person to look at.

Skipped, with the reason, where Chromium is not installed (`.ci/run` installs it when it can).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from browser import Browser, find_chromium
from conftest import FAST, NO_BAR, spec

WIDTHS = (360, 800, 1280)
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")

LAYOUT = """(() => {
  const charts = [...document.querySelectorAll('figure.chart')].map(f => {
    const r = f.getBoundingClientRect();
    return {name: f.dataset.chart, width: r.width, height: r.height, right: r.right,
            marks: f.querySelectorAll('.bar, .bin, .missing, circle').length};
  });
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth, charts: charts,
          status: document.querySelector('.verdict').dataset.status};
})()"""


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """One HTML report of every kind, written by the commands themselves with --html, and a history."""
    from typer.testing import CliRunner

    from effkit.cli import app

    out = tmp_path_factory.mktemp("reports")
    runner = CliRunner()

    def run(*args, ok=(0,)):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code in ok, result.stderr
        return result

    model = spec("mlp")
    run("bench", model, *FAST, "--runtime", "all", "--json", out / "bench.json", "--html", out / "bench.html")
    run("inspect", model, "--json", out / "inspect.json", "--html", out / "inspect.html")
    run("export", model, "-o", out / "m.onnx", "--html", out / "export.html")
    run("prune", model, "--ratio", "0.5", "-o", out / "p.pt2", *FAST, *NO_BAR, "--json", out / "prune.json",
        "--html", out / "prune.html")
    run("quantize", model, "-o", out / "q.onnx", "--allow-slower", *FAST, *NO_BAR, "--html", out / "quantize.html")
    run("compare", model, model, "--pairs", "4", "--json", out / "compare.json", "--html", out / "compare.html",
        ok=(0, 1))
    run("gate", out / "bench.json", "--fail-on", "latency.p50:<=10s", "--html", out / "gate.html", ok=(0, 1))
    run("compress", model, "--prune", "0.5", "--quantize", "int8", "-o", out / "c", *FAST, *NO_BAR,
        "--json", out / "compress.json")
    shutil.copy(out / "c" / "report.html", out / "compress.html")
    history = out / "history"
    history.mkdir()
    for name in ("bench", "prune", "compare", "compress"):
        shutil.copy(out / f"{name}.json", history / f"{name}.json")
    run("report", history, "-o", out / "history.html")
    return out


@pytest.fixture(scope="module")
def browser():
    b = Browser(CHROMIUM)
    yield b
    b.close()


KINDS = ["bench", "inspect", "export", "prune", "quantize", "compare", "gate", "compress", "history"]


@pytest.mark.parametrize("kind", KINDS)
def test_report_reads_at_every_width_in_a_real_browser(reports, browser, kind):
    page = reports / f"{kind}.html"
    html = page.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html  # opens offline
    for width in WIDTHS:
        problems = browser.open(page, width)
        assert problems == [], f"{kind} at {width} px"
        layout = browser.evaluate(LAYOUT)
        assert layout["scrollWidth"] <= layout["innerWidth"], f"{kind} overflows at {width} px: {layout}"
        for chart in layout["charts"]:
            assert chart["height"] > 20 and chart["marks"] > 0, f"{kind} chart {chart['name']} at {width} px"
            assert chart["right"] <= width + 0.5, f"{kind} chart {chart['name']} cut off at {width} px"
        browser.screenshot(reports / f"{kind}-{width}.png")
    print(f"screenshots: {reports}/{kind}-*.png")


def test_every_kind_has_its_charts(reports):
    charts = {kind: json.dumps(sorted(set(re.findall(r'data-chart="([a-z0-9-]+)"', (reports / f"{kind}.html").read_text()))))
              for kind in KINDS}
    assert charts["bench"] == '["latency-distribution"]' and charts["compare"] == '["latency-distribution"]'
    assert charts["prune"] == '["latency-distribution", "layers", "size"]'
    assert charts["quantize"] == '["latency-distribution", "size"]'
    assert charts["compress"] == '["latency", "latency-distribution", "layers", "size", "tradeoff"]'
    assert charts["history"] == '["latency-history", "p50", "size"]'
