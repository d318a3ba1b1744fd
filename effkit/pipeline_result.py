"""What `compress` measured: each state (a model and its timing), each step with its attempts, the
overall result, as JSON (schema effkit.compress/1) and as the rows the reports show."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from effkit.comparison import load_warnings
from effkit.env import environment
from effkit.export import onnx_path_for
from effkit.passes.quantize_ort import layers
from effkit.recipe import Recipe
from effkit.util import jsonable


SCHEMA = "effkit.compress/1"
# report.json keeps at most this many latency samples per run (every k-th, with "samples_ms_every": k);
# the statistics are computed from all of them.
JSON_SAMPLES = 2000


@dataclass
class State:
    """A model at one point of the pipeline and what was measured on it."""

    name: str  # "original" or the step that produced it
    model: Any  # effkit.model.Model
    accuracy: float | None  # fraction, on the verdict's data (reported)
    fidelity: dict | None  # against the original's outputs, on the verdict's data (None for the original)
    bench: Any = None  # BenchResult, once timed
    vs_reference: dict = field(default_factory=dict)  # runtime -> PairedResult: A the original on torch, B this
    decision: dict = field(default_factory=dict)  # accuracy and fidelity on the data back-off is decided on

    def to_dict(self) -> dict:
        bench = self.bench.to_dict() if self.bench is not None else None
        if bench is not None:  # fast models give tens of thousands of samples per run
            bench["runs"] = [_thinned(run) for run in bench["runs"]]
        return {"name": self.name, "kind": self.model.kind, "accuracy": self.accuracy, "fidelity": self.fidelity,
                "decision": self.decision, "bench": bench}


def _thinned(run: dict) -> dict:
    """A copy of a bench run with at most JSON_SAMPLES latency samples (every k-th)."""
    every = -(-len(run["samples_ms"]) // JSON_SAMPLES)
    if every <= 1:
        return run
    return {**run, "samples_ms": run["samples_ms"][::every], "samples_ms_every": every}


@dataclass
class Step:
    """One step: its final config, the states around it, every attempt made, details and notes."""

    name: str
    config: dict
    before: State
    after: State
    attempts: list[dict] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    paired: dict = field(default_factory=dict)  # runtime -> PairedResult: A the previous state, B this one
    warnings: list[str] = field(default_factory=list)  # the pass's (random inputs, ...)

    def speedup(self, runtime: str) -> float | None:
        """The paired p50 speedup of this state over the previous one on `runtime` (estimate)."""
        found = self.paired.get(runtime)
        return found.speedup()["estimate"] if found is not None else None

    def to_dict(self) -> dict:
        return {"step": self.name, "config": self.config, "attempts": self.attempts, "details": self.details,
                "notes": self.notes, "warnings": self.warnings, "before": self.before.name, "after": self.after.name,
                "speedup": {rt: dict(p.speedup(), p90=p.speedup("p90")) for rt, p in self.paired.items()},
                "size_ratio": _size(self.after) / _size(self.before)
                if _size(self.after) and _size(self.before) else None}


@dataclass
class CompressResult:
    """Everything `compress` did: the recipe, the states and steps, the verdict, the files written."""

    source: str
    recipe: Recipe
    states: list[State]
    steps: list[Step]
    status: str = "ok"  # "ok" or "failed" (the bar could not be met)
    message: str | None = None
    hint: str | None = None
    notes: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    data_source: str | None = None  # --data
    eval_source: str | None = None  # --eval
    same_runtime: Any = None  # PairedResult: A the original, B the final model, on the final runtime
    bar: str | None = None  # the quality bar in force, in words (effkit.judge.QualityBar.describe)
    general_warnings: list[str] = field(default_factory=list)  # the command's (outputs not finite, ...)
    judged: dict = field(default_factory=dict)  # "decisions" / "verdict" -> source, samples, labelled

    @property
    def original(self) -> State:
        return self.states[0]

    @property
    def final(self) -> State:
        return self.states[-1]

    def overall(self) -> dict:
        """The pipeline as a whole: speedup over torch fp32 eager and on the final runtime, size, accuracy."""
        first, last = self.original, self.final
        runtime = _final_runtime(last)
        out: dict[str, Any] = {"final_runtime": runtime, "reference": "torch fp32 eager (the original model)"}
        # estimates under the old keys; "speedup" holds them with their intervals and verdicts
        for key, paired in (("vs_torch_fp32", last.vs_reference.get(runtime) if last is not first else None),
                            ("same_runtime", self.same_runtime)):
            if paired is not None:
                out[f"speedup_{key}"] = {s: paired.speedup(s)["estimate"] for s in ("p50", "p90")}
                out.setdefault("speedup", {})[key] = {s: paired.speedup(s) for s in ("p50", "p90")}
        if _size(first) and _size(last):
            out["size_before"], out["size_after"] = _size(first), _size(last)
            out["size_ratio"] = _size(last) / _size(first)
        if first.accuracy is not None and last.accuracy is not None:
            out["accuracy_before"], out["accuracy_after"] = first.accuracy, last.accuracy
            out["accuracy_change_pt"] = 100 * (last.accuracy - first.accuracy)
        out["fidelity"] = last.fidelity
        return out

    def rows(self) -> list[dict]:
        """The summary table: one row per state and runtime, with changes against the previous state
        (same runtime) and against the original's torch fp32 eager time."""
        rows = []
        made_by = {step.after.name: step for step in self.steps}
        for i, state in enumerate(self.states):
            if state.bench is None:
                continue
            prev = self.states[i - 1] if i else None
            for run in state.bench.runs:
                lat = run["latency_ms"]
                step = made_by.get(state.name) if prev is not None else None
                step_pair = step.paired.get(run["runtime"]) if step is not None else None
                ref_pair = state.vs_reference.get(run["runtime"])
                rows.append({
                    "state": state.name, "runtime": run["runtime"], "p50_ms": lat["p50"], "p90_ms": lat["p90"],
                    "speedup_step": step_pair.speedup()["estimate"] if step_pair else None,
                    "speedup_vs_torch_fp32": ref_pair.speedup()["estimate"] if ref_pair else None,
                    "speedup_step_paired": step_pair.speedup() if step_pair else None,
                    "speedup_vs_torch_fp32_paired": ref_pair.speedup() if ref_pair else None,
                    "size_bytes": _size(state),
                    "size_ratio_step": _size(state) / _size(prev) if prev is not None and _size(prev) else None,
                    "accuracy": state.accuracy,
                    "accuracy_change_pt": 100 * (state.accuracy - self.original.accuracy)
                    if state.accuracy is not None and self.original.accuracy is not None else None,
                    "cosine_min": (state.fidelity or {}).get("cosine_min"),
                    "warnings": run["warnings"],
                })
        return rows

    def layers(self) -> list[dict]:
        """Per weight layer of the original torch model: the share of its weights still non-zero after
        the last torch step (pruning), and whether quantization kept it in float."""
        torch_states = [s for s in self.states if s.model.kind == "torch"]
        if not torch_states or len(self.states) < 2:
            return []
        before, after = _weight_counts(torch_states[0].model.module), _weight_counts(torch_states[-1].model.module)
        quantized = next((s for s in self.steps if s.name == "quantize"), None)
        floats = _float_layers(quantized) if quantized else set()
        return [{"name": name, "type": kind, "weights_before": total, "weights_after": after.get(name, (kind, 0, 0))[1],
                 "nonzero_after": after.get(name, (kind, 0, 0))[2], "kept": after.get(name, (kind, 0, 0))[2] / total,
                 "float": (name in floats) if quantized else None}
                for name, (kind, total, _) in before.items() if total]

    def warnings(self) -> list[str]:
        """Every warning, once each: the command's, each step's, then the measurements' (noisy timing, a busy
        machine) of every state and runtime and of the side-by-side timings."""
        steps = [f"{step.name}: {w}" for step in self.steps for w in step.warnings]
        where: dict[str, list[str]] = {}  # one line per warning, naming every timing it applies to
        for row in self.rows():
            for w in row["warnings"]:
                where.setdefault(w, []).append(f"{row['state']} on {row['runtime']}")
        timed = [f"{w} ({', '.join(places)})" for w, places in where.items()]
        paired = [p for step in self.steps for p in step.paired.values()]
        paired += [p for state in self.states for p in state.vs_reference.values()]
        paired += [self.same_runtime] if self.same_runtime is not None else []
        timed += [f"side-by-side timings: {w}" for w in load_warnings(paired)]
        return list(dict.fromkeys(self.general_warnings + steps + timed))

    def to_dict(self) -> dict:
        threads = self.original.bench.runs[0]["threads"] if self.original.bench else None
        return {"schema": SCHEMA, "source": self.source, "status": self.status, "message": self.message, "hint": self.hint,
                "bar": self.bar, "judged": self.judged, "warnings": self.warnings(),
                "steps_run": [s.name for s in self.steps], "recipe": self.recipe.to_dict(),
                "overall": self.overall(), "summary": self.rows(), "notes": self.notes, "layers": self.layers(),
                "steps": [s.to_dict() for s in self.steps], "states": [s.to_dict() for s in self.states],
                "outputs": self.outputs, "environment": environment(threads)}

    def to_json(self) -> str:
        return json.dumps(jsonable(self.to_dict()), indent=2)


def _float_layers(step: Step) -> set[str]:
    """The torch names of the layers quantize kept in float (it names ONNX nodes; the export maps them)."""
    kept = set(step.details.get("kept_in_float") or [])
    if not kept or step.before.model.kind != "torch":
        return kept

    return {layer["alias"] for layer in layers(onnx_path_for(step.before.model)) if layer["name"] in kept} | kept


def _weight_counts(module) -> dict[str, tuple[str, int, int]]:
    """{layer name: (type, weights, non-zero weights)} for every layer with a weight matrix or kernel."""
    counts = {}
    for name, layer in module.named_modules():
        weight = getattr(layer, "weight", None)
        if name and getattr(weight, "dim", None) and weight.dim() >= 2:
            counts[name] = (type(layer).__name__, int(weight.numel()), int((weight != 0).sum()))
    return counts


def _run(state: State | None, runtime: str) -> dict | None:
    if state is None or state.bench is None:
        return None
    return next((r for r in state.bench.runs if r["runtime"] == runtime), None)


def _size(state: State | None) -> int | None:
    return state.bench.size.get("bytes_on_disk") if state is not None and state.bench is not None else None


def _final_runtime(state: State) -> str:
    return "onnxruntime" if state.bench is None or _run(state, "onnxruntime") else "torch"
