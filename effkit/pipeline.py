"""`compress`: prune → recover (distill) → quantize → export, measured after every step.

Every model along the way (a *state*: the original, then the result of each step) is timed with
`effkit.benchmark.bench` on the same runtimes, threads and inputs: torch models on torch eager
and on ONNX Runtime (a verified temporary export), ONNX models on ONNX Runtime; those runs give
each state's own latency table. Every speedup is measured side by side instead, interleaved in
A/B pairs (`effkit.comparison.measure_paired`), and reported with its 95% interval: a step's
before against its after on each runtime, every state against the original's torch fp32 eager
time (the reference of the overall speedup), and the final model against the original on the
final runtime.

Quality bar: `[pipeline] max-accuracy-drop` (points, on labelled --eval data) and `tolerance`
thresholds (cosine, SQNR, top-1 agreement against the original's outputs) hold for the whole
pipeline. After each step the cumulative result is checked; a step that breaks the bar is run
again backed off (prune: half the ratio; quantize: the bar passed to quantize as its tolerance,
so it keeps the layers that break it in float), up to `backoff-tries` times, and the report lists
every attempt. When the bar cannot be met, `compress` raises `CompressFailed` (exit 1): OUTDIR
then holds the reports and the recipe, so the user can see why, but no model.

OUTDIR is built in a hidden staging folder beside it and moved into place only when complete:
an interrupted or failed run leaves OUTDIR as it was (absent, or the old result).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from effkit.errors import OutputExistsError, StepFailed, UsageError
from effkit.files import _umask, forget_temporary, track_temporary
from effkit.recipe import Recipe, config_class

SCHEMA = "effkit.compress/1"
# What compress writes to OUTDIR; --force replaces an OUTDIR that holds nothing else.
OUTDIR_FILES = ("model.onnx", "model.pt2", "recipe.toml", "report.json", "report.md", "report.html")
FIDELITY_SAMPLES = 128  # samples of real data (when given) the outputs are compared on
FIDELITY_BATCH = 16
# report.json keeps at most this many latency samples per run (every k-th, with "samples_ms_every": k);
# the statistics are computed from all of them.
JSON_SAMPLES = 2000

__all__ = ["CompressFailed", "CompressResult", "Recipe", "State", "Step", "compress", "run_pipeline",
           "write_outdir"]


class CompressFailed(StepFailed):
    """The quality bar could not be met; `.result` holds what was measured (for the reports)."""

    def __init__(self, message: str, hint: str | None, result: CompressResult):
        super().__init__(message, hint)
        self.result = result


@dataclass
class State:
    """A model at one point of the pipeline and what was measured on it."""

    name: str  # "original" or the step that produced it
    model: Any  # effkit.model.Model
    accuracy: float | None  # fraction, on the eval data
    fidelity: dict | None  # against the original's outputs (None for the original)
    bench: Any = None  # BenchResult, once timed
    vs_reference: dict = field(default_factory=dict)  # runtime -> PairedResult: A the original on torch, B this

    def to_dict(self) -> dict:
        bench = self.bench.to_dict() if self.bench is not None else None
        if bench is not None:  # fast models give tens of thousands of samples per run
            bench["runs"] = [_thinned(run) for run in bench["runs"]]
        return {"name": self.name, "kind": self.model.kind, "accuracy": self.accuracy, "fidelity": self.fidelity,
                "bench": bench}


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

    def speedup(self, runtime: str) -> float | None:
        """The paired p50 speedup of this state over the previous one on `runtime` (estimate)."""
        found = self.paired.get(runtime)
        return found.speedup()["estimate"] if found is not None else None

    def to_dict(self) -> dict:
        return {"step": self.name, "config": self.config, "attempts": self.attempts, "details": self.details,
                "notes": self.notes, "before": self.before.name, "after": self.after.name,
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

    def to_dict(self) -> dict:
        from effkit.env import environment

        threads = self.original.bench.runs[0]["threads"] if self.original.bench else None
        return {"schema": SCHEMA, "source": self.source, "status": self.status, "message": self.message, "hint": self.hint,
                "steps_run": [s.name for s in self.steps], "recipe": self.recipe.to_dict(),
                "overall": self.overall(), "summary": self.rows(), "notes": self.notes, "layers": self.layers(),
                "steps": [s.to_dict() for s in self.steps], "states": [s.to_dict() for s in self.states],
                "outputs": self.outputs, "environment": environment(threads)}

    def to_json(self) -> str:
        import json

        from effkit.benchmark import _jsonable

        return json.dumps(_jsonable(self.to_dict()), indent=2)


def _float_layers(step: Step) -> set[str]:
    """The torch names of the layers quantize kept in float (it names ONNX nodes; the export maps them)."""
    kept = set(step.details.get("kept_in_float") or [])
    if not kept or step.before.model.kind != "torch":
        return kept
    from effkit.passes.quantize_ort import layers
    from effkit.runtime import onnx_path_for

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


# ---------------------------------------------------------------- measuring a state

class _Context:
    """What every step needs: the original, the data, the bar, the reference outputs, progress."""

    def __init__(self, original, recipe: Recipe, data, eval_data, progress, log):
        from effkit.fidelity import held_out_inputs
        from effkit.runtime import available_cores

        self.original = original
        self.recipe = recipe
        self.data = data
        self.eval_data = eval_data if eval_data is not None and eval_data.labels is not None else None
        self.progress = progress
        self.log = log or (lambda message: None)
        self.threads = recipe.bench.threads or available_cores()
        self.max_drop = recipe.pipeline.accuracy_drop_points
        self.bounds = recipe.pipeline.fidelity_bounds
        real = eval_data if eval_data is not None else data
        if real is not None:  # compare outputs on real inputs: random ones are off the data's distribution
            sample = real.take(FIDELITY_SAMPLES)
            self.fidelity_inputs = [inputs for inputs, _ in sample.batches(FIDELITY_BATCH)]
            self.fidelity_source = f"{len(sample)} samples of {real.source}"
        else:
            self.fidelity_inputs = held_out_inputs(original.example_inputs)
            self.fidelity_source = f"{len(self.fidelity_inputs)} random inputs shaped like the example"
        self.reference = [self.runner(original).run(b) for b in self.fidelity_inputs]
        self.states: list[State] = []  # the accepted states so far; [0] is the original
        self.notes: list[str] = []  # for the whole result

    def runner(self, model):
        from effkit.runtime import native_runner

        return native_runner(model, self.threads)

    def evaluate(self, name: str, model) -> State:
        """Accuracy on the eval data and fidelity against the original: cheap, no timing."""
        from effkit.fidelity import accuracy, compare_outputs

        runner = self.runner(model)
        acc = accuracy(runner, self.eval_data.inputs, self.eval_data.labels) if self.eval_data is not None else None
        fid = None
        if model is not self.original:
            fid = compare_outputs(self.reference, [runner.run(b) for b in self.fidelity_inputs])
        return State(name, model, acc, fid)

    def violations(self, state: State, base: State) -> list[str]:
        """How `state` breaks the whole-pipeline bar (against the original `base`); empty when it holds."""
        from effkit.recipe import FIDELITY_METRICS

        found = []
        if self.max_drop is not None and state.accuracy is not None and base.accuracy is not None:
            drop = 100 * (base.accuracy - state.accuracy)
            if drop > self.max_drop + 1e-9:
                found.append(f"accuracy dropped {drop:.2f} pt (at most {self.max_drop:g} pt allowed)")
        for bound in self.bounds:
            value = (state.fidelity or {}).get(FIDELITY_METRICS[bound.metric])
            if value is None:
                continue
            if not bound.holds(value):
                found.append(f"{bound.metric} is {value:.4g}, breaking {bound.text}")
        return found

    def bench(self, state: State) -> None:
        from effkit.benchmark import bench
        from effkit.passes.export import quiet_torch

        b = self.recipe.bench
        runtimes = ["torch", "onnxruntime"] if state.model.kind == "torch" else ["onnxruntime"]
        progress = (lambda label, f: self.progress(f"timing {state.name}: {label}", f)) if self.progress else None
        with quiet_torch():  # sizing a torch model saves it with torch.export, which logs shape notes
            state.bench = bench(state.model, runtimes=runtimes, threads=self.threads, warmup=b.warmup,
                                iterations=b.iterations, min_time=b.min_time, progress=progress)
        for runtime in runtimes:  # side by side with the reference, the original on torch fp32 eager
            if not (state.name == "original" and runtime == "torch") and self.states[0].model.kind == "torch":
                state.vs_reference[runtime] = self.pair(self.states[0].model, "torch", state.model, runtime)

    def pair(self, a, runtime_a: str, b, runtime_b: str):
        """Model `a` on `runtime_a` against `b` on `runtime_b`, interleaved (`measure_paired`)."""
        from effkit.comparison import measure_paired
        from effkit.outcome import PAIRS
        from effkit.passes.export import quiet_torch
        from effkit.runtime import make_runner

        b_ = self.recipe.bench
        progress = (lambda label, f: self.progress(f"side by side: {label}", f)) if self.progress else None
        with quiet_torch():
            return measure_paired(make_runner(a, runtime_a, self.threads), make_runner(b, runtime_b, self.threads),
                                  a.example_inputs, pairs=PAIRS, block_time=max(b_.min_time / PAIRS, 1e-3),
                                  iterations=b_.iterations, warmup=b_.warmup, progress=progress)

    def pair_step(self, step: Step) -> None:
        """The step's before against its after, on every runtime both were timed on."""
        for run in step.after.bench.runs:
            if _run(step.before, run["runtime"]) is not None:
                step.paired[run["runtime"]] = self.pair(step.before.model, run["runtime"], step.after.model,
                                                        run["runtime"])


def _config_dict(config: Any) -> dict:
    from effkit.recipe import _plain, _toml_key

    return {_toml_key(f.name): _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


# ---------------------------------------------------------------- the steps

def _pass_function(step: str) -> Callable:
    import importlib

    config_class(step)  # a clear error when the pass is not installed
    return getattr(importlib.import_module(f"effkit.passes.{step}"), step)


def _prune_setting(config) -> str:
    """What a prune config asks for, in words: "ratio 0.5", "sparsity 0.9", "target-latency 0.5x"."""
    if config.unstructured:
        return f"sparsity {config.sparsity:g}" if config.sparsity is not None else f"pattern {config.pattern}"
    if config.target_latency is not None:
        return f"target-latency {config.target_latency:g}x"
    if config.target_macs is not None:
        return f"target-macs {config.target_macs:g}x"
    return f"ratio {config.ratio:g}"


def _prune_backed_off(config):
    """The same prune, removing about half as much; None when the setting cannot be lessened (N:M)."""
    if config.unstructured:
        return dataclasses.replace(config, sparsity=config.sparsity / 2) if config.sparsity is not None else None
    if config.target_latency is not None:
        return dataclasses.replace(config, target_latency=(1 + config.target_latency) / 2)
    if config.target_macs is not None:
        return dataclasses.replace(config, target_macs=(1 + config.target_macs) / 2)
    return dataclasses.replace(config, ratio=config.ratio / 2)


def _prune_and_recover(ctx: _Context, current: State) -> list[Step]:
    """Prune (with its own fine-tuning, if configured), then distill from the original when the recipe
    asks; the bar is checked after recovery. Breaking it halves what is pruned, up to backoff-tries times."""
    recipe = ctx.recipe
    prune, distill = _pass_function("prune"), recipe.distill and _pass_function("distill")
    config, attempts = recipe.prune, []
    for attempt in range(recipe.pipeline.backoff_tries + 1):
        ctx.log(f"prune: {_prune_setting(config)}")
        pruned = prune(current.model, config, data=ctx.data, eval_data=ctx.eval_data, progress=ctx.progress)
        pruned_state = ctx.evaluate("prune", pruned.model)
        checked, recovered = pruned_state, None
        if recipe.distill is not None:
            ctx.log("distill: recovering from the original")
            recovered = distill(ctx.original, pruned.model, recipe.distill, data=ctx.data, progress=ctx.progress)
            checked = ctx.evaluate("distill", recovered.model)
        broken = ctx.violations(checked, ctx.states[0])
        attempts.append({"attempt": attempt + 1, "setting": _prune_setting(config), "accuracy": checked.accuracy,
                         "fidelity": checked.fidelity, "violations": broken, "accepted": not broken})
        if not broken:
            break
        ctx.log(f"prune: {_prune_setting(config)} breaks the bar: {'; '.join(broken)}")
        lighter = _prune_backed_off(config)
        if lighter is None or attempt == recipe.pipeline.backoff_tries:
            raise _BarBroken(f"pruning breaks the quality bar even at {_prune_setting(config)}: {'; '.join(broken)}",
                             "prune less, fine-tune longer (finetune-epochs), or loosen --max-accuracy-drop / "
                             "--tolerance", attempts, checked)
        config = lighter
    steps = [Step("prune", _config_dict(config), current, pruned_state, attempts, pruned.details, list(pruned.notes))]
    if len(attempts) > 1:
        steps[0].notes.append(f"backed off: {_prune_setting(recipe.prune)} broke the bar; "
                              f"{_prune_setting(config)} keeps it")
    if recovered is not None:
        steps.append(Step("distill", _config_dict(recipe.distill), pruned_state, checked, [], recovered.details,
                          list(recovered.notes)))
    return steps


def _quantize(ctx: _Context, current: State) -> list[Step]:
    """Quantize; when the result breaks the bar, quantize again with the bar as quantize's own
    tolerance, so it keeps the layers that break it in float."""
    quantize = _pass_function("quantize")
    config, attempts = ctx.recipe.quantize, []
    if config.output_format is None:  # the pipeline ends in ONNX: only ONNX Runtime int8 exports verifiably
        config = dataclasses.replace(config, output_format=".onnx")
    calib = ctx.data
    for attempt in range(ctx.recipe.pipeline.backoff_tries + 1):
        ctx.log(f"quantize: {config.method}" + (f", tolerance {_texts(config.tolerance)}" if config.tolerance else ""))
        try:
            result = quantize(current.model, config, calib=calib, eval_data=ctx.eval_data, progress=ctx.progress)
        except StepFailed as e:  # quantize could not meet its own tolerance, even keeping layers in float
            attempts.append({"attempt": attempt + 1, "setting": f"tolerance {_texts(config.thresholds)}",
                             "accuracy": None, "fidelity": None, "violations": [e.message], "accepted": False})
            raise _BarBroken(f"quantization cannot meet the bar: {e.message}", e.hint or
                             "loosen --max-accuracy-drop / --tolerance", attempts, current) from e
        if result.details.get("slower_than_original") and not config.allow_slower:
            ctx.notes.append(f"quantize: the int8 model ({result.details.get('label')}) was slower than its float "
                             "input, so the float model was kept; allow-slower = true in [quantize] keeps it")
            return []
        state = ctx.evaluate("quantize", result.model)
        broken = ctx.violations(state, ctx.states[0])
        attempts.append({"attempt": attempt + 1, "setting": f"tolerance {_texts(config.tolerance)}"
                         if config.tolerance else "as configured", "accuracy": state.accuracy,
                         "fidelity": state.fidelity, "violations": broken, "accepted": not broken,
                         "kept_in_float": result.details.get("kept_in_float")})
        if not broken:
            break
        ctx.log(f"quantize breaks the bar: {'; '.join(broken)}")
        backed_off = _quantize_tolerance(ctx, current, config, attempt)
        if backed_off is None or attempt == ctx.recipe.pipeline.backoff_tries:
            raise _BarBroken(f"quantization breaks the quality bar: {'; '.join(broken)}",
                             "loosen --max-accuracy-drop / --tolerance, or quantize fewer layers (exclude)",
                             attempts, state)
        config = backed_off
    step = Step("quantize", _config_dict(config), current, state, attempts, result.details, list(result.notes))
    if len(attempts) > 1:
        step.notes.append(f"backed off: quantized again with tolerance {_texts(config.tolerance)}, which keeps "
                          f"{len(result.details.get('kept_in_float') or [])} layer(s) in float")
    return [step]


def _quantize_tolerance(ctx: _Context, current: State, config, attempt: int):
    """The quantize config of back-off attempt `attempt` + 1: the pipeline's bar as quantize's own
    tolerance (which it meets by keeping layers in float). Quantize measures against its input, so
    the accuracy bound is the budget left after the earlier steps, and every further attempt halves
    what may be lost again. None when there is no bar to pass on."""
    first = ctx.states[0]
    tolerance = []
    if ctx.max_drop is not None and current.accuracy is not None and first.accuracy is not None:
        spent = 100 * (first.accuracy - current.accuracy)
        tolerance.append(f"accuracy:-{max(0.0, ctx.max_drop - spent) / 2 ** attempt:.3g}pt")
    for bound in ctx.bounds:
        tolerance.append(_tightened(bound, attempt))
    if not tolerance:
        return None
    return dataclasses.replace(config, tolerance=tuple(tolerance))


def _tightened(bound, attempt: int) -> str:
    """A fidelity bound made stricter with each attempt: the gap to perfect halves (cosine, top-1,
    max diff) or the SQNR rises 6 dB, because errors of the earlier steps add up with quantize's."""
    if attempt == 0:
        return bound.text
    if bound.metric == "sqnr":
        return f"sqnr>={bound.value + 6 * attempt:g}"
    if bound.metric == "max_abs_diff":
        return f"max_abs_diff<={bound.value / 2 ** attempt:.3g}"
    return f"{bound.metric}>={1 - (1 - bound.value) / 2 ** attempt:.6g}"


def _texts(thresholds) -> str:
    return ", ".join(str(t) for t in thresholds)


class _BarBroken(Exception):
    """Internal: a step could not be brought within the bar (carries its attempts for the report)."""

    def __init__(self, message: str, hint: str, attempts: list[dict], state: State):
        super().__init__(message)
        self.message, self.hint, self.attempts, self.state = message, hint, attempts, state


def _export(ctx: _Context, current: State) -> Step:
    """The verified ONNX export of the final model (torch → ONNX Runtime)."""
    from effkit.model import load_model, workdir
    from effkit.passes.export import ExportConfig, export_onnx, verify_onnx
    from effkit.runtime import onnx_path_for

    ctx.log("export: ONNX, verified in ONNX Runtime")
    config = ctx.recipe.export
    if config == ExportConfig():  # timing on ONNX Runtime made this very export already: check it again, reuse it
        path = onnx_path_for(current.model)
        report = {"opset": config.opset, "dynamic_batch": config.dynamic_batch,
                  **verify_onnx(current.model, path, config)}
        exported = load_model(str(path), check=False).replace(example_inputs=current.model.example_inputs,
                                                              source=current.model.source)
    else:
        exported = export_onnx(current.model, Path(tempfile.mkdtemp(dir=workdir())) / "model.onnx", config)
        report = dict(exported.meta["export"])
    state = ctx.evaluate("export", exported)
    return Step("export", _config_dict(config), current, state, [], report,
                [f"verified in ONNX Runtime: max abs diff {report['max_abs_diff']:.3g}"])


def run_pipeline(model, recipe: Recipe, *, data=None, eval_data=None,
                 progress: Callable[[str, float], None] | None = None,
                 log: Callable[[str], None] | None = None) -> CompressResult:
    """Run the recipe's steps on `model` in pipeline order; time every state; return the result.

    data: training / calibration data (`effkit.data.Data`), needed by fine-tuning, distillation and
    static quantization. eval_data: labelled data for accuracy (else fidelity only). The result's
    status is "failed" (with a message) when the bar could not be met; nothing is written here.
    """
    _check_recipe(model, recipe, data, eval_data)
    ctx = _Context(model, recipe, data, eval_data, progress, log)
    ctx.log(f"compress {model.source}: {' -> '.join(recipe.steps)}")
    original = ctx.evaluate("original", model)
    ctx.states.append(original)
    result = CompressResult(model.source, recipe, ctx.states, [], notes=ctx.notes,
                            data_source=data.source if data is not None else None,
                            eval_source=eval_data.source if eval_data is not None else None)
    ctx.log("timing the original")
    ctx.bench(original)
    current = original
    stages: list[Callable[[_Context, State], list[Step]]] = []
    if recipe.prune is not None:
        stages.append(_prune_and_recover)
    if recipe.quantize is not None:
        stages.append(_quantize)
    for stage in stages:
        try:
            steps = stage(ctx, current)
        except _BarBroken as e:
            result.status, result.message, result.hint = "failed", e.message, e.hint
            result.notes.append(f"stopped: {e.message}")
            failed = Step(stage.__name__.strip("_").split("_")[0], {}, current, e.state, e.attempts)
            result.steps.append(failed)
            return result
        for step in steps:
            ctx.log(f"timing {step.name}")
            ctx.bench(step.after)
            ctx.pair_step(step)
            ctx.states.append(step.after)
            result.steps.append(step)
        current = ctx.states[-1]
    if current.model.kind == "torch":
        step = _export(ctx, current)
        ctx.bench(step.after)
        ctx.pair_step(step)
        ctx.states.append(step.after)
        result.steps.append(step)
    else:
        result.notes.append("the final model is ONNX already, so it is the export (reloaded and checked when "
                            "written)")
    if len(ctx.states) > 1:
        runtime = _final_runtime(ctx.states[-1])
        result.same_runtime = ctx.pair(original.model, runtime, ctx.states[-1].model, runtime)
    broken = ctx.violations(ctx.states[-1], original)
    if broken:  # export is verified to tolerance, so this is rare, but the bar is the bar
        result.status, result.message = "failed", f"the final model breaks the quality bar: {'; '.join(broken)}"
    return result


def _check_recipe(model, recipe: Recipe, data, eval_data) -> None:
    """Refuse combinations that cannot work, before any work."""
    if recipe.distill is not None and recipe.prune is None:
        raise UsageError("distill needs a smaller student than the original",
                         "add --prune (the pruned model is the student, the original its teacher)")
    if recipe.distill is not None and data is None:
        raise UsageError("distill needs training data", "pass --data FILE")
    if recipe.pipeline.accuracy_drop_points is not None and (eval_data is None or eval_data.labels is None):
        raise UsageError("--max-accuracy-drop needs labelled evaluation data", "pass --eval FILE with labels")
    if recipe.quantize is not None and (recipe.quantize.backend == "torch" or recipe.quantize.output_format == ".ts"):
        raise UsageError("compress ends in a verified ONNX export, and torch int8 models do not export to ONNX",
                         "use backend = \"onnxruntime\" or \"auto\" in [quantize], or effkit quantize for torch int8")
    if model.kind != "torch" and (recipe.prune is not None or recipe.distill is not None):
        raise UsageError("prune and distill need a torch model, not ONNX", "pass the PyTorch model")
    for d in (data, eval_data):
        if d is not None:
            d.check_against(model)


# ---------------------------------------------------------------- writing OUTDIR

def check_outdir(outdir: str | Path, force: bool) -> Path:
    """Refuse an OUTDIR that is a file, that holds a file this command reads, or that holds files (without
    --force, or that effkit did not write: --force replaces a whole earlier OUTDIR, so it must never swallow
    a folder of the user's own files)."""
    from effkit.files import check_not_read

    shown = Path(outdir)
    outdir = shown.resolve()  # "-o ." needs a real name and parent to stage beside
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"{shown} is a file, not a folder", "pass a folder for -o")
    check_not_read(shown, "output folder")
    if outdir.is_dir() and any(outdir.iterdir()):
        if not _is_effkit_outdir(outdir):
            raise OutputExistsError(f"{shown} holds files that effkit compress did not write",
                                    "pass an empty or new folder for -o")
        if not force:
            raise OutputExistsError(f"{shown} already holds files", "pass --force to replace them")
    return outdir


def _is_effkit_outdir(outdir: Path) -> bool:
    """An earlier compress OUTDIR: its report.json says so, and it holds nothing else than compress writes
    (model.onnx's external data file included)."""
    from effkit.model import is_sidecar_name

    try:
        schema = json.loads((outdir / "report.json").read_text()).get("schema")
    except (OSError, ValueError, AttributeError):
        return False
    return schema == SCHEMA and all(p.name in OUTDIR_FILES or is_sidecar_name(p.name, "model.onnx")
                                    for p in outdir.iterdir())


@contextlib.contextmanager
def _staged(outdir: Path, force: bool) -> Iterator[Path]:
    """A hidden folder beside OUTDIR to build it in; moved onto OUTDIR when the block succeeds,
    removed otherwise (an exception, Ctrl-C), so OUTDIR never holds a half-written result."""
    outdir = outdir.resolve()
    stage = track_temporary(tempfile.mkdtemp(prefix=f".{outdir.name}.effkit-", dir=outdir.parent))
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes it private; OUTDIR should get the usual permissions
    try:
        yield stage
        check_outdir(outdir, force)
        old = None
        if outdir.exists():  # empty, or --force: swap the old one out, the new one in, then drop the old
            old = outdir.parent / f"{stage.name}.old"
            os.replace(outdir, old)
        os.replace(stage, outdir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        forget_temporary(stage)


def _verify_saved(path: Path, model, reference: list[np.ndarray]) -> None:
    """Load a written model back and check it gives the outputs of the model it came from."""
    from effkit.fidelity import compare_outputs
    from effkit.model import load_model

    loaded = load_model(str(path), check=False)
    loaded = loaded.replace(example_inputs=model.example_inputs)
    from effkit.runtime import native_runner

    got = native_runner(loaded).run(model.example_inputs)
    fid = compare_outputs([reference], [got])
    if fid["cosine_min"] is None or fid["cosine_min"] < 0.9999:
        raise StepFailed(f"{path.name} does not reproduce the model it was saved from (cosine {fid['cosine_min']})")


def write_outdir(result: CompressResult, outdir: str | Path, force: bool = False) -> list[Path]:
    """Write OUTDIR: the final model (native format), its verified ONNX, the recipe and the reports.

    A failed result gets the recipe and the reports only. Everything is staged and moved in at once.
    """
    from effkit.model import save_model, save_onnx_file
    from effkit.passes.export import quiet_torch
    from effkit.report.compress import compress_markdown
    from effkit.report.html import compress_html
    from effkit.runtime import make_runner, native_runner

    shown = Path(outdir)  # as the user wrote it, for the list of outputs
    outdir = check_outdir(outdir, force)
    outdir.parent.mkdir(parents=True, exist_ok=True)  # OUTDIR's own folder is created by the final move
    with _staged(outdir, force) as stage:
        names = []
        if result.status == "ok":
            final = result.final.model
            reference = native_runner(final).run(
                final.example_inputs)
            save_onnx_file(final.onnx_path, stage / "model.onnx", force=False)  # torch pipelines end in export
            _verify_saved(stage / "model.onnx", final, reference)
            names.append("model.onnx")
            native = _native_model(result)
            if native is not None:
                native_ref = make_runner(native, "torch").run(native.example_inputs)
                with quiet_torch():
                    save_model(native, stage / "model.pt2")
                    _verify_saved(stage / "model.pt2", native, native_ref)
                names.append("model.pt2")
        result.outputs = [str(shown / n) for n in names + ["recipe.toml", "report.json", "report.md", "report.html"]]
        _write(stage / "recipe.toml", result.recipe.to_toml(_recipe_comments(result)))
        _write(stage / "report.json", result.to_json() + "\n")
        _write(stage / "report.md", compress_markdown(result))
        _write(stage / "report.html", compress_html(result))
    return [Path(p) for p in result.outputs]


def _recipe_comments(result: CompressResult) -> list[str]:
    """How this recipe was run (the data is not part of it) and what the back-off changed."""
    command = f"effkit compress {result.source}"
    command += f" --data {result.data_source}" if result.data_source else ""
    command += f" --eval {result.eval_source}" if result.eval_source else ""
    lines = [f"Reproduce: {command} --recipe recipe.toml -o OUTDIR"]
    lines += [f"{step.name}: {note}" for step in result.steps for note in step.notes if note.startswith("backed off")]
    if any(note.startswith("backed off") for step in result.steps for note in step.notes):
        lines.append("(the recipe holds what was asked; running it again backs off the same way)")
    return lines


def _native_model(result: CompressResult):
    """The final torch model when the pipeline ended with an export of one (saved as .pt2 too)."""
    if result.steps and result.steps[-1].name == "export":
        return result.steps[-1].before.model
    return None


def _write(path: Path, text: str) -> None:
    from effkit.files import write_text

    write_text(path, text)


def compress(model, recipe: Recipe, outdir: str | Path, *, data=None, eval_data=None, force: bool = False,
             progress: Callable[[str, float], None] | None = None,
             log: Callable[[str], None] | None = None) -> CompressResult:
    """Run the pipeline on `model` and write OUTDIR. Raises `CompressFailed` (exit 1) when the quality
    bar cannot be met; OUTDIR then holds the recipe and the reports, no model. OUTDIR may not hold
    the model's files (it is replaced whole)."""
    from effkit.files import reading
    from effkit.model import model_files

    with reading(*model_files(model)):
        check_outdir(outdir, force)
        result = run_pipeline(model, recipe, data=data, eval_data=eval_data, progress=progress, log=log)
        write_outdir(result, outdir, force)
    if result.status != "ok":
        raise CompressFailed(result.message or "the quality bar could not be met", result.hint, result)
    return result
