"""Result documents a gate reads: bench, step, compare and compress JSON, and the metrics in them.

`load_result` reads and checks a file; `resolve` finds a metric (`latency.p50`, `size`, ...);
`sides` gives the before/after (or single) measurements a threshold is judged on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effkit.errors import UsageError
from effkit.files import mark_read


def load_result(path: str | Path) -> dict:
    """Read a result JSON (bench, step outcome, or compare) and check its schema."""
    path = Path(path)
    mark_read(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no such result file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not a result file") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not a result file") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    _check_schema(data, str(path))
    return data


_SCHEMAS = ("effkit.bench/1", "effkit.step/1", "effkit.compare/1", "effkit.compress/1")


def _check_schema(data: Any, where: str) -> None:
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema not in _SCHEMAS:
        raise UsageError(f"{where} is not an effkit result (schema {schema!r})",
                         "pass a file written by effkit bench/compare/quantize/... --json")


def as_document(result: Any) -> dict:
    if isinstance(result, (str, Path)):
        return load_result(result)
    if hasattr(result, "to_json"):  # BenchResult, Outcome, CompareResult
        return json.loads(result.to_json())
    if isinstance(result, dict):
        _check_schema(result, "the result")
        return result
    raise UsageError(f"cannot gate a {type(result).__name__}", "pass a result file, dict or effkit result object")


def lookup(doc: Any, path: str) -> Any:
    node = doc
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and re.fullmatch(r"-?\d+", part) and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _metric_names(metrics: dict, prefix: str = "") -> list[str]:
    names = []
    for k, v in metrics.items():
        if isinstance(v, dict):
            names += _metric_names(v, f"{prefix}{k}.")
        elif v is not None:
            names.append(f"{prefix}{k}")
    return names


def resolve(doc: dict, metric: str) -> float:
    """A metric's value: from the `metrics` block first, then anywhere in the document by dotted path."""
    value = lookup(doc.get("metrics", {}), metric)
    if value is None:
        value = lookup(doc, metric)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        names = ", ".join(_metric_names(doc.get("metrics", {}))[:20])
        raise UsageError(f"the result has no numeric metric {metric!r}",
                         f"metrics: {names}; or any dotted path in the JSON, e.g. runs.0.latency_ms.p90")
    try:
        return float(value)  # "inf"/"nan" strings are how results write non-finite numbers
    except ValueError:
        raise UsageError(f"metric {metric!r} is {value!r}, not a number") from None


@dataclass
class Side:
    """One measured model inside a result document."""

    doc: dict
    samples: list[float] | None = None
    contention: dict | None = None
    environment: dict | None = None


def _bench_side(doc: dict) -> Side:
    run = (doc.get("runs") or [{}])[0]
    return Side(doc, run.get("samples_ms") or None, run.get("contention"), doc.get("environment"))


def sides(doc: dict) -> tuple[Side, Side | None, dict | None]:
    """(candidate, implicit baseline, paired ratios) of a result document."""
    schema = doc["schema"]
    if schema == "effkit.step/1":
        return _bench_side(doc["after"]), _bench_side(doc["before"]), None
    if schema == "effkit.compare/1":
        pairs = doc.get("pairs", [])
        cand = Side(doc, [s for p in pairs for s in p["b_ms"]] or None, None, doc.get("environment"))
        base = Side({"metrics": doc.get("baseline_metrics", {})}, [s for p in pairs for s in p["a_ms"]] or None,
                     None, doc.get("environment"))
        return cand, base, doc.get("ratios", {})
    if schema == "effkit.compress/1":  # the final state against the original
        states = [st for st in doc.get("states", []) if st.get("bench")]
        if not states:
            raise UsageError("the compress result has no measured state to gate")
        first, last = (_state_side(st) for st in (states[0], states[-1]))
        return last, first if len(states) > 1 else None, None
    return _bench_side(doc), None, None


def _state_side(state: dict) -> Side:
    """A compress state: its bench result, with the state's accuracy and fidelity among the metrics."""
    bench = dict(state["bench"], metrics=dict(state["bench"].get("metrics", {})))
    for key in ("accuracy", "fidelity"):
        if state.get(key) is not None and key not in bench["metrics"]:
            bench["metrics"][key] = state[key]
    return _bench_side(bench)
