"""A history page: one measured model per saved result (one per commit, as CI saves them), in order.

Each result (bench, a step, compress, compare) becomes one point: p50 and p90 latency with 95%
intervals (from its samples), size on disk and accuracy. A point is marked as a regression when it
is clearly worse than the one before it: latency (on the same runtime) intervals that do not overlap and more than
LATENCY_REGRESSION slower, size more than SIZE_REGRESSION bigger, accuracy more than
ACCURACY_REGRESSION_PT lower.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from effkit.errors import UsageError
from effkit.report.page import bar_chart, bullets, page, scatter, table, verdict
from effkit.report.render import can_render, fmt_ms
from effkit.util import fmt_bytes

LATENCY_REGRESSION = 0.05
SIZE_REGRESSION = 0.01
ACCURACY_REGRESSION_PT = 0.5
_HISTORY_SCHEMAS = ("effkit.bench/1", "effkit.step/1", "effkit.compress/1", "effkit.compare/1")


def read_results(paths: list[Path]) -> tuple[list[tuple[str, dict]], list[str]]:
    """(name, document) of every result named, a folder standing for its *.json files (sorted), and
    notes on the files of a folder that were skipped (not effkit results). A named file that is not
    a result is an error."""
    found, skipped = [], []
    for path in paths:
        if path.is_dir():
            for file in sorted(path.glob("*.json")):
                doc = _read(file, strict=False)
                if doc is None:
                    skipped.append(f"skipped {file}: not an effkit result")
                else:
                    found.append((file.stem, doc))
        else:
            found.append((path.stem, _read(path, strict=True)))
    if not found:
        raise UsageError("no effkit results found in " + ", ".join(map(str, paths)),
                         "pass JSON files written by an effkit command's --json, or a folder of them")
    return found, skipped


def _read(path: Path, strict: bool) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no such result file: {path}") from None
    except (OSError, ValueError) as e:
        if not strict:
            return None
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    if not can_render(doc):
        schema = doc.get("schema") if isinstance(doc, dict) else None
        if not strict:
            return None
        raise UsageError(f"{path} is not an effkit result (schema {schema!r})",
                         "pass a JSON file written by an effkit command's --json")
    return doc


def quantile_interval(samples: list[float], q: float) -> tuple[float, float] | None:
    """A distribution-free 95% interval of the q-quantile, from order statistics; None for < 10 samples."""
    n = len(samples)
    if n < 10:
        return None
    ordered = sorted(samples)
    half = 1.96 * math.sqrt(n * q * (1 - q))
    lo, hi = max(0, math.floor(n * q - half) - 1), min(n - 1, math.ceil(n * q + half))
    return ordered[lo], ordered[hi]


def point(name: str, doc: dict) -> dict:
    """The measured model of one result: label, time, p50/p90 with intervals, size, accuracy."""
    schema = doc["schema"]
    if schema not in _HISTORY_SCHEMAS:
        raise UsageError(f"{name} is a {schema} result, which has no measurements for a history",
                         "pass bench, compare, compress or a step's --json results")
    accuracy, bench = None, None
    if schema == "effkit.bench/1":
        bench = doc
    elif schema == "effkit.step/1":
        bench, accuracy = doc["after"], (doc.get("accuracy") or {}).get("after")
    elif schema == "effkit.compress/1":
        measured = [s for s in doc.get("states", []) if s.get("bench")]
        if measured:
            bench, accuracy = measured[-1]["bench"], measured[-1].get("accuracy")
    out = {"name": name, "accuracy": accuracy, "size": None, "runtime": None, "time": None, "commit": None}
    if bench is not None:
        run = bench["runs"][-1] if schema == "effkit.compress/1" else bench["runs"][0]
        samples = run.get("samples_ms") or []
        env = bench.get("environment") or {}
        out.update(runtime=run["runtime"], size=bench["size"].get("bytes_on_disk"), time=env.get("time"),
                   commit=env.get("git_commit"))
        for stat, q in (("p50", 0.5), ("p90", 0.9)):
            out[stat] = run["latency_ms"][stat]
            out[f"{stat}_ci"] = quantile_interval(samples, q)
    else:  # compare: B's statistics (the pairs' intervals are of ratios, not of B alone)
        env = doc.get("environment") or {}
        out.update(runtime=doc.get("runtime"), size=doc.get("metrics", {}).get("size"), time=env.get("time"),
                   commit=env.get("git_commit"))
        for stat in ("p50", "p90"):
            out[stat], out[f"{stat}_ci"] = (doc["stats"].get(stat) or {}).get("b_ms"), None
    return out


def _regressions(previous: dict | None, current: dict) -> list[str]:
    if previous is None:
        return []
    found = []
    for stat in ("p50", "p90") if previous["runtime"] == current["runtime"] else ():
        before, after = previous.get(stat), current.get(stat)
        if before and after and after > before * (1 + LATENCY_REGRESSION):
            separated = (previous[f"{stat}_ci"] is None or current[f"{stat}_ci"] is None
                         or current[f"{stat}_ci"][0] > previous[f"{stat}_ci"][1])
            if separated:
                found.append(f"{stat} {after / before:.2f}x slower")
    if previous["size"] and current["size"] and current["size"] > previous["size"] * (1 + SIZE_REGRESSION):
        found.append(f"size {current['size'] / previous['size']:.2f}x bigger")
    if (previous["accuracy"] is not None and current["accuracy"] is not None
            and 100 * (previous["accuracy"] - current["accuracy"]) > ACCURACY_REGRESSION_PT):
        found.append(f"accuracy {100 * (current['accuracy'] - previous['accuracy']):+.2f} pt")
    return found


def history_html(results: list[tuple[str, dict]], notes: list[str] = ()) -> str:
    """The history page of several results, oldest first (by the time they were measured, then name)."""
    points = [point(name, doc) for name, doc in results]
    points.sort(key=lambda p: (p["time"] or "", p["name"]))
    for i, p in enumerate(points):
        p["label"] = (p["commit"] or "")[:10] or p["name"]
        p["regressions"] = _regressions(points[i - 1] if i else None, p)
    marked = [p for p in points if p["regressions"]]
    latest = points[-1]
    if latest["regressions"]:
        status, text = "fail", f"the latest result ({latest['label']}) regressed: {'; '.join(latest['regressions'])}"
    elif marked:
        status, text = "warn", f"{len(marked)} earlier regression(s), the latest result ({latest['label']}) is not one"
    else:
        status, text = "ok", f"no regressions across {len(points)} results"
    text += f"; latest p50 {fmt_ms(latest.get('p50'))}, size {fmt_bytes(latest['size'])}"
    body = [verdict(status, text)]
    if marked:
        body += ["<h2>Regressions</h2>", bullets([f"{p['label']}: {'; '.join(p['regressions'])}" for p in marked])]
    body += ["<h2>Latency</h2>", scatter(
        "latency-history", "p50 and p90 latency per result, oldest first (ms, axis from zero).",
        [{"x": i, "y": p[stat], "label": p["label"] if stat == "p50" else "", "series": stat}
         for stat in ("p50", "p90") for i, p in enumerate(points) if p.get(stat) is not None],
        "result (oldest first, numbered from 0)", "latency (ms)",
        (0.0, 1.1 * max((p.get("p90") or 0) for p in points) or 1.0), x_range=(0, max(1, len(points) - 1)),
        x_ticks=list(range(len(points))))]
    body.append(bar_chart("p50", "p50 latency per result, with its 95% interval.", [
        {"label": p["label"] + (" ▲" if p["regressions"] else ""), "value": p.get("p50"),
         "text": fmt_ms(p.get("p50")) + _interval(p.get("p50_ci")), "why": "no latency in this result"}
        for p in points]))
    body.append(bar_chart("size", "Size on disk per result.", [
        {"label": p["label"], "value": p["size"], "text": fmt_bytes(p["size"]), "why": "no size in this result"}
        for p in points]))
    if any(p["accuracy"] is not None for p in points):
        body.append(bar_chart("accuracy", "Accuracy per result (% of the evaluation data, full scale 100%).", [
            {"label": p["label"], "value": None if p["accuracy"] is None else 100 * p["accuracy"],
             "text": "-" if p["accuracy"] is None else f"{100 * p['accuracy']:.2f}%",
             "why": "no --eval data in this result"} for p in points], top=100))
    body += ["<h2>Results</h2>", table(
        ["result", "measured", "runtime", "p50", "95% interval", "p90", "95% interval", "size", "accuracy",
         "regression"],
        [[p["label"], p["time"], p["runtime"], fmt_ms(p.get("p50")), _interval(p.get("p50_ci")).strip(" []") or "-",
          fmt_ms(p.get("p90")), _interval(p.get("p90_ci")).strip(" []") or "-", fmt_bytes(p["size"]),
          "-" if p["accuracy"] is None else f"{100 * p['accuracy']:.2f}%", "; ".join(p["regressions"]) or "-"]
         for p in points], left=3),
        "<p class=\"note\">Intervals: 95%, from the order statistics of each result's latency samples (none with "
        f"fewer than 10). Regression: intervals apart and more than {100 * LATENCY_REGRESSION:g}% slower, size more "
        f"than {100 * SIZE_REGRESSION:g}% bigger, or accuracy more than {ACCURACY_REGRESSION_PT:g} pt lower than the "
        "result before.</p>", bullets(list(notes))]
    return page(f"effkit history: {len(points)} results", body)


def _interval(ci: tuple[float, float] | None) -> str:
    return f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""
