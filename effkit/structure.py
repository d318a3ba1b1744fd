"""What a model is made of: layers, parameters, sparsity, what int8 and channel pruning can touch."""

from __future__ import annotations

from collections import Counter

import numpy as np

from effkit.errors import EffkitError
from effkit.inputs import torch_inputs
from effkit.load import check_runs
from effkit.onnx_files import load_graph, tensor_chunks
from effkit.passes.prune_graph import dependency_graph, output_layers, prunable_types
from effkit.util import quiet_torch

# Layers with int8 kernels (dynamic: Linear/LSTM/GRU; static: also convolutions).
QUANTIZABLE_TORCH = ("Linear", "Conv1d", "Conv2d", "Conv3d", "LSTM", "GRU", "Embedding")
QUANTIZABLE_ONNX = ("MatMul", "Gemm", "Conv", "ConvTranspose", "LSTM", "GRU", "Gather")


def describe(model) -> dict:
    """A JSON-ready description of `model` (see `effkit inspect`)."""
    outputs = check_runs(model)
    info = {
        "source": model.source,
        "format": model.format,
        "kind": model.kind,
        "inputs": model.input_specs,
        "outputs": [{"name": (model.output_names or [])[i] if i < len(model.output_names or []) else f"output_{i}",
                     "shape": list(o.shape), "dtype": str(o.dtype)} for i, o in enumerate(outputs)],
    }
    info.update(_describe_torch(model) if model.kind == "torch" else _describe_onnx(model))
    return info


def _describe_torch(model) -> dict:
    layers, by_type = [], Counter()
    params_by_type: Counter = Counter()
    for name, module in model.module.named_modules():
        own = list(module.parameters(recurse=False))
        if not own and list(module.children()):
            continue
        kind = type(module).__name__
        count = sum(p.numel() for p in own)
        zeros = sum(int((p == 0).sum()) for p in own)
        if not name:
            continue
        by_type[kind] += 1
        params_by_type[kind] += count
        layers.append({"name": name, "type": kind, "parameters": count,
                       "sparsity": zeros / count if count else 0.0,
                       "quantizable": kind in QUANTIZABLE_TORCH,
                       "prunable": isinstance(module, prunable_types())})
    kept, why = _kept_whole(model)
    for layer in layers:
        if layer["name"] in kept:
            layer["prunable"] = False
    total = sum(p.numel() for p in model.module.parameters())
    macs = _macs(model)
    return {
        "parameters": total,
        "nonzero_parameters": int(sum(int((p != 0).sum()) for p in model.module.parameters())),
        "macs": macs,
        "layer_types": [{"type": t, "count": by_type[t], "parameters": params_by_type[t]} for t in by_type],
        "layers": layers,
        "quantizable_layers": [l["name"] for l in layers if l["quantizable"]],
        "prunable_layers": [l["name"] for l in layers if l["prunable"]],
        "notes": [why] if why else [],
    }


def _kept_whole(model) -> tuple[set[str], str | None]:
    """The layers `effkit prune` leaves whole, found the way prune finds them (its dependency graph and
    output layers), and why, when the model cannot be pruned at all."""
    names = {n for n, _ in model.module.named_modules() if n}
    if model.format in ("torchscript", "pt2"):
        return names, f"{model.format}: channel pruning needs the model's nn.Module (a factory or a state_dict)"
    try:
        graph = dependency_graph(model.module, torch_inputs(model))
    except EffkitError as e:
        return names, f"not prunable: {e.message}"
    return set(output_layers(graph, {m: n for n, m in model.module.named_modules()})), None


def _macs(model) -> int | None:
    """Multiply-accumulates for one forward pass at the example batch (Torch-Pruning's counter)."""
    try:
        import torch_pruning as tp

        args = torch_inputs(model)
        with quiet_torch():
            macs, _ = tp.utils.count_ops_and_params(model.module, args if len(args) > 1 else args[0])
        return int(macs)
    except Exception:  # counting is best-effort: TorchScript and exotic modules cannot be traced
        return None


def _describe_onnx(model) -> dict:
    proto = load_graph(model.onnx_path)  # external weights are read a chunk at a time, never held whole
    inits = {}  # name -> (values, non-zero values)
    for t in proto.graph.initializer:
        counts = [(c.size, np.count_nonzero(c)) for c in tensor_chunks(t, model.onnx_path.parent)]
        inits[t.name] = (int(sum(n for n, _ in counts)), int(sum(z for _, z in counts)))
    ops = Counter(n.op_type for n in proto.graph.node)
    layers = []
    for node in proto.graph.node:
        weights = [inits[i] for i in node.input if i in inits]
        count = int(sum(n for n, _ in weights))
        zeros = int(sum(n - nonzero for n, nonzero in weights))
        if count or node.op_type in QUANTIZABLE_ONNX:
            layers.append({"name": node.name or node.output[0], "type": node.op_type, "parameters": count,
                           "sparsity": zeros / count if count else 0.0,
                           "quantizable": node.op_type in QUANTIZABLE_ONNX, "prunable": False})
    total = int(sum(n for n, _ in inits.values()))
    return {
        "parameters": total,
        "nonzero_parameters": int(sum(nonzero for _, nonzero in inits.values())),
        "macs": None,
        "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "layer_types": [{"type": t, "count": c, "parameters": sum(l["parameters"] for l in layers if l["type"] == t)}
                        for t, c in ops.most_common()],
        "layers": layers,
        "quantizable_layers": [l["name"] for l in layers if l["quantizable"]],
        "prunable_layers": [],
        "notes": ["ONNX: channel pruning works on torch models; quantization works on ONNX too"],
    }
