"""torchao on the torch path: int8 and int4 weight-only, and int8 with per-token dynamic activations.

torchao 0.18 on an x86 CPU: `Int8WeightOnlyConfig` (int8 weights per output channel) and
`Int8DynamicActivationInt8WeightConfig` (activations quantized per token at run time, int8 matmul)
run here; `Int4WeightOnlyConfig` does not (its formats need mslk, CUDA or XPU kernels, or bf16 on
CUDA), so 4-bit weights use `IntxWeightOnlyConfig(weight_dtype=torch.int4)` in groups, whose values
are stored one per int8 byte and dequantized before a float matmul. Only Linear layers are
quantized; GPT-2's Conv1D layers are turned into Linear first.

The quantized tensors are unwrapped into plain tensors and torchao operators
(`torchao.utils.unwrap_tensor_subclass`), so that the model exports to `.pt2` and loads back
without effkit; TorchScript cannot hold torchao's tensors (saving a traced one crashes torch).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from effkit.util import import_torchao, quiet_torch

SCHEMES = ("int8-weight", "int4-weight", "int8-dynamic")
MISSING = "needs torchao: pip install torchao"


def available() -> bool:
    """Whether torchao imports here."""
    return import_torchao() is not None


def label(scheme: str, group_size: int) -> str:
    """How a scheme is shown in the candidates table."""
    return {"int8-weight": "torchao int8 weight-only per-channel",
            "int4-weight": f"torchao int4 weight-only group {group_size}",
            "int8-dynamic": "torchao int8 dynamic per-token act, per-channel weights"}[scheme]


def layers(module: Any) -> list[dict]:
    """The layers torchao quantizes here: [{name, alias, op}] for every Linear (and GPT-2 Conv1D)."""
    from torch import nn

    return [{"name": name, "alias": name, "op": type(m).__name__}
            for name, m in module.named_modules() if name and (isinstance(m, nn.Linear) or is_conv1d(m))]


def is_conv1d(m: Any) -> bool:
    """transformers' Conv1D (GPT-2): a Linear with its weight stored transposed (in, out)."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None


def _as_linear(conv1d: Any) -> Any:
    import torch
    from torch import nn

    n_in, n_out = conv1d.weight.shape
    linear = nn.Linear(n_in, n_out, bias=conv1d.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(conv1d.weight.t())
        if conv1d.bias is not None:
            linear.bias.copy_(conv1d.bias)
    return linear


def with_linears(module: Any) -> Any:
    """A copy of `module` (in eval mode) with every GPT-2 Conv1D replaced by the equivalent Linear, so that
    quantizers that take Linear layers only (torchao, torch.ao dynamic) cover them too."""
    model = copy.deepcopy(module).eval()
    for name, layer in list(model.named_modules()):
        if name and is_conv1d(layer):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, _as_linear(layer))
    return model


def _config(scheme: str, group_size: int) -> Any:
    import torch

    q = import_torchao()
    if scheme == "int8-weight":
        return q.Int8WeightOnlyConfig()
    if scheme == "int8-dynamic":
        return q.Int8DynamicActivationInt8WeightConfig()
    from torchao.quantization.granularity import PerGroup

    return q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))


def quantize(module: Any, scheme: str, *, group_size: int, exclude: Sequence[str]) -> Any:
    """A copy of `module` with its Linear layers (but `exclude`) quantized by torchao as `scheme` says,
    unwrapped to plain tensors. Raises ValueError when torchao is missing or no layer is left to quantize."""
    from torch import nn

    if import_torchao() is None:
        raise ValueError(MISSING)
    from torchao.utils import unwrap_tensor_subclass

    model = with_linears(module)
    skip = set(exclude)
    chosen = {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in skip
              and (scheme != "int4-weight" or m.in_features % group_size == 0)}
    if not chosen:
        raise ValueError(f"no Linear layer for torchao to quantize"
                         f"{f' with {group_size} inputs per group' if scheme == 'int4-weight' else ''}")
    with quiet_torch():
        import_torchao().quantize_(model, _config(scheme, group_size),
                                   filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in chosen)
        return unwrap_tensor_subclass(model)

