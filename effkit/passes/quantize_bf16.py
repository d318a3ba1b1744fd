"""bf16 as a quantize candidate: the torch module with weights and activations in bfloat16, its interface
kept fp32 (floating inputs cast in, floating outputs cast back), exported to `.pt2`.

bf16 is only worth measuring where the CPU computes it natively (avx512_bf16 or AMX, read from
/proc/cpuinfo by `effkit.env.cpu_info`); elsewhere oneDNN emulates it and it is slower than fp32.
ONNX Runtime's CPU provider has no bfloat16 MatMul kernel (1.32: NOT_IMPLEMENTED), which
`ort_bf16_error` measures on a one-MatMul graph rather than assumes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from effkit.errors import first_line

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
NO_BF16 = "this CPU has no avx512_bf16 or AMX: bf16 would be emulated and slow"


def cpu_has_bf16(isa: Sequence[str]) -> bool:
    """Whether the CPU (its ISA flags from `effkit.env.cpu_info`) computes bf16 natively."""
    return any(flag in isa for flag in BF16_FLAGS)


def layers(module: Any) -> list[dict]:
    """The weighted layers a user can keep in fp32 (--exclude, the tolerance loop): Linear, Conv, Conv1D."""
    from torch import nn

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [{"name": name, "alias": name, "op": type(m).__name__} for name, m in module.named_modules()
            if name and (isinstance(m, kinds) or type(m).__name__ == "Conv1D")]


def _cast_class():
    import torch
    from torch import nn

    def cast(value, dtype):
        if isinstance(value, torch.Tensor):
            return value.to(dtype) if value.is_floating_point() else value
        if isinstance(value, (tuple, list)):
            return type(value)(cast(v, dtype) for v in value)
        if isinstance(value, dict):
            return type(value)({k: cast(v, dtype) for k, v in value.items()})
        return value

    class Cast(nn.Module):
        """Runs `inner` with its floating inputs cast to `inside` and its floating outputs cast to `outside`."""

        def __init__(self, inner, inside, outside):
            super().__init__()
            self.inner, self.inside, self.outside = inner, inside, outside

        def forward(self, *args, **kwargs):
            return cast(self.inner(*cast(args, self.inside), **cast(kwargs, self.inside)), self.outside)

    return Cast


def to_bf16(module: Any, exclude: Sequence[str] = ()) -> Any:
    """A copy of `module` computing in bfloat16 behind an fp32 interface; the layers named in `exclude`
    stay fp32 (cast to fp32 around them). Raises ValueError when nothing would be left in bf16."""
    import torch

    Cast = _cast_class()
    model = copy.deepcopy(module).eval()
    keep = [name for name in exclude if name]
    if not any(p.is_floating_point() for p in model.parameters()):
        raise ValueError("the model has no floating-point weights to hold in bf16")
    model = model.to(torch.bfloat16)
    for name in keep:
        layer = model.get_submodule(name).to(torch.float32)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child,
                Cast(layer, torch.float32, torch.bfloat16))
    return Cast(model, torch.bfloat16, torch.float32).eval()


def ort_bf16_error() -> str:
    """Why ONNX Runtime's CPU provider cannot be offered bf16: measured by loading a one-MatMul bf16 graph."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.BFLOAT16, [8, 8], np.zeros(64, np.uint16).tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16), helper.make_node("MatMul", ["xb", "w"], ["yb"]),
         helper.make_node("Cast", ["yb"], ["y"], to=TensorProto.FLOAT)], "bf16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:
        reason = "NOT_IMPLEMENTED" if "NOT_IMPLEMENTED" in str(e) else first_line(e)
        return f"ONNX Runtime {ort.__version__}'s CPU provider has no bf16 MatMul kernel ({reason})"
    return (f"ONNX Runtime {ort.__version__} runs a bf16 MatMul on CPU, but effkit builds no bf16 ONNX graph "
            "yet: bf16 runs on the torch path")
