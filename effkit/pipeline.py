"""`compress`: prune → recover (distill) → third-party passes → quantize → export, measured after every step.

One loop runs every step through the pass interface (`effkit.passes.registry`): run the pass, check the
quality bar (after the pass that recovers from it, when there is one), back off while it breaks it.

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
pipeline, judged on data no pass fitted on (`effkit.judge.judging_split`: --eval, else a held-out
quarter of --data, which the passes then do not see, else random inputs). After each step the cumulative result is checked; a step that breaks the bar is run
again backed off by the pass's own `back_off` (prune: half the ratio; quantize: the bar passed to
quantize as its tolerance, so it keeps the layers that break it in float), up to `backoff-tries` times, and the report lists
every attempt. When the bar cannot be met, `compress` raises `CompressFailed` (exit 1): OUTDIR
then holds the reports and the recipe, so the user can see why, but no model.

Nothing is written here: `effkit.outdir` writes the result to OUTDIR.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from effkit.benchmark import bench
from effkit.comparison import measure_paired
from effkit.env import default_threads
from effkit.errors import StepFailed, UsageError
from effkit.export import make_runner
from effkit.fidelity import held_out_inputs
from effkit.judge import Judge, bar_violations, pipeline_splits
from effkit.outcome import PAIRS
from effkit.passes import PassContext, registry
from effkit.passes.registry import Pass
from effkit.pipeline_result import CompressResult, State, Step, _final_runtime, _run
from effkit.recipe import Recipe, _plain, _toml_key
from effkit.runners import native_runner
from effkit.util import plural, quiet_torch

FIDELITY_BATCH = 16  # samples per batch when outputs are compared

__all__ = ["Bar", "CompressFailed", "CompressResult", "Recipe", "State", "Step", "run_pipeline"]


class CompressFailed(StepFailed):
    """The quality bar could not be met; `.result` holds what was measured (for the reports)."""

    def __init__(self, message: str, hint: str | None, result: CompressResult):
        super().__init__(message, hint)
        self.result = result


# ---------------------------------------------------------------- measuring a state

class _Context:
    """What every step needs: the original, the data (split by `effkit.judge.pipeline_splits`: what the passes
    fit on, what back-off is decided on, what the verdict is made on), the bar, the judges, progress."""

    def __init__(self, original, recipe: Recipe, data, eval_data, progress, log):
        self.original = original
        self.recipe = recipe
        labelled = eval_data if eval_data is not None and eval_data.labels is not None else None
        self.progress = progress
        self.log = log or (lambda message: None)
        self.threads = recipe.bench.threads or default_threads()
        self.bar = recipe.pipeline.bar(labelled=labelled is not None)
        self.max_drop = self.bar.max_drop_pt
        self.bounds = list(self.bar.bounds)
        self.splits = pipeline_splits(data, eval_data, needs_labels=self.max_drop is not None)
        self.data = self.splits.fit  # what the passes train and calibrate on
        self.judged: dict = {}  # role -> what it was judged on: source, samples, labelled
        self.verdict = self._judge("verdict", self.splits.verdict, seed=99)
        self.decide = (self.verdict if self.splits.decide is self.splits.verdict and self.splits.verdict is not None
                       else self._judge("decisions", self.splits.decide, seed=7))
        self.judged.setdefault("decisions", self.judged["verdict"])
        self.states: list[State] = []  # the accepted states so far; [0] is the original
        self.notes: list[str] = []  # for the whole result
        self.warnings: list[str] = []  # for the whole result: the caller's, and those of declined steps

    def _judge(self, role: str, data, seed: int) -> Judge:
        """A judge on all of `data` (outputs, and accuracy when it has labels), else on fresh random inputs
        drawn with `seed` (off the data's distribution: the last resort); recorded in `judged[role]`."""
        inputs = ([batch for batch, _ in data.batches(FIDELITY_BATCH)] if data is not None
                  else held_out_inputs(self.original.example_inputs, seed=seed))
        judge = Judge(self.runner(self.original), inputs, data)
        samples = len(data) if data is not None else int(sum(len(b[0]) if b and b[0].ndim else 1 for b in inputs))
        self.judged[role] = {"source": data.source if data is not None else "fresh random inputs",
                             "samples": samples, "labelled": judge.eval_data is not None}
        return judge

    def runner(self, model):
        return native_runner(model, self.threads)

    def evaluate(self, name: str, model) -> State:
        """Accuracy and fidelity against the original: on the verdict's data (what is reported) and on the
        decisions' data (what back-off reads); cheap, no timing."""
        runner = self.runner(model)

        def figures(judge: Judge) -> dict:
            return {"accuracy": judge.accuracy(runner),
                    "fidelity": None if model is self.original else judge.fidelity(runner)}

        reported = figures(self.verdict)
        return State(name, model, reported["accuracy"], reported["fidelity"],
                     decision=reported if self.decide is self.verdict else figures(self.decide))

    def violations(self, state: State, base: State, on: str = "decision") -> list[str]:
        """How `state` breaks the whole-pipeline bar against the original `base`, on the decisions' figures
        (back-off) or the verdict's (`on="verdict"`); empty when it holds."""
        if on == "verdict":
            return bar_violations(self.max_drop, self.bounds, base.accuracy, state.accuracy, state.fidelity)
        return bar_violations(self.max_drop, self.bounds, base.decision["accuracy"], state.decision["accuracy"],
                              state.decision["fidelity"])

    def bench(self, state: State) -> None:
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
        b_ = self.recipe.bench
        progress = (lambda label, f: self.progress(f"side by side: {label}", f)) if self.progress else None
        with quiet_torch():
            return measure_paired(make_runner(a, runtime_a, self.threads), make_runner(b, runtime_b, self.threads),
                                  a.example_inputs, pairs=PAIRS, block_time=max(b_.min_time / PAIRS, 1e-3),
                                  iterations=b_.iterations, warmup=b_.warmup, progress=progress)

    def pair_step(self, step: Step) -> None:
        """The step's before against its after, on every runtime both were timed on and the pass did not
        time itself (its own timing, which it decided on, is the one reported: `PassResult.timed`)."""
        for run in step.after.bench.runs:
            if _run(step.before, run["runtime"]) is not None and run["runtime"] not in step.paired:
                step.paired[run["runtime"]] = self.pair(step.before.model, run["runtime"], step.after.model,
                                                        run["runtime"])


def _config_dict(config: Any) -> dict:
    return {_toml_key(f.name): _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


# ---------------------------------------------------------------- the steps

@dataclass(frozen=True)
class Bar:
    """What a step may still lose: accuracy points left of the pipeline's budget (None: no accuracy bound)
    and the fidelity bounds against the original. A pass's `back_off` reads it."""

    accuracy_left_pt: float | None
    bounds: list


def _bar_left(ctx: _Context, current: State) -> Bar:
    first = ctx.states[0]
    left = None
    before, now = first.decision["accuracy"], current.decision["accuracy"]
    if ctx.max_drop is not None and now is not None and before is not None:
        left = max(0.0, ctx.max_drop - 100 * (before - now))
    return Bar(left, ctx.bounds)


class _BarBroken(Exception):
    """Internal: a step could not be brought within the bar (carries its attempts for the report)."""

    def __init__(self, message: str, hint: str, attempts: list[dict], state: State):
        super().__init__(message)
        self.message, self.hint, self.attempts, self.state = message, hint, attempts, state


def _run_step(ctx: _Context, current: State, step: Pass, config: Any, recovery: tuple[Pass, Any] | None) -> list[Step]:
    """Run one pass (and the pass that recovers from it, when the recipe has one), check the quality bar
    on the result, and while it breaks the bar run it again backed off, up to backoff-tries times.
    Returns the steps to time; none when the pass declined its own result."""
    asked, attempts = config, []
    timing = ctx.recipe.bench
    # a pass that decides for itself (quantize: which candidate meets the bar) decides on the decisions' data
    pass_ctx = PassContext(data=ctx.data, eval_data=ctx.splits.decide, threads=ctx.threads, min_time=timing.min_time,
                           iterations=timing.iterations, progress=ctx.progress, teacher=ctx.original,
                           data_flag="--data")
    for attempt in range(ctx.recipe.pipeline.backoff_tries + 1):
        ctx.log(f"{step.name}: {step.describe(config)}")
        try:
            result = step.run(current.model, config, pass_ctx)
        except StepFailed as e:  # the pass could not meet its own bar (quantize's tolerance, say)
            attempts.append({"attempt": attempt + 1, "setting": step.describe(config), "accuracy": None,
                             "fidelity": None, "violations": [e.message], "accepted": False})
            raise _BarBroken(f"{step.noun} cannot meet the bar: {e.message}", e.hint or step.hint, attempts,
                             current) from e
        if not result.kept:
            ctx.notes += [f"{step.name}: {note}" for note in result.notes]
            ctx.warnings += [f"{step.name}: {w}" for w in result.warnings]
            return []
        state = checked = ctx.evaluate(step.name, result.model)
        recovered = None
        if recovery is not None:
            ctx.log(f"{recovery[0].name}: {recovery[0].describe(recovery[1])}")
            recovered = recovery[0].run(result.model, recovery[1], pass_ctx)
            checked = ctx.evaluate(recovery[0].name, recovered.model)
        broken = ctx.violations(checked, ctx.states[0])
        attempts.append({"attempt": attempt + 1, "setting": step.describe(config),
                         "accuracy": checked.decision["accuracy"], "fidelity": checked.decision["fidelity"],
                         "violations": broken, "accepted": not broken,
                         **(step.attempt_details(result) if step.attempt_details else {})})
        if not broken:
            break
        ctx.log(f"{step.name}: {step.describe(config)} breaks the bar: {'; '.join(broken)}")
        milder = step.back_off(config, _bar_left(ctx, current), attempt) if step.back_off else None
        if milder is None or attempt == ctx.recipe.pipeline.backoff_tries:
            raise _BarBroken(f"{step.noun} breaks the quality bar even at {step.describe(config)}: "
                             f"{'; '.join(broken)}", step.hint, attempts, checked)
        config = milder
    # attempts are worth a record where there can be more than one
    steps = [Step(step.name, _config_dict(config), current, state, attempts if step.back_off else [], result.details,
                  list(result.notes), warnings=list(result.warnings), paired=dict(result.timed))]
    if len(attempts) > 1 and step.backoff_note:
        steps[0].notes.append(step.backoff_note(asked, config, result))
    if recovered is not None:
        steps.append(Step(recovery[0].name, _config_dict(recovery[1]), state, checked, [], recovered.details,
                          list(recovered.notes), warnings=list(recovered.warnings)))
    return steps


def _plan(recipe: Recipe) -> list[tuple[Pass, Any, tuple[Pass, Any] | None]]:
    """The recipe's steps in order as (pass, config as compress runs it, the pass recovering from it)."""
    plan = []
    for name in recipe.steps:
        step = registry.by_section(name)
        config = step.for_pipeline(recipe.config(name))
        if step.recovers and plan:
            plan[-1] = (plan[-1][0], plan[-1][1], (step, config))
        else:
            plan.append((step, config, None))
    return plan


def run_pipeline(model, recipe: Recipe, *, data=None, eval_data=None,
                 progress: Callable[[str, float], None] | None = None,
                 log: Callable[[str], None] | None = None, warnings: Sequence[str] = ()) -> CompressResult:
    """Run the recipe's steps on `model` in pipeline order; time every state; return the result.

    data: training / calibration data (`effkit.data.Data`), needed by fine-tuning, distillation and
    static quantization. eval_data: labelled data for accuracy (else fidelity only). The result's
    status is "failed" (with a message) when the bar could not be met; nothing is written here.
    warnings: the caller's own (a command's), listed first among the result's.
    """
    _check_recipe(model, recipe, data, eval_data)
    ctx = _Context(model, recipe, data, eval_data, progress, log)
    ctx.warnings += warnings
    origin = "the recipe's threads" if recipe.bench.threads else "the free cores; --threads N to change"
    ctx.log(f"compress {model.source}: {' -> '.join(recipe.steps)}; {plural(ctx.threads, 'thread')} ({origin})")
    original = ctx.evaluate("original", model)
    ctx.states.append(original)
    result = CompressResult(model.source, recipe, ctx.states, [], notes=ctx.notes,
                            data_source=data.source if data is not None else None,
                            eval_source=eval_data.source if eval_data is not None else None,
                            bar=ctx.bar.describe(), general_warnings=ctx.warnings, judged=ctx.judged)
    verdict, decisions = ctx.judged["verdict"], ctx.judged["decisions"]
    ctx.notes.append(f"the verdict and every figure reported: {verdict['source']}, all {verdict['samples']} samples; "
                     f"back-off decisions: {decisions['source']}, {decisions['samples']} samples")
    ctx.notes += [ctx.splits.note] if ctx.splits.note else []
    ctx.log(f"quality bar: {ctx.bar.describe()}, judged on {verdict['source']}")
    ctx.log("timing the original")
    ctx.bench(original)
    for step, config, recovery in _plan(recipe):
        current = ctx.states[-1]
        try:
            steps = _run_step(ctx, current, step, config, recovery)
        except _BarBroken as e:
            result.status, result.message, result.hint = "failed", e.message, e.hint
            result.notes.append(f"stopped: {e.message}")
            result.steps.append(Step(step.name, {}, current, e.state, e.attempts))
            return result
        for done in steps:
            ctx.log(f"timing {done.name}")
            ctx.bench(done.after)
            ctx.pair_step(done)
            ctx.states.append(done.after)
            result.steps.append(done)
    if len(ctx.states) > 1:
        runtime = _final_runtime(ctx.states[-1])
        result.same_runtime = ctx.pair(original.model, runtime, ctx.states[-1].model, runtime)
    broken = ctx.violations(ctx.states[-1], original, on="verdict")
    if broken:  # back-off met the bar on the decisions' data; the verdict's data may still say otherwise
        result.status, result.message = "failed", (f"the final model breaks the quality bar on {verdict['source']}: "
                                                   f"{'; '.join(broken)}")
        result.hint = (f"back-off kept the bar on {decisions['source']}; prune less (a smaller --prune), or loosen "
                       "--max-accuracy-drop / --tolerance")
    return result


def _check_recipe(model, recipe: Recipe, data, eval_data) -> None:
    """Refuse combinations that cannot work, before any work."""
    if recipe.distill is not None and recipe.prune is None:
        raise UsageError("distill needs a smaller student than the original",
                         "add --prune (the pruned model is the student, the original its teacher)")
    if recipe.distill is not None and data is None:
        raise UsageError("distill needs training data", "pass --data FILE")
    if recipe.pipeline.asks_accuracy and (eval_data is None or eval_data.labels is None):
        raise UsageError("--max-accuracy-drop needs labelled evaluation data", "pass --eval FILE with labels")
    if recipe.quantize is not None and (recipe.quantize.backend == "torch" or recipe.quantize.output_format in (".ts", ".pt2")):
        raise UsageError("compress ends in a verified ONNX export, and torch int8 models do not export to ONNX",
                         "use backend = \"onnxruntime\" or \"auto\" in [quantize], or effkit quantize for torch int8")
    if model.kind != "torch" and (recipe.prune is not None or recipe.distill is not None):
        raise UsageError("prune and distill need a torch model, not ONNX", "pass the PyTorch model")
    for d in (data, eval_data):
        if d is not None:
            d.check_against(model)
