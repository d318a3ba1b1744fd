"""The export step as a pass: a torch model to a verified ONNX model in effkit's work folder.

The export itself is `effkit.export` (below the benchmark, which runs torch models in ONNX Runtime
through it); this module gives it the pass interface, so compress runs it like every other step.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from effkit.export import ExportConfig, describe_export, export_onnx, export_report_for, onnx_path_for, verify_onnx
from effkit.load import load_model
from effkit.passes import PassContext, PassResult
from effkit.util import workdir


def run(model, config: ExportConfig, ctx: PassContext) -> PassResult:
    """Export `model` to ONNX, verified in ONNX Runtime. An ONNX model is its own export (kept=False).

    With the default config the verified export every ONNX Runtime measurement of this model ran on
    is checked again and reused, instead of exporting the same thing twice.
    """
    if model.kind == "onnx":
        return PassResult(model, {}, ["the final model is ONNX already, so it is the export (reloaded and checked "
                                      "when written)"], kept=False)
    if config == ExportConfig():
        path = onnx_path_for(model)
        report = {**export_report_for(model), **verify_onnx(model, path, config)}
        exported = load_model(str(path), check=False).replace(example_inputs=model.example_inputs,
                                                              source=model.source)
    else:
        exported = export_onnx(model, Path(tempfile.mkdtemp(dir=workdir())) / "model.onnx", config)
        report = dict(exported.meta["export"])
    _, checked, sequence_warning = describe_export(report)
    return PassResult(exported, report, [f"verified in ONNX Runtime: max abs diff {report['max_abs_diff']:.3g} at {checked}"],
                      warnings=[sequence_warning] if sequence_warning else [])


def setting(config: ExportConfig) -> str:
    return "ONNX, verified in ONNX Runtime"
