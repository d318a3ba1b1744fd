"""int8 on ONNX Runtime (on a graph `onnx_preprocess` made ready): dynamic, static (QDQ) or
weight-only quantization with `onnxruntime.quantization` (weight-only is written here: ORT has no
int8 weight-only mode, only 4-bit MatMulNBits).

Every function writes new files into effkit's private work folder and returns their paths; the
input file is never touched. ONNX Runtime's quantizers get paths, never protos (a proto is serialized
whole, which fails over 2 GB), and write a large model's result with external data.
"""

from __future__ import annotations

import contextlib
import fnmatch
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from effkit.errors import StepFailed
from effkit.onnx_files import is_large, load_graph, read_tensor, write_model
from effkit.passes.onnx_preprocess import drop_unused_initializers, quiet_ort
from effkit.runners import KvCache, plain_input_names
from effkit.util import workdir

# The ops whose constant weight makes a "layer" a user can keep in float.
WEIGHT_OPS = ("Conv", "MatMul", "Gemm", "LSTM", "GRU", "Attention")
_ORT_TYPES = {"u8": "QUInt8", "s8": "QInt8"}


def _new_path(name: str) -> Path:
    return Path(tempfile.mkdtemp(dir=workdir())) / name


def layers(onnx_path: Path) -> list[dict]:
    """The nodes that carry a constant weight: [{name, alias, op}]; alias is the torch module the
    weight came from when the exporter kept its name (e.g. "fc1" for "fc1.weight")."""
    proto = load_graph(onnx_path)
    initializers = {i.name for i in proto.graph.initializer}
    found = []
    for node in proto.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        found.append({"name": node.name, "alias": _alias(node, node.input[1]), "op": node.op_type})
    return found


def nodes(onnx_path: Path) -> list[dict]:
    """Every node of the graph: [{name, op}]."""
    proto = load_graph(onnx_path)
    return [{"name": n.name, "op": n.op_type} for n in proto.graph.node]


def _alias(node, weight: str) -> str:
    if weight.endswith(".weight"):
        return weight[: -len(".weight")]
    for prop in node.metadata_props:  # torch's dynamo exporter records the module scopes
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [s.strip(" '\"") for s in prop.value.strip("[]").split(",")]
            if len(scopes) >= 2 and scopes[-2]:
                return scopes[-2]
    return node.name


def matching(layer_list: Sequence[dict], pattern: str) -> list[str]:
    """Node names whose name or alias matches the glob `pattern` (or equals it, or sits under it)."""
    out = []
    for layer in layer_list:
        for key in (layer["name"], layer["alias"]):
            if fnmatch.fnmatchcase(key, pattern) or key.startswith(pattern + "."):
                out.append(layer["name"])
                break
    return out


# ---------------------------------------------------------------- Gemm -> MatMul (dynamic)

def _gemm_to_matmul(proto, base_dir: Path) -> bool:
    """Rewrite Gemm with a constant weight as MatMul + Add, keeping the node's name: ORT's dynamic
    quantizer (MatMulInteger) does this rewrite itself but renames the nodes, so `nodes_to_exclude`
    (--exclude, the tolerance loop) would silently miss every Linear that torch exported as Gemm.
    Weights are read from `base_dir` where the proto left them external. Returns whether any was."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    nodes, rewritten = [], 0
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ok = (node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] in inits
              and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0))
        if not ok:
            nodes.append(node)
            continue
        rewritten += 1
        weight = read_tensor(inits[node.input[1]], base_dir)
        if attrs.get("transB", 0):
            weight = weight.T
        w_name = node.input[1] + "_matmul"
        proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_mm" if has_bias else node.output[0]
        matmul = helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=node.name)
        matmul.metadata_props.extend(node.metadata_props)
        nodes.append(matmul)
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=node.name + "_bias"))
    if not rewritten:
        return False
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    drop_unused_initializers(proto)
    return True


def _without_gemm(onnx_path: Path) -> Path:
    """The model with its Gemms rewritten as MatMul (`_gemm_to_matmul`) in a new work file, or `onnx_path`
    itself when it has none. Only the rewritten weights are read; the others are copied from disk."""
    proto = load_graph(onnx_path)
    if not _gemm_to_matmul(proto, onnx_path.parent):
        return onnx_path
    out = _new_path("matmul.onnx")
    write_model(proto, out, onnx_path.parent)
    return out


# ---------------------------------------------------------------- the three methods

def quantize_dynamic(onnx_path: Path, *, per_channel: bool, weight_type: str, exclude: Sequence[str]) -> Path:
    """int8 weights ahead of time, activations quantized at run time (MatMulInteger, ConvInteger, ...)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_dynamic

    source = _without_gemm(onnx_path)
    out = _new_path("dynamic.onnx")
    with quiet_ort(), _one_copy(source):
        ort_dynamic(str(source), str(out), per_channel=per_channel,
                    weight_type=getattr(QuantType, _ORT_TYPES[weight_type]), nodes_to_exclude=list(exclude),
                    use_external_data_format=is_large(source), extra_options={"MatMulConstBOnly": True})
    return out


@contextlib.contextmanager
def _one_copy(source: Path):
    """ORT's dynamic quantizer rewrites Gemm as MatMul, then saves a deep copy of the model and loads it back
    to infer the shapes again: three copies of every weight in memory at once. With no Gemm left in
    `source` (`_without_gemm` rewrote them) that rewrite changes nothing, and the model ORT holds was
    shape-inferred as it was loaded, so within the block ORT keeps the model it has instead."""
    from onnxruntime.quantization import onnx_quantizer

    if any(node.op_type == "Gemm" for node in load_graph(source).graph.node):
        yield
        return
    reload = onnx_quantizer.save_and_reload_model_with_shape_infer
    onnx_quantizer.save_and_reload_model_with_shape_infer = lambda model: model
    try:
        yield
    finally:
        onnx_quantizer.save_and_reload_model_with_shape_infer = reload


class _Reader:
    """CalibrationDataReader over in-memory batches; reports progress as it is consumed. A causal LM's graph
    with past key/values gets each batch as a prefill (`runners.KvCache`: an empty past, positions 0..)."""

    def __init__(self, proto, batches: list[tuple], progress: Callable[[float], None] | None):
        initializers = {i.name for i in proto.graph.initializer}
        inputs = {i.name: _Spec(i) for i in proto.graph.input if i.name not in initializers}
        self.cache = None
        if plain_input_names(list(inputs)) != list(inputs):
            self.cache = KvCache(inputs, [o.name for o in proto.graph.output])
        self.names = self.cache.plain_inputs if self.cache else list(inputs)
        self.batches, self.progress, self.i = batches, progress, 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        feed = {n: np.ascontiguousarray(a) for n, a in zip(self.names, self.batches[self.i])}
        self.i += 1
        if self.progress:
            self.progress(self.i / len(self.batches))
        return self.cache.prefill_feed(feed) if self.cache else feed

    def rewind(self):
        self.i = 0


class _Spec:
    """An ONNX graph input described as ONNX Runtime describes one (`shape`, `type`), for `runners.KvCache`."""

    def __init__(self, value_info):
        tensor = value_info.type.tensor_type
        self.shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
        self.type = "tensor(float16)" if tensor.elem_type == 10 else "tensor(float)"  # 10: FLOAT16


def _reader(proto, batches: list[tuple], progress: Callable[[float], None] | None):
    from onnxruntime.quantization import CalibrationDataReader

    return type("Reader", (_Reader, CalibrationDataReader), {})(proto, batches, progress)


def quantize_static(onnx_path: Path, batches: list[tuple], *, per_channel: bool, activation_type: str,
                    weight_type: str, calib_method: str, exclude: Sequence[str],
                    progress: Callable[[float], None] | None = None) -> Path:
    """QDQ int8 with activation ranges calibrated on `batches` (each a tuple of input arrays)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_static

    reader = _reader(load_graph(onnx_path), batches, progress)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calib_method]
    out = _new_path("static.onnx")
    large = is_large(onnx_path)
    options = {"extra_options": {"ActivationSymmetric": activation_type == "s8", "WeightSymmetric": weight_type == "s8"}}
    with quiet_ort():
        cache = _calibration_cache(onnx_path, reader, method) if large else None
        if cache is not None:
            reader, options["calibration_cache_path"] = None, str(cache)
        ort_static(str(onnx_path), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                   activation_type=getattr(QuantType, _ORT_TYPES[activation_type]),
                   weight_type=getattr(QuantType, _ORT_TYPES[weight_type]), calibrate_method=method,
                   nodes_to_exclude=list(exclude), use_external_data_format=large, **options)
    return out


def _calibration_cache(onnx_path: Path, reader, method) -> Path | None:
    """The activation ranges of `onnx_path` on `reader`'s batches, calibrated apart as quantize_static would
    and written as its calibration cache; None when this onnxruntime's quantize_static reads no cache
    (it has `calibration_cache_path` since 2026). Within one quantize_static call, the model it quantizes
    stays loaded while its calibrator loads a second copy and runs a session on a third; apart, two at most."""
    import inspect

    from onnxruntime.quantization import quantize_static as ort_static

    if "calibration_cache_path" not in inspect.signature(ort_static).parameters:
        return None
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    folder = Path(tempfile.mkdtemp(dir=workdir()))
    calibrator = create_calibrator(onnx_path, list(set(QLinearOpsRegistry) | set(QDQRegistry)),
                                   augmented_model_path=str(folder / "augmented.onnx"), calibrate_method=method,
                                   use_external_data_format=True)
    calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    del calibrator  # its copy of the model and its session
    shutil.rmtree(folder)  # the augmented copy of the model
    cache = _new_path("calibration.json")
    save_tensors_data(ranges, cache)
    return cache


def has_embedding_table(onnx_path: Path) -> bool:
    """Whether the graph looks up a constant table (a Gather whose data is an initializer): an embedding."""
    proto = load_graph(onnx_path)
    initializers = {i.name for i in proto.graph.initializer}
    return any(n.op_type == "Gather" and n.input and n.input[0] in initializers for n in proto.graph.node)


def quantize_nbits(onnx_path: Path, *, bits: int, group_size: int, algorithm: str, exclude: Sequence[str],
                   batches: list[tuple] | None = None, embeddings: bool = False) -> Path:
    """4 or 8-bit weights in blocks of `group_size` along the input axis, run by ONNX Runtime's MatMulNBits
    kernel (int8 arithmetic on the activations, accuracy level 4). `algorithm`: "rtn" rounds each block to
    its nearest levels (symmetric); "hqq" fits scales and zero points half-quadratically (4-bit only);
    "gptq" (4-bit only) rounds column by column, correcting the rest of the weight for each rounding error
    with the inputs' Hessian measured on `batches` (symmetric: ONNX Runtime 1.32 packs GPTQ's zero points
    wrongly when a weight has an odd number of groups). MatMul with a constant weight is quantized (and with
    `embeddings`, 4-bit RTN only, the embedding tables' Gather, as GatherBlockQuantized), so Gemm is rewritten
    as MatMul first (GPT-2's Conv1D, every Linear with a bias exports as Gemm)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 GPTQWeightOnlyQuantConfig,
                                                                 HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer)

    proto = onnx.load(str(onnx_path))
    _gemm_to_matmul(proto, onnx_path.parent)
    if algorithm == "gptq":
        if not batches:
            raise ValueError("GPTQ needs calibration data (--calib)")
        config = GPTQWeightOnlyQuantConfig(calibration_data_reader=_reader(proto, batches, None), block_size=group_size)
    elif algorithm == "hqq":
        config = HQQWeightOnlyQuantConfig(block_size=group_size, bits=bits)
    else:
        # GPT-2 small's fp32 token embedding alone is 0.31x of the model, which MatMul-only int4 leaves; ONNX
        # Runtime quantizes Gather at 4 bits only
        if embeddings and bits != 4:
            raise ValueError("ONNX Runtime quantizes embedding tables (Gather) at 4 bits only")
        ops = ("MatMul", "Gather") if embeddings else ("MatMul",)
        config = DefaultWeightOnlyQuantConfig(block_size=group_size, is_symmetric=True, bits=bits, accuracy_level=4,
                                              op_types_to_quantize=ops, quant_axes=(("MatMul", 0), ("Gather", 1)))
    # is_symmetric and accuracy_level (int8 compute, as RTN's config says) are read by the GPTQ branch only
    quantizer = MatMulNBitsQuantizer(proto, bits=bits, block_size=group_size, is_symmetric=True, accuracy_level=4,
                                     nodes_to_exclude=list(exclude), algo_config=config)
    if algorithm == "gptq" and exclude:  # ORT's GPTQ branch ignores nodes_to_exclude (only RTN's reads it):
        plan = quantizer._generate_q4_node_config  # mark them fp32 in its per-node plan, as RTN's branch does
        quantizer._generate_q4_node_config = lambda: {**plan(), **{name: "fp32" for name in exclude}}
    with quiet_ort():
        quantizer.process()
    if not any(n.op_type == "MatMulNBits" for n in quantizer.model.model.graph.node):
        raise StepFailed("no MatMul with a constant weight to quantize (MatMulNBits takes MatMul only)")
    out = _new_path(f"int{bits}_weight_only.onnx")
    # a large model's result keeps its weights beside it, as every other quantizer writes them
    write_model(quantizer.model.model, out, external=True if is_large(onnx_path) else None)
    return out


def quantize_weight_only(onnx_path: Path, *, per_channel: bool, exclude: Sequence[str]) -> Path:
    """int8 weights stored with a DequantizeLinear in front of each weighted node; compute stays in
    float. ORT does not constant-fold DequantizeLinear, so the file (and memory) keeps int8 weights."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(onnx_path))
    inits = {i.name: i for i in proto.graph.initializer}
    excluded = set(exclude)
    axes: dict[str, int | None] = {}
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        weight = inits[node.input[1]]
        if node.name in excluded or weight.data_type != onnx.TensorProto.FLOAT or len(weight.dims) < 2:
            axes[node.input[1]] = None  # some user keeps it in float: so do all
            continue
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and trans_b) else len(weight.dims) - 1
        if node.input[1] not in axes:
            axes[node.input[1]] = axis if len(weight.dims) <= 2 or node.op_type == "Conv" else None
    dq_nodes = []
    for name, axis in axes.items():
        if axis is None:
            continue
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        if per_channel:
            reduce = tuple(d for d in range(w.ndim) if d != axis)
            scale = np.abs(w).max(axis=reduce) / 127.0
        else:
            scale = np.array(np.abs(w).max() / 127.0, dtype=np.float32)
        scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
        shape = [1] * w.ndim
        if per_channel:
            shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        inits[name].CopyFrom(numpy_helper.from_array(q, name + "_int8"))
        proto.graph.initializer.append(numpy_helper.from_array(scale, name + "_scale"))
        proto.graph.initializer.append(numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), name + "_zero"))
        attrs = {"axis": axis} if per_channel else {}
        dq_nodes.append(helper.make_node("DequantizeLinear", [name + "_int8", name + "_scale", name + "_zero"], [name],
                                         name=name + "_dequantize", **attrs))
    nodes = dq_nodes + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    out = _new_path("weight_only.onnx")
    write_model(proto, out)
    return out
