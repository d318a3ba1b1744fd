"""The `Model` value: a loaded model and what every step needs to run it.

The torch module or the ONNX file, the example inputs (numpy arrays, so torch and ONNX Runtime
get the very same values), input and output names, and where it came from. Loading is
`effkit.load`, writing `effkit.save`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Model:
    """A loaded model and what is needed to run it."""

    kind: str  # "torch" or "onnx"
    example_inputs: tuple[np.ndarray, ...]
    input_names: list[str]
    source: str
    format: str  # factory, state_dict, safetensors, pickle, pt2, torchscript, onnx, hf, derived
    module: Any = None  # torch.nn.Module when kind == "torch"
    onnx_path: Path | None = None  # when kind == "onnx"
    output_names: list[str] | None = None
    path: Path | None = None  # the file it was loaded from; None once a pass has changed it
    save_suffix: str = ".pt"  # how save_model() serializes it when no suffix is asked for
    meta: dict = field(default_factory=dict)

    def replace(self, **changes: Any) -> Model:
        """A copy with some fields changed (passes return new models; the original survives)."""
        return dataclasses.replace(self, **changes)

    @property
    def input_specs(self) -> list[dict]:
        return [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype)}
                for n, a in zip(self.input_names, self.example_inputs)]

    def describe_inputs(self) -> str:
        return ", ".join(f"{n}: {'x'.join(map(str, a.shape))} {a.dtype}"
                         for n, a in zip(self.input_names, self.example_inputs))
