"""SmoothQuant (Xiao et al., 2023): move the outlier channels' scale from activations into weights.

Transformers carry a few activation channels tens of times larger than the rest, so one int8 scale
per tensor leaves the other channels a handful of levels. For every LayerNorm whose output feeds
MatMuls (Linear layers), a per-channel factor s = max|X_j|^alpha / max|W_j|^(1-alpha) divides the
activation and multiplies the matching weight rows: X W = (X / s)(s W), the same function in fp32.
The division is folded into the LayerNorm's scale and bias when the MatMuls are its only readers
(pre-LayerNorm blocks); where the output also feeds a residual (post-LayerNorm, as in BERT) it
becomes one Mul on the MatMuls' branch. alpha is given, or searched per LayerNorm on the
calibration data: the alpha whose simulated int8 MatMul outputs (per-tensor activations,
per-channel weights) are closest to fp32.

`smooth_onnx` rewrites an ONNX graph (the ONNX Runtime path), `smooth_torch` a torch module (the
torch path); both return the smoothed model and a per-LayerNorm report.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from effkit.onnx_files import load_graph, read_tensor, write_model
from effkit.runners import import_onnxruntime
from effkit.util import workdir

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SAMPLE_ROWS = 512  # activation rows per LayerNorm the alpha search simulates int8 on


# ---------------------------------------------------------------- the math

def smoothing_scales(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """Per input channel s = act_max^alpha / weight_max^(1-alpha); 1 where a channel is all zero."""
    a = np.maximum(act_max.astype(np.float64), 1e-8)
    w = np.maximum(weight_max.astype(np.float64), 1e-8)
    s = a ** alpha / w ** (1.0 - alpha)
    s = np.where((act_max > 0) & (weight_max > 0), s, 1.0)
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


def _int8(x: np.ndarray, axis: int | None) -> np.ndarray:
    """Symmetric int8 round trip, per tensor (axis None) or per slice along `axis`."""
    m = np.abs(x).max() if axis is None else np.abs(x).max(axis=axis, keepdims=True)
    step = np.where(m > 0, m / 127.0, 1.0)
    return np.clip(np.round(x / step), -127, 127) * step


def int8_error(rows: np.ndarray, weights: Sequence[np.ndarray], s: np.ndarray) -> float:
    """Relative squared error of X W against int8(X / s) int8(s W), weights as [in, out]."""
    qx = _int8(rows / s, None)
    err = norm = 0.0
    for w in weights:
        ref = rows @ w
        out = qx @ _int8(w * s[:, None], 0)
        err += float(((ref - out) ** 2).sum())
        norm += float((ref ** 2).sum())
    return err / max(norm, 1e-30)


def choose_scales(rows: np.ndarray, act_max: np.ndarray, weights: Sequence[np.ndarray],
                  alpha: float | None) -> tuple[np.ndarray, float, float]:
    """(s, alpha, simulated error): `alpha` when given, else the best of ALPHAS on `rows`."""
    weight_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    options = [alpha] if alpha is not None else ALPHAS
    best = None
    for a in options:
        s = smoothing_scales(act_max, weight_max, a)
        e = int8_error(rows, weights, s)
        if best is None or e < best[2]:
            best = (s, a, e)
    return best


class _Stats:
    """Per-channel max |x| and a sample of rows of one activation, over calibration batches."""

    def __init__(self):
        self.max: np.ndarray | None = None
        self.rows: list[np.ndarray] = []
        self.kept = 0

    def add(self, x: np.ndarray) -> None:
        rows = x.reshape(-1, x.shape[-1]).astype(np.float32)
        m = np.abs(rows).max(axis=0)
        self.max = m if self.max is None else np.maximum(self.max, m)
        if self.kept < SAMPLE_ROWS:
            take = rows[np.random.default_rng(self.kept).permutation(len(rows))[: SAMPLE_ROWS - self.kept]]
            self.rows.append(take)
            self.kept += len(take)

    def sample(self) -> np.ndarray:
        return np.concatenate(self.rows)


# ---------------------------------------------------------------- ONNX

def _is_weighted(inits: dict, node) -> bool:
    """Whether `node` is a MatMul/Gemm with a constant 2-D float32 weight (told from the graph alone)."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
        return False
    t = inits[node.input[1]]
    trans_a = any(a.name == "transA" and a.i for a in node.attribute)
    return len(t.dims) == 2 and t.data_type == 1 and not (node.op_type == "Gemm" and trans_a)  # 1: FLOAT


def _weight(inits: dict, node, base_dir: Path) -> tuple[np.ndarray, int]:
    """The weight of a node `_is_weighted` accepts, read now, as [in, out], and the axis of its input channels."""
    w = read_tensor(inits[node.input[1]], base_dir)
    trans = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    return (w.T if trans else w), (1 if trans else 0)


def smooth_onnx(onnx_path: Path, batches: list[tuple], alpha: float | None) -> tuple[Path, list[dict]]:
    """Smooth every LayerNormalization -> MatMul group of the graph; write a new file beside effkit's
    work files and return (path, report). `batches` are the calibration inputs, in graph-input order.
    The graph is loaded without external data: only the weights it smooths are read."""
    import onnx
    from onnx import helper, numpy_helper

    ort = import_onnxruntime()  # its log at effkit's severity: quiet unless --debug
    base = onnx_path.parent
    proto = load_graph(onnx_path)
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    groups = []
    for node in graph.node:
        if node.op_type != "LayerNormalization" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        out = node.output[0]
        mms = [n for n in readers.get(out, []) if n.input[0] == out and _is_weighted(inits, n)]
        if mms:
            groups.append((node, mms))
    if not groups:
        return onnx_path, []

    # the LayerNorm outputs over the calibration batches, from a probe graph written as a work file
    probe = copy.deepcopy(proto)
    for node, _ in groups:
        probe.graph.output.append(helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None))
    probe_dir = Path(tempfile.mkdtemp(dir=workdir()))
    try:
        write_model(probe, probe_dir / "probe.onnx", base)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(probe_dir / "probe.onnx"), options, providers=["CPUExecutionProvider"])
    finally:
        shutil.rmtree(probe_dir)
    names = [i.name for i in session.get_inputs()]
    wanted = [node.output[0] for node, _ in groups]
    stats = {name: _Stats() for name in wanted}
    for batch in batches:
        for name, value in zip(wanted, session.run(wanted, {n: np.ascontiguousarray(a) for n, a in zip(names, batch)})):
            stats[name].add(value)

    report, new_nodes = [], {}
    for node, mms in groups:
        out = node.output[0]
        weights = [_weight(inits, n, base) for n in mms]
        s, chosen, error = choose_scales(stats[out].sample(), stats[out].max, [w for w, _ in weights], alpha)
        for n, (w, axis) in zip(mms, weights):
            scaled = w * s[:, None]
            stored = scaled.T if axis == 1 else scaled
            name = n.input[1] + "_smoothed"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(stored.astype(np.float32)), name))
            n.input[1] = name
        sole_readers = len(readers[out]) == len(mms) and out not in graph_outputs
        if sole_readers:  # fold 1/s into the LayerNorm's own scale and bias (copies: they may be shared)
            for k in (1, 2):
                if len(node.input) > k and node.input[k] in inits:
                    value = read_tensor(inits[node.input[k]], base) / s
                    name = node.input[k] + "_smoothed"
                    graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
                    node.input[k] = name
        else:  # the output also feeds a residual: divide on the MatMuls' branch only
            inv = node.name + "_smooth_inv"
            graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
            smoothed = out + "_smoothed"
            new_nodes[node.name] = helper.make_node("Mul", [out, inv], [smoothed], name=node.name + "_smooth")
            for n in mms:
                n.input[0] = smoothed
        report.append({"layernorm": node.name, "matmuls": [n.name for n in mms], "alpha": chosen,
                       "folded": sole_readers, "max_scale": float(s.max()), "simulated_error": error})
    if new_nodes:
        ordered = []
        for node in graph.node:
            ordered.append(node)
            if node.name in new_nodes:
                ordered.append(new_nodes[node.name])
        del graph.node[:]
        graph.node.extend(ordered)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    del session  # its copy of the weights
    path = Path(tempfile.mkdtemp(dir=workdir())) / "smoothed.onnx"
    write_model(proto, path, base)
    return path, report


# ---------------------------------------------------------------- torch

def smooth_torch(module: Any, batches: list[tuple], alpha: float | None) -> tuple[Any, list[dict]]:
    """A smoothed copy of `module`. LayerNorm -> Linear pairs are found by watching which Linear
    reads a LayerNorm's output tensor on the calibration batches. The scale is folded into the
    LayerNorm when the model's outputs stay the same (its output feeds nothing else); otherwise the
    Linear gets a `Smoothed` wrapper that divides its input first."""
    import torch
    from torch import nn

    model = copy.deepcopy(module).eval()
    layer_norms = {m: name for name, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    linears = {m: name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    produced: dict[int, nn.Module] = {}
    pairs: dict[nn.Module, list[nn.Module]] = {}
    stats: dict[nn.Module, _Stats] = {}

    def after_ln(m, args, out):
        produced[id(out)] = (m, out)  # the tensor is kept alive so its id is not reused
        stats.setdefault(m, _Stats()).add(out.detach().float().numpy())

    def before_linear(m, args):
        hit = produced.get(id(args[0]))
        if hit is not None and hit[1] is args[0] and m not in pairs.setdefault(hit[0], []):
            pairs[hit[0]].append(m)

    hooks = [m.register_forward_hook(after_ln) for m in layer_norms]
    hooks += [m.register_forward_pre_hook(before_linear) for m in linears]
    tensors = [tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in b) for b in batches]
    try:
        with torch.no_grad():
            for batch in tensors:
                model(*batch)
                produced.clear()
    finally:
        for h in hooks:
            h.remove()

    with torch.no_grad():
        reference = _flat(model(*tensors[0]))
    report = []
    for ln, group in pairs.items():
        weights = [lin.weight.detach().double().numpy().T for lin in group]
        s, chosen, error = choose_scales(stats[ln].sample(), stats[ln].max, weights, alpha)
        scale = torch.from_numpy(s)
        with torch.no_grad():
            for lin in group:
                lin.weight.mul_(scale[None, :].to(lin.weight.dtype))
        folded = _try_fold(model, ln, scale, tensors[0], reference)
        if not folded:
            for lin in group:
                _wrap(model, linears[lin], 1.0 / scale)
        report.append({"layernorm": layer_norms[ln], "matmuls": [linears[lin] for lin in group], "alpha": chosen,
                       "folded": folded, "max_scale": float(s.max()), "simulated_error": error})
    return model, report


def _flat(out) -> Any:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flat(o)]
    return []


def _try_fold(model, ln, scale, batch, reference) -> bool:
    """Divide the LayerNorm's weight and bias by `scale`; keep it when the outputs stay within 1e-5
    (relative), else undo it and say so."""
    import torch

    if ln.weight is None:
        return False
    with torch.no_grad():
        weight, bias = ln.weight.clone(), None if ln.bias is None else ln.bias.clone()
        ln.weight.div_(scale)
        if bias is not None:
            ln.bias.div_(scale)
        now = _flat(model(*batch))
        same = all(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(b.abs().max())))
                   for a, b in zip(now, reference))
        if not same:
            ln.weight.copy_(weight)
            if bias is not None:
                ln.bias.copy_(bias)
    return same


def _wrap(model, name: str, inverse) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, Smoothed(getattr(parent, child), inverse))


def Smoothed(linear, inverse):  # noqa: N802 - a module factory: torch is imported lazily
    """A Linear whose input is multiplied by `inverse` (1/s) first; `.linear` is quantized as usual."""
    import torch

    class _Smoothed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = linear
            self.register_buffer("inverse", inverse.to(linear.weight.dtype))

        def forward(self, x):
            return self.linear(x * self.inverse)

    return _Smoothed()
