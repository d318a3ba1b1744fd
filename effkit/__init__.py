"""effkit: make PyTorch models smaller and faster, measured before and after, gated in CI.

The public API is imported lazily: `import effkit` loads neither torch nor onnxruntime.

Layers, top first. A module imports from its own layer and the layers below it, never from one
above, and no imports go round in a circle; imports between effkit modules are module-level, and
only heavy third-party packages (torch, onnx, onnxruntime, transformers) are imported inside
functions. tests/test_layers.py checks all of it against this table:

    cli: cli, __main__
    outputs: outdir, report
    verdicts: gate_config, gates, results
    pipeline: pipeline, pipeline_result, recipe, apply
    passes: passes, structure
    judge: judge, outcome
    benchmark: benchmark, comparison, size, generation, generation_ort
    save: save
    export: export
    load: load, load_hf, load_pt2, data, data_images, data_text, samples
    runners: runners
    base: effkit, errors, specs, files, util, env, limits, interrupts, factory, model, inputs, onnx_files, fidelity, pt2_guard

base: errors and their exit codes, parsers, atomic files, the machine, the Model value, example
inputs, ONNX files, output agreement metrics. runners: torch and ONNX Runtime behind one interface.
load: every format into a Model. export: verified ONNX export (and the ONNX file a torch model runs
on in ONNX Runtime). save: writing models. benchmark: timing, statistics, size, LLM generation (on
torch, and on ONNX Runtime through an export with past key/values). judge: is a changed
model still good enough. passes: one config and one `run` each, found by config type. pipeline:
compress's steps, and one step applied on its own (apply: run, measure, judge, save; what prune,
quantize and distill call). verdicts: gates and A/B comparisons. outputs: OUTDIR and reports. cli: commands.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "Model": "effkit.model",
    "load_model": "effkit.load",
    "save_model": "effkit.save",
    "bench": "effkit.benchmark",
    "BenchResult": "effkit.benchmark",
    "export_onnx": "effkit.export",
    "ExportConfig": "effkit.export",
    "distill": "effkit.passes.distill",
    "DistillConfig": "effkit.passes.distill",
    "prune": "effkit.passes.prune",
    "PruneConfig": "effkit.passes.prune",
    "PassContext": "effkit.passes",
    "PassResult": "effkit.passes",
    "compare_outputs": "effkit.fidelity",
    "EffkitError": "effkit.errors",
    "quantize": "effkit.passes.quantize",
    "QuantizeConfig": "effkit.passes.quantize",
    "compare": "effkit.comparison",
    "gate": "effkit.gates",
    "compress": "effkit.outdir",
    "Recipe": "effkit.recipe",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'effkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
