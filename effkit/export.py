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
from effkit.inputs import batched
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


def _fresh_inputs(model: Model, batch: int | None) -> tuple[np.ndarray, ...]:
    """Inputs the export never saw: new random floats; integer inputs (token ids) kept as they are."""
    rng = np.random.default_rng(1234)
    arrays = batched(model.example_inputs, batch) if batch is not None else model.example_inputs
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


def _export_proto(model: Model, config: ExportConfig, target: Path | None = None) -> tuple[Any, dict]:
    """The ONNX proto and how it was made: {"exporter", "fallback_reason" (when torch.export failed)}.

    With `target`, the model is written there instead, its weights in external data beside it, written
    from the module's tensors one at a time (no proto of the whole model is built), and the proto is None."""
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs)
    dynamic = tuple({0: torch.export.Dim.DYNAMIC} if a.dim() > 0 else None for a in args) if config.dynamic_batch else None
    errors = []
    with quiet_torch():
        if not isinstance(model.module, torch.jit.ScriptModule):
            try:
                program = torch.onnx.export(model.module, args, dynamo=True, opset_version=config.opset,
                                            input_names=model.input_names, dynamic_shapes=dynamic, verbose=False)
                if target is None:
                    return program.model_proto, {"exporter": TORCH_EXPORT}
                program.save(str(target), external_data=True)
                return None, {"exporter": TORCH_EXPORT}
            except Exception as e:
                errors.append(e)
        # TorchScript modules and some quantized modules only go through the older TorchScript exporter
        # (to a file, it writes the weights of a model over 2 GB as external data).
        buffer = io.BytesIO()
        axes = {n: {0: "batch"} for n in model.input_names} if config.dynamic_batch else None
        try:
            torch.onnx.export(model.module, args, buffer if target is None else str(target), dynamo=False,
                              opset_version=min(config.opset, TORCHSCRIPT_MAX_OPSET),
                              input_names=model.input_names, dynamic_axes=axes)
        except Exception as e:
            first = errors[0] if errors else e
            msg = first_line(first)
            raise EffkitError(f"the ONNX exporter cannot export this model: {msg}",
                              "run with --debug for details; ops without an ONNX equivalent need a rewrite") from first
    import onnx

    how = {"exporter": TORCHSCRIPT}
    how["fallback_reason"] = (f"torch.export failed: {first_line(errors[0], 200)}" if errors
                              else "a TorchScript module only goes through the TorchScript exporter")
    return (onnx.load_from_string(buffer.getvalue()) if target is None else None), how


def _opset_of(proto: Any) -> int | None:
    """The default-domain opset the ONNX file declares (what was really used, not what was asked)."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def verify_onnx(model: Model, onnx_path: Path, config: ExportConfig) -> dict:
    """Run torch and ONNX Runtime on fresh inputs; raise ExportMismatch listing every output that differs."""
    torch_runner = TorchRunner(model.module)
    ort_runner = OrtRunner(onnx_path, threads=available_cores())
    batches = [None]
    if config.dynamic_batch and all(a.ndim > 0 for a in model.example_inputs):
        batches.append(model.example_inputs[0].shape[0] + 1)
    mismatches, worst = [], 0.0
    for batch in batches:
        inputs = _fresh_inputs(model, batch)
        expected = torch_runner.run(inputs)
        # NaN compares unequal and Inf equal to itself: either would make the comparison lie
        check_finite(expected, "the model before export")
        try:
            got = ort_runner.run(inputs)
        except Exception as e:
            if batch is None:
                raise
            mismatches.append(f"batch {batch}: ONNX Runtime failed ({first_line(e, 200)})")
            continue
        check_finite(got, "the ONNX export")
        if len(expected) != len(got):
            mismatches.append(f"torch gives {len(expected)} outputs, ONNX gives {len(got)}")
            continue
        for i, (e, g) in enumerate(zip(expected, got)):
            name = ort_runner.output_names[i] if i < len(ort_runner.output_names) else f"output {i}"
            if e.shape != g.shape:
                mismatches.append(f"{name}: shape {list(g.shape)} instead of {list(e.shape)}")
                continue
            diff = float(np.max(np.abs(e.astype(np.float64) - g.astype(np.float64)))) if e.size else 0.0
            worst = max(worst, diff)
            if not np.allclose(g, e, atol=config.atol, rtol=config.rtol):
                where = f" at batch {batch}" if batch else ""
                mismatches.append(f"{name}{where}: max abs diff {diff:.3g} > atol {config.atol:g} + rtol {config.rtol:g}")
    if mismatches:
        raise ExportMismatch(f"the ONNX export differs from torch: {'; '.join(mismatches)}",
                             "loosen --atol/--rtol if this is expected, or try another --opset")
    return {"max_abs_diff": worst, "batches_checked": [b or model.example_inputs[0].shape[0] for b in batches]
            if model.example_inputs and model.example_inputs[0].ndim else [1]}


def export_onnx(model: Model, path: str | Path, config: ExportConfig | None = None, force: bool = False) -> Model:
    """Export `model` to ONNX at `path`, verified in ONNX Runtime; return the ONNX Model.

    Writes atomically: a failed verification leaves nothing at `path`. A model whose weights exceed
    `onnx_files.EXTERNAL_DATA_THRESHOLD` is written with them in a data file beside `path`, straight
    from the module's tensors: the whole model is never built as one proto.
    """
    import onnx

    config = config or ExportConfig()
    path = Path(path)
    if model.kind == "onnx":
        raise UsageError("the model is ONNX already", "pass a torch model to export")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists", "pass --force to overwrite it")
    large = _weight_bytes(model.module) > onnx_files.EXTERNAL_DATA_THRESHOLD
    proto, how = (None, {}) if large else _export_proto(model, config)
    if proto is not None and tensor_data_bytes(proto) <= onnx_files.EXTERNAL_DATA_THRESHOLD:
        with atomic_path(path, force) as tmp:
            onnx.save_model(proto, str(tmp))
            report = verify_onnx(model, tmp, config)
        opset = _opset_of(proto)
    else:
        # staged and verified beside the target, then copied in data-first: a failed verification
        # leaves the old output as it was
        stage = track_temporary(tempfile.mkdtemp(prefix=".effkit-export-", dir=path.parent))
        try:
            staged = stage / path.name
            if proto is None:
                _, how = _export_proto(model, config, target=staged)
            else:  # the module was under the threshold, its export is not
                write_model(proto, staged, external=True)
            del proto
            report = verify_onnx(model, staged, config)
            opset = _opset_of(load_graph(staged))
            save_onnx_file(staged, path, force)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
            forget_temporary(stage)
    exported = load_onnx(path, str(path), ())
    exported = exported.replace(example_inputs=model.example_inputs, source=model.source)
    exported.meta["export"] = {"opset": opset, "opset_requested": config.opset, **how,
                               "dynamic_batch": config.dynamic_batch, **report}
    return exported


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
