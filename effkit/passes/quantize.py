"""int8 quantization: dynamic, static (calibrated) or weight-only, on ONNX Runtime or torch.

`quantize(model, QuantizeConfig(...))` builds every candidate that applies (backend x method),
measures each on the same held-out inputs (fidelity) and the same timing loop (interleaved, so a
busy machine slows all of them alike), and keeps the fastest that meets the tolerance. When none
does, it measures per-layer sensitivity and keeps in float the layers that buy the most fidelity per
share of the MACs, a few at a time, until one passes; if none can, it fails (StepFailed, exit 1). The
same search runs on int8 candidates that miss the tolerance but were timed clearly faster than every
one that meets it, and those that then pass compete with them. Nothing is assumed about speed:
ONNX Runtime's dynamic int8 of convolutions, for one, is much slower than fp32, and only a measurement tells.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from effkit.benchmark import time_calls
from effkit.env import cpu_info, int8_outlook
from effkit.errors import InputError, StepFailed, UsageError
from effkit.fidelity import FIDELITY_SAMPLES
from effkit.judge import Judge, check_tolerance, held_out_batches, judging_split, random_inputs_warning
from effkit.passes import PassContext, PassResult
from effkit.passes.onnx_preprocess import with_initializers_as_inputs
from effkit.passes.quantize_calib import calibration_batches
from effkit.passes.quantize_candidates import SUFFIXES, Candidate, CandidateContext, candidates_for, ort_model
from effkit.passes.quantize_choice import choose, paired_timing, runtime_of
from effkit.passes.quantize_cost import kept_layers
from effkit.passes.quantize_ort import matching
from effkit.passes.quantize_tolerance import build, mixed_search, size_of, tolerance_loop
from effkit.runners import native_runner
from effkit.specs import Threshold, check_numbers, parse_threshold

METHODS = ("auto", "dynamic", "static", "smoothquant", "weight-only", "bf16")
BACKENDS = ("auto", "onnxruntime", "torch")
CALIB_METHODS = ("minmax", "entropy", "percentile")
INT8_TYPES = ("u8", "s8")
OUTPUT_FORMATS = (".onnx", ".ts", ".pt2")
DEFAULT_TOLERANCE = "cosine>=0.99"
DEFAULT_CALIB_SAMPLES = 128
WEIGHT_BITS = (4, 8)
WEIGHT_ALGORITHMS = ("rtn", "hqq", "gptq")
DEFAULT_GROUP_SIZE = 128
DEFAULT_CANDIDATE_TIME = 0.5  # seconds of timed calls per candidate (split over interleaved rounds)


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize. `method="auto"` tries dynamic, and static and SmoothQuant when calibration data
    is given; `alpha` is SmoothQuant's migration strength (None: searched per LayerNorm);
    `backend="auto"` tries ONNX Runtime and (for torch models) torch. `tolerance` defaults to
    cosine>=0.99 on held-out inputs. `output_format` (".onnx", ".ts" or ".pt2": torchao's) limits the
    candidates to those that produce it."""

    method: str = "auto"
    backend: str = "auto"
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    calib_method: str = "minmax"
    per_channel: bool | None = None  # None: per-channel, and for dynamic int8 per-tensor measured too
    activation_type: str = "u8"
    weight_type: str = "s8"
    exclude: tuple[str, ...] = ()
    tolerance: tuple[Threshold, ...] = ()
    allow_slower: bool = False
    random_calibration: bool = False
    output_format: str | None = None
    fidelity_samples: int = FIDELITY_SAMPLES  # random input batches when there is no real data (as the record)
    bits: int | None = None  # weight-only: 4 or 8-bit blockwise weights (MatMulNBits); None: int8 per channel
    group_size: int = DEFAULT_GROUP_SIZE  # weights per scale along the input axis, with `bits`
    weight_algorithm: str = "rtn"  # how `bits` weights are rounded: rtn (round to nearest) or hqq
    initializer_inputs: bool = False  # list the int8 graph's weights as inputs too (IR 3 style)
    alpha: float | None = None

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.bits is not None:
            if self.bits not in WEIGHT_BITS:
                raise UsageError(f"--bits {self.bits} is not supported", "use --bits 4 or --bits 8")
            if self.method not in ("auto", "weight-only"):
                raise UsageError(f"--bits applies to weight-only quantization, not --method {self.method}",
                                 "use --method weight-only")
        if self.group_size < 16 or self.group_size & (self.group_size - 1):
            raise UsageError(f"--group-size {self.group_size} is not a power of two of at least 16",
                             "e.g. --group-size 32 or 128")
        _choice("--weight-algorithm", self.weight_algorithm, WEIGHT_ALGORITHMS)
        if self.weight_algorithm == "hqq" and self.bits == 8:
            raise UsageError("HQQ writes 4-bit weights only (ONNX Runtime's CPU kernel takes no 8-bit HQQ)",
                             "use --bits 4, or --weight-algorithm rtn")
        if self.weight_algorithm == "gptq" and (self.bits == 8 or (self.bits is None and self.method == "weight-only")):
            raise UsageError("GPTQ writes 4-bit weights only (ONNX Runtime's GPTQ)", "use --bits 4")
        if self.weight_algorithm == "gptq" and self.backend == "torch":
            raise UsageError("GPTQ runs on the ONNX Runtime path", "use --backend onnxruntime or auto")
        _choice("--method", self.method, METHODS)
        _choice("--backend", self.backend, BACKENDS)
        _choice("--calib-method", self.calib_method, CALIB_METHODS)
        _choice("--activation-type", self.activation_type, INT8_TYPES)
        _choice("--weight-type", self.weight_type, INT8_TYPES)
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha {self.alpha:g} is outside [0, 1]",
                             "pass a migration strength such as 0.5, or leave it out to search it per layer")
        if self.alpha is not None and self.method not in ("auto", "smoothquant"):
            raise UsageError(f"--alpha applies to SmoothQuant, not --method {self.method}",
                             "use --method smoothquant (or auto with --calib)")
        if self.calib_samples < 1:
            raise UsageError("--calib-samples must be at least 1")
        if self.output_format is not None and self.output_format not in OUTPUT_FORMATS:
            raise UsageError(f"int8 models cannot be written as {self.output_format}",
                             "write .onnx (ONNX Runtime), .ts (TorchScript, torch.ao) or .pt2 (torchao), "
                             "or give no suffix")
        if self.output_format and self.backend != "auto" and self.output_format not in SUFFIXES[self.backend]:
            raise UsageError(f"--backend {self.backend} writes {' or '.join(SUFFIXES[self.backend])}, "
                             f"not {self.output_format}",
                             f"name the output {SUFFIXES[self.backend][0]} or drop --backend")
        if self.initializer_inputs and (self.backend == "torch" or self.output_format == ".ts"):
            raise UsageError("--initializer-inputs applies to ONNX outputs", "write OUT.onnx, or drop the flag")
        if self.random_calibration and self.method in ("dynamic", "weight-only", "bf16"):
            raise UsageError(f"--calib random applies to static quantization, not --method {self.method}")
        for pattern in self.exclude:
            if not pattern.strip():
                raise UsageError("--exclude needs a layer name or pattern, e.g. --exclude 'encoder.0.*'")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        parsed = tuple(parse_threshold(t) if isinstance(t, str) else t for t in self.tolerance)
        for t in parsed:
            check_tolerance(t)
        object.__setattr__(self, "tolerance", parsed)

    @property
    def thresholds(self) -> tuple[Threshold, ...]:
        return self.tolerance or (parse_threshold(DEFAULT_TOLERANCE),)


def check_calibration(config: QuantizeConfig, calib) -> None:
    """GPTQ rounds weights against real inputs: without calibration data it is a usage error."""
    if config.weight_algorithm == "gptq" and calib is None:
        raise UsageError("--weight-algorithm gptq needs calibration data",
                         "pass --calib DATA (text for a language model), or use --weight-algorithm rtn or hqq")


def _choice(option: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise UsageError(f"unknown {option} {value!r}", f"use one of {', '.join(allowed)}")


# ---------------------------------------------------------------- measuring

def _judge(ctx: CandidateContext, judged, text=None) -> tuple[Judge, str]:
    """The judge of every candidate, and what it judges on: the original's outputs on data no candidate
    was calibrated on (`effkit.judge.judging_split`: --eval, else a held-out part of --calib, else fresh
    inputs), batched as the before/after record batches them, so the verdict is made on the figures
    reported. Random normal inputs are far from what a trained model sees (a statically calibrated model
    clips them and looks broken), so they are the last resort. A language model's perplexity is
    judged on `text` (windows of token ids) when given."""
    inputs, source = held_out_batches(ctx.model.example_inputs, judged, ctx.config.fidelity_samples)
    return Judge(native_runner(ctx.model, ctx.threads), inputs, ctx.eval_data, text), source


def time_interleaved(calls: dict[str, Callable[[], Any]], *, seconds: float, iterations: int | None,
                     rounds: int = 3) -> dict[str, float]:
    """Median latency (ms) of each call, timed in interleaved rounds so that load on a shared
    machine lands on every call alike."""
    samples: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(rounds):
        for key, call in calls.items():
            samples[key] += time_calls(call, warmup=2 if r == 0 else 1, iterations=iterations,
                                       min_time=seconds / rounds)
    return {k: float(np.median(v)) for k, v in samples.items()}


def _time(ctx: CandidateContext, models: dict[str, Any]) -> dict[str, float]:
    calls = {}
    for key, m in models.items():
        runtime = "torch" if key == "torch fp32" or (m.kind == "torch" and key != "onnxruntime fp32") else "onnxruntime"
        calls[key] = ctx.timing_runner(m, runtime).bind(m.example_inputs)
    return time_interleaved(calls, seconds=ctx.candidate_time, iterations=ctx.candidate_iterations)


def _timed_on(ctx: CandidateContext) -> str:
    """What one timed call of the candidates is, in words."""
    if ctx.decode:
        return (f"one decode step (a new token after a {ctx.prompt_len}-token prompt from the example inputs, "
                "with its KV cache) on ONNX Runtime: the time per generated token")
    return f"a forward pass on the example inputs ({ctx.model.describe_inputs()})"


# ---------------------------------------------------------------- the pass

def quantize(model, config: QuantizeConfig, *, calib=None, eval_data=None, text=None,
             progress: Callable[[str, float], None] | None = None, threads: int | None = None,
             candidate_time: float = DEFAULT_CANDIDATE_TIME, candidate_iterations: int | None = None,
             data_flag: str = "--calib"):
    """Quantize `model` to int8 as `config` says; return a PassResult (the original is not modified).

    `calib` and `eval_data` are `effkit.data.Data`, `text` a language model's windows of token ids to
    measure perplexity on (`effkit.data.load_text_stream`); `progress(label, fraction)` drives a progress
    bar. Candidates are timed interleaved on `threads`, `candidate_time` seconds each (or exactly
    `candidate_iterations` calls per round). `data_flag`: the option hints name for calibration data. details: the chosen backend and method, every candidate measured (latency, size, fidelity,
    why rejected), fp32 baselines, layers kept in float, the CPU's int8 outlook, calibration.
    """
    if threads is not None and threads < 1:
        raise UsageError("--threads must be at least 1")
    if not 0 <= candidate_time < math.inf or (candidate_iterations is not None and candidate_iterations < 1):
        raise UsageError("candidate timing needs a finite time >= 0 and iterations >= 1")  # inf: timed forever
    notes: list[str] = []
    warnings: list[str] = []
    cpu = cpu_info()
    outlook = int8_outlook(cpu["isa"])
    if outlook:
        warnings.append(outlook)
    if any(t.metric == "accuracy" for t in config.thresholds) and (eval_data is None or eval_data.labels is None):
        raise UsageError("an accuracy tolerance needs labelled data", "pass --eval DATA with inputs and labels")
    if any(t.metric in ("perplexity", "ppl") for t in config.thresholds) and text is None:
        raise UsageError("a perplexity tolerance needs text to measure it on", "pass --eval-text FILE (.txt or .jsonl)")
    check_calibration(config, calib)
    if eval_data is not None:
        eval_data.check_against(model)
    fit, judged = judging_split(calib, eval_data)
    judged = text if judged is None else judged  # real text beats random token ids for the fidelity too
    batches = calibration_batches(model, config, fit)
    if calib is not None and batches is None:
        notes.append(f"calibration data is not used by --method {config.method}")
    unrepresentative = random_inputs_warning(model, calib, eval_data if eval_data is not None else text, data_flag)
    if unrepresentative:
        warnings.append(unrepresentative)
    if config.random_calibration and batches:
        warnings.append("calibrated on random inputs: activation ranges may not match real data, so accuracy on "
                     f"real inputs may be worse than the fidelity shown; pass {data_flag} DATA for a trustworthy result")
    ctx = CandidateContext(model, config, batches, eval_data, progress, threads, candidate_time, candidate_iterations)
    candidates = candidates_for(ctx)
    _resolve_excludes(config.exclude, candidates)
    judge, judged_on = _judge(ctx, judged, text)
    for c in candidates:
        if c.error is None:
            build(c, judge, ctx, c.excluded, f"quantizing: {c.label}")
    warnings += ctx.warnings
    built = [c for c in candidates if c.model is not None]
    if not built:
        # nothing built, and the ONNX candidates could not take the data's length: the data is what to fix
        if ctx.refused and any(c.error == ctx.refused for c in candidates):
            raise InputError(ctx.refused, "give data of the example inputs' length")
        by_error: dict[str | None, list[str]] = {}  # one reason once, with every candidate it stopped
        for c in candidates:
            by_error.setdefault(c.error, []).append(c.label)
        raise StepFailed("no int8 candidate could be built: " + "; ".join(f"{', '.join(labels)}: {error}"
                                                                          for error, labels in by_error.items()))
    baselines = {"torch fp32": model} if model.kind == "torch" and not ctx.decode else {}
    if any(c.backend == "onnxruntime" for c in built):
        baselines["onnxruntime fp32"] = ctx.float_model()
    timings = _time(ctx, {**baselines, **{c.label: c.model for c in built}})
    for c in built:
        c.latency_ms = timings[c.label]
        c.size_bytes = size_of(c.model)
    passing = sorted((c for c in built if not c.failures), key=lambda c: c.latency_ms)
    decision = None
    if any(c.method != "fp32" for c in passing):  # the fused fp32 graph competes with passing candidates only
        # an int8 candidate timed clearly faster than all of these may pass with a few layers in float
        rescued, tried = mixed_search(built, passing, judge, ctx, {k: timings[k] for k in baselines})
        notes += tried
        chosen, decision = choose(sorted(passing + rescued, key=lambda c: c.latency_ms), ctx, model)
    else:  # ... and has no layers to keep in float
        chosen, set_aside = tolerance_loop([c for c in built if c.method != "fp32"], judge, ctx, unrepresentative,
                                           {k: timings[k] for k in baselines})
        notes += set_aside
    if decision and decision["tied"]:
        notes.append(f"{' and '.join(decision['tied'])} are tied within timing noise (paired 95% intervals); "
                     f"{chosen.label} was chosen by the stable rule (fewer float layers, then smaller, then the "
                     "original's runtime)")
    if config.initializer_inputs and chosen.backend == "onnxruntime":
        chosen.model = ort_model(ctx, with_initializers_as_inputs(chosen.model.onnx_path))
    original_size = size_of(model)
    # slower only when the paired interval says so; worded by who acts on it: compress (run) or the command
    against_float = chosen.against_float or paired_timing(ctx, ctx.float_model(), runtime_of(chosen.model),
                                                          chosen.model, runtime_of(chosen.model))
    slower = against_float.speedup()["verdict"] == "slower"
    if chosen.kept_float:
        notes.append(f"kept {len(chosen.kept_float)} sensitive layer(s) in float to meet the tolerance: "
                     + ", ".join(kept_layers(chosen.kept_cost)))
    notes.extend(ctx.preprocess_notes + ctx.notes)
    if ctx.decode:  # the before/after speed is per generated token, not per forward pass: every report says so
        notes.append(f"speed timed on {_timed_on(ctx)}")
    details = {
        "backend": chosen.backend,
        "method": chosen.method,
        "label": chosen.label,
        "tolerance": [t.text for t in config.thresholds],
        "timed_on": _timed_on(ctx),  # what one timed call is: a decode step for a causal LM with its KV cache
        "judged_on": {"source": judged_on, "batches": len(judge.inputs),
                      "rows": int(sum(len(b[0]) if b and getattr(b[0], "ndim", 0) else 1 for b in judge.inputs))},
        "excluded": chosen.display(chosen.excluded),
        "kept_in_float": chosen.display(chosen.kept_float),
        "kept_cost": chosen.kept_cost,
        "slower_than_original": slower,
        "against_float": against_float.speedup(),  # the chosen int8 model against fp32 on its runtime, paired
        "decision": decision,  # how the fastest candidate was told apart from those near it (None: one passed)
        "baselines_ms": {k: timings[k] for k in baselines},
        "original_size_bytes": original_size,
        "candidates": [dict(c.summary(), status=_status(c, chosen)) for c in candidates],
        "cpu": cpu,
        "int8_outlook": outlook,
        "calibration": None if not batches else {
            "source": "random" if fit is None else fit.source, "samples": int(sum(len(b[0]) for b in batches)),
            "method": config.calib_method, "activation_type": config.activation_type,
            "weight_type": config.weight_type},
        "preprocessing": ctx.preprocess_notes,
        "smoothing": ctx.smoothing.get(chosen.backend) if chosen.method == "smoothquant" else None,
        "ort_fusions": ctx.fusions,  # ONNX Runtime's transformer fusions: the ops fused, or why skipped
    }
    return PassResult(model=chosen.model, details=details, notes=notes, warnings=warnings,
                      timed={runtime_of(chosen.model): against_float})


def run(model, config: QuantizeConfig, ctx: PassContext) -> PassResult:
    """The pass interface: `quantize` with the context's calibration and evaluation data. An int8 model
    slower than its input is declined (kept=False) unless `allow_slower`."""
    result = quantize(model, config, calib=ctx.data, eval_data=ctx.eval_data, progress=ctx.progress,
                      threads=ctx.threads, candidate_iterations=ctx.iterations,
                      candidate_time=DEFAULT_CANDIDATE_TIME if ctx.min_time is None else ctx.min_time,
                      data_flag=ctx.data_flag)
    if result.details.get("slower_than_original"):
        if not config.allow_slower:
            return PassResult(model, result.details, [
                f"the int8 model ({result.details.get('label')}) was slower than its float input, so the float "
                "model was kept; allow-slower = true in [quantize] keeps it"], kept=False, warnings=result.warnings)
        result.notes.insert(0, f"the int8 model ({result.details.get('label')}) is SLOWER than its float input "
                               "(kept: allow-slower)")
    return result


def setting(config: QuantizeConfig) -> str:
    """The tolerance a quantize config is held to, in words."""
    return f"tolerance {_texts(config.tolerance)}" if config.tolerance else "as configured"


def for_pipeline(config: QuantizeConfig) -> QuantizeConfig:
    """compress ends in a verified ONNX export, and only ONNX Runtime int8 exports verifiably."""
    return dataclasses.replace(config, output_format=".onnx") if config.output_format is None else config


def back_off(config: QuantizeConfig, bar, attempt: int) -> QuantizeConfig | None:
    """Quantize again with the pipeline's bar as quantize's own tolerance, which it meets by keeping
    layers in float. Quantize measures against its input, so the accuracy bound is the budget the
    earlier steps left, halved with every further attempt; fidelity bounds tighten likewise (see
    `_tightened`). None when there is no bar to pass on."""
    tolerance = []
    if bar.accuracy_left_pt is not None:
        tolerance.append(f"accuracy:-{bar.accuracy_left_pt / 2 ** attempt:.3g}pt")
    tolerance += [_tightened(bound, attempt) for bound in bar.bounds]
    return dataclasses.replace(config, tolerance=tuple(tolerance)) if tolerance else None


def _tightened(bound, attempt: int) -> str:
    """A fidelity bound made stricter with each attempt: the gap to perfect halves (cosine, top-1,
    max diff) or the SQNR rises 6 dB, because errors of the earlier steps add up with quantize's."""
    if attempt == 0:
        return bound.text
    if bound.metric == "sqnr":
        return f"sqnr>={bound.value + 6 * attempt:g}"
    if bound.metric in ("max_abs_diff", "kl"):
        return f"{bound.metric}<={bound.value / 2 ** attempt:.3g}"
    return f"{bound.metric}>={1 - (1 - bound.value) / 2 ** attempt:.6g}"


def backoff_note(asked: QuantizeConfig, used: QuantizeConfig, result: PassResult) -> str:
    return (f"backed off: quantized again with tolerance {_texts(used.tolerance)}, which keeps "
            f"{len(result.details.get('kept_in_float') or [])} layer(s) in float")


def attempt_details(result: PassResult) -> dict:
    return {"kept_in_float": result.details.get("kept_in_float")}


def _texts(thresholds) -> str:
    return ", ".join(str(t) for t in thresholds)


def _status(c: Candidate, chosen: Candidate) -> str:
    if c is chosen:
        return "chosen"
    if c.error:
        return f"failed: {c.error}"
    if c.failures:
        return "misses tolerance: " + "; ".join(c.failures)
    return "slower"


def _resolve_excludes(patterns: Sequence[str], candidates: list[Candidate]) -> None:
    """Turn --exclude patterns into each candidate's layer names; a pattern matching nothing is an error."""
    for pattern in patterns:
        hits = False
        for c in candidates:
            names = matching(c.layers, pattern)
            hits = hits or bool(names)
            c.excluded += [n for n in names if n not in c.excluded]
        if not hits:
            known = sorted({layer["alias"] for c in candidates for layer in c.layers})
            raise UsageError(f"--exclude {pattern!r} matches no quantizable layer",
                             f"layers: {', '.join(known[:12]) or 'none'}{' ...' if len(known) > 12 else ''}")
