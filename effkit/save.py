"""Write a Model to disk in the format its suffix names: .pt2, .pt/.pth, .safetensors, .ts, .onnx."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from effkit.errors import ModelLoadError, UsageError, first_line
from effkit.export import export_onnx
from effkit.files import atomic_path
from effkit.inputs import torch_inputs
from effkit.load_pt2 import PT2_META
from effkit.model import Model
from effkit.onnx_files import save_onnx_file
from effkit.util import quiet_torch


def save_model(model: Model, path: str | Path, force: bool = False) -> list[Path]:
    """Save `model` atomically in the format its suffix names; return the files written.

    torch models: `.pt2` (torch.export; loads back without the model's code), `.pt`/`.pth`
    (state_dict, needs --arch to load), `.safetensors` (likewise), `.onnx` (verified export).
    ONNX models: `.onnx` only.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if model.kind == "onnx":
        if suffix != ".onnx":
            raise UsageError(f"an ONNX model can only be saved as .onnx, not {suffix or 'no suffix'}")
        return save_onnx_file(model.onnx_path, path, force)
    if suffix == ".onnx":
        export_onnx(model, path, force=force)
        return [path]
    import torch

    with atomic_path(path, force) as tmp:
        if suffix == ".pt2":
            program = export_program(model)
            batch = int(model.example_inputs[0].shape[0]) if model.example_inputs[0].ndim else 0
            torch.export.save(program, str(tmp), extra_files={PT2_META: json.dumps({"example_batch": batch})})
        elif suffix in (".pt", ".pth"):
            torch.save(model.module.state_dict(), str(tmp))
        elif suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in model.module.state_dict().items()}, str(tmp))
        elif suffix == ".ts":
            scripted = model.module
            if not isinstance(scripted, torch.jit.ScriptModule):
                scripted = torch.jit.trace(model.module, torch_inputs(model), check_trace=False)
            torch.jit.save(scripted, str(tmp))
        else:
            raise UsageError(f"cannot save a torch model as {suffix or 'a file without suffix'}",
                             "use .pt2 (loads without code), .pt/.safetensors (weights), .ts (TorchScript) or .onnx")
    return [path]


def save_with_onnx(model: Model, path: str | Path, onnx_path: str | Path | None = None,
                   force: bool = False) -> list[Path]:
    """Save `model` at `path` and, when `onnx_path` is given, a verified ONNX copy there, the ONNX first:
    a failed verification (exit 1) leaves the model unwritten too. Returns the files written."""
    written = []
    if onnx_path is not None:
        if model.kind == "onnx":
            save_onnx_file(model.onnx_path, Path(onnx_path), force)
        else:
            export_onnx(model, onnx_path, force=force)
        written.append(Path(onnx_path))
    with quiet_torch():
        return save_model(model, path, force) + written


def export_program(model: Model) -> Any:
    """torch.export the model with a dynamic batch dimension where the model allows it.

    torch.export specializes a dimension of size 1 ("0/1 specialization"), so a batch-1 example
    is exported from a batch-2 copy; `save_model` records the real example batch beside it.
    """
    import torch

    args = torch_inputs(model)
    traced = tuple(torch.cat([a, a]) if a.dim() > 0 and a.shape[0] == 1 else a for a in args)
    dynamic = tuple({0: torch.export.Dim.AUTO} if a.dim() > 0 else None for a in traced)

    with quiet_torch():
        try:
            return torch.export.export(model.module, traced, dynamic_shapes=dynamic)
        except Exception:
            try:
                return torch.export.export(model.module, args)
            except Exception as e:
                raise ModelLoadError(f"torch.export cannot capture this model: {first_line(e)}",
                                     "save it as .onnx or .pt (state_dict) instead") from e
