"""What keeping a layer in float costs, and which layers to keep: the tolerance loop ranks layers by the
fidelity they buy per unit of that cost (`rank`), so that it keeps in float the few cheap layers that
take outlier activations and leaves the expensive ones int8.

The cost is a static estimate: a layer's share of the multiply-accumulates (MACs) of the candidate's
quantizable layers on the example inputs. torch: weight elements times the rows each layer sees, counted
by forward hooks on one call. ONNX: weight initializer elements times the rows of the node's input (its
shape with every dimension but the last, from ONNX shape inference with the example inputs' shapes; a
Conv's from its output). A layer whose rows shape inference cannot reach (past ONNX Runtime's fused
contrib ops) is counted at the most common rows of the others (one row when none is known). Memory
traffic and the quantize/dequantize a float layer adds between int8 neighbours are not in it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from effkit.onnx_files import load_graph
from effkit.runners import native_runner

ESTIMATE = "static: weight elements x rows (tokens, or output positions) on the example inputs"
EQUAL = "equal shares: the MACs could not be estimated, so layers are ranked by sensitivity alone"


def shares(candidate, ctx, names: Sequence[str]) -> tuple[dict[str, float], str]:
    """Each of `names` (layers of `candidate`) as a share of their summed MACs, and how it was estimated;
    equal shares when any layer's MACs cannot be estimated."""
    macs: dict[str, float] = {}
    try:
        if candidate.backend == "torch":
            macs = _torch_macs(ctx.model, names)
        else:
            for path in _graphs(ctx):  # the pre-processed graph, or the fused one the fused candidate uses
                found = _onnx_macs(path, ctx.model.example_inputs, names)
                if len(found) > len(macs):
                    macs = found
    except Exception:  # an estimate only: without it the ranking is by sensitivity, as it was
        macs = {}
    total = sum(macs.get(n, 0.0) for n in names)
    if not names or set(names) - set(macs) or total <= 0:
        return {n: 1.0 / max(1, len(names)) for n in names}, EQUAL
    return {n: macs[n] / total for n in names}, ESTIMATE


def rank(gains: dict[str, float], costs: dict[str, float], enough: float | None) -> list[str]:
    """Layer names, the one to keep in float first. `gains`: how much the tolerance's metric improves with
    only that layer in float (higher is better); `costs`: its share of the MACs; `enough`: the least gain
    seen to meet the tolerance on its own (None: no single layer does). A gain counts up to `enough`, since
    fidelity beyond the bar buys nothing: of two layers that each meet it, the cheaper comes first, and a
    cheap, barely sensitive layer does not jump ahead of the one that fixes the model. Layers that gain
    nothing come last, the least harmful first."""
    def key(name: str) -> tuple:
        gain = gains[name] if enough is None else min(gains[name], enough)
        if gain <= 0:
            return (1, -gain, name)
        return (0, -gain / max(costs[name], 1e-12), name)

    return sorted(gains, key=key)


def _graphs(ctx) -> list:
    fused = ctx.fusions is not None and not ctx.fusions.get("skipped")
    return [ctx.onnx_path()] + ([ctx.fused_onnx()] if fused else [])


def _torch_macs(model, names: Sequence[str]) -> dict[str, float]:
    """MACs of the named modules on one call with the example inputs, counted by forward hooks."""
    import torch

    modules = dict(model.module.named_modules())
    macs: dict[str, float] = {}

    def hook(name):
        def count(module, inputs, output):
            weights = [p for n, p in module.named_parameters(recurse=False) if n.startswith("weight") and p.dim() >= 2]
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if not weights or x is None:
                return
            if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
                rows = output.numel() / output.shape[1]  # batch x output positions
            else:  # Linear, GPT-2's Conv1D, LSTM, GRU: every row of the input's last axis
                rows = x.numel() / x.shape[-1]
            macs[name] = macs.get(name, 0.0) + sum(w.numel() for w in weights) * rows
        return count

    handles = [modules[n].register_forward_hook(hook(n)) for n in names if n in modules]
    try:
        native_runner(model).run(model.example_inputs)
    finally:
        for h in handles:
            h.remove()
    return macs


def _onnx_macs(path, example_inputs: Sequence[Any], names: Sequence[str]) -> dict[str, float]:
    """MACs of the named weight nodes of the ONNX graph at `path`, from its weight shapes and the shapes
    ONNX shape inference gives with the example inputs' (static estimate, see the module docstring)."""
    import onnx

    proto = load_graph(path)
    weights = {i.name: list(i.dims) for i in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in weights]
    for graph_input, array in zip(graph_inputs, example_inputs):
        dims = graph_input.type.tensor_type.shape.dim
        if len(dims) == getattr(array, "ndim", -1):
            for d, n in zip(dims, array.shape):
                d.dim_value = int(n)  # replaces a symbolic dimension (batch, sequence) with the example's
    inferred = onnx.shape_inference.infer_shapes(proto)
    shape = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
             for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    wanted = set(names)
    per_row, rows = {}, {}
    for node in proto.graph.node:
        if node.name not in wanted or len(node.input) < 2 or node.input[1] not in weights:
            continue
        per_row[node.name] = math.prod(weights[node.input[1]]) + sum(  # LSTM/GRU: the recurrent weights too
            math.prod(weights[i]) for i in node.input[2:3] if node.op_type in ("LSTM", "GRU") and i in weights)
        if node.op_type == "Conv":
            out = shape.get(node.output[0])
            rows[node.name] = math.prod(out) / out[1] if out and None not in out and out[1] else None
        else:
            x = shape.get(node.input[0])
            transposed = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
            rows[node.name] = (x[-1] if transposed else math.prod(x[:-1])) if x and None not in x else None
    known = [r for r in rows.values() if r]
    common = Counter(known).most_common(1)[0][0] if known else 1
    return {n: per_row[n] * (rows[n] or common) for n in per_row}


def kept_layers(kept_cost: dict) -> list[str]:
    """Each layer kept in float with its sensitivity and cost, e.g. 'pooler (cosine +0.0412 alone, 0.6% of
    the MACs)': what `_keep_sensitive_in_float` records in details["kept_cost"]["layers"]."""
    return [f"{layer['layer']} ({layer['metric']} {layer['sensitivity']:+.3g} alone, "
            f"{_percent(layer['macs_share'])} of the MACs)" for layer in kept_cost.get("layers") or []]


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%" if share >= 0.001 else "<0.1%"
