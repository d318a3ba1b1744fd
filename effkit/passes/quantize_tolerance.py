"""Building and judging one int8 candidate, and mixed precision: keep in float the layers that buy the most
fidelity per unit of cost (`quantize_cost`) until a candidate meets the tolerance, and check, with the paired
timing's interval, that it is still not slower than the float model. `effkit.passes.quantize` runs it when
no candidate meets the tolerance (`tolerance_loop`), and on int8 candidates timed clearly faster than the
fastest that does (`mixed_search`)."""

from __future__ import annotations

import gc
import math
import time

from effkit.errors import InputError, StepFailed, UsageError
from effkit.judge import Judge, score, tolerance_failures
from effkit.passes import quantize_cost
from effkit.passes.quantize_candidates import Candidate, CandidateContext
from effkit.passes.quantize_choice import DECISION_MARGIN, paired_timing, runtime_of
from effkit.runners import native_runner, onnxruntime_message
from effkit.size import disk_bytes
from effkit.util import fmt_speedup, quiet_torch

HINT = ("loosen --tolerance or --max-accuracy-drop, keep layers in float with --exclude, or pass --calib with "
        "representative data")


def build(candidate: Candidate, judge: Judge, ctx: CandidateContext, exclude: list[str], label: str) -> bool:
    """Build `candidate` with `exclude` kept in float and judge it; False (with .error) when it fails."""
    candidate.error = None
    # the previous build's graphs and sessions can sit in reference cycles (FX graphs, ONNX Runtime's quantizer),
    # out of reach of reference counting: a BERT-base quantize once grew to 24 GB and the OOM killer stopped it
    gc.collect()
    started = time.perf_counter()
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
    candidate.perplexity, candidate.build_seconds = ppl, time.perf_counter() - started
    return True


def size_of(model) -> int:
    """Bytes on disk (a torch model is serialized as TorchScript to measure it)."""
    with quiet_torch():
        return disk_bytes(model)


def tolerance_loop(built: list[Candidate], judge: Judge, ctx: CandidateContext, unrepresentative: str | None,
                   baselines_ms: dict[str, float]) -> tuple[Candidate, list[str]]:
    """No candidate meets the tolerance: for each (fastest first), keep layers in float until it passes
    (`keep_in_float`). A candidate that passes is timed against the float model on its runtime in A/B pairs;
    one whose interval says slower is set aside for the next candidate (and chosen only when no other
    passes). Returns the candidate and notes on what was set aside; raises StepFailed when none can pass."""
    tried, slower, notes = [], [], []
    for c in sorted(built, key=lambda c: c.latency_ms):
        if not keep_in_float(c, judge, ctx, baselines_ms):
            tried.append(f"{c.label}: {'; '.join(c.failures)}")
            continue
        if c.against_float.speedup()["verdict"] != "slower":
            return c, notes
        slower.append(c)
        notes.append(f"{c.label} met the tolerance with {len(c.kept_float)} layer(s) in float but timed "
                     f"{fmt_speedup(c.against_float.speedup())} than the float model, so the next candidate was tried")
    if slower:  # every one that passes is slower than float: the least slow, which quantize then reports as such
        return max(slower, key=lambda c: c.against_float.speedup()["estimate"] or 0.0), notes
    raise StepFailed(("" if not unrepresentative else unrepresentative + ". ")
                     + "no int8 model meets the tolerance, even with sensitive layers kept in float: "
                     + " | ".join(tried) + "; nothing was written", HINT)


# The longest (estimated: one build and judging per layer) that the search for float layers may take on a
# candidate when another already meets the tolerance: on GPT-2 small (49 MatMuls, 10-25 s a build) one search
# is a quarter of an hour.
MIXED_SEARCH_BUDGET_S = 180.0


def mixed_search(built: list[Candidate], passing: list[Candidate], judge: Judge, ctx: CandidateContext,
                 baselines_ms: dict[str, float]) -> tuple[list[Candidate], list[str]]:
    """Some candidates meet the tolerance, but an int8 one that misses it was timed clearly faster than the
    fastest of them (its interleaved median by more than DECISION_MARGIN): keep layers in float in the
    fastest two such (`keep_in_float`). Returns those that then pass and are not slower than the float
    model, to compete with `passing`, and a note on each one tried; the others are left all-int8."""
    fastest = passing[0]
    faster = sorted((c for c in built if c.failures and c.method not in ("fp32", "bf16")
                     and c.latency_ms * (1 + DECISION_MARGIN) < fastest.latency_ms), key=lambda c: c.latency_ms)
    rescued, notes = [], []
    for c in faster[:2]:  # each search builds the candidate once per layer: two bound the cost
        all_int8 = _snapshot(c)
        why = (f"timed {fastest.latency_ms / c.latency_ms:.2f}x faster than {fastest.label}, the fastest that met "
               f"the tolerance, but {'; '.join(c.failures)}")
        cost = (c.build_seconds or 0.0) * len(c.layers)
        if cost > MIXED_SEARCH_BUDGET_S:
            notes.append(f"mixed precision not tried on {c.label} ({why}): its {len(c.layers)} layers at "
                         f"{c.build_seconds:.0f} s a build would take about {cost / 60:.0f} min; keep layers in float "
                         "with --exclude, or loosen --tolerance")
            continue
        tried = f"mixed precision tried on {c.label} ({why})"
        if not keep_in_float(c, judge, ctx, baselines_ms):
            notes.append(f"{tried}: no set of layers in float that leaves some int8 met it")
            continue
        share = c.kept_cost["macs_share"]
        if c.against_float.speedup()["verdict"] == "slower":
            notes.append(f"{tried}: met it with {len(c.kept_float)} layer(s) in float ({100 * share:.0f}% of "
                         f"its MACs) but timed {fmt_speedup(c.against_float.speedup())} than the float model")
            _restore(c, all_int8)
            continue
        notes.append(f"{tried}: met it with {len(c.kept_float)} layer(s) in float ({100 * share:.0f}% of its "
                     "MACs), and competed with the candidates that met it")
        rescued.append(c)
    return rescued, notes


def keep_in_float(c: Candidate, judge: Judge, ctx: CandidateContext, baselines_ms: dict[str, float]) -> bool:
    """Keep the layers of `c` that buy the most fidelity per unit of cost in float (`_keep_sensitive_in_float`)
    until it meets the tolerance, and time it against the float model in A/B pairs (c.against_float), its
    latency put on the scale of the other candidates. False (c left all-int8) when no such set leaves a
    layer in int8."""
    all_int8 = _snapshot(c)
    found = _keep_sensitive_in_float(c, judge, ctx)
    if found is None:
        _restore(c, all_int8)
        return False
    c.kept_float, layers, estimate = found
    c.size_bytes = size_of(c.model)
    c.against_float = paired_timing(ctx, ctx.float_model(), runtime_of(c.model), c.model, runtime_of(c.model))
    timing = c.against_float.speedup()
    reference = baselines_ms.get(f"{runtime_of(c.model)} fp32")
    # on the scale of the other candidates: the float baseline of their interleaved run over the paired speedup
    c.latency_ms = reference / timing["estimate"] if reference and timing["estimate"] else all_int8[1]
    c.kept_cost = {"size_bytes": {"all_int8": all_int8[2], "with_float_layers": c.size_bytes},
                   "latency_ratio": c.latency_ms / all_int8[1], "against_float": timing,
                   "macs_share": sum(layer["macs_share"] for layer in layers), "macs_estimate": estimate,
                   "layers": layers}
    return True


def _snapshot(c: Candidate) -> tuple:
    return c.model, c.latency_ms, c.size_bytes, c.fidelity, c.accuracy, c.perplexity, c.failures


def _restore(c: Candidate, all_int8: tuple) -> None:
    c.model, c.latency_ms, c.size_bytes, c.fidelity, c.accuracy, c.perplexity, c.failures = all_int8
    c.error, c.kept_float, c.kept_cost, c.against_float = None, [], None, None


def _keep_sensitive_in_float(c: Candidate, judge: Judge,
                             ctx: CandidateContext) -> tuple[list[str], list[dict], str] | None:
    """The fewest layers of `c`, in `quantize_cost.rank` order (fidelity bought per share of the MACs; a
    tenth at a time), that, kept in float, make it meet the tolerance, with `c` built that way: (their
    names, per layer its sensitivity and MACs share, how the MACs were estimated); None when no such set
    leaves a layer in int8. Sensitivity: how much the tolerance's first missed metric improves with only
    that layer in float."""
    primary = next(t for t in ctx.config.thresholds if tolerance_failures([t], c.fidelity, c.accuracy, c.perplexity))
    base = score(primary, c.fidelity, c.accuracy, c.perplexity)
    free = [layer["name"] for layer in c.layers if layer["name"] not in c.excluded]
    gains, alone_passes = {}, []
    for i, name in enumerate(free):
        if ctx.progress:
            ctx.progress(f"layer sensitivity: {c.label}", i / max(1, len(free)))
        if build(c, judge, ctx, c.excluded + [name], "calibrating"):
            gains[name] = score(primary, c.fidelity, c.accuracy, c.perplexity) - base
            if not c.failures:
                alone_passes.append(gains[name])
    costs, estimate = quantize_cost.shares(c, ctx, [layer["name"] for layer in c.layers])  # of all its layers
    ranked = quantize_cost.rank(gains, costs, min(alone_passes) if alone_passes else None)
    step = max(1, math.ceil(len(ranked) / 10))
    for k in range(step, len(ranked), step):  # at least one layer stays int8, or it is no int8 model
        if build(c, judge, ctx, c.excluded + ranked[:k], "calibrating") and not c.failures:
            kept = _trim(c, judge, ctx, ranked[:k], ranked[k - step:k] if step > 1 else [])
            layers = [{"layer": shown, "metric": primary.metric, "sensitivity": gains[n], "macs_share": costs[n]}
                      for n, shown in zip(kept, c.display(kept))]
            return kept, layers, estimate
    return None


def _trim(c: Candidate, judge: Judge, ctx: CandidateContext, kept: list[str], last_step: list[str]) -> list[str]:
    """`kept` (which meets the tolerance) without the layers of the last step it does not need: the search adds
    a tenth of the layers at a time, and the least efficient of them (tried first) may buy nothing. One
    build per layer of the step, and one more to leave `c` built with the result."""
    built_with = kept
    for name in reversed(last_step):
        trial = [n for n in kept if n != name]
        built_with = trial
        if build(c, judge, ctx, c.excluded + trial, "calibrating") and not c.failures:
            kept = trial
    if built_with != kept:
        build(c, judge, ctx, c.excluded + kept, "calibrating")
    return kept
