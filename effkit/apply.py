"""One step applied on its own, as `effkit prune`, `quantize` and `distill` apply it: run the pass, measure
its result against the original side by side on the judging data, hold it to the quality bar, decide
whether it is slower, and save it (with its verified ONNX copy) only when it passed. compress applies
its steps through `effkit.pipeline` instead; both judge with `effkit.judge`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from effkit.errors import StepFailed
from effkit.judge import QualityBar
from effkit.outcome import Outcome, measure_before_after, speed_verdict
from effkit.save import save_with_onnx
from effkit.util import quiet_torch


class StepRefused(StepFailed):
    """The step ran but its result was not written: it misses the quality bar (`outcome.status` is
    "failed", and the reports say why), or it is slower than the original and slower results were not
    allowed. `outcome` holds everything measured, so the caller can still show it."""

    def __init__(self, message: str, hint: str | None, outcome: Outcome):
        super().__init__(message, hint)
        self.outcome = outcome


def apply_step(step: str, original: Any, run: Callable[[], Any], *, bar: QualityBar,
               output: str | Path | Callable[[Any], Path], threads: int, runtimes: Sequence[str] | None = None,
               warmup: int = 10, iterations: int | None = None, min_time: float = 1.0, eval_data=None,
               judge_data=None, text=None, export_onnx: str | Path | None = None, force: bool = False,
               allow_slower: bool | None = None, what: str = "the result", hint: str | None = None,
               notes: Callable[[Outcome], list[str]] | None = None,
               progress: Callable[[str, float], None] | None = None) -> Outcome:
    """Apply one step and return its before/after record, with `outputs` the files written.

    run: runs the pass and returns its `effkit.passes.PassResult` (whose details and notes join the
    record). original: the model the result is measured against, on `runtimes` (default: the result's
    own runtime) with `threads` and the timing settings; fidelity on `judge_data`, else `eval_data`,
    else random inputs (`effkit.outcome.measure_before_after`), accuracy on labelled `eval_data`,
    perplexity on `text` (a language model's windows of token ids).
    notes: the step's notes made from that measurement (distill: agreement on its validation data).
    output: where the result goes, or a function of the result that says where (quantize's suffix
    is the chosen backend's), called before the measurement so that it can check the path first.
    allow_slower: None, never refused for speed; else a result measurably slower than the original
    (`effkit.outcome.speed_verdict`) is refused unless True.

    Raises StepRefused (exit 1, nothing written) when the result misses `bar`, then when it is
    slower; `what` names the result in its message ("the int8 model"), `hint` says what to do about
    a missed bar.
    """
    result = run()
    changed = result.model
    target = Path(output(changed) if callable(output) else output)
    runtimes = list(runtimes or ["torch" if changed.kind == "torch" else "onnxruntime"])
    with quiet_torch():  # sizing a torch model saves it with torch.export, which logs shape notes
        outcome = measure_before_after(step, original, changed, runtimes=runtimes, threads=threads, warmup=warmup,
                                       iterations=iterations, min_time=min_time, eval_data=eval_data,
                                       progress=progress, judge_data=judge_data, text=text, timed=result.timed)
    outcome.details, outcome.notes = result.details, list(result.notes)
    outcome.general_warnings = list(dict.fromkeys(outcome.general_warnings + list(result.warnings)))
    accuracy = result.details.get("accuracy")
    if isinstance(accuracy, dict) and "recovered" in accuracy and outcome.accuracy:
        # fine-tuned after the change (prune): the accuracy it recovered from, on the same data
        outcome.accuracy["right_after_pruning"] = accuracy["pruned"]
    if "perplexity_right_after_pruning" in result.details and outcome.perplexity:
        outcome.perplexity["right_after_pruning"] = result.details["perplexity_right_after_pruning"]
    if notes is not None:
        outcome.notes += notes(outcome)
    slowdown = speed_verdict(outcome, runtimes[0], allow_slower) if allow_slower is not None else None
    outcome.hold_to(bar)
    if outcome.status != "ok":
        raise StepRefused(f"{what} misses the quality bar ({outcome.bar}): {outcome.failure}; it was not written",
                          hint, outcome)
    if slowdown and not allow_slower:
        raise StepRefused(f"{what} is slower than the original on {runtimes[0]} ({slowdown})",
                          "nothing was written; pass --allow-slower to write it anyway", outcome)
    if progress is not None:
        progress(f"saving {target}", 0.0)
    with quiet_torch():
        outcome.outputs = [str(p) for p in save_with_onnx(changed, target, export_onnx, force)]
    if progress is not None:
        progress(f"saving {target}", 1.0)
    return outcome
