"""`compress`: prune → recover (distill) → quantize → export, measured after every step.

Every model along the way (a *state*: the original, then the result of each step) is timed once
with `effkit.benchmark.bench` on the same runtimes, threads and inputs: torch models on torch eager
and on ONNX Runtime (a verified temporary export), ONNX models on ONNX Runtime. A step's "before"
is the previous state's measurement and its "after" its own, so each comparison is side by side
on identical settings, and the original's torch fp32 eager time stays the reference of the
overall speedup.

Quality bar: `[pipeline] max-accuracy-drop` (points, on labelled --eval data) and `tolerance`
thresholds (cosine, SQNR, top-1 agreement against the original's outputs) hold for the whole
pipeline. After each step the cumulative result is checked; a step that breaks the bar is run
again backed off (prune: half the ratio; quantize: the bar passed to quantize as its tolerance,
so it keeps the layers that break it in float), up to `backoff-tries` times, and the report lists
every attempt. When the bar cannot be met, `compress` raises `CompressFailed` (exit 1): OUTDIR
then holds the reports and the recipe, so the user can see why, but no model.

Nothing is written here: `effkit.outdir` writes the result to OUTDIR.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from effkit.benchmark import bench
from effkit.env import available_cores
from effkit.errors import StepFailed, UsageError
from effkit.export import ExportConfig, export_onnx, onnx_path_for, verify_onnx
from effkit.fidelity import accuracy, compare_outputs, held_out_inputs
from effkit.load import load_model
from effkit.pipeline_result import CompressResult, State, Step
from effkit.recipe import FIDELITY_METRICS, Recipe, _plain, _toml_key, config_class
from effkit.runners import native_runner
from effkit.util import quiet_torch, workdir

FIDELITY_SAMPLES = 128  # samples of real data (when given) the outputs are compared on
FIDELITY_BATCH = 16

__all__ = ["CompressFailed", "CompressResult", "Recipe", "State", "Step", "run_pipeline"]


class CompressFailed(StepFailed):
    """The quality bar could not be met; `.result` holds what was measured (for the reports)."""

    def __init__(self, message: str, hint: str | None, result: CompressResult):
        super().__init__(message, hint)
        self.result = result


# ---------------------------------------------------------------- measuring a state

class _Context:
    """What every step needs: the original, the data, the bar, the reference outputs, progress."""

    def __init__(self, original, recipe: Recipe, data, eval_data, progress, log):
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
        return native_runner(model, self.threads)

    def evaluate(self, name: str, model) -> State:
        """Accuracy on the eval data and fidelity against the original: cheap, no timing."""
        runner = self.runner(model)
        acc = accuracy(runner, self.eval_data.inputs, self.eval_data.labels) if self.eval_data is not None else None
        fid = None
        if model is not self.original:
            fid = compare_outputs(self.reference, [runner.run(b) for b in self.fidelity_inputs])
        return State(name, model, acc, fid)

    def violations(self, state: State, base: State) -> list[str]:
        """How `state` breaks the whole-pipeline bar (against the original `base`); empty when it holds."""
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
        b = self.recipe.bench
        runtimes = ["torch", "onnxruntime"] if state.model.kind == "torch" else ["onnxruntime"]
        progress = (lambda label, f: self.progress(f"timing {state.name}: {label}", f)) if self.progress else None
        with quiet_torch():  # sizing a torch model saves it with torch.export, which logs shape notes
            state.bench = bench(state.model, runtimes=runtimes, threads=self.threads, warmup=b.warmup,
                                iterations=b.iterations, min_time=b.min_time, progress=progress)


def _config_dict(config: Any) -> dict:
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
            ctx.states.append(step.after)
            result.steps.append(step)
        current = ctx.states[-1]
    if current.model.kind == "torch":
        step = _export(ctx, current)
        ctx.bench(step.after)
        ctx.states.append(step.after)
        result.steps.append(step)
    else:
        result.notes.append("the final model is ONNX already, so it is the export (reloaded and checked when "
                            "written)")
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
