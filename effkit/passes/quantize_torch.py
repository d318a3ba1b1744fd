"""int8 in PyTorch, for users who stay there.

API choice: `torch.ao.quantization` (eager dynamic, and FX graph mode static with the x86
backend). It ships with torch, needs no extra dependency, and its FX x86 static path is the
fastest int8 we measured for CNNs on this kind of CPU; it is deprecated from torch 2.10 in favour
of torchao, but still runs on 2.13, and its deprecation warnings are silenced here. Quantized
modules are saved as TorchScript (`.ts`): torch.ao's packed int8 weights serialize there and load
back without the model's code, which torch.export (`.pt2`) does not do for these modules.
Weight-only int8 is a small module written here (int8 buffer + per-channel scales).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from effkit.errors import StepFailed, first_line
from effkit.util import quiet_torch


def _types(method: str) -> tuple:
    from torch import nn

    if method == "dynamic":
        return (nn.Linear, nn.LSTM, nn.GRU)
    return (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def layers(module: Any, method: str) -> list[dict]:
    """The layers `method` would quantize: [{name, alias, op}] with torch module names."""
    kinds = _types(method)
    return [{"name": name, "alias": name, "op": type(m).__name__}
            for name, m in module.named_modules() if name and isinstance(m, kinds)]


def _tensors(arrays: Sequence[np.ndarray]) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


def quantize_dynamic(module: Any, *, per_channel: bool, exclude: Sequence[str]) -> Any:
    """Linear (per-channel by default), LSTM and GRU with int8 weights; activations quantized at run time."""
    import torch
    from torch import nn

    with quiet_torch():
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic as ao

        model = copy.deepcopy(module).eval()
        linear_qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        spec = {name: linear_qconfig if isinstance(m, nn.Linear) else default_dynamic_qconfig
                for name, m in model.named_modules()
                if name and isinstance(m, _types("dynamic")) and name not in exclude}
        return ao(model, spec, dtype=torch.qint8, inplace=False)


def quantize_static(module: Any, example: Sequence[np.ndarray], batches: list[tuple], *, per_channel: bool,
                    calib_method: str, exclude: Sequence[str],
                    progress: Callable[[float], None] | None = None) -> Any:
    """FX graph mode static int8 with the x86 backend (u8 activations, s8 weights), calibrated on `batches`.

    calib_method: "minmax" (MinMaxObserver) or "entropy" (HistogramObserver, torch's default,
    which minimizes the quantization error of the histogram). torch.ao has no percentile observer.
    """
    import torch

    if calib_method == "percentile":
        raise ValueError("torch.ao has no percentile observer")
    with quiet_torch():
        from torch.ao.quantization import QConfig, get_default_qconfig, get_default_qconfig_mapping
        from torch.ao.quantization.observer import (
            MinMaxObserver, PerChannelMinMaxObserver, default_weight_observer,
        )
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        base = get_default_qconfig("x86")
        activation = base.activation
        if calib_method == "minmax":
            activation = MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=False)
        weight = base.weight if per_channel else default_weight_observer
        if per_channel and calib_method == "minmax":
            weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        mapping = get_default_qconfig_mapping("x86").set_global(QConfig(activation=activation, weight=weight))
        for name in exclude:
            mapping = mapping.set_module_name(name, None)
        model = copy.deepcopy(module).eval()
        prepared = prepare_fx(model, mapping, _tensors(example))
        with torch.inference_mode():
            for i, batch in enumerate(batches):
                prepared(*_tensors(batch))
                if progress:
                    progress((i + 1) / len(batches))
        return convert_fx(prepared)


class Int8WeightOnly:
    """Factory for the weight-only replacement of a Linear or ConvNd (a class is built lazily so
    this module imports without torch)."""

    _cls = None

    @classmethod
    def build(cls, layer: Any, per_channel: bool) -> Any:
        if cls._cls is None:
            cls._cls = _weight_only_class()
        return cls._cls(layer, per_channel)


def _weight_only_class():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class WeightOnlyInt8(nn.Module):
        """A Linear or ConvNd whose weight is stored as int8 with float scales, dequantized per call."""

        def __init__(self, layer: nn.Module, per_channel: bool):
            super().__init__()
            w = layer.weight.detach().float()
            if per_channel:
                scale = w.abs().reshape(w.shape[0], -1).amax(1) / 127.0
            else:
                scale = w.abs().amax().reshape(1) / 127.0
            scale = torch.where(scale == 0, torch.ones_like(scale), scale)
            shape = (-1,) + (1,) * (w.dim() - 1)
            self.register_buffer("qweight", torch.clamp(torch.round(w / scale.reshape(shape)), -127, 127).to(torch.int8))
            self.register_buffer("scale", scale.reshape(shape).clone())
            self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
            self.conv = None if isinstance(layer, nn.Linear) else len(layer.kernel_size)
            if self.conv:
                self.stride, self.padding = layer.stride, layer.padding
                self.dilation, self.groups = layer.dilation, layer.groups

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = self.qweight.to(x.dtype) * self.scale
            if self.conv is None:
                return F.linear(x, w, self.bias)
            conv = (F.conv1d, F.conv2d, F.conv3d)[self.conv - 1]
            return conv(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    return WeightOnlyInt8


def quantize_weight_only(module: Any, *, per_channel: bool, exclude: Sequence[str]) -> Any:
    """Replace every Linear and ConvNd (zero padding) by an int8-weight version; compute stays float."""
    model = copy.deepcopy(module).eval()
    for name, layer in list(model.named_modules()):
        if not name or name in exclude or not isinstance(layer, _types("weight-only")):
            continue
        if getattr(layer, "padding_mode", "zeros") != "zeros" or isinstance(getattr(layer, "padding", 0), str):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8WeightOnly.build(layer, per_channel))
    return model


def to_torchscript(module: Any, example: Sequence[np.ndarray]) -> Any:
    """Trace a quantized module to TorchScript, the format its int8 weights are saved in."""
    import torch

    with quiet_torch(), torch.no_grad():
        try:
            return torch.jit.trace(module, _tensors(example), check_trace=False, strict=False)
        except Exception as e:
            raise StepFailed(f"cannot trace the int8 model to TorchScript: {first_line(e, 200)}",
                             "use --backend onnxruntime") from e
