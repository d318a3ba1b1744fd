"""Building and judging one int8 candidate, and the tolerance loop: when no candidate meets the tolerance,
keep its most sensitive layers in float until one does, and check, with the paired timing's interval,
that it is still not slower than the float model (`effkit.passes.quantize` runs both)."""

from __future__ import annotations

import math

from effkit.errors import InputError, StepFailed, UsageError
from effkit.judge import Judge, score, tolerance_failures
from effkit.passes.quantize_candidates import Candidate, CandidateContext
from effkit.passes.quantize_choice import paired_timing, runtime_of
from effkit.runners import native_runner, onnxruntime_message
from effkit.size import disk_bytes
from effkit.util import fmt_speedup, quiet_torch

HINT = ("loosen --tolerance or --max-accuracy-drop, keep layers in float with --exclude, or pass --calib with "
        "representative data")


def build(candidate: Candidate, judge: Judge, ctx: CandidateContext, exclude: list[str], label: str) -> bool:
    """Build `candidate` with `exclude` kept in float and judge it; False (with .error) when it fails."""
    candidate.error = None
    try:
        with quiet_torch():
            model = candidate.build(exclude, ctx.step(label))
            runner = native_runner(model, ctx.threads)
            fid, acc, ppl = judge.fidelity(runner), judge.accuracy_change(runner), judge.perplexity_change(runner)
            failures = tolerance_failures(ctx.config.thresholds, fid, acc, ppl)
    except (UsageError, InputError):
        raise
    except Exception as e:
        candidate.error = onnxruntime_message(e)  # ONNX Runtime's says which input has which wrong size
        return False
    candidate.model, candidate.fidelity, candidate.accuracy, candidate.failures = model, fid, acc, failures
    candidate.perplexity = ppl
    return True


def size_of(model) -> int:
    """Bytes on disk (a torch model is serialized as TorchScript to measure it)."""
    with quiet_torch():
        return disk_bytes(model)


def tolerance_loop(built: list[Candidate], judge: Judge, ctx: CandidateContext, unrepresentative: str | None,
                   baselines_ms: dict[str, float]) -> tuple[Candidate, list[str]]:
    """No candidate meets the tolerance: for each (fastest first), rank layers by sensitivity (the metric with
    only that layer kept in float) and keep the worst in float, a few at a time, until it passes. A candidate
    that passes is timed against the float model on its runtime in A/B pairs; one whose interval says slower
    is set aside for the next candidate (and chosen only when no other passes). Returns the candidate and
    notes on what was set aside; raises StepFailed when none can pass."""
    tried, slower, notes = [], [], []
    for c in sorted(built, key=lambda c: c.latency_ms):
        all_int8 = (c.model, c.latency_ms, c.size_bytes, c.fidelity, c.accuracy, c.perplexity, c.failures)
        kept = _keep_sensitive_in_float(c, judge, ctx)
        if kept is None:
            c.model, c.latency_ms, c.size_bytes, c.fidelity, c.accuracy, c.perplexity, c.failures = all_int8
            c.error = None
            tried.append(f"{c.label}: {'; '.join(c.failures)}")
            continue
        c.kept_float = kept
        c.size_bytes = size_of(c.model)
        c.against_float = paired_timing(ctx, ctx.float_model(), runtime_of(c.model), c.model, runtime_of(c.model))
        timing = c.against_float.speedup()
        reference = baselines_ms.get(f"{runtime_of(c.model)} fp32")
        # on the scale of the other candidates: the float baseline of their interleaved run over the paired speedup
        c.latency_ms = reference / timing["estimate"] if reference and timing["estimate"] else all_int8[1]
        c.kept_cost = {"size_bytes": {"all_int8": all_int8[2], "with_float_layers": c.size_bytes},
                       "latency_ratio": c.latency_ms / all_int8[1], "against_float": timing}
        if timing["verdict"] != "slower":
            return c, notes
        slower.append(c)
        notes.append(f"{c.label} met the tolerance with {len(kept)} layer(s) in float but timed "
                     f"{fmt_speedup(timing)} than the float model, so the next candidate was tried")
    if slower:  # every one that passes is slower than float: the least slow, which quantize then reports as such
        return max(slower, key=lambda c: c.against_float.speedup()["estimate"] or 0.0), notes
    raise StepFailed(("" if not unrepresentative else unrepresentative + ". ")
                     + "no int8 model meets the tolerance, even with sensitive layers kept in float: "
                     + " | ".join(tried) + "; nothing was written", HINT)


def _keep_sensitive_in_float(c: Candidate, judge: Judge, ctx: CandidateContext) -> list[str] | None:
    """The fewest of `c`'s most sensitive layers (a tenth at a time) that, kept in float, make it meet the
    tolerance, with `c` built that way; None when no such set leaves a layer in int8."""
    primary = next(t for t in ctx.config.thresholds if tolerance_failures([t], c.fidelity, c.accuracy, c.perplexity))
    free = [layer["name"] for layer in c.layers if layer["name"] not in c.excluded]
    scores = {}
    for i, name in enumerate(free):
        if ctx.progress:
            ctx.progress(f"layer sensitivity: {c.label}", i / max(1, len(free)))
        if build(c, judge, ctx, c.excluded + [name], "calibrating"):
            scores[name] = score(primary, c.fidelity, c.accuracy, c.perplexity)
    ranked = sorted(scores, key=lambda n: -scores[n])
    step = max(1, math.ceil(len(ranked) / 10))
    for k in range(step, len(ranked), step):  # at least one layer stays int8, or it is no int8 model
        if build(c, judge, ctx, c.excluded + ranked[:k], "calibrating") and not c.failures:
            return ranked[:k]
    return None
