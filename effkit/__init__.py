"""effkit: make PyTorch models smaller and faster, measured before and after, gated in CI.

The public API is imported lazily: `import effkit` loads neither torch nor onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "Model": "effkit.model",
    "load_model": "effkit.model",
    "save_model": "effkit.model",
    "bench": "effkit.benchmark",
    "BenchResult": "effkit.benchmark",
    "export_onnx": "effkit.export",
    "ExportConfig": "effkit.export",
    "distill": "effkit.passes.distill",
    "DistillConfig": "effkit.passes.distill",
    "prune": "effkit.passes.prune",
    "PruneConfig": "effkit.passes.prune",
    "compare_outputs": "effkit.fidelity",
    "EffkitError": "effkit.errors",
    "quantize": "effkit.passes.quantize",
    "QuantizeConfig": "effkit.passes.quantize",
    "compare": "effkit.comparison",
    "gate": "effkit.gates",
    "compress": "effkit.pipeline",
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
