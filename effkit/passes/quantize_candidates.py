"""The ways to quantize a model (backend x method x per-channel), each a `Candidate` that builds itself
with a chosen set of layers kept in float. `effkit.passes.quantize` measures them and picks one.

Long because every (backend, method) candidate is made here, each in a few lines, so that what `auto` measures
reads in one place."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from effkit import env
from effkit.errors import UsageError, first_line
from effkit.export import describe_export, export_report_for, make_runner, onnx_path_for
from effkit.inputs import sequence_inputs
from effkit.model import Model
from effkit.passes import ort_fusion, quantize_bf16, quantize_ort, quantize_torch, quantize_torchao, smoothquant
from effkit.passes.onnx_preprocess import preprocess
from effkit.passes.quantize_lm import VERIFIED_TOKENS, decode_timed, with_past_export
from effkit.passes.quantize_torch import to_torchscript
from effkit.runners import DecodeStepRunner
from effkit.save import export_program


SUFFIX_OF = {"onnxruntime": ".onnx", "torch": ".ts"}  # what a backend's candidates write, but torchao's
SUFFIXES = {"onnxruntime": (".onnx",), "torch": (".ts", ".pt2")}  # every format a backend writes


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
    perplexity: dict | None = None  # a language model's, on --eval-text
    failures: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    size_bytes: int | None = None
    kept_float: list[str] = field(default_factory=list)  # added by the tolerance loop
    kept_cost: dict | None = None  # what keeping them in float cost against all-int8
    against_float: Any = None  # PairedResult: the float model (A) against this one (B), when already timed
    build_seconds: float | None = None  # how long its last build and judging took
    suffix: str = ""  # the format it is saved in: the backend's (SUFFIX_OF) unless named

    def __post_init__(self) -> None:
        self.suffix = self.suffix or SUFFIX_OF[self.backend]

    def display(self, names: Sequence[str]) -> list[str]:
        """Layer names as users know them: the torch module name where the ONNX node kept it."""
        alias = {layer["name"]: layer["alias"] for layer in self.layers}
        return [alias.get(n, n) for n in names]

    def summary(self) -> dict:
        return {"label": self.label, "backend": self.backend, "method": self.method, "error": self.error,
                "latency_ms": self.latency_ms, "size_bytes": self.size_bytes, "fidelity": self.fidelity,
                "accuracy": self.accuracy, "perplexity": self.perplexity, "tolerance_missed": self.failures,
                "kept_in_float": self.display(self.kept_float)}


class CandidateContext:
    """What every candidate shares: the model, its ONNX file, calibration batches, reference outputs."""

    def __init__(self, model, config, calib_batches: list[tuple] | None, eval_data, progress, threads: int | None,
                 candidate_time: float, candidate_iterations: int | None):
        self.model, self.config, self.calib_batches, self.eval_data = model, config, calib_batches, eval_data
        self.progress = progress
        self.threads, self.candidate_time, self.candidate_iterations = threads, candidate_time, candidate_iterations
        self._onnx = None
        self.refused: str | None = None  # why the ONNX file cannot take the data (its sequence length)
        self.preprocess_notes: list[str] = []
        self.warnings: list[str] = []  # about the ONNX file the ONNX Runtime candidates start from
        self._smoothed: dict[str, Any] = {}
        self.smoothing: dict[str, list[dict]] = {}  # backend -> per-LayerNorm SmoothQuant report
        self._fused = None
        self.fusions: dict | None = None  # ORT transformer fusions: what was fused, or why skipped
        self.notes: list[str] = []  # for the user: why a backend was left out, what timing means here
        self.decode = decode_timed(model, config)
        self.with_past = self.decode and model.kind == "torch"  # candidates start from an export with past key/values
        self._float = None

    def timing_runner(self, model, runtime: str):
        """The runner a candidate (or the float model) is timed with: one decode step for a causal LM with
        past key/values (`DecodeStepRunner`: the time per generated token), else a call on the example inputs."""
        runner = make_runner(model, runtime, self.threads)
        return DecodeStepRunner(runner, self.prompt_len) if self.decode else runner

    @property
    def prompt_len(self) -> int:
        """The prompt a decode step is timed after: the example inputs' tokens, leaving the new token a place in
        the model's context."""
        length = self.model.example_inputs[0].shape[1]
        context = self.model.meta.get("context_length")
        return max(1, min(length, context - VERIFIED_TOKENS)) if context else length

    def float_model(self):
        """What candidates are timed against as "the float model": the original, or for a causal LM timed on
        decode steps, its fp32 export with past key/values (the original's own runner has no KV cache)."""
        if not self.with_past:
            return self.model
        if self._float is None:
            self._float = ort_model(self, self.onnx_path())
        return self._float

    def fused_onnx(self):
        """The pre-processed ONNX file with ONNX Runtime's transformer fusions applied (once, shared)."""
        if self._fused is None:
            self._fused, self.fusions = ort_fusion.fuse(self.onnx_path(), self.model)
        return self._fused

    def smoothed_onnx(self):
        """The pre-processed ONNX file with SmoothQuant applied (calibrated once, shared)."""
        if "onnxruntime" not in self._smoothed:
            path, self.smoothing["onnxruntime"] = smoothquant.smooth_onnx(
                self.onnx_path(), self.calib_batches, self.config.alpha)
            if not self.smoothing["onnxruntime"]:
                raise ValueError("no LayerNorm feeds a MatMul here, so there is nothing to smooth")
            self._smoothed["onnxruntime"] = path
        return self._smoothed["onnxruntime"]

    def smoothed_module(self):
        """The torch module with SmoothQuant applied (calibrated once, shared)."""
        if "torch" not in self._smoothed:
            module, self.smoothing["torch"] = smoothquant.smooth_torch(
                self.model.module, self.calib_batches, self.config.alpha)
            if not self.smoothing["torch"]:
                raise ValueError("no LayerNorm feeds a Linear here, so there is nothing to smooth")
            self._smoothed["torch"] = module
        return self._smoothed["torch"]

    def onnx_path(self):
        """The model as a pre-processed ONNX file (exported first for torch models). Raises ValueError when
        the export's sequence axis had to stay static and the data has sequences of another length."""
        if self._onnx is None:
            source = (with_past_export(self.model, self.threads, self.prompt_len) if self.with_past
                      else onnx_path_for(self.model))
            self._onnx, self.preprocess_notes = preprocess(source)
            if self.model.kind == "torch" and not self.with_past:  # an export whose sequence axis had to stay static
                report = export_report_for(self.model)
                _, _, static_sequence = describe_export(report)
                self.warnings += [static_sequence] if static_sequence else []
                other = self._other_data_length() if static_sequence else None
                if other is not None:
                    length = self.model.example_inputs[sequence_inputs(self.model.example_inputs)[0]].shape[1]
                    self.refused = (f"the ONNX export takes sequences of {length} tokens only "
                                    f"({report['sequence_static_reason']}); the data has {other}")
        if self.refused:
            raise ValueError(self.refused)
        return self._onnx

    def _other_data_length(self) -> int | None:
        """A sequence length of the calibration or evaluation data other than the example inputs', if any."""
        seq = sequence_inputs(self.model.example_inputs)
        if not seq:
            return None
        arrays = [batch[seq[0]] for batch in self.calib_batches or []]
        arrays += [self.eval_data.inputs[seq[0]]] if self.eval_data is not None else []
        want = self.model.example_inputs[seq[0]].shape[1]
        return next((a.shape[1] for a in arrays if len(a.shape) == 2 and a.shape[1] != want), None)

    def step(self, label: str) -> Callable[[float], None] | None:
        return (lambda f: self.progress(label, f)) if self.progress else None


def ort_model(ctx: CandidateContext, path) -> Any:
    """An ONNX Runtime Model for the int8 file at `path`, with the original's inputs and outputs."""
    m = ctx.model
    meta = dict(m.meta, kv_cache=True) if ctx.decode else dict(m.meta)
    return Model(kind="onnx", onnx_path=path, example_inputs=m.example_inputs, input_names=list(m.input_names),
                 output_names=m.output_names, source=m.source, format="onnx", save_suffix=".onnx", meta=meta)


def _torch_model(ctx: CandidateContext, module) -> Any:
    scripted = to_torchscript(module, ctx.model.example_inputs)
    return ctx.model.replace(module=scripted, path=None, format="derived", save_suffix=".ts", meta=dict(ctx.model.meta))


def _exported_model(ctx: CandidateContext, module) -> Any:
    """The torchao (or bf16) module as torch.export captures it, which is what OUT.pt2 holds and loads back as:
    it is measured as users will run it (int4 in groups ran several times faster exported than eager on a
    1024-wide MLP here: the eager module rebuilds torchao's tensors at every call)."""
    model = ctx.model.replace(module=module, path=None, format="derived", save_suffix=".pt2", meta=dict(ctx.model.meta))
    return model.replace(module=export_program(model).module())


def candidates_for(ctx: CandidateContext) -> list[Candidate]:
    """Every (backend, method) pair that applies to this model, config and calibration data. Raises
    UsageError when the output format leaves none, when all that are left need torchao and it is missing, or
    when --method bf16 has none that can run here (no native bf16, or only ONNX Runtime left)."""
    cfg, model = ctx.config, ctx.model
    methods = [cfg.method] if cfg.method != "auto" else ["dynamic"] + (["static", "smoothquant"] if ctx.calib_batches else [])
    if cfg.method == "auto":
        methods.append("bf16")
    bits: list[int | None] = [cfg.bits]
    if cfg.method == "auto" and (model.meta.get("causal_lm") or cfg.bits is not None):
        methods.append("weight-only")  # what language models are quantized with: 4 and 8-bit weights
        bits = [cfg.bits] if cfg.bits is not None else [4, 8]
    backends = ["onnxruntime", "torch"] if cfg.backend == "auto" else [cfg.backend]
    if ctx.with_past and cfg.backend == "auto":
        backends = ["onnxruntime"]
        ctx.notes.append("a causal LM's candidates run on ONNX Runtime with its KV cache and are timed on a decode "
                         "step; torch's int8 files carry no KV cache (--backend torch times them on a forward pass)")
    if cfg.output_format:
        backends = [b for b in backends if cfg.output_format in SUFFIXES[b]]
    if model.kind == "onnx":
        if cfg.backend == "torch":
            raise UsageError("an ONNX model is quantized with ONNX Runtime", "use --backend onnxruntime or auto")
        backends = [b for b in backends if b == "onnxruntime"]
        if not backends:
            raise UsageError("an ONNX model quantizes to .onnx only", "name the output .onnx")
    out = []
    for backend in backends:
        for method in methods:
            if method == "bf16":
                out.append(_bf16_candidate(ctx, backend))
                continue
            if method == "weight-only":
                gptq = ctx.calib_batches and cfg.weight_algorithm != "gptq" and cfg.bits in (None, 4)
                if backend == "onnxruntime" and gptq:  # calibration data given: GPTQ is one more candidate
                    out.append(_ort_nbits_candidate(ctx, 4, "gptq"))
                if bits != [None]:
                    for b in bits:
                        out += _ort_nbits_candidates(ctx, b) if backend == "onnxruntime" else _torch_nbits_candidates(ctx, b)
                    continue
            if method == "smoothquant":
                if cfg.method == "smoothquant" or _has_layer_norm(ctx, backend):  # auto: transformers only
                    out += _smoothquant_candidates(ctx, backend)
                continue
            for per_channel in _per_channel_choices(cfg, method):
                out.append(_ort_candidate(ctx, method, per_channel) if backend == "onnxruntime"
                           else _torch_candidate(ctx, method, per_channel))
            if backend == "torch" and method == "dynamic" and cfg.per_channel is not False and _linear_heavy(model.module):
                out.append(_torchao_candidate(ctx, "dynamic", "int8-dynamic"))
            if backend == "onnxruntime" and method == "dynamic":
                out += _fused_candidates(ctx)
    if cfg.output_format:
        out = [c for c in out if c.suffix == cfg.output_format]
        if not out:
            asked = f"--method {cfg.method}" + (f" --bits {cfg.bits}" if cfg.bits else "")
            raise UsageError(f"no candidate of {asked} writes {cfg.output_format}",
                             "name the output .onnx or .ts, or give no suffix"
                             if cfg.output_format == ".pt2" else "give the output no suffix")
    if out and cfg.method == "bf16" and all(c.error for c in out):
        error = next((c.error for c in out if c.backend == "torch"), out[0].error)
        raise UsageError(f"--method bf16 cannot run here: {error}",
                         "use --method auto or dynamic (int8)" if error == quantize_bf16.NO_BF16
                         else "bf16 runs on torch and is saved as .pt2: a torch model, --backend torch or auto, "
                         "and OUT.pt2 or no suffix")
    if out and cfg.method != "auto" and all(c.error == quantize_torchao.MISSING for c in out):
        raise UsageError(f"{out[0].label} needs torchao, which is not installed",
                         "pip install torchao, or use --backend onnxruntime")
    return out


def _linear_heavy(module) -> bool:
    """Whether Linear layers hold most of the weights of the layers int8 handles (transformers, MLPs):
    where torchao's per-token int8 matmul has most of the model to work on."""
    from torch import nn

    linear = conv = 0
    for m in module.modules():
        if isinstance(m, nn.Linear) or quantize_torchao.is_conv1d(m):
            linear += m.weight.numel()
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            conv += m.weight.numel()
    return linear > 0 and linear >= conv


def _torchao_candidate(ctx: CandidateContext, method: str, scheme: str) -> Candidate:
    """One of torchao's schemes (`quantize_torchao.SCHEMES`), saved as .pt2; skipped when torchao is missing."""
    cfg, module = ctx.config, ctx.model.module
    candidate = Candidate("torch", method, quantize_torchao.label(scheme, cfg.group_size), [], lambda ex, p: None,
                          suffix=".pt2")
    if not quantize_torchao.available():
        candidate.error = quantize_torchao.MISSING
        return candidate
    candidate.layers = quantize_torchao.layers(module)
    candidate.build = lambda ex, p: _exported_model(ctx, quantize_torchao.quantize(  # noqa: E731
        module, scheme, group_size=cfg.group_size, exclude=ex))
    if scheme == "int8-dynamic" and cfg.weight_type != "s8":
        candidate.error = "torchao's int8 matmul takes s8 weights only"
    return candidate


def _ort_nbits_candidates(ctx: CandidateContext, bits: int) -> list[Candidate]:
    """MatMulNBits at `bits`; with 4-bit RTN also the same with the embedding tables in 4 bits, measured apart
    because an int4 embedding costs fidelity (cosine 0.99 -> 0.93 on the tests' tiny Llama) for size (GPT-2
    small: 0.45x -> 0.18x of fp32), and only the tolerance can say whether that trade holds."""
    out = [_ort_nbits_candidate(ctx, bits)]
    if bits == 4 and ctx.config.weight_algorithm == "rtn" and _has_embedding(ctx):
        out.append(_ort_nbits_candidate(ctx, bits, embeddings=True))
    return out


def _has_embedding(ctx: CandidateContext) -> bool:
    try:
        return quantize_ort.has_embedding_table(ctx.onnx_path())
    except Exception:  # the export failed: the MatMul-only candidate reports why
        return False


def _ort_nbits_candidate(ctx: CandidateContext, bits: int, algorithm: str | None = None,
                         embeddings: bool = False) -> Candidate:
    """4 or 8-bit blockwise weights on ONNX Runtime's MatMulNBits (GPTQ calibrated on the calibration batches),
    with `embeddings` the embedding tables too (4-bit RTN only)."""
    cfg = ctx.config
    algorithm = algorithm or ("rtn" if bits == 8 else cfg.weight_algorithm)
    label = f"ORT MatMulNBits int{bits} {algorithm.upper()} group {cfg.group_size}"
    label += ", int4 embeddings" if embeddings else ""
    build = lambda ex, p: ort_model(ctx, quantize_ort.quantize_nbits(  # noqa: E731
        ctx.onnx_path(), bits=bits, group_size=cfg.group_size, algorithm=algorithm, exclude=ex,
        batches=ctx.calib_batches, embeddings=embeddings))
    candidate = Candidate("onnxruntime", "weight-only", label, [], build)
    try:
        candidate.layers = [layer for layer in quantize_ort.layers(ctx.onnx_path()) if layer["op"] in ("MatMul", "Gemm")]
    except Exception as e:
        candidate.error = first_line(e)
    return candidate


def _torch_nbits_candidates(ctx: CandidateContext, bits: int) -> list[Candidate]:
    """--bits 8: effkit's own int8 weight-only module and torchao's; --bits 4: torchao's int4 in groups."""
    if bits == 8:
        return [_torch_candidate(ctx, "weight-only", True), _torchao_candidate(ctx, "weight-only", "int8-weight")]
    return [_torchao_candidate(ctx, "weight-only", "int4-weight")]


def _per_channel_choices(cfg, method: str) -> list[bool]:
    """Per-channel scales keep fidelity; per-tensor ones can be faster for dynamic int8 (ONNX Runtime's
    MatMulInteger path measured 0.026 against 0.034 ms on a 784-1024-1024-10 MLP at batch 1 here),
    so unless the user chose, dynamic candidates come in both kinds and the tolerance decides."""
    if cfg.per_channel is not None:
        return [cfg.per_channel]
    return [True, False] if method == "dynamic" else [True]


def _ort_candidate(ctx: CandidateContext, method: str, per_channel: bool) -> Candidate:
    cfg = ctx.config
    if method == "dynamic":
        label = f"ORT dynamic {cfg.weight_type} {'per-channel' if per_channel else 'per-tensor'}"
        build = lambda ex, p: ort_model(ctx, quantize_ort.quantize_dynamic(  # noqa: E731
            ctx.onnx_path(), per_channel=per_channel, weight_type=cfg.weight_type, exclude=ex))
    elif method == "static":
        label = f"ORT static QDQ {cfg.activation_type}/{cfg.weight_type} {cfg.calib_method}"
        build = lambda ex, p: ort_model(ctx, quantize_ort.quantize_static(  # noqa: E731
            ctx.onnx_path(), ctx.calib_batches, per_channel=per_channel, activation_type=cfg.activation_type,
            weight_type=cfg.weight_type, calib_method=cfg.calib_method, exclude=ex, progress=p))
    else:
        label = "ORT weight-only int8"
        build = lambda ex, p: ort_model(ctx, quantize_ort.quantize_weight_only(  # noqa: E731
            ctx.onnx_path(), per_channel=per_channel, exclude=ex))
    candidate = Candidate("onnxruntime", method, label, [], build)
    try:
        candidate.layers = quantize_ort.layers(ctx.onnx_path())
    except Exception as e:  # the export or the pre-processing failed: other candidates may still work
        candidate.error = first_line(e)
    return candidate


def _torch_candidate(ctx: CandidateContext, method: str, per_channel: bool) -> Candidate:
    cfg, module = ctx.config, ctx.model.module
    candidate = Candidate("torch", method, "", quantize_torch.layers(module, method), lambda ex, p: None)
    if method == "dynamic":
        candidate.label = f"torch.ao dynamic {'per-channel' if per_channel else 'per-tensor'}"
        candidate.build = lambda ex, p: _torch_model(ctx, quantize_torch.quantize_dynamic(module, per_channel=per_channel,
                                                                             exclude=ex))
    elif method == "static":
        candidate.label = f"torch.ao FX static x86 u8/s8 {cfg.calib_method}"
        candidate.build = lambda ex, p: _torch_model(ctx, quantize_torch.quantize_static(
            module, ctx.model.example_inputs, ctx.calib_batches, per_channel=per_channel,
            calib_method=cfg.calib_method, exclude=ex, progress=p))
        if cfg.calib_method == "percentile":
            candidate.error = "torch.ao has no percentile calibration (use minmax or entropy)"
        elif cfg.activation_type != "u8":
            candidate.error = "torch's x86 int8 kernels take u8 activations only"
    else:
        candidate.label = "torch weight-only int8"
        candidate.build = lambda ex, p: _torch_model(ctx, quantize_torch.quantize_weight_only(module, per_channel=per_channel,
                                                                                  exclude=ex))
    if cfg.weight_type != "s8" and method != "weight-only" and candidate.error is None:
        candidate.error = "torch's int8 kernels take s8 weights only"
    if not candidate.layers and candidate.error is None:
        candidate.error = f"no layers that torch {method} int8 handles"
    return candidate


def _has_layer_norm(ctx: CandidateContext, backend: str) -> bool:
    """Whether the model has a LayerNorm for SmoothQuant to work from."""
    if backend == "torch":
        return any(type(m).__name__ == "LayerNorm" for m in ctx.model.module.modules())
    try:
        return any(layer["op"] == "LayerNormalization" for layer in quantize_ort.nodes(ctx.onnx_path()))
    except Exception:  # the export failed: the plain candidates report why
        return False


def _smoothquant_candidates(ctx: CandidateContext, backend: str) -> list[Candidate]:
    """SmoothQuant, then int8 with per-channel weights: static QDQ and dynamic on ONNX Runtime,
    torch.ao dynamic on torch. The smoothing is calibrated once per backend and shared."""
    cfg = ctx.config
    alpha = f"alpha {cfg.alpha:g}" if cfg.alpha is not None else "alpha searched"
    if backend == "torch":
        candidate = Candidate("torch", "smoothquant", f"torch.ao SmoothQuant dynamic ({alpha})",
                              quantize_torch.layers(ctx.model.module, "dynamic"), lambda ex, p: None)
        candidate.build = lambda ex, p: _torch_model(ctx, quantize_torch.quantize_dynamic(  # noqa: E731
            ctx.smoothed_module(), per_channel=True, exclude=ex))
        if cfg.weight_type != "s8":
            candidate.error = "torch's int8 kernels take s8 weights only"
        return [candidate]
    static = Candidate("onnxruntime", "smoothquant",
                       f"ORT SmoothQuant static QDQ {cfg.activation_type}/{cfg.weight_type} ({alpha})", [],
                       lambda ex, p: ort_model(ctx, quantize_ort.quantize_static(
                           ctx.smoothed_onnx(), ctx.calib_batches, per_channel=True,
                           activation_type=cfg.activation_type, weight_type=cfg.weight_type,
                           calib_method=cfg.calib_method, exclude=ex, progress=p)))
    dynamic = Candidate("onnxruntime", "smoothquant", f"ORT SmoothQuant dynamic {cfg.weight_type} ({alpha})", [],
                        lambda ex, p: ort_model(ctx, quantize_ort.quantize_dynamic(
                            ctx.smoothed_onnx(), per_channel=True, weight_type=cfg.weight_type, exclude=ex)))
    for candidate in (static, dynamic):
        try:
            candidate.layers = quantize_ort.layers(ctx.onnx_path())
        except Exception as e:
            candidate.error = first_line(e)
    return [static, dynamic]


def _bf16_candidate(ctx: CandidateContext, backend: str) -> Candidate:
    """bf16 weights and activations behind an fp32 interface, on torch (saved as .pt2) where the CPU has
    avx512_bf16 or AMX; on ONNX Runtime the row says why it is not offered (its CPU provider has no bf16 MatMul)."""
    if backend == "onnxruntime":
        candidate = Candidate("onnxruntime", "bf16", "ORT bf16", [], lambda ex, p: None)
        has_bf16 = quantize_bf16.cpu_has_bf16(env.cpu_info()["isa"])
        candidate.error = quantize_bf16.ort_bf16_error() if has_bf16 else quantize_bf16.NO_BF16
        return candidate
    module = ctx.model.module
    candidate = Candidate("torch", "bf16", "torch bf16 weights and activations", quantize_bf16.layers(module),
                          lambda ex, p: _exported_model(ctx, quantize_bf16.to_bf16(module, ex)), suffix=".pt2")
    if not quantize_bf16.cpu_has_bf16(env.cpu_info()["isa"]):
        candidate.error = quantize_bf16.NO_BF16
    return candidate


def _fused_candidates(ctx: CandidateContext) -> list[Candidate]:
    """On a transformer-like graph, ONNX Runtime's transformer fusions as a candidate base: the fused fp32
    graph (with --method auto) and dynamic int8 on top of it. None otherwise (ctx.fusions says why)."""
    cfg = ctx.config
    try:
        ctx.fusions = {"skipped": ort_fusion.not_transformer(ctx.onnx_path())}
        if ctx.fusions["skipped"] is None:
            ctx.fused_onnx()
    except Exception as e:  # the export or the optimizer failed: the unfused candidates still run
        ctx.fusions = {"skipped": first_line(e)}
    if ctx.fusions.get("skipped"):
        return []
    out = []
    if cfg.method == "auto":
        out.append(Candidate("onnxruntime", "fp32", "ORT fp32 fused", [],
                             lambda ex, p: ort_model(ctx, ctx.fused_onnx())))
    per_channel = cfg.per_channel is not False
    dynamic = Candidate("onnxruntime", "dynamic",
                        f"ORT dynamic {cfg.weight_type} {'per-channel' if per_channel else 'per-tensor'} on fused graph",
                        quantize_ort.layers(ctx.fused_onnx()),
                        lambda ex, p: ort_model(ctx, quantize_ort.quantize_dynamic(
                            ctx.fused_onnx(), per_channel=per_channel, weight_type=cfg.weight_type, exclude=ex)))
    return out + [dynamic]
