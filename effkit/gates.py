"""CI gates: thresholds checked against a result, decided on confidence bounds, never on noise.

A gate is a parsed `Threshold` (`latency.p50:+5%`, `size:<=12MB`, `accuracy:-0.5pt`). Its
verdict is "pass", "fail" or "inconclusive":

- Deterministic metrics (size, parameters, accuracy, ...) decide exactly.
- Latency statistics decide on a 95% interval: from the paired A/B ratios of an
  `effkit compare` result, or, against a saved baseline from another run, from a bootstrap over
  contiguous chunks of both runs' samples (machine-normalized by the calibration workload when
  the two environments differ). A gate passes when the whole interval is on the good side of
  the limit, fails when the whole interval is on the bad side, and is inconclusive otherwise.
- A timing gate whose measurement (or baseline) ran on a busy or oversubscribed machine is
  inconclusive, except a pass of an absolute latency upper bound (or throughput lower bound): load
  only makes latency worse, so a bound that holds under load holds.
- A relative gate on an `effkit compare` result with fewer quiet A/B pairs than the comparison
  needed is inconclusive, never a failure: a ratio from two pairs decides nothing.

Exit codes: 0 when no gate failed, 1 when one did, 2 for bad input. An inconclusive gate is a
warning and exits 0 by default, because on shared CI machines noise must not fail builds at
random (a gate that cries wolf gets switched off); `strict=True` (`--strict`) makes it fail.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from effkit.comparison import independent_ratio_ci, statistic_ci
from effkit.env import fingerprint
from effkit.errors import UsageError
from effkit.results import Side, as_document, expect, resolve, sides
from effkit.specs import COMPARATORS, Threshold, parse_threshold
from effkit.util import fmt_bytes, jsonable

SCHEMA = "effkit.gate/1"
LATENCY_STATS = ("p50", "median", "p90", "p99", "mean")
STATUSES = ("pass", "fail", "inconclusive")


# ---------------------------------------------------------------- verdicts and reports

@dataclass
class Verdict:
    """The decision on one gate."""

    threshold: Threshold
    status: str  # pass | fail | inconclusive
    value: float | None = None  # the candidate's value (point estimate)
    baseline: float | None = None
    change: float | None = None  # ratio (relative), difference in points (points)
    interval: tuple[float, float] | None = None  # 95% interval of what was compared with the limit
    limit: float | None = None
    message: str = ""

    @property
    def name(self) -> str:
        return self.threshold.text

    def line(self) -> str:
        """One line for the log: `PASS  latency.p50:+5%  ratio 1.012 [0.998, 1.025] <= 1.05`."""
        return f"{self.status.upper():<12} {self.name}: {self.message}"

    def to_dict(self) -> dict:
        return {"gate": self.name, "metric": self.threshold.metric, "kind": self.threshold.kind,
                "status": self.status, "value": self.value, "baseline": self.baseline, "change": self.change,
                "interval": list(self.interval) if self.interval else None, "limit": self.limit,
                "message": self.message}


@dataclass
class GateReport:
    """Every gate's verdict, and what the reader must know about the measurements."""

    verdicts: list[Verdict]
    warnings: list[str] = field(default_factory=list)
    strict: bool = False
    subject: str = ""

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status == "fail"]

    @property
    def inconclusive(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status == "inconclusive"]

    @property
    def passed(self) -> bool:
        """No gate failed (and, when strict, none was inconclusive)."""
        return not self.failed and not (self.strict and self.inconclusive)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def summary(self) -> str:
        counts = {s: sum(v.status == s for v in self.verdicts) for s in STATUSES}
        text = f"{counts['pass']} passed, {counts['fail']} failed, {counts['inconclusive']} inconclusive"
        if counts["inconclusive"]:
            text += " (inconclusive fails with --strict)" if not self.strict else " (strict: inconclusive fails)"
        return text

    def lines(self) -> list[str]:
        return [v.line() for v in self.verdicts] + [f"warning: {w}" for w in self.warnings]

    def markdown(self) -> str:
        icon = {"pass": "✅ pass", "fail": "❌ fail", "inconclusive": "⚠️ inconclusive"}
        head = "passed" if self.passed else "FAILED"
        out = [f"### effkit gate: {head}" + (f" (`{self.subject}`)" if self.subject else ""), "",
               "| gate | verdict | value | baseline | change | 95% interval | detail |",
               "|---|---|---:|---:|---:|---|---|"]
        for v in self.verdicts:
            out.append("| " + " | ".join([
                f"`{v.name}`", icon[v.status], _fmt(v.value, v.threshold.metric), _fmt(v.baseline, v.threshold.metric),
                _fmt_change(v), _fmt_interval(v), v.message.replace("|", "\\|")]) + " |")
        out += ["", self.summary() + "."]
        out += [f"- warning: {w}" for w in self.warnings]
        return "\n".join(out) + "\n"

    def junit(self) -> str:
        """JUnit XML: one testcase per gate; failure for failed gates, skipped for inconclusive ones."""
        from xml.etree import ElementTree as ET

        suite = ET.Element("testsuite", name="effkit gate", tests=str(len(self.verdicts)),
                           failures=str(len(self.failed)),
                           skipped=str(0 if self.strict else len(self.inconclusive)), errors="0")
        for v in self.verdicts:
            case = ET.SubElement(suite, "testcase", classname="effkit.gates", name=v.name)
            if v.status == "fail" or (v.status == "inconclusive" and self.strict):
                ET.SubElement(case, "failure", message=v.message, type=v.status).text = v.line()
            elif v.status == "inconclusive":
                ET.SubElement(case, "skipped", message=f"inconclusive: {v.message}")
            ET.SubElement(case, "system-out").text = v.line()
        if self.warnings:
            ET.SubElement(suite, "system-err").text = "\n".join(self.warnings)
        suites = ET.Element("testsuites")
        suites.append(suite)
        ET.indent(suites)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "passed": self.passed, "strict": self.strict, "subject": self.subject,
                "summary": self.summary(), "verdicts": [v.to_dict() for v in self.verdicts],
                "warnings": self.warnings}

    def to_json(self) -> str:
        return json.dumps(jsonable(self.to_dict()), indent=2)


def _is_bytes(metric: str) -> bool:
    return metric in ("size", "gzip_size", "memory") or metric.endswith(("bytes", "bytes_on_disk"))


def _fmt(x: float | None, metric: str) -> str:
    if x is None:
        return "-"
    if _is_bytes(metric):
        return fmt_bytes(x)
    if metric.startswith("latency."):
        return f"{x:.4g} ms"
    return f"{x:.4g}"


def _fmt_change(v: Verdict) -> str:
    if v.change is None:
        return "-"
    if v.threshold.kind == "points":
        return f"{v.change:+.2f} pt"
    return f"{100 * (v.change - 1):+.1f}%"


def _fmt_interval(v: Verdict) -> str:
    if v.interval is None:
        return "exact"
    lo, hi = v.interval
    return f"[{lo:.4g}, {hi:.4g}]"


# ---------------------------------------------------------------- deciding


def _latency_stat(metric: str) -> tuple[str, bool] | None:
    """("p50", normalized?) for latency.p50 / normalized_latency.p50, else None."""
    m = re.fullmatch(r"(normalized_)?latency\.(\w+)", metric)
    if m and m.group(2) in LATENCY_STATS:
        return m.group(2), bool(m.group(1))
    return None


def _bounded(lo: float, hi: float, op: str, limit: float) -> str:
    """pass when the whole interval satisfies `x OP limit`, fail when none of it does."""
    if op == "==":
        return "pass" if lo == hi == limit else "fail" if not lo <= limit <= hi else "inconclusive"
    check = COMPARATORS[op]
    if check(lo, limit) and check(hi, limit):
        return "pass"
    if not check(lo, limit) and not check(hi, limit):
        return "fail"
    return "inconclusive"


def _busy(side: Side | None) -> bool:
    c = (side.contention or {}) if side else {}
    return bool(c.get("busy") or c.get("oversubscribed"))


def _interval_text(lo: float, hi: float) -> str:
    return f"[{lo:.3f}, {hi:.3f}]" if lo != hi else f"{lo:.4g}"


def decide(threshold: Threshold, cand: Side, base: Side | None, paired: dict | None, *,
           normalize: bool = False) -> Verdict:
    """The verdict of one gate on a candidate (and a baseline, for relative and points gates)."""
    t, metric = threshold, threshold.metric
    latency = _latency_stat(metric)
    if paired is not None and (latency or metric == "throughput") and not cand.samples:
        return Verdict(t, "inconclusive", message="the comparison kept no A/B pairs: nothing was measured on a "
                                                  "quiet enough machine")
    if t.kind == "absolute":
        value = resolve(cand, metric)
        lo = hi = value
        if latency and cand.samples and not latency[1]:
            value, lo, hi = statistic_ci(cand.samples, latency[0])
        status = _bounded(lo, hi, t.op, t.value)
        verdict = Verdict(t, status, value=value, interval=(lo, hi) if lo != hi else None, limit=t.value,
                          message=f"{_fmt(value, metric)} {_interval_text(lo, hi) if lo != hi else ''} "
                                  f"{t.op} {_fmt(t.value, metric)}".replace("  ", " "))
        return _contended(verdict, latency or (metric == "throughput" and ("mean", False)), cand, None)

    if base is None:
        raise UsageError(f"gate {t.text!r} compares with a baseline, and there is none",
                         "pass --baseline BASE.json, or use an absolute gate such as latency.p50:<=3ms")
    value, base_value = resolve(cand, metric), resolve(base, metric)
    if t.kind == "points":
        change = 100.0 * (value - base_value)  # fractions -> percentage points
        limit = t.value
        status = _bounded(change, change, "<=" if t.op == "+" else ">=", limit)
        return Verdict(t, status, value=value, baseline=base_value, change=change, limit=limit,
                       message=f"{100 * value:.2f}% vs {100 * base_value:.2f}%: {change:+.2f} pt, "
                               f"limit {limit:+g} pt")

    limit = 1.0 + t.value
    op = "<=" if t.op == "+" else ">="
    if paired and metric in paired and paired[metric].get("too_few_pairs"):  # never FAIL on too few pairs
        return Verdict(t, "inconclusive", value=value, baseline=base_value, change=paired[metric]["ratio"],
                       limit=limit, message=f"not decided: {paired[metric]['too_few_pairs']}")
    if paired and metric in paired:
        ratio, (lo, hi) = paired[metric]["ratio"], paired[metric]["ci"]
        how = "paired A/B, 95% interval"
    elif (latency or metric == "throughput") and cand.samples and base.samples:
        ratio, lo, hi = independent_ratio_ci(base.samples, cand.samples, latency[0] if latency else "mean")
        if not latency:  # throughput is the inverse of the mean latency
            ratio, lo, hi = 1 / ratio, 1 / hi, 1 / lo
        how = "separate runs, 95% interval"
        if normalize or (latency and latency[1]):  # divide out the machine: time per unit of calibration time
            if not (cand.calibration_ms and base.calibration_ms):
                raise UsageError(f"gate {t.text!r} divides out the machine, and calibration_ms is missing from "
                                 f"{cand.where if not cand.calibration_ms else base.where}",
                                 "gate latency.* instead, or pass results written by effkit bench")
            machine = cand.calibration_ms / base.calibration_ms
            machine = machine if latency else 1 / machine  # a slower machine lowers throughput
            ratio, lo, hi = ratio / machine, lo / machine, hi / machine
            how += ", machine-normalized"
    else:
        if base_value == 0:
            raise UsageError(f"gate {t.text!r}: the baseline's {metric} is 0, so a relative change is undefined",
                             "use an absolute gate for this metric")
        ratio = lo = hi = value / base_value
        how = "exact"
    status = _bounded(lo, hi, op, limit)
    verdict = Verdict(t, status, value=value, baseline=base_value, change=ratio,
                      interval=(lo, hi) if lo != hi else None, limit=limit,
                      message=f"ratio {ratio:.3f} {_interval_text(lo, hi) if lo != hi else ''} {op} {limit:.3f} "
                              f"({how})".replace("  ", " "))
    return _contended(verdict, latency or (metric == "throughput" and ("mean", False)), cand, base)


def holds_under_load(threshold: Threshold) -> bool:
    """Whether a pass of this gate survives load from other processes: an absolute upper bound on latency
    or lower bound on throughput, because load only makes latency longer and throughput lower."""
    if threshold.kind != "absolute":
        return False
    if _latency_stat(threshold.metric) and not _latency_stat(threshold.metric)[1]:
        return threshold.op in ("<=", "<")
    return threshold.metric == "throughput" and threshold.op in (">=", ">")


def _contended(verdict: Verdict, latency: Any, cand: Side, base: Side | None) -> Verdict:
    """A timing verdict from a busy machine is evidence only in the direction load cannot fake: a latency
    upper bound (or throughput lower bound) that holds under load holds, so it passes; anything else
    measured under load is inconclusive."""
    if not latency or verdict.status == "inconclusive":
        return verdict
    busy = [name for name, side in (("this run", cand), ("the baseline", base)) if _busy(side)]
    if not busy:
        return verdict
    if verdict.status == "pass" and holds_under_load(verdict.threshold):
        verdict.message += "; measured on a busy machine, which only makes it slower, so the bound holds"
        return verdict
    verdict.status = "inconclusive"
    verdict.message += f"; but the machine was busy during {' and '.join(busy)}: measure again on a quiet machine"
    return verdict


def _timed(threshold: Threshold) -> bool:
    """Whether a gate is decided on timing (latency or throughput), which load from other processes affects."""
    return bool(_latency_stat(threshold.metric)) or threshold.metric == "throughput"


def _environment_warnings(cand: Side, base: Side | None) -> tuple[list[str], bool]:
    """Warnings when the baseline ran elsewhere, and whether latency should be machine-normalized."""
    if base is None or not cand.environment or not base.environment or cand.environment is base.environment:
        return [], False
    fa, fb = fingerprint(base.environment), fingerprint(cand.environment)
    diffs = [f"{k}: {fa[k]} -> {fb[k]}" for k in fa if fa[k] != fb[k]]
    if not diffs:
        return [], False
    warnings = [f"the baseline ran in another environment ({'; '.join(diffs)})"]
    ca, cb = base.calibration_ms, cand.calibration_ms
    if ca and cb:
        warnings.append(f"the calibration workload ran {cb / ca:.2f}x as long here as in the baseline's run: "
                        f"that much of a latency ratio is the machine; latency gates are machine-normalized")
        return warnings, True
    warnings.append("no calibration timing in both results: latency ratios include the machine's difference")
    return warnings, False


_SIZE_UNITS = ("b", "kb", "mb", "gb", "kib", "mib", "gib")
_TIME_UNITS = ("ns", "us", "µs", "ms", "s")


def check_units(threshold: Threshold) -> None:
    """Refuse an absolute gate whose unit does not fit its metric (`latency.p50:<=12MB`, `size:<=3ms`)."""
    if threshold.kind != "absolute":
        return
    m = re.search(r"[0-9.]\s*([a-zA-Zµ]+)\s*$", threshold.text)
    unit = m.group(1).lower() if m else ""
    metric = threshold.metric
    timed = "latency" in metric
    sized = _is_bytes(metric.split(".")[-1]) or metric.startswith("size.")
    if (timed and unit in _SIZE_UNITS) or (sized and unit in _TIME_UNITS):
        raise UsageError(f"gate {threshold.text!r} gives {'a size' if unit in _SIZE_UNITS else 'a time'} for "
                         f"{'a latency' if timed else 'a size'}",
                         "latency takes ns/us/ms/s, sizes take B/KB/MB/GB/KiB/MiB/GiB")


def gate(result: Any, thresholds: Iterable[str | Threshold], baseline: Any = None, *,
         strict: bool = False) -> GateReport:
    """Check `thresholds` against `result`; return a GateReport (`.passed`, `.verdicts`).

    `result` and `baseline`: a result file path, a result dict, or a BenchResult / Outcome /
    CompareResult. A step outcome carries its own baseline (`before`), a compare result its own
    paired ratios; `baseline` replaces the implicit one.
    """
    parsed = [t if isinstance(t, Threshold) else parse_threshold(t) for t in thresholds]
    for t in parsed:
        check_units(t)
    if not parsed:
        raise UsageError("no gates to check", "pass --fail-on METRIC:THRESHOLD, or set fail-on in "
                         "[tool.effkit.gates] (pyproject.toml) or [gates] (effkit.toml)")
    doc, where = as_document(result, "the result")
    cand, base, paired = sides(doc, where)
    if baseline is not None:
        base_doc, base_where = as_document(baseline, "the baseline")
        base = sides(base_doc, base_where)[0]
        _check_same_run(doc, base_doc)
        paired = None
    warnings = [f"this run: {w}" for w in expect(doc.get("warnings"), list, where, "warnings") or []
                if isinstance(w, str)]
    env_warnings, normalize = _environment_warnings(cand, base)
    warnings += env_warnings
    verdicts = [decide(t, cand, base, paired, normalize=normalize) for t in parsed]
    timed = [v for v in verdicts if _timed(v.threshold)]
    for name, side in (("this run", cand), ("the baseline", base)):
        if timed and side is not None and _busy(side):  # say it only when a gate asked for depends on timing
            c = side.contention
            unsure = [v.name for v in timed if v.status == "inconclusive"]
            warnings.append(f"{name} was measured on a busy machine (other processes used "
                            f"{c.get('other_cpu_cores', 0):.2f} of {c.get('cores')} cores, {c.get('threads')} "
                            "threads asked for)" + (f": {', '.join(unsure)} inconclusive" if unsure else
                                                    ": the timing gates asked for hold even so"))
    return GateReport(verdicts, list(dict.fromkeys(warnings)), strict, _subject(doc))


def _subject(doc: dict) -> str:
    """The model a result is about (its source), or "" when the document does not say."""
    after = doc.get("after")
    for node in (doc.get("model"), doc.get("b"), after.get("model") if isinstance(after, dict) else None, doc):
        if isinstance(node, dict) and isinstance(node.get("source"), str):
            return node["source"]
    return ""


def _first_run(doc: dict) -> tuple | None:
    runs = doc.get("runs") if doc.get("schema") == "effkit.bench/1" else None
    return (runs[0].get("runtime"), runs[0].get("batch_size")) if runs else None


def _check_same_run(doc: dict, base_doc: dict) -> None:
    """Metrics come from each result's first run: refuse a baseline measured on another runtime or batch."""
    ours, theirs = _first_run(doc), _first_run(base_doc)
    if ours and theirs and ours != theirs:
        raise UsageError(f"the baseline was measured on {theirs[0]} at batch {theirs[1]}, this result on "
                         f"{ours[0]} at batch {ours[1]}: its gates would compare different things",
                         "bench both with the same --runtime and --batch-size (the first of each is gated)")
