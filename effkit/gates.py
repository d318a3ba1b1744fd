"""CI gates: thresholds checked against a result, decided on confidence bounds, never on noise.

A gate is a parsed `Threshold` (`latency.p50:+5%`, `size:<=12MB`, `accuracy:-0.5pt`). Its
verdict is "pass", "fail" or "inconclusive":

- Deterministic metrics (size, parameters, accuracy, ...) decide exactly.
- Latency statistics decide on a 95% interval: from the paired A/B ratios of an
  `effkit compare` result, or, against a saved baseline from another run, from a bootstrap over
  contiguous chunks of both runs' samples (machine-normalized by the calibration workload when
  the two environments differ). A gate passes when the whole interval is on the good side of
  the limit, fails when the whole interval is on the bad side, and is inconclusive otherwise.
- A latency gate whose measurement (or baseline) ran on a busy or oversubscribed machine is
  inconclusive: the noise is then larger than any effect it could show.

Exit codes: 0 when no gate failed, 1 when one did, 2 for bad input. An inconclusive gate is a
warning and exits 0 by default, because on shared CI machines noise must not fail builds at
random (a gate that cries wolf gets switched off); `strict=True` (`--strict`) makes it fail.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effkit.errors import UsageError, first_line
from effkit.specs import COMPARATORS, Threshold, parse_threshold

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
        from effkit.benchmark import _jsonable

        return json.dumps(_jsonable(self.to_dict()), indent=2)


def _is_bytes(metric: str) -> bool:
    return metric in ("size", "gzip_size", "memory") or metric.endswith(("bytes", "bytes_on_disk"))


def _fmt(x: float | None, metric: str) -> str:
    if x is None:
        return "-"
    if _is_bytes(metric):
        from effkit.report import fmt_bytes

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


# ---------------------------------------------------------------- result documents

def load_result(path: str | Path) -> dict:
    """Read a result JSON (bench, step outcome, or compare) and check its schema."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))  # a byte order mark is harmless
    except FileNotFoundError:
        raise UsageError(f"no such result file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not a result file") from None
    except RecursionError:
        raise UsageError(f"{path} nests its JSON too deeply to be an effkit result", _AS_WRITTEN) from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is not valid JSON: {first_line(e)}", _AS_WRITTEN) from None
    _check_schema(data, str(path))
    return data


_SCHEMAS = ("effkit.bench/1", "effkit.step/1", "effkit.compare/1", "effkit.compress/1")


def _check_schema(data: Any, where: str) -> None:
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema not in _SCHEMAS:
        raise UsageError(f"{where} is not an effkit result (schema {schema!r})",
                         "pass a file written by effkit bench/compare/quantize/... --json")


def _as_document(result: Any, name: str) -> tuple[dict, str]:
    """(the result document, what messages call it: its file, else `name`)."""
    if isinstance(result, (str, Path)):
        return load_result(result), str(result)
    if hasattr(result, "to_json"):  # BenchResult, Outcome, CompareResult
        return json.loads(result.to_json()), name
    if isinstance(result, dict):
        _check_schema(result, name)
        return result, name
    raise UsageError(f"cannot gate a {type(result).__name__}", "pass a result file, dict or effkit result object")


def _lookup(doc: Any, path: str) -> Any:
    node = doc
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and re.fullmatch(r"-?\d{1,18}", part) and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _metric_names(metrics: dict, prefix: str = "", depth: int = 4) -> list[str]:
    """Metric names for a hint, at most `depth` levels deep (a crafted document may nest hundreds)."""
    names = []
    for k, v in metrics.items():
        if isinstance(v, dict) and depth > 1:
            names += _metric_names(v, f"{prefix}{k}.", depth - 1)
        elif v is not None:
            names.append(f"{prefix}{k}")
    return names


# ---------------------------------------------------------------- reading a document, refusing what cannot be

_AS_WRITTEN = "pass a result file as effkit wrote it"
_NOT_MEASURED = "the file was edited or corrupted; measure again"
# Keys whose numbers are measurements, finite and >= 0 (as are keys ending in _ms or bytes). A result with
# a negative latency or a size of -inf would pass any `<=` gate.
_MEASURED_KEYS = {"latency", "latency_ms", "normalized_latency", "throughput", "throughput_per_s", "size", "gzip_size",
                  "memory", "parameters", "nonzero_parameters", "ratio", "ci"}
_KINDS = {dict: "a table", list: "a list", str: "a string", bool: "true or false", type(None): "null"}


def _is_measured(key: str) -> bool:
    return any(part in _MEASURED_KEYS or part.endswith(("_ms", "bytes")) for part in key.split("."))


def _expect(value: Any, kind: type, where: str, key: str, required: bool = False) -> Any:
    """`value` if it is a `kind` (or absent: None, unless `required`); else a usage error naming file and key."""
    if value is None and required:
        raise UsageError(f"{where} has no {key}", _AS_WRITTEN)
    if value is not None and not isinstance(value, kind):
        got = _KINDS.get(type(value), "a number")
        raise UsageError(f"{where}: {key} is {got}, not {_KINDS[kind]}", _AS_WRITTEN)
    return value


def _number(value: Any, where: str, key: str) -> float:
    """A number of the document (or one written as "inf"/"-inf"/"nan"); NaN, and for measurements
    anything non-finite or negative, is refused with the file and key."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f"{where}: {key} is {_KINDS.get(type(value), 'a table')}, not a number", _AS_WRITTEN)
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"{where}: {key} is {_shown(value)}, not a number", _AS_WRITTEN) from None
    except OverflowError:  # an integer of hundreds of digits
        number = math.copysign(math.inf, value)
    if math.isnan(number):
        raise UsageError(f"{where}: {key} is NaN, which no gate can compare", _NOT_MEASURED)
    if _is_measured(key) and not 0 <= number < math.inf:
        raise UsageError(f"{where}: {key} is {_shown(value)}, which no measurement can be (latencies, sizes and "
                         "counts are finite and never negative)", _NOT_MEASURED)
    return number


def _shown(value: Any) -> str:
    """A value of the document for a message, cut short (repr() refuses integers of over 4300 digits)."""
    if isinstance(value, int) and value.bit_length() >= 64:
        return f"a {value.bit_length()}-bit number"
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _numbers(values: Any, where: str, key: str) -> list[float] | None:
    """A list of numbers of the document (samples, an interval), each checked by `_number`."""
    return None if values is None else [_number(v, where, f"{key}.{i}")
                                        for i, v in enumerate(_expect(values, list, where, key))]


def resolve(side: _Side, metric: str) -> float:
    """A metric's value: from the `metrics` block first, then anywhere in the document by dotted path."""
    value, key = _lookup(side.doc.get("metrics") or {}, metric), f"{side.metrics_key}.{metric}"
    if value is None:
        value, key = _lookup(side.doc, metric), f"{side.key}{metric}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        names = ", ".join(_metric_names(side.doc.get("metrics") or {})[:20])
        raise UsageError(f"the result has no numeric metric {metric!r}",
                         f"metrics: {names}; or any dotted path in the JSON, e.g. runs.0.latency_ms.p90")
    return _number(value, side.where, key)


@dataclass
class _Side:
    """One measured model inside a result document: `where` names the file, `key` the path to it inside."""

    doc: dict
    samples: list[float] | None = None
    contention: dict | None = None
    environment: dict | None = None
    calibration_ms: float | None = None  # how long the calibration workload took on the machine that measured it
    where: str = "the result"
    key: str = ""
    metrics_key: str = "metrics"


def _calibration(environment: dict | None, where: str, key: str) -> float | None:
    value = (environment or {}).get("calibration_ms")
    return None if value is None else _number(value, where, f"{key}environment.calibration_ms") or None


def _environment(doc: dict, where: str, key: str) -> dict | None:
    """The machine a result was measured on, as far as gates read it."""
    environment = _expect(doc.get("environment"), dict, where, f"{key}environment")
    for part in ("cpu", "versions"):
        _expect((environment or {}).get(part), dict, where, f"{key}environment.{part}")
    return environment


def _bench_side(doc: Any, where: str, key: str = "") -> _Side:
    _expect(doc, dict, where, key.rstrip(".") or "the document", required=True)
    _expect(doc.get("metrics"), dict, where, f"{key}metrics")
    runs = _expect(doc.get("runs"), list, where, f"{key}runs") or [{}]
    run = _expect(runs[0], dict, where, f"{key}runs.0", required=True)
    environment = _environment(doc, where, key)
    contention = _expect(run.get("contention"), dict, where, f"{key}runs.0.contention")
    if (contention or {}).get("other_cpu_cores") is not None:
        _number(contention["other_cpu_cores"], where, f"{key}runs.0.contention.other_cpu_cores")
    samples = _numbers(run.get("samples_ms"), where, f"{key}runs.0.samples_ms")
    return _Side(doc, samples or None, contention, environment, _calibration(environment, where, key), where, key,
                 f"{key}metrics")


def _sides(doc: dict, where: str) -> tuple[_Side, _Side | None, dict | None]:
    """(candidate, implicit baseline, paired ratios) of a result document, its structure and numbers checked."""
    schema = doc["schema"]
    if schema == "effkit.step/1":
        return _bench_side(doc.get("after"), where, "after."), _bench_side(doc.get("before"), where, "before."), None
    if schema == "effkit.compare/1":
        pairs = _expect(doc.get("pairs"), list, where, "pairs") or []
        samples = {"a_ms": [], "b_ms": []}
        for i, pair in enumerate(pairs):
            for name in samples:
                samples[name] += _numbers(_expect(pair, dict, where, f"pairs.{i}", required=True).get(name), where,
                                          f"pairs.{i}.{name}") or []
        _expect(doc.get("metrics"), dict, where, "metrics")
        environment = _environment(doc, where, "")
        calibration = _calibration(environment, where, "")
        cand = _Side(doc, samples["b_ms"] or None, None, environment, calibration, where)
        base = _Side({"metrics": _expect(doc.get("baseline_metrics"), dict, where, "baseline_metrics") or {}},
                     samples["a_ms"] or None, None, environment, calibration, where, metrics_key="baseline_metrics")
        ratios = _expect(doc.get("ratios"), dict, where, "ratios") or {}
        for name, entry in ratios.items():
            entry = _expect(entry, dict, where, f"ratios.{name}", required=True)
            _number(entry.get("ratio"), where, f"ratios.{name}.ratio")
            if len(_numbers(entry.get("ci"), where, f"ratios.{name}.ci") or []) != 2:
                raise UsageError(f"{where}: ratios.{name}.ci is not an interval [low, high]", _AS_WRITTEN)
        return cand, base, ratios
    if schema == "effkit.compress/1":  # the final state against the original
        states = [(i, st) for i, st in enumerate(_expect(doc.get("states"), list, where, "states") or [])
                  if _expect(st, dict, where, f"states.{i}", required=True).get("bench")]
        if not states:
            raise UsageError("the compress result has no measured state to gate")
        first, last = (_state_side(st, where, f"states.{i}.") for i, st in (states[0], states[-1]))
        return last, first if len(states) > 1 else None, None
    return _bench_side(doc, where), None, None


def _state_side(state: dict, where: str, key: str) -> _Side:
    """A compress state: its bench result, with the state's accuracy and fidelity among the metrics."""
    bench = _expect(state["bench"], dict, where, f"{key}bench")
    bench = dict(bench, metrics=dict(_expect(bench.get("metrics"), dict, where, f"{key}bench.metrics") or {}))
    for name in ("accuracy", "fidelity"):
        if state.get(name) is not None and name not in bench["metrics"]:
            bench["metrics"][name] = state[name]
    return _bench_side(bench, where, f"{key}bench.")


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


def _busy(side: _Side | None) -> bool:
    c = (side.contention or {}) if side else {}
    return bool(c.get("busy") or c.get("oversubscribed"))


def _interval_text(lo: float, hi: float) -> str:
    return f"[{lo:.3f}, {hi:.3f}]" if lo != hi else f"{lo:.4g}"


def decide(threshold: Threshold, cand: _Side, base: _Side | None, paired: dict | None, *,
           normalize: bool = False) -> Verdict:
    """The verdict of one gate on a candidate (and a baseline, for relative and points gates)."""
    from effkit.comparison import independent_ratio_ci, statistic_ci

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
        return _contended(verdict, latency, cand, None)

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


def _contended(verdict: Verdict, latency: Any, cand: _Side, base: _Side | None) -> Verdict:
    """A latency verdict from a busy machine is not evidence either way: say so."""
    if not latency or verdict.status == "inconclusive":
        return verdict
    busy = [name for name, side in (("this run", cand), ("the baseline", base)) if _busy(side)]
    if busy:
        verdict.status = "inconclusive"
        verdict.message += f"; but the machine was busy during {' and '.join(busy)}: measure again on a quiet machine"
    return verdict


def _environment_warnings(cand: _Side, base: _Side | None) -> tuple[list[str], bool]:
    """Warnings when the baseline ran elsewhere, and whether latency should be machine-normalized."""
    from effkit.env import fingerprint

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
    doc, where = _as_document(result, "the result")
    cand, base, paired = _sides(doc, where)
    if baseline is not None:
        base_doc, base_where = _as_document(baseline, "the baseline")
        base = _sides(base_doc, base_where)[0]
        _check_same_run(doc, base_doc)
        paired = None
    warnings = [f"this run: {w}" for w in _expect(doc.get("warnings"), list, where, "warnings") or []
                if isinstance(w, str)]
    env_warnings, normalize = _environment_warnings(cand, base)
    warnings += env_warnings
    for name, side in (("this run", cand), ("the baseline", base)):
        if side is not None and _busy(side):
            c = side.contention
            warnings.append(f"{name} was measured on a busy machine (other processes used "
                            f"{c.get('other_cpu_cores', 0):.2f} of {c.get('cores')} cores, {c.get('threads')} "
                            "threads asked for): its latency gates are inconclusive")
    verdicts = [decide(t, cand, base, paired, normalize=normalize) for t in parsed]
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


# ---------------------------------------------------------------- configuration files

CONFIG_KEYS = ("fail-on", "strict")


def _key_line(text: str, key: str) -> int | None:
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=", line):
            return i
    return None


def _read_toml(path: Path) -> dict:
    from effkit.files import loads_toml

    try:
        return loads_toml(path.read_text(), str(path))
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


def load_gate_config(path: str | Path | None = None,
                     search_dir: str | Path = ".") -> tuple[list[str], bool, Path | None]:
    """Gates from a config file: (fail-on list, strict, file used).

    `path`: an effkit.toml (table `[gates]`) or a pyproject.toml (table `[tool.effkit.gates]`).
    Without it, `effkit.toml` then `pyproject.toml` in `search_dir` are used if they have gates.
    """
    if path is not None:
        candidates = [Path(path)]
        if not candidates[0].is_file():
            raise UsageError(f"no such config file: {path}")
    else:
        candidates = [p for p in (Path(search_dir) / "effkit.toml", Path(search_dir) / "pyproject.toml") if p.is_file()]
    for file in candidates:
        data = _read_toml(file)
        table_name = "tool.effkit.gates" if file.name == "pyproject.toml" else "gates"
        table = _lookup(data, table_name)
        if table is None:
            if path is not None:
                raise UsageError(f"{file} has no [{table_name}] table", 'add e.g. fail-on = ["latency.p50:+5%"]')
            continue
        text = file.read_text()
        if not isinstance(table, dict):
            raise UsageError(f"{file}: {table_name} must be a table")
        for key in table:
            if key not in CONFIG_KEYS:
                line = _key_line(text, key)
                raise UsageError(f"{file}:{line or '?'}: unknown key {key!r} in [{table_name}]",
                                 f"known keys: {', '.join(CONFIG_KEYS)}")
        fail_on = table.get("fail-on", [])
        if isinstance(fail_on, str):
            fail_on = [fail_on]
        if not isinstance(fail_on, list) or not all(isinstance(x, str) for x in fail_on):
            raise UsageError(f"{file}:{_key_line(text, 'fail-on') or '?'}: fail-on must be a list of strings",
                             'e.g. fail-on = ["latency.p50:+5%", "size:<=12MB"]')
        strict = table.get("strict", False)
        if not isinstance(strict, bool):
            raise UsageError(f"{file}:{_key_line(text, 'strict') or '?'}: strict must be true or false")
        for item in fail_on:  # a bad threshold names the file it came from
            try:
                parse_threshold(item)
            except UsageError as e:
                raise UsageError(f"{file}:{_key_line(text, 'fail-on') or '?'}: {e.message}", e.hint) from None
        return list(fail_on), strict, file
    return [], False, None


# ---------------------------------------------------------------- CI outputs

def write_reports(report: GateReport, *, junit: str | Path | None = None, force: bool = False,
                  summary_text: str | None = None) -> list[str]:
    """Write JUnit XML, and append Markdown (default: the gate table) to $GITHUB_STEP_SUMMARY when it is set."""
    from effkit.files import write_text

    written = []
    if junit:
        write_text(junit, report.junit(), force)
        written.append(str(junit))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:  # appended: other steps write there too
            f.write((summary_text or report.markdown()) + "\n")
        written.append(summary)
    return written


def thresholds_from(fail_on: Sequence[str] | None, config: str | Path | None) -> tuple[list[Threshold], bool]:
    """The gates to check: --fail-on when given, else the config file's; plus its `strict`."""
    if fail_on:
        items, strict = list(fail_on), load_gate_config(config)[1] if config else False
    else:
        items, strict, _ = load_gate_config(config)
    parsed = [parse_threshold(t) for t in items]
    for t in parsed:  # before any measuring: a compare takes a while
        check_units(t)
    return parsed, strict
