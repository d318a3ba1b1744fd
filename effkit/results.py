"""Result documents a gate reads: bench, step, compare and compress JSON, and the metrics in them.

`load_result` reads and checks a file; `resolve` finds a metric (`latency.p50`, `size`, ...);
`sides` gives the before/after (or single) measurements a threshold is judged on. A document's
structure and numbers are checked as they are read: a value no measurement could give (a negative
latency, NaN) or a key of the wrong kind is a usage error naming the file and the key.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effkit.errors import UsageError, first_line
from effkit.files import mark_read


def load_result(path: str | Path) -> dict:
    """Read a result JSON (bench, step outcome, or compare) and check its schema."""
    path = Path(path)
    mark_read(path)
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


def as_document(result: Any, name: str) -> tuple[dict, str]:
    """(the result document, what messages call it: its file, else `name`)."""
    if isinstance(result, (str, Path)):
        return load_result(result), str(result)
    if hasattr(result, "to_json"):  # BenchResult, Outcome, CompareResult
        return json.loads(result.to_json()), name
    if isinstance(result, dict):
        _check_schema(result, name)
        return result, name
    raise UsageError(f"cannot gate a {type(result).__name__}", "pass a result file, dict or effkit result object")


def lookup(doc: Any, path: str) -> Any:
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


def expect(value: Any, kind: type, where: str, key: str, required: bool = False) -> Any:
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
                                        for i, v in enumerate(expect(values, list, where, key))]


def resolve(side: Side, metric: str) -> float:
    """A metric's value: from the `metrics` block first, then anywhere in the document by dotted path."""
    value, key = lookup(side.doc.get("metrics") or {}, metric), f"{side.metrics_key}.{metric}"
    if value is None:
        value, key = lookup(side.doc, metric), f"{side.key}{metric}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        names = ", ".join(_metric_names(side.doc.get("metrics") or {})[:20])
        raise UsageError(f"the result has no numeric metric {metric!r}",
                         f"metrics: {names}; or any dotted path in the JSON, e.g. runs.0.latency_ms.p90")
    return _number(value, side.where, key)


@dataclass
class Side:
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
    environment = expect(doc.get("environment"), dict, where, f"{key}environment")
    for part in ("cpu", "versions"):
        expect((environment or {}).get(part), dict, where, f"{key}environment.{part}")
    return environment


def _bench_side(doc: Any, where: str, key: str = "") -> Side:
    expect(doc, dict, where, key.rstrip(".") or "the document", required=True)
    expect(doc.get("metrics"), dict, where, f"{key}metrics")
    runs = expect(doc.get("runs"), list, where, f"{key}runs") or [{}]
    run = expect(runs[0], dict, where, f"{key}runs.0", required=True)
    environment = _environment(doc, where, key)
    contention = expect(run.get("contention"), dict, where, f"{key}runs.0.contention")
    if (contention or {}).get("other_cpu_cores") is not None:
        _number(contention["other_cpu_cores"], where, f"{key}runs.0.contention.other_cpu_cores")
    samples = _numbers(run.get("samples_ms"), where, f"{key}runs.0.samples_ms")
    return Side(doc, samples or None, contention, environment, _calibration(environment, where, key), where, key,
                 f"{key}metrics")


def sides(doc: dict, where: str) -> tuple[Side, Side | None, dict | None]:
    """(candidate, implicit baseline, paired ratios) of a result document, its structure and numbers checked."""
    schema = doc["schema"]
    if schema == "effkit.step/1":
        return _bench_side(doc.get("after"), where, "after."), _bench_side(doc.get("before"), where, "before."), None
    if schema == "effkit.compare/1":
        pairs = expect(doc.get("pairs"), list, where, "pairs") or []
        samples = {"a_ms": [], "b_ms": []}
        for i, pair in enumerate(pairs):
            for name in samples:
                samples[name] += _numbers(expect(pair, dict, where, f"pairs.{i}", required=True).get(name), where,
                                          f"pairs.{i}.{name}") or []
        expect(doc.get("metrics"), dict, where, "metrics")
        environment = _environment(doc, where, "")
        calibration = _calibration(environment, where, "")
        cand = Side(doc, samples["b_ms"] or None, None, environment, calibration, where)
        base = Side({"metrics": expect(doc.get("baseline_metrics"), dict, where, "baseline_metrics") or {}},
                     samples["a_ms"] or None, None, environment, calibration, where, metrics_key="baseline_metrics")
        ratios = expect(doc.get("ratios"), dict, where, "ratios") or {}
        for name, entry in ratios.items():
            entry = expect(entry, dict, where, f"ratios.{name}", required=True)
            _number(entry.get("ratio"), where, f"ratios.{name}.ratio")
            if len(_numbers(entry.get("ci"), where, f"ratios.{name}.ci") or []) != 2:
                raise UsageError(f"{where}: ratios.{name}.ci is not an interval [low, high]", _AS_WRITTEN)
        # a ratio resting on fewer quiet pairs than the comparison needed decides nothing (see gates.decide)
        too_few = None
        if len(pairs) < doc.get("min_pairs", 2):
            too_few = next((r for r in doc.get("reasons", []) if "pairs" in r), f"only {len(pairs)} quiet pairs")
        ratios = {m: dict(r, too_few_pairs=too_few) for m, r in ratios.items()}
        return cand, base, ratios
    if schema == "effkit.compress/1":  # the final state against the original
        states = [(i, st) for i, st in enumerate(expect(doc.get("states"), list, where, "states") or [])
                  if expect(st, dict, where, f"states.{i}", required=True).get("bench")]
        if not states:
            raise UsageError("the compress result has no measured state to gate")
        first, last = (_state_side(st, where, f"states.{i}.") for i, st in (states[0], states[-1]))
        return last, first if len(states) > 1 else None, None
    return _bench_side(doc, where), None, None


def _state_side(state: dict, where: str, key: str) -> Side:
    """A compress state: its bench result, with the state's accuracy and fidelity among the metrics."""
    bench = expect(state["bench"], dict, where, f"{key}bench")
    bench = dict(bench, metrics=dict(expect(bench.get("metrics"), dict, where, f"{key}bench.metrics") or {}))
    for name in ("accuracy", "fidelity"):
        if state.get(name) is not None and name not in bench["metrics"]:
            bench["metrics"][name] = state[name]
    return _bench_side(bench, where, f"{key}bench.")
