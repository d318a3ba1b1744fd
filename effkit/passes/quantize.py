"""int8 quantization: dynamic, static (calibrated) or weight-only, on ONNX Runtime or torch.

`quantize(model, QuantizeConfig(...))` builds every candidate that applies (backend x method),
measures each on the same held-out inputs (fidelity) and the same timing loop (interleaved, so a
busy machine slows all of them alike), and keeps the fastest that meets the tolerance. When none
does, it measures per-layer sensitivity and keeps the most sensitive layers in float, a few at a
time, until one passes; if none can, it fails (StepFailed, exit 1). Nothing is assumed about speed:
ONNX Runtime's dynamic int8 of convolutions, for one, is much slower than fp32, and only a
measurement tells.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from effkit.errors import InputError, StepFailed, UsageError, first_line
from effkit.specs import Threshold, check_numbers, parse_threshold

METHODS = ("auto", "dynamic", "static", "weight-only")
BACKENDS = ("auto", "onnxruntime", "torch")
CALIB_METHODS = ("minmax", "entropy", "percentile")
INT8_TYPES = ("u8", "s8")
OUTPUT_FORMATS = (".onnx", ".ts")
DEFAULT_TOLERANCE = "cosine>=0.99"
DEFAULT_CALIB_SAMPLES = 128
# tolerance metric -> key in effkit.fidelity.compare_outputs (accuracy comes from --eval data)
TOLERANCE_METRICS = {"cosine": "cosine_min", "cosine_min": "cosine_min", "cosine_mean": "cosine_mean",
                     "sqnr": "sqnr_db", "sqnr_db": "sqnr_db", "max_abs_diff": "max_abs_diff",
                     "top1": "top1_agreement", "top1_agreement": "top1_agreement", "accuracy": "accuracy"}
SUFFIX_OF = {"onnxruntime": ".onnx", "torch": ".ts"}


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize. `method="auto"` tries dynamic, and static when calibration data is given;
    `backend="auto"` tries ONNX Runtime and (for torch models) torch. `tolerance` defaults to
    cosine>=0.99 on held-out inputs. `output_format` (".onnx" or ".ts") limits the candidates to
    those that produce it."""

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
    threads: int | None = None
    candidate_time: float = 0.5  # seconds of timed calls per candidate (split over interleaved rounds)
    candidate_iterations: int | None = None  # or exactly this many calls per round
    fidelity_samples: int = 8

    def __post_init__(self) -> None:
        check_numbers(self)
        _choice("--method", self.method, METHODS)
        _choice("--backend", self.backend, BACKENDS)
        _choice("--calib-method", self.calib_method, CALIB_METHODS)
        _choice("--activation-type", self.activation_type, INT8_TYPES)
        _choice("--weight-type", self.weight_type, INT8_TYPES)
        if self.calib_samples < 1:
            raise UsageError("--calib-samples must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise UsageError("--threads must be at least 1")
        if self.candidate_time < 0 or (self.candidate_iterations is not None and self.candidate_iterations < 1):
            raise UsageError("candidate timing needs a time >= 0 and iterations >= 1")
        if self.output_format is not None and self.output_format not in OUTPUT_FORMATS:
            raise UsageError(f"int8 models cannot be written as {self.output_format}",
                             "write .onnx (ONNX Runtime) or .ts (TorchScript, torch), or give no suffix")
        if self.output_format and self.backend != "auto" and SUFFIX_OF[self.backend] != self.output_format:
            raise UsageError(f"--backend {self.backend} writes {SUFFIX_OF[self.backend]}, not {self.output_format}",
                             f"name the output {SUFFIX_OF[self.backend]} or drop --backend")
        if self.random_calibration and self.method in ("dynamic", "weight-only"):
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


def _choice(option: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise UsageError(f"unknown {option} {value!r}", f"use one of {', '.join(allowed)}")


def check_tolerance(t: Threshold) -> None:
    """Raise UsageError unless `t` bounds a fidelity metric absolutely, or accuracy in any form."""
    if t.metric not in TOLERANCE_METRICS:
        raise UsageError(f"--tolerance {t.text!r}: unknown metric {t.metric!r}",
                         "use cosine, cosine_mean, sqnr, max_abs_diff, top1 or accuracy, e.g. cosine>=0.99")
    if t.metric != "accuracy" and t.kind != "absolute":
        raise UsageError(f"--tolerance {t.text!r}: {t.metric} takes an absolute bound",
                         f"e.g. {t.metric}>=0.99; only accuracy takes a change such as accuracy:-1pt")


def parse_tolerance(text: str) -> Threshold:
    """Parse and check one --tolerance value."""
    t = parse_threshold(text)
    check_tolerance(t)
    return t


def tolerance_failures(thresholds: Sequence[Threshold], fid: dict, accuracy: dict | None) -> list[str]:
    """The thresholds a result misses, each as 'TEXT (got VALUE)'; empty when it passes."""
    failures = []
    for t in thresholds:
        if t.metric == "accuracy":
            before, after = accuracy["before"], accuracy["after"]
            if t.kind == "absolute":
                ok, got = t.holds(after), f"{100 * after:.2f}%"
            elif t.kind == "points":
                change = 100 * (after - before)
                ok, got = change >= t.value, f"{change:+.2f} pt"
            else:
                change = after / before - 1 if before else 0.0
                ok, got = change >= t.value, f"{100 * change:+.2f}%"
        else:
            value = fid.get(TOLERANCE_METRICS[t.metric])
            if value is None:
                raise UsageError(f"--tolerance {t.text!r}: {t.metric} applies to classifiers ([batch, classes] outputs)",
                                 "use cosine or sqnr for this model")
            ok, got = t.holds(value), f"{value:.5g}"
        if not ok:
            failures.append(f"{t.text} (got {got})")
    return failures


def _score(t: Threshold, fid: dict, accuracy: dict | None) -> float:
    """How well a result does on threshold `t`'s metric; higher is better."""
    if t.metric == "accuracy":
        return accuracy["after"]
    value = fid[TOLERANCE_METRICS[t.metric]]
    value = 1e9 if value == math.inf else value
    return -value if t.metric == "max_abs_diff" else value


# ---------------------------------------------------------------- candidates

@dataclass
class Candidate:
    """One way to quantize: a backend and a method, built with a set of layers kept in float."""

    backend: str
    method: str
    label: str
    layers: list[dict]
    build: Callable[[list[str], Callable[[float], None] | None], Any]  # (excluded names, progress) -> Model
    excluded: list[str] = field(default_factory=list)  # user --exclude, resolved to this backend's names
    model: Any = None
    error: str | None = None
    fidelity: dict | None = None
    accuracy: dict | None = None
    failures: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    size_bytes: int | None = None
    kept_float: list[str] = field(default_factory=list)  # added by the tolerance loop
    kept_cost: dict | None = None  # what keeping them in float cost against all-int8

    def display(self, names: Sequence[str]) -> list[str]:
        """Layer names as users know them: the torch module name where the ONNX node kept it."""
        alias = {layer["name"]: layer["alias"] for layer in self.layers}
        return [alias.get(n, n) for n in names]

    def summary(self) -> dict:
        return {"label": self.label, "backend": self.backend, "method": self.method, "error": self.error,
                "latency_ms": self.latency_ms, "size_bytes": self.size_bytes, "fidelity": self.fidelity,
                "accuracy": self.accuracy, "tolerance_missed": self.failures,
                "kept_in_float": self.display(self.kept_float)}


class _Context:
    """What every candidate shares: the model, its ONNX file, calibration batches, reference outputs."""

    def __init__(self, model, config: QuantizeConfig, calib_batches: list[tuple] | None, eval_data, progress):
        self.model, self.config, self.calib_batches, self.eval_data = model, config, calib_batches, eval_data
        self.progress = progress
        self.threads = config.threads
        self._onnx = None
        self.preprocess_notes: list[str] = []

    def onnx_path(self):
        """The model as a pre-processed ONNX file (exported first for torch models)."""
        if self._onnx is None:
            from effkit.passes.quantize_ort import preprocess
            from effkit.runtime import onnx_path_for

            self._onnx, self.preprocess_notes = preprocess(onnx_path_for(self.model))
        return self._onnx

    def step(self, label: str) -> Callable[[float], None] | None:
        return (lambda f: self.progress(label, f)) if self.progress else None


def _ort_model(ctx: _Context, path) -> Any:
    from effkit.model import Model

    m = ctx.model
    return Model(kind="onnx", onnx_path=path, example_inputs=m.example_inputs, input_names=list(m.input_names),
                 output_names=m.output_names, source=m.source, format="onnx", save_suffix=".onnx", meta=dict(m.meta))


def _torch_model(ctx: _Context, module) -> Any:
    from effkit.passes.quantize_torch import to_torchscript

    scripted = to_torchscript(module, ctx.model.example_inputs)
    return ctx.model.replace(module=scripted, path=None, format="derived", save_suffix=".ts", meta=dict(ctx.model.meta))


def _candidates(ctx: _Context) -> list[Candidate]:
    """Every (backend, method) pair that applies to this model, config and calibration data."""
    cfg, model = ctx.config, ctx.model
    methods = [cfg.method] if cfg.method != "auto" else ["dynamic"] + (["static"] if ctx.calib_batches else [])
    backends = ["onnxruntime", "torch"] if cfg.backend == "auto" else [cfg.backend]
    if cfg.output_format:
        backends = [b for b in backends if SUFFIX_OF[b] == cfg.output_format]
    if model.kind == "onnx":
        if cfg.backend == "torch":
            raise UsageError("an ONNX model is quantized with ONNX Runtime", "use --backend onnxruntime or auto")
        backends = [b for b in backends if b == "onnxruntime"]
        if not backends:
            raise UsageError("an ONNX model quantizes to .onnx only", "name the output .onnx")
    out = []
    for backend in backends:
        for method in methods:
            for per_channel in _per_channel_choices(cfg, method):
                out.append(_ort_candidate(ctx, method, per_channel) if backend == "onnxruntime"
                           else _torch_candidate(ctx, method, per_channel))
    return out


def _per_channel_choices(cfg: QuantizeConfig, method: str) -> list[bool]:
    """Per-channel scales keep fidelity; per-tensor ones can be faster for dynamic int8 (ONNX Runtime's
    MatMulInteger path measured 0.026 against 0.034 ms on a 784-1024-1024-10 MLP at batch 1 here),
    so unless the user chose, dynamic candidates come in both kinds and the tolerance decides."""
    if cfg.per_channel is not None:
        return [cfg.per_channel]
    return [True, False] if method == "dynamic" else [True]


def _ort_candidate(ctx: _Context, method: str, per_channel: bool) -> Candidate:
    from effkit.passes import quantize_ort as q

    cfg = ctx.config
    if method == "dynamic":
        label = f"ORT dynamic {cfg.weight_type} {'per-channel' if per_channel else 'per-tensor'}"
        build = lambda ex, p: _ort_model(ctx, q.quantize_dynamic(  # noqa: E731
            ctx.onnx_path(), per_channel=per_channel, weight_type=cfg.weight_type, exclude=ex))
    elif method == "static":
        label = f"ORT static QDQ {cfg.activation_type}/{cfg.weight_type} {cfg.calib_method}"
        build = lambda ex, p: _ort_model(ctx, q.quantize_static(  # noqa: E731
            ctx.onnx_path(), ctx.calib_batches, per_channel=per_channel, activation_type=cfg.activation_type,
            weight_type=cfg.weight_type, calib_method=cfg.calib_method, exclude=ex, progress=p))
    else:
        label = "ORT weight-only int8"
        build = lambda ex, p: _ort_model(ctx, q.quantize_weight_only(  # noqa: E731
            ctx.onnx_path(), per_channel=per_channel, exclude=ex))
    candidate = Candidate("onnxruntime", method, label, [], build)
    try:
        candidate.layers = q.layers(ctx.onnx_path())
    except Exception as e:  # the export or the pre-processing failed: other candidates may still work
        candidate.error = first_line(e)
    return candidate


def _torch_candidate(ctx: _Context, method: str, per_channel: bool) -> Candidate:
    from effkit.passes import quantize_torch as q

    cfg, module = ctx.config, ctx.model.module
    candidate = Candidate("torch", method, "", q.layers(module, method), lambda ex, p: None)
    if method == "dynamic":
        candidate.label = f"torch.ao dynamic {'per-channel' if per_channel else 'per-tensor'}"
        candidate.build = lambda ex, p: _torch_model(ctx, q.quantize_dynamic(module, per_channel=per_channel,
                                                                             exclude=ex))
    elif method == "static":
        candidate.label = f"torch.ao FX static x86 u8/s8 {cfg.calib_method}"
        candidate.build = lambda ex, p: _torch_model(ctx, q.quantize_static(
            module, ctx.model.example_inputs, ctx.calib_batches, per_channel=per_channel,
            calib_method=cfg.calib_method, exclude=ex, progress=p))
        if cfg.calib_method == "percentile":
            candidate.error = "torch.ao has no percentile calibration (use minmax or entropy)"
        elif cfg.activation_type != "u8":
            candidate.error = "torch's x86 int8 kernels take u8 activations only"
    else:
        candidate.label = "torch weight-only int8"
        candidate.build = lambda ex, p: _torch_model(ctx, q.quantize_weight_only(module, per_channel=per_channel,
                                                                                  exclude=ex))
    if cfg.weight_type != "s8" and method != "weight-only" and candidate.error is None:
        candidate.error = "torch's int8 kernels take s8 weights only"
    if not candidate.layers and candidate.error is None:
        candidate.error = f"no layers that torch {method} int8 handles"
    return candidate


# ---------------------------------------------------------------- measuring

FIDELITY_ROWS = 64  # real samples the candidates are compared on, when there are some


def _fidelity_batches(ctx: _Context) -> list[tuple] | None:
    """Real inputs to judge candidates on: the eval data, else the calibration batches.

    Random normal inputs are far from what a trained model sees (digits pixels lie in [0, 1]):
    a statically calibrated model clips them and looks broken (cosine 0.57 against 0.9999 on
    the real test images, measured on the digits MLP), so they are the last resort.
    """
    model = ctx.model
    batch = model.example_inputs[0].shape[0] if model.example_inputs and model.example_inputs[0].ndim else 1
    if ctx.eval_data is not None:
        data = ctx.eval_data.take(max(batch, FIDELITY_ROWS))
        inputs = [a.astype(e.dtype, copy=False) for a, e in zip(data.inputs, model.example_inputs)]
        return [tuple(a[s:s + batch] for a in inputs) for s in range(0, len(data) - batch + 1, batch)] or None
    if ctx.calib_batches and not ctx.config.random_calibration:
        return list(ctx.calib_batches[:max(1, FIDELITY_ROWS // batch)])
    return None


class _Judge:
    """Fidelity (and accuracy) of candidates against the original, on the same held-out inputs."""

    def __init__(self, ctx: _Context):
        from effkit.fidelity import accuracy, held_out_inputs
        from effkit.runtime import native_runner

        model = ctx.model
        self.ctx = ctx
        self.inputs = _fidelity_batches(ctx) or held_out_inputs(model.example_inputs, ctx.config.fidelity_samples)
        ref = native_runner(model, ctx.threads)
        self.reference = [ref.run(b) for b in self.inputs]
        self.accuracy_before = None
        if ctx.eval_data is not None and ctx.eval_data.labels is not None:
            self.accuracy_before = accuracy(ref, ctx.eval_data.inputs, ctx.eval_data.labels)

    def runner(self, m):
        from effkit.runtime import native_runner

        return native_runner(m, self.ctx.threads)

    def judge(self, m) -> tuple[dict, dict | None, list[str]]:
        from effkit.fidelity import accuracy, compare_outputs

        runner = self.runner(m)
        fid = compare_outputs(self.reference, [runner.run(b) for b in self.inputs])
        acc = None
        if self.accuracy_before is not None:
            acc = {"before": self.accuracy_before,
                   "after": accuracy(runner, self.ctx.eval_data.inputs, self.ctx.eval_data.labels)}
        return fid, acc, tolerance_failures(self.ctx.config.thresholds, fid, acc)


def _build(candidate: Candidate, judge: _Judge, exclude: list[str], label: str) -> bool:
    """Build `candidate` with `exclude` kept in float and judge it; False (with .error) when it fails."""
    from effkit.passes.export import quiet_torch

    candidate.error = None
    try:
        with quiet_torch():
            model = candidate.build(exclude, judge.ctx.step(label))
            fid, acc, failures = judge.judge(model)
    except (UsageError, InputError):
        raise
    except Exception as e:
        candidate.error = first_line(e)
        return False
    candidate.model, candidate.fidelity, candidate.accuracy, candidate.failures = model, fid, acc, failures
    return True


def time_interleaved(calls: dict[str, Callable[[], Any]], *, seconds: float, iterations: int | None,
                     rounds: int = 3) -> dict[str, float]:
    """Median latency (ms) of each call, timed in interleaved rounds so that load on a shared
    machine lands on every call alike."""
    from effkit.benchmark import time_calls

    samples: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(rounds):
        for key, call in calls.items():
            samples[key] += time_calls(call, warmup=2 if r == 0 else 1, iterations=iterations,
                                       min_time=seconds / rounds)
    return {k: float(np.median(v)) for k, v in samples.items()}


def _time(ctx: _Context, models: dict[str, Any]) -> dict[str, float]:
    from effkit.runtime import make_runner

    calls = {}
    for key, m in models.items():
        runtime = "torch" if key == "torch fp32" or (m.kind == "torch" and key != "onnxruntime fp32") else "onnxruntime"
        calls[key] = make_runner(m, runtime, ctx.threads).bind(m.example_inputs)
    return time_interleaved(calls, seconds=ctx.config.candidate_time, iterations=ctx.config.candidate_iterations)


# ---------------------------------------------------------------- calibration data

def calibration_batches(model, config: QuantizeConfig, calib) -> list[tuple] | None:
    """Calibration inputs as batches shaped like the example inputs (or None when there are none).

    Raises UsageError for static quantization without data (unless random calibration was asked
    for) and InputError when the data does not fit the model.
    """
    from effkit.fidelity import held_out_inputs

    if calib is None and not config.random_calibration:
        if config.method == "static":
            raise UsageError("--method static needs calibration data",
                             "pass --calib DATA (.npz, .pt, a folder of .npy, or module:factory), "
                             "or --calib random to calibrate on random inputs (less accurate)")
        return None
    if config.method in ("dynamic", "weight-only"):
        return None
    batch = max(1, model.example_inputs[0].shape[0]) if model.example_inputs and model.example_inputs[0].ndim else 1
    if calib is None:
        samples = held_out_inputs(model.example_inputs, max(1, config.calib_samples // batch), seed=7)
        return [tuple(s) for s in samples]
    calib.check_against(model)
    data = calib.take(config.calib_samples)
    inputs = [a.astype(e.dtype, copy=False) for a, e in zip(data.inputs, model.example_inputs)]
    n = len(data)
    if n < batch:  # fewer samples than the model's batch: repeat them (a fixed batch dim must be filled)
        from effkit.benchmark import batched

        return [batched(tuple(inputs), batch)]
    return [tuple(a[s:s + batch] for a in inputs) for s in range(0, n - batch + 1, batch)]


# ---------------------------------------------------------------- the pass

def quantize(model, config: QuantizeConfig, *, calib=None, eval_data=None,
             progress: Callable[[str, float], None] | None = None):
    """Quantize `model` to int8 as `config` says; return a PassResult (the original is not modified).

    `calib` and `eval_data` are `effkit.data.Data`; `progress(label, fraction)` drives a progress
    bar. details: the chosen backend and method, every candidate measured (latency, size, fidelity,
    why rejected), fp32 baselines, layers kept in float, the CPU's int8 outlook, calibration.
    """
    from effkit.env import cpu_info, int8_outlook
    from effkit.passes import PassResult

    notes: list[str] = []
    cpu = cpu_info()
    outlook = int8_outlook(cpu["isa"])
    if outlook:
        notes.append(outlook)
    if any(t.metric == "accuracy" for t in config.thresholds) and (eval_data is None or eval_data.labels is None):
        raise UsageError("an accuracy tolerance needs labelled data", "pass --eval DATA with inputs and labels")
    if eval_data is not None:
        eval_data.check_against(model)
    batches = calibration_batches(model, config, calib)
    if calib is not None and batches is None:
        notes.append(f"calibration data is not used by --method {config.method}")
    if config.random_calibration and batches:
        notes.append("calibrated on random inputs: activation ranges may not match real data, so accuracy on "
                     "real inputs may be worse than the fidelity shown; pass --calib DATA for a trustworthy result")
    ctx = _Context(model, config, batches, eval_data, progress)
    candidates = _candidates(ctx)
    _resolve_excludes(config.exclude, candidates)
    judge = _Judge(ctx)
    for c in candidates:
        if c.error is None:
            _build(c, judge, c.excluded, f"quantizing: {c.label}")
    built = [c for c in candidates if c.model is not None]
    if not built:
        raise StepFailed("no int8 candidate could be built: " + "; ".join(f"{c.label}: {c.error}" for c in candidates))
    baselines = {"torch fp32": model} if model.kind == "torch" else {}
    if any(c.backend == "onnxruntime" for c in built):
        baselines["onnxruntime fp32"] = model
    timings = _time(ctx, {**baselines, **{c.label: c.model for c in built}})
    for c in built:
        c.latency_ms = timings[c.label]
        c.size_bytes = _size(c.model)
    passing = sorted((c for c in built if not c.failures), key=lambda c: c.latency_ms)
    chosen = passing[0] if passing else _tolerance_loop(built, judge, ctx)
    original_size = _size(model)
    same_runtime = timings["torch fp32" if chosen.backend == "torch" else "onnxruntime fp32"]
    slower = chosen.latency_ms > same_runtime
    if slower:
        notes.append(f"the int8 model is SLOWER than the original on {chosen.backend} "
                     f"({chosen.latency_ms:.3g} ms against {same_runtime:.3g} ms fp32)"
                     + ("" if config.allow_slower else "; it is written only with --allow-slower"))
    if chosen.kept_float:
        notes.append(f"kept {len(chosen.kept_float)} sensitive layer(s) in float to meet the tolerance: "
                     f"{', '.join(chosen.display(chosen.kept_float))}")
    notes.extend(ctx.preprocess_notes)
    details = {
        "backend": chosen.backend,
        "method": chosen.method,
        "label": chosen.label,
        "tolerance": [t.text for t in config.thresholds],
        "excluded": chosen.display(chosen.excluded),
        "kept_in_float": chosen.display(chosen.kept_float),
        "kept_cost": chosen.kept_cost,
        "slower_than_original": slower,
        "baselines_ms": {k: timings[k] for k in baselines},
        "original_size_bytes": original_size,
        "candidates": [dict(c.summary(), status=_status(c, chosen)) for c in candidates],
        "cpu": cpu,
        "int8_outlook": outlook,
        "calibration": None if not batches else {
            "source": "random" if calib is None else calib.source, "samples": int(sum(len(b[0]) for b in batches)),
            "method": config.calib_method, "activation_type": config.activation_type,
            "weight_type": config.weight_type},
        "preprocessing": ctx.preprocess_notes,
    }
    return PassResult(model=chosen.model, details=details, notes=notes)


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
    from effkit.passes.quantize_ort import matching

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


def _tolerance_loop(built: list[Candidate], judge: _Judge, ctx: _Context) -> Candidate:
    """No candidate meets the tolerance: for each (fastest first), rank layers by sensitivity (the
    metric with only that layer kept in float) and keep the worst in float, a few at a time."""
    thresholds = ctx.config.thresholds
    tried = []
    for c in sorted(built, key=lambda c: c.latency_ms):
        primary = next(t for t in thresholds if tolerance_failures([t], c.fidelity, c.accuracy))
        free = [layer["name"] for layer in c.layers if layer["name"] not in c.excluded]
        all_int8 = (c.model, c.latency_ms, c.size_bytes, c.fidelity, c.accuracy, c.failures)
        scores = {}
        for i, name in enumerate(free):
            if ctx.progress:
                ctx.progress(f"layer sensitivity: {c.label}", i / max(1, len(free)))
            if _build(c, judge, c.excluded + [name], "calibrating"):
                scores[name] = _score(primary, c.fidelity, c.accuracy)
        ranked = sorted(scores, key=lambda n: -scores[n])
        step = max(1, math.ceil(len(ranked) / 10))
        passed = False
        for k in range(step, len(ranked), step):  # at least one layer stays int8, or it is no int8 model
            if _build(c, judge, c.excluded + ranked[:k], "calibrating") and not c.failures:
                c.kept_float, passed = ranked[:k], True
                break
        if passed:
            after = time_interleaved({"all int8": _bind(ctx, all_int8[0]), "kept": _bind(ctx, c.model)},
                                     seconds=ctx.config.candidate_time, iterations=ctx.config.candidate_iterations)
            c.size_bytes = _size(c.model)
            c.latency_ms = all_int8[1] * after["kept"] / after["all int8"]
            c.kept_cost = {"size_bytes": {"all_int8": all_int8[2], "with_float_layers": c.size_bytes},
                           "latency_ratio": after["kept"] / after["all int8"]}
            return c
        c.model, c.latency_ms, c.size_bytes, c.fidelity, c.accuracy, c.failures = all_int8
        c.error = None
        tried.append(f"{c.label}: {'; '.join(c.failures)}")
    raise StepFailed("no int8 model meets the tolerance, even with sensitive layers kept in float: "
                     + " | ".join(tried) + "; nothing was written",
                     "loosen --tolerance, or pass --calib with representative data")


def _size(m) -> int:
    """Bytes on disk (a torch model is serialized as TorchScript to measure it)."""
    from effkit.model import size_info
    from effkit.passes.export import quiet_torch

    with quiet_torch():
        return size_info(m)["bytes_on_disk"]


def _bind(ctx: _Context, m) -> Callable[[], Any]:
    from effkit.runtime import native_runner

    return native_runner(m, ctx.threads).bind(m.example_inputs)
