"""ONNX graphs from any exporter made ready for ONNX Runtime's quantizers: constant weights as
initializers, named nodes, old opsets (7-9, IR 3) upgraded, weights taken off the graph inputs,
Caffe2-era patterns (multi-input Sum, standalone BatchNormalization) rewritten.

Every function writes new files into effkit's private work folder and returns their paths; the
input file is never touched. A model over `EXTERNAL_DATA_THRESHOLD` is handled as its graph with the
weights left on disk (read only where a rewrite needs them) and written with external data.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from effkit.errors import StepFailed, first_line
from effkit.onnx_files import INLINE_TENSOR_BYTES, external_files, is_large, load_graph, read_tensor, write_model
from effkit.runners import import_onnxruntime
from effkit.util import quiet_loggers, workdir

# ORT's quantizers need opset >= 10 and quantize per channel only from 13 on.
MIN_OPSET = 13
LARGE_NOTE = ("a large model (weights kept in external data): pre-processed without symbolic shape inference, "
              "which would copy the whole model")


@contextlib.contextmanager
def quiet_ort():
    """onnxruntime.quantization logs (on the root logger) and prints per node; keep that away from users."""
    import_onnxruntime()  # its sessions (calibration, optimization) log at effkit's severity
    with quiet_loggers(""):
        yield


def _new_path(name: str) -> Path:
    return Path(tempfile.mkdtemp(dir=workdir())) / name


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


def _drop_initializer_inputs(proto) -> int:
    """Take initializers off the graph's input list; return how many were listed.

    IR 3 (ONNX 1.0-1.2, Caffe2 and early converters) had to list every initializer as a graph input
    too. ONNX Runtime treats such a weight as an input the caller may override: its optimizer does not
    fold it (a BatchNormalization stays beside its Conv), and the calibrator, which feeds only the
    real inputs, fails with "Required inputs ... are missing". IR 4 made the listing optional, so the
    graph is raised to the IR version its opset needs and the weights become plain constants, as
    onnxruntime's tools/remove_initializer_from_input.py does.
    """
    from onnx import helper

    initializers = {i.name for i in proto.graph.initializer}
    kept = [i for i in proto.graph.input if i.name not in initializers]
    dropped = len(proto.graph.input) - len(kept)
    if dropped:
        del proto.graph.input[:]
        proto.graph.input.extend(kept)
    proto.ir_version = max(proto.ir_version, helper.find_min_ir_version_for(list(proto.opset_import)))
    return dropped


def _sum_to_adds(proto) -> int:
    """Rewrite Sum of three or more inputs (Caffe2's residual joins) as a chain of two-input Adds, which
    ONNX Runtime's quantizer knows; a variadic Sum would stay in float between two dequantizations."""
    from onnx import helper

    nodes, rewritten = [], 0
    for node in proto.graph.node:
        if node.op_type != "Sum" or node.domain or len(node.input) < 2:
            nodes.append(node)
            continue
        rewritten += 1
        name = node.name or f"Sum_{rewritten}"
        acc = node.input[0]
        for k, term in enumerate(node.input[1:], start=1):
            out = node.output[0] if k == len(node.input) - 1 else f"{node.output[0]}_sum{k}"
            nodes.append(helper.make_node("Add", [acc, term], [out], name=f"{name}_add{k}"))
            acc = out
    if rewritten:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    return rewritten


def _batchnorm_to_affine(proto, base_dir: Path, non_spatial_only: bool = False) -> int:
    """Rewrite an inference BatchNormalization with constant statistics as `x * a + b` (a Mul and an Add
    on per-channel constants). ONNX Runtime folds a BatchNormalization into the Conv before it only
    when the Conv feeds nothing else; one left standing (Caffe2 graphs have them) makes its static
    quantizer emit a per-axis QuantizeLinear that fails at calibration. Mul and Add quantize, and fold
    into a Conv where they can. `spatial=0` (opsets before 9: statistics per position, shaped C x D1
    x ... x Dn) becomes constants of that shape, which broadcast over the batch; ONNX's version
    converter refuses such a node, so `non_spatial_only` rewrites just those, before it runs.
    Returns how many were rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*onnx.shape_inference.infer_shapes(proto).graph.value_info, *proto.graph.input]
             if v.type.tensor_type.HasField("shape")}
    nodes, rewritten = [], 0
    for node in proto.graph.node:
        rank = ranks.get(node.input[0]) if node.input else None
        spatial = next((a.i for a in node.attribute if a.name == "spatial"), 1)
        if (node.op_type != "BatchNormalization" or node.domain or len(node.output) != 1 or len(node.input) != 5
                or not all(n in inits for n in node.input[1:]) or not rank or rank < 2
                or (non_spatial_only and spatial != 0)):
            nodes.append(node)
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale, bias, mean, var = (read_tensor(inits[n], base_dir).astype(np.float64) for n in node.input[1:])
        mul = scale / np.sqrt(var + eps)
        shape = (-1,) + (1,) * (rank - 2) if spatial != 0 else scale.shape
        if spatial == 0 and scale.ndim != rank - 1:  # per position, but not laid out as C x D1 x ... x Dn
            nodes.append(node)
            continue
        name = node.name or f"BatchNormalization_{rewritten}"
        a, b = f"{name}_affine_scale", f"{name}_affine_shift"
        constants = [numpy_helper.from_array(mul.reshape(shape).astype(np.float32), a),
                     numpy_helper.from_array((bias - mean * mul).reshape(shape).astype(np.float32), b)]
        proto.graph.initializer.extend(constants)
        if proto.ir_version < 4:  # IR 3 lists every weight as a graph input too (the version converter reads them there)
            proto.graph.input.extend(helper.make_tensor_value_info(c.name, c.data_type, list(c.dims)) for c in constants)
        nodes += [helper.make_node("Mul", [node.input[0], a], [f"{name}_scaled"], name=f"{name}_mul"),
                  helper.make_node("Add", [f"{name}_scaled", b], [node.output[0]], name=f"{name}_add")]
        rewritten += 1
    if rewritten:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        drop_unused_initializers(proto)
    return rewritten


def drop_unused_initializers(proto) -> None:
    """Remove initializers no node reads any more (ONNX Runtime warns about each one), and the graph
    inputs that listed them (IR 3), which would otherwise become inputs the caller has to feed."""
    used = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
    dropped = {i.name for i in proto.graph.initializer if i.name not in used}
    keep = [i for i in proto.graph.initializer if i.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    inputs = [i for i in proto.graph.input if i.name not in dropped]
    if len(inputs) != len(proto.graph.input):
        del proto.graph.input[:]
        proto.graph.input.extend(inputs)


def preprocess(onnx_path: Path) -> tuple[Path, list[str]]:
    """Make a third-party ONNX graph quantizable, as ONNX Runtime recommends; return (path, notes).

    Opsets below 13 are converted up with ONNX's version converter first (while the graph is still
    as its exporter wrote it: the converter reads IR 3 weights from the input list), initializers
    are taken off the graph inputs (IR 3), Sum becomes Adds, Constant-node weights become
    initializers, unnamed nodes get names, then `quant_pre_process` runs (symbolic shape inference
    and graph optimization, which folds ConstantOfShape-made weights into constants), falling back
    to plain ONNX shape inference when the graph defeats it. A large model (`is_large`) is rewritten
    as its graph alone, its weights left on disk, and optimized and shape-inferred from file to file
    (`_pre_process_large`): it is never held whole, nor serialized as one message.
    """
    import onnx
    from onnx import version_converter

    notes = []
    large = is_large(onnx_path)
    proto = load_graph(onnx_path) if large else onnx.load(str(onnx_path))
    opset = _default_opset(proto)
    positional = _batchnorm_to_affine(proto, onnx_path.parent, non_spatial_only=True)
    if positional:
        notes.append(f"rewrote {positional} BatchNormalization node(s) with spatial=0 (statistics per position) "
                     "as Mul and Add")
    if opset < MIN_OPSET:
        try:
            proto = version_converter.convert_version(proto, MIN_OPSET)
        except Exception as e:
            raise StepFailed(f"the ONNX model uses opset {opset}, and converting it to {MIN_OPSET} failed: "
                             f"{first_line(e, 200)}", "re-export the model with opset 13 or newer") from e
        notes.append(f"converted opset {opset} to {MIN_OPSET}")
    dropped = _drop_initializer_inputs(proto)
    if dropped:
        notes.append(f"took {dropped} weights off the graph inputs (an IR 3 convention) so that calibration "
                     "feeds only the real inputs")
    sums = _sum_to_adds(proto)
    if sums:
        notes.append(f"rewrote {sums} Sum node(s) as Adds")
    norms = _batchnorm_to_affine(proto, onnx_path.parent)
    if norms:
        notes.append(f"rewrote {norms} BatchNormalization node(s) as Mul and Add")
    moved = _constants_to_initializers(proto)
    if moved:
        notes.append(f"moved {moved} Constant-node tensors to initializers")
    _name_nodes(proto)
    # the optimizer drops nodes' metadata, where torch's exporter names the module each node came from
    # (what --exclude matches): kept by node name, put back below
    scopes = {n.name: list(n.metadata_props) for n in proto.graph.node if n.metadata_props}
    staged = _new_path("staged.onnx")
    staged_files = write_model(proto, staged, onnx_path.parent)
    del proto  # a large model's rewritten weights: on disk now
    out = staged.with_name("preprocessed.onnx")
    if large:
        notes += _pre_process_large(staged, out)
    else:
        notes += _pre_process(staged, out)
    needed = {out.parent / name for name in external_files(out)}
    for file in set(staged_files) - needed:  # a copy of the model: free the disk before the quantizers write theirs
        file.unlink()
    # the optimizer may rename or create nodes: name them again (a large model's data stays where it is)
    proto = load_graph(out)
    _name_nodes(proto)
    for node in proto.graph.node:
        if not node.metadata_props and node.name in scopes:
            node.metadata_props.extend(scopes[node.name])
    onnx.save_model(proto, str(out))
    return out, notes


@contextlib.contextmanager
def _in_folder(folder: str):
    """Within the block the current folder is `folder` (contextlib.chdir, which Python 3.10 lacks)."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _pre_process(staged: Path, out: Path) -> list[str]:
    """ONNX Runtime's `quant_pre_process`, with fallbacks: without symbolic shape inference, then ONNX
    shape inference alone. Returns the notes of the fallbacks taken."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    staged, out = staged.resolve(), out.resolve()
    # where symbolic shape inference is incomplete, ONNX Runtime saves the model it got so far into the
    # current folder (sym_shape_infer_temp.onnx and its weights): in a work folder, never the user's
    with quiet_ort(), _in_folder(tempfile.mkdtemp(dir=workdir())):
        try:
            quant_pre_process(str(staged), str(out))
        except Exception:
            try:
                quant_pre_process(str(staged), str(out), skip_symbolic_shape=True)
                return ["symbolic shape inference failed; used ONNX shape inference"]
            except Exception:
                onnx.save_model(onnx.shape_inference.infer_shapes(onnx.load(str(staged))), str(out))
                return ["ONNX Runtime pre-processing failed; used ONNX shape inference only"]
    return []


def _pre_process_large(staged: Path, out: Path) -> list[str]:
    """What `quant_pre_process` does, for a model with external data, from file to file: ONNX Runtime's
    basic graph optimization (its session writes the optimized model with external data beside it),
    then ONNX shape inference on the file. Symbolic shape inference is left out: it copies the whole
    model in memory. Returns the notes of what was left out or failed."""
    import onnx
    from onnxruntime.quantization.quant_utils import add_pre_process_metadata

    ort = import_onnxruntime()
    optimized = staged.with_name("optimized.onnx")
    notes = [LARGE_NOTE]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(optimized)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                     optimized.name + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                     str(INLINE_TENSOR_BYTES))
    with quiet_ort():
        try:
            ort.InferenceSession(str(staged), options, providers=["CPUExecutionProvider"])
            source = optimized
        except Exception:
            notes.append("ONNX Runtime pre-processing failed; used ONNX shape inference only")
            source = staged  # its data file stays: the shape-inferred graph points to it
    onnx.shape_inference.infer_shapes_path(str(source), str(out))
    proto = load_graph(out)
    add_pre_process_metadata(proto)
    onnx.save_model(proto, str(out))
    return notes


# ---------------------------------------------------------------- layers


def with_initializers_as_inputs(onnx_path: Path) -> Path:
    """A copy of the graph that lists every initializer as a graph input too, as IR 3 graphs did, for
    tools that still expect it (ONNX Runtime then treats the weights as overridable and folds less)."""
    from onnx import helper

    proto = load_graph(onnx_path)
    listed = {i.name for i in proto.graph.input}
    proto.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in proto.graph.initializer if t.name not in listed)
    out = _new_path("initializer_inputs.onnx")
    write_model(proto, out, onnx_path.parent)
    return out
