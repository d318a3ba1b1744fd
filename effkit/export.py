"""Export a torch model to ONNX, then verify it in ONNX Runtime against torch on fresh inputs.

Also the ONNX file every ONNX Runtime measurement of a torch model runs on (`onnx_path_for`,
`make_runner`): a verified export, made once per module.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effkit import onnx_files
from effkit.env import available_cores
from effkit.errors import EffkitError, OutputExistsError, StepFailed, UsageError, first_line
from effkit.fidelity import check_finite
from effkit.files import atomic_path, forget_temporary, track_temporary
from effkit.inputs import batched, forward_signature, sequence_inputs
from effkit.load import load_onnx
from effkit.model import Model
from effkit.onnx_files import load_graph, save_onnx_file, tensor_data_bytes, write_model
from effkit.runners import RUNTIMES, OrtRunner, Runner, TorchRunner
from effkit.specs import check_numbers
from effkit.util import quiet_torch, workdir

DEFAULT_OPSET = 18


@dataclass(frozen=True)
class ExportConfig:
    """How to export: opset, dynamic batch axis, and the tolerances of the verification."""

    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = True
    atol: float = 1e-4
    rtol: float = 1e-3

    def __post_init__(self) -> None:
        check_numbers(self)
        if not (7 <= self.opset <= 23):
            raise UsageError(f"opset {self.opset} is not supported", "use an opset between 7 and 23 (default 18)")
        if self.atol < 0 or self.rtol < 0:
            raise UsageError("--atol and --rtol must not be negative")


class ExportMismatch(StepFailed):
    """The exported model's outputs differ from torch's beyond the tolerances."""


class SequenceMismatch(ExportMismatch):
    """The export matches torch at the example's sequence length only: its sequence axis must stay static."""


SEQUENCE = "sequence"  # the name of a text model's sequence axis in the ONNX file
DIFFERS = "the ONNX export differs from torch: "


def _sequence_length(model: Model) -> int | None:
    """A text model's example sequence length (None for other models)."""
    seq = sequence_inputs(model.example_inputs)
    return model.example_inputs[seq[0]].shape[1] if seq else None


def _too_short(model: Model) -> str | None:
    """Why a text model's sequence axis stays static when its example is too short to verify another length."""
    length = _sequence_length(model)
    if length is None or _other_length(length, model.meta.get("context_length")) is not None:
        return None
    return f"its example has {length} token(s), too few to verify another length (give at least 3)"


def _other_length(length: int, limit: int | None) -> int | None:
    """The second sequence length the export is verified at, within the model's positions: 3 longer
    where the limit is known and allows it, else 1 shorter (never 1: torch.export fixes a size-1 axis)."""
    if limit is not None and length + 3 <= limit:
        return length + 3
    return length - 1 if length > 2 else None


def _at_length(a: np.ndarray, length: int) -> np.ndarray:
    """`a` cut or extended along axis 1 to `length`, repeating its own values (token ids stay in the vocabulary)."""
    return np.take(a, np.arange(length) % a.shape[1], axis=1)


def _fresh_inputs(model: Model, batch: int | None, length: int | None = None) -> tuple[np.ndarray, ...]:
    """Inputs the export never saw: new random floats; integer inputs (token ids) kept as they are.
    With `length`, the inputs that carry the sequence axis have that length."""
    rng = np.random.default_rng(1234)
    arrays = batched(model.example_inputs, batch) if batch is not None else model.example_inputs
    if length is not None:
        seq = sequence_inputs(model.example_inputs)
        arrays = tuple(_at_length(a, length) if i in seq else a for i, a in enumerate(arrays))
    return tuple(rng.standard_normal(a.shape).astype(a.dtype) if np.issubdtype(a.dtype, np.floating) else a
                 for a in arrays)


TORCH_EXPORT = "torch.export"
TORCHSCRIPT = "TorchScript"
# The TorchScript exporter's highest opset: the fallback exports at most at this one.
TORCHSCRIPT_MAX_OPSET = 17


def _weight_bytes(module: Any) -> int:
    """Bytes of a torch module's parameters and buffers (each shared tensor once)."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _why(e: BaseException, limit: int = 200) -> str:
    """Why torch.export failed, in a line: the summary torch.onnx puts under its generic first line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    violated = next((line for line in lines if line.startswith("- Not all values of")), None)
    if violated and "generated guard " in violated:  # the guard that fixed a dynamic axis
        return f"the model's code fixes it: {violated.split('generated guard ', 1)[1]}"[:limit]
    summary = next((line.split(">: ", 1)[1] for line in lines if line.startswith("<class '") and ">: " in line), None)
    return (summary or first_line(e, limit))[:limit]


def _axes(model: Model, config: ExportConfig, sequence: bool) -> dict[str, dict[str, str]]:
    """The dynamic axes of each input, {name: {"0": "batch", "1": "sequence"}}: the batch axis when
    `config.dynamic_batch`, the sequence axis of a text model's inputs when `sequence`."""
    seq = sequence_inputs(model.example_inputs) if sequence and not _too_short(model) else []
    axes: dict[str, dict[str, str]] = {}
    for i, (name, a) in enumerate(zip(model.input_names, model.example_inputs)):
        named = {"0": "batch"} if config.dynamic_batch and a.ndim > 0 else {}
        if i in seq:
            named["1"] = SEQUENCE
        if named:
            axes[name] = named
    return axes


def _dynamic_shapes(model: Model, axes: dict[str, dict[str, str]]) -> Any:
    """torch.export's dynamic_shapes for `axes`: one Dim shared by every sequence axis (they must be equal),
    bounded by the model's positions where known; nested when forward takes *args (HF folders)."""
    import torch

    if not axes:
        return None
    limit = model.meta.get("context_length")
    sequence = torch.export.Dim(SEQUENCE, max=limit) if limit else torch.export.Dim(SEQUENCE)
    shapes = tuple({int(k): torch.export.Dim.DYNAMIC if v == "batch" else sequence for k, v in axes[n].items()}
                   if n in axes else None for n in model.input_names)
    _, _, varargs = forward_signature(model.module)
    return (shapes,) if varargs else shapes


def _export_proto(model: Model, config: ExportConfig, target: Path | None = None,
                  sequence: bool = True) -> tuple[Any, dict]:
    """The ONNX proto and how it was made: {"exporter", "dynamic_axes", "fallback_reason" (when torch.export
    failed), "sequence_static_reason" (when torch.export could not make a text model's sequence axis dynamic)}.

    A text model's sequence axis is dynamic unless `sequence` is False. With `target`, the model is written
    there instead, its weights in external data beside it, written from the module's tensors one at a time
    (no proto of the whole model is built), and the proto is None."""
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs)
    tries = [_axes(model, config, sequence)]
    if any(SEQUENCE in named.values() for named in tries[0].values()):
        tries.append(_axes(model, config, False))  # the sequence axis static, when torch.export fixes it
    errors = []
    with quiet_torch():
        if not isinstance(model.module, torch.jit.ScriptModule):
            for axes in tries:
                try:
                    program = torch.onnx.export(model.module, args, dynamo=True, opset_version=config.opset,
                                                input_names=model.input_names,
                                                dynamic_shapes=_dynamic_shapes(model, axes), verbose=False)
                except Exception as e:
                    errors.append(e)
                    continue
                how = {"exporter": TORCH_EXPORT, "dynamic_axes": axes}
                if errors:
                    how["sequence_static_reason"] = f"torch.export cannot make it dynamic ({_why(errors[0])})"
                elif sequence and _too_short(model):
                    how["sequence_static_reason"] = _too_short(model)
                if target is None:
                    return program.model_proto, how
                program.save(str(target), external_data=True)
                return None, how
        # TorchScript modules and some quantized modules only go through the older TorchScript exporter
        # (to a file, it writes the weights of a model over 2 GB as external data).
        buffer = io.BytesIO()
        axes = tries[0]
        try:
            torch.onnx.export(model.module, args, buffer if target is None else str(target), dynamo=False,
                              opset_version=min(config.opset, TORCHSCRIPT_MAX_OPSET), input_names=model.input_names,
                              dynamic_axes={n: {int(k): v for k, v in named.items()} for n, named in axes.items()} or None)
        except Exception as e:
            first = errors[-1] if errors else e
            raise EffkitError(f"the ONNX exporter cannot export this model: {_why(first, 300)}",
                              "run with --debug for details; ops without an ONNX equivalent need a rewrite") from first
    import onnx

    how = {"exporter": TORCHSCRIPT, "dynamic_axes": axes}
    if sequence and _too_short(model):
        how["sequence_static_reason"] = _too_short(model)
    how["fallback_reason"] = (f"torch.export failed: {_why(errors[-1])}" if errors
                              else "a TorchScript module only goes through the TorchScript exporter")
    return (onnx.load_from_string(buffer.getvalue()) if target is None else None), how


def _opset_of(proto: Any) -> int | None:
    """The default-domain opset the ONNX file declares (what was really used, not what was asked)."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _dynamic_sequence(model: Model, runner: OrtRunner) -> bool:
    """Whether the ONNX file leaves the sequence axis of every input that carries one unfixed."""
    seq = sequence_inputs(model.example_inputs)
    shapes = [i.shape for i in runner.session.get_inputs()]
    return bool(seq) and all(i < len(shapes) and len(shapes[i]) == 2 and not isinstance(shapes[i][1], int)
                             for i in seq)


def verify_onnx(model: Model, onnx_path: Path, config: ExportConfig) -> dict:
    """Run torch and ONNX Runtime on fresh inputs; raise ExportMismatch listing every output that differs.

    Checked at the example's shape, at one more batch row when the batch is dynamic, and at another sequence
    length when a text model's sequence axis is (SequenceMismatch when only that length differs)."""
    torch_runner = TorchRunner(model.module)
    ort_runner = OrtRunner(onnx_path, threads=available_cores())
    checks: list[tuple[int | None, int | None]] = [(None, None)]
    if config.dynamic_batch and all(a.ndim > 0 for a in model.example_inputs):
        checks.append((model.example_inputs[0].shape[0] + 1, None))
    lengths = []
    if _dynamic_sequence(model, ort_runner):
        length = _sequence_length(model)
        other = _other_length(length, model.meta.get("context_length"))
        if other is not None:
            checks.append((None, other))
            lengths = [length, other]
    mismatches: list[tuple[int | None, str]] = []  # (the other sequence length or None, what differs)
    worst = 0.0
    for batch, length in checks:
        inputs = _fresh_inputs(model, batch, length)
        try:
            expected = torch_runner.run(inputs)
        except Exception as e:
            if length is None:
                raise
            mismatches.append((length, f"torch fails at sequence length {length} ({first_line(e, 200)})"))
            continue
        # NaN compares unequal and Inf equal to itself: either would make the comparison lie
        check_finite(expected, "the model before export")
        try:
            got = ort_runner.run(inputs)
        except Exception as e:
            if batch is None and length is None:
                raise
            where = f"batch {batch}" if batch else f"sequence length {length}"
            mismatches.append((length, f"{where}: ONNX Runtime failed ({first_line(e, 200)})"))
            continue
        check_finite(got, "the ONNX export")
        if len(expected) != len(got):
            mismatches.append((length, f"torch gives {len(expected)} outputs, ONNX gives {len(got)}"))
            continue
        for i, (e, g) in enumerate(zip(expected, got)):
            name = ort_runner.output_names[i] if i < len(ort_runner.output_names) else f"output {i}"
            if e.shape != g.shape:
                mismatches.append((length, f"{name}: shape {list(g.shape)} instead of {list(e.shape)}"))
                continue
            diff = float(np.max(np.abs(e.astype(np.float64) - g.astype(np.float64)))) if e.size else 0.0
            worst = max(worst, diff)
            if not np.allclose(g, e, atol=config.atol, rtol=config.rtol):
                where = f" at batch {batch}" if batch else f" at sequence length {length}" if length else ""
                mismatches.append((length, f"{name}{where}: max abs diff {diff:.3g} > atol {config.atol:g} + "
                                           f"rtol {config.rtol:g}"))
    if mismatches:
        error = SequenceMismatch if all(length is not None for length, _ in mismatches) else ExportMismatch
        raise error(f"{DIFFERS}{'; '.join(text for _, text in mismatches)}",
                    "loosen --atol/--rtol if this is expected, or try another --opset")
    batched_ = bool(model.example_inputs) and model.example_inputs[0].ndim > 0
    batches = [b or model.example_inputs[0].shape[0] for b, length in checks if length is None] if batched_ else [1]
    report = {"max_abs_diff": worst, "batches_checked": batches}
    if lengths:
        report["sequence_lengths_checked"] = lengths
    return report


def export_onnx(model: Model, path: str | Path, config: ExportConfig | None = None, force: bool = False) -> Model:
    """Export `model` to ONNX at `path`, verified in ONNX Runtime; return the ONNX Model.

    A text model's sequence axis is dynamic; where the export matches torch at the example's length only,
    it is exported again with that axis static, and `sequence_static_reason` says why.
    Writes atomically: a failed verification leaves nothing at `path`. A model whose weights exceed
    `onnx_files.EXTERNAL_DATA_THRESHOLD` is written with them in a data file beside `path`, straight
    from the module's tensors: the whole model is never built as one proto.
    """
    config = config or ExportConfig()
    path = Path(path)
    if model.kind == "onnx":
        raise UsageError("the model is ONNX already", "pass a torch model to export")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists", "pass --force to overwrite it")
    try:
        opset, how, report = _export_verified(model, path, config, force, sequence=True)
    except SequenceMismatch as e:
        opset, how, report = _export_verified(model, path, config, force, sequence=False)
        how["sequence_static_reason"] = f"the export matches torch at its example's length only ({e.message.removeprefix(DIFFERS)})"
    exported = load_onnx(path, str(path), ())
    exported = exported.replace(example_inputs=model.example_inputs, source=model.source)
    exported.meta["export"] = {"opset": opset, "opset_requested": config.opset, **how,
                               "dynamic_batch": config.dynamic_batch, **report}
    return exported


def _export_verified(model: Model, path: Path, config: ExportConfig, force: bool,
                     sequence: bool) -> tuple[int | None, dict, dict]:
    """Export to `path` and verify it (see export_onnx): (the opset used, how it was made, the verification)."""
    import onnx

    large = _weight_bytes(model.module) > onnx_files.EXTERNAL_DATA_THRESHOLD
    proto, how = (None, {}) if large else _export_proto(model, config, sequence=sequence)
    if proto is not None and tensor_data_bytes(proto) <= onnx_files.EXTERNAL_DATA_THRESHOLD:
        with atomic_path(path, force) as tmp:
            onnx.save_model(proto, str(tmp))
            report = verify_onnx(model, tmp, config)
        return _opset_of(proto), how, report
    # staged and verified beside the target, then copied in data-first: a failed verification
    # leaves the old output as it was
    stage = track_temporary(tempfile.mkdtemp(prefix=".effkit-export-", dir=path.parent))
    try:
        staged = stage / path.name
        if proto is None:
            _, how = _export_proto(model, config, target=staged, sequence=sequence)
        else:  # the module was under the threshold, its export is not
            write_model(proto, staged, external=True)
        del proto
        report = verify_onnx(model, staged, config)
        opset = _opset_of(load_graph(staged))
        save_onnx_file(staged, path, force)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        forget_temporary(stage)
    return opset, how, report


def describe_export(report: dict) -> tuple[str, str, str | None]:
    """An export report in words: ("dynamic batch and sequence", "batch sizes 1, 2 and sequence lengths 16, 19",
    a warning when a text model's sequence axis had to stay static, else None)."""
    lengths = report.get("sequence_lengths_checked")
    axes = f"{'dynamic' if report.get('dynamic_batch', True) else 'static'} batch"
    if lengths:
        axes = "dynamic batch and sequence" if report.get("dynamic_batch", True) else "static batch, dynamic sequence"
    checked = f"batch sizes {', '.join(map(str, report.get('batches_checked', [])))}"
    if lengths:
        checked += f" and sequence lengths {', '.join(map(str, lengths))}"
    reason = report.get("sequence_static_reason")
    warning = (f"the sequence axis is static: {reason}; the ONNX model takes inputs of the example's length only"
               if reason else None)
    return axes, checked, warning


# A torch module's verified ONNX export, reused while the module lives (bench --runtime all,
# fidelity checks and later steps all need the same one).
_EXPORTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def onnx_path_for(model: Any) -> Path:
    """The ONNX file to run for this model: its own, or a verified temporary export of the torch module."""
    if model.kind == "onnx":
        return model.onnx_path
    cached = _EXPORTS.get(model.module)
    if cached is not None and cached[0].exists():
        return cached[0]
    target = Path(tempfile.mkdtemp(dir=workdir())) / "model.onnx"
    exported = export_onnx(model, target)
    _EXPORTS[model.module] = (target, exported.meta["export"])
    return target


def export_report_for(model: Any) -> dict:
    """How `onnx_path_for(model)` was exported: exporter, opset used, verification (see export_onnx)."""
    onnx_path_for(model)
    return dict(_EXPORTS[model.module][1])


def make_runner(model: Any, runtime: str, threads: int | None = None) -> Runner:
    """A runner for `model` on `runtime` ("torch" or "onnxruntime") with `threads`.

    Without `threads`, torch keeps its current setting and ONNX Runtime uses all cores;
    measurements always pass it explicitly so both runtimes get the same number.
    """
    if runtime == "torch":
        if model.kind != "torch":
            raise UsageError("an ONNX model runs on onnxruntime only", "use --runtime onnxruntime")
        return TorchRunner(model.module, threads)
    if runtime == "onnxruntime":
        return OrtRunner(onnx_path_for(model), threads or available_cores())
    raise UsageError(f"unknown runtime {runtime!r}", f"use one of {', '.join(RUNTIMES)}")
