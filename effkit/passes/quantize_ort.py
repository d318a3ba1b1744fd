"""int8 on ONNX Runtime: pre-processing of any exporter's ONNX graph, then dynamic, static (QDQ) or
weight-only quantization with `onnxruntime.quantization` (weight-only is written here: ORT has no
int8 weight-only mode, only 4-bit MatMulNBits).

Every function writes new files into effkit's private work folder and returns their paths; the
input file is never touched.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from effkit.errors import StepFailed, first_line

# ORT's quantizers need opset >= 10 and quantize per channel only from 13 on.
MIN_OPSET = 13
# The ops whose constant weight makes a "layer" a user can keep in float.
WEIGHT_OPS = ("Conv", "MatMul", "Gemm", "LSTM", "GRU", "Attention")
_ORT_TYPES = {"u8": "QUInt8", "s8": "QInt8"}


@contextlib.contextmanager
def quiet_ort():
    """onnxruntime.quantization logs and prints per node; keep that away from users."""
    from effkit.runtime import import_onnxruntime

    import_onnxruntime()  # its sessions (calibration, optimization) log at effkit's severity
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _new_path(name: str) -> Path:
    from effkit.model import workdir

    return Path(tempfile.mkdtemp(dir=workdir())) / name


# ---------------------------------------------------------------- pre-processing

def _constants_to_initializers(proto) -> int:
    """Move tensors held by Constant nodes into initializers (some exporters store weights that way,
    and ORT's quantizers only see initializers). Returns how many were moved."""
    from onnx import numpy_helper

    kept, moved = [], 0
    for node in proto.graph.node:
        value = next((a for a in node.attribute if a.name == "value" and a.t.ByteSize()), None) \
            if node.op_type == "Constant" and not node.domain else None
        if value is None:
            kept.append(node)
            continue
        tensor = numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0])
        proto.graph.initializer.append(tensor)
        moved += 1
    if moved:
        del proto.graph.node[:]
        proto.graph.node.extend(kept)
    return moved


def _name_nodes(proto) -> None:
    """Give every node a unique name: --exclude and nodes_to_exclude work by name."""
    seen: set[str] = set()
    for i, node in enumerate(proto.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _default_opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def preprocess(onnx_path: Path) -> tuple[Path, list[str]]:
    """Make a third-party ONNX graph quantizable, as ONNX Runtime recommends; return (path, notes).

    Constant-node weights become initializers, unnamed nodes get names, opsets below 13 are
    converted up, then `quant_pre_process` runs (symbolic shape inference and graph optimization),
    falling back to plain ONNX shape inference when the graph defeats it.
    """
    import onnx
    from onnx import version_converter

    notes = []
    proto = onnx.load(str(onnx_path))
    moved = _constants_to_initializers(proto)
    if moved:
        notes.append(f"moved {moved} Constant-node tensors to initializers")
    opset = _default_opset(proto)
    if opset < MIN_OPSET:
        try:
            proto = version_converter.convert_version(proto, MIN_OPSET)
        except Exception as e:
            raise StepFailed(f"the ONNX model uses opset {opset}, and converting it to {MIN_OPSET} failed: "
                             f"{first_line(e, 200)}", "re-export the model with opset 13 or newer") from e
        notes.append(f"converted opset {opset} to {MIN_OPSET}")
    _name_nodes(proto)
    staged = _new_path("staged.onnx")
    onnx.save_model(proto, str(staged))
    out = staged.with_name("preprocessed.onnx")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with quiet_ort():
        try:
            quant_pre_process(str(staged), str(out))
        except Exception:
            try:
                quant_pre_process(str(staged), str(out), skip_symbolic_shape=True)
                notes.append("symbolic shape inference failed; used ONNX shape inference")
            except Exception:
                inferred = onnx.shape_inference.infer_shapes(proto)
                onnx.save_model(inferred, str(out))
                notes.append("ONNX Runtime pre-processing failed; used ONNX shape inference only")
    # the optimizer may rename or create nodes: name them again
    proto = onnx.load(str(out))
    _name_nodes(proto)
    onnx.save_model(proto, str(out))
    return out, notes


# ---------------------------------------------------------------- layers

def layers(onnx_path: Path) -> list[dict]:
    """The nodes that carry a constant weight: [{name, alias, op}]; alias is the torch module the
    weight came from when the exporter kept its name (e.g. "fc1" for "fc1.weight")."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in proto.graph.initializer}
    found = []
    for node in proto.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        found.append({"name": node.name, "alias": _alias(node, node.input[1]), "op": node.op_type})
    return found


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

def _gemm_to_matmul(proto) -> None:
    """Rewrite Gemm with a constant weight as MatMul + Add, keeping the node's name: ORT's dynamic
    quantizer (MatMulInteger) does this rewrite itself but renames the nodes, so `nodes_to_exclude`
    (--exclude, the tolerance loop) would silently miss every Linear that torch exported as Gemm."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    nodes = []
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ok = (node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] in inits
              and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0))
        if not ok:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
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
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    used = {i for n in proto.graph.node for i in n.input}
    keep = [i for i in proto.graph.initializer if i.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)


# ---------------------------------------------------------------- the three methods

def quantize_dynamic(onnx_path: Path, *, per_channel: bool, weight_type: str, exclude: Sequence[str]) -> Path:
    """int8 weights ahead of time, activations quantized at run time (MatMulInteger, ConvInteger, ...)."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_dynamic

    proto = onnx.load(str(onnx_path))
    _gemm_to_matmul(proto)
    out = _new_path("dynamic.onnx")
    with quiet_ort():
        ort_dynamic(proto, str(out), per_channel=per_channel, weight_type=getattr(QuantType, _ORT_TYPES[weight_type]),
                    nodes_to_exclude=list(exclude), extra_options={"MatMulConstBOnly": True})
    return out


class _Reader:
    """CalibrationDataReader over in-memory batches; reports progress as it is consumed."""

    def __init__(self, names: list[str], batches: list[tuple], progress: Callable[[float], None] | None):
        self.names, self.batches, self.progress, self.i = names, batches, progress, 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        feed = {n: np.ascontiguousarray(a) for n, a in zip(self.names, self.batches[self.i])}
        self.i += 1
        if self.progress:
            self.progress(self.i / len(self.batches))
        return feed

    def rewind(self):
        self.i = 0


def quantize_static(onnx_path: Path, batches: list[tuple], *, per_channel: bool, activation_type: str,
                    weight_type: str, calib_method: str, exclude: Sequence[str],
                    progress: Callable[[float], None] | None = None) -> Path:
    """QDQ int8 with activation ranges calibrated on `batches` (each a tuple of input arrays)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_static

    proto = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in initializers]
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(names, batches, progress)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calib_method]
    out = _new_path("static.onnx")
    extra = {"ActivationSymmetric": activation_type == "s8", "WeightSymmetric": weight_type == "s8"}
    with quiet_ort():
        ort_static(str(onnx_path), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                   activation_type=getattr(QuantType, _ORT_TYPES[activation_type]),
                   weight_type=getattr(QuantType, _ORT_TYPES[weight_type]), calibrate_method=method,
                   nodes_to_exclude=list(exclude), extra_options=extra)
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
    onnx.save_model(proto, str(out))
    return out

