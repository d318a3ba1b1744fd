"""Broken and crafted files for the hostile-input tests, all generated here (nothing is downloaded).

Every crafted payload, when unpickled, creates a marker file: a test proves that nothing ran by
checking that the marker does not exist.
"""

from __future__ import annotations

import io
import json
import pathlib
import pickle
import zipfile
from pathlib import Path

import numpy as np


class Touch:
    """Pickles to a call of `Path.touch(marker)`: unpickling it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def linear():
    """The tiny model every file here holds: Linear(4, 2), as a factory (module, example inputs)."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 2)).eval(), torch.randn(1, 4)


# ---------------------------------------------------------------- PyTorch checkpoints

def state_dict_pt(path: Path) -> Path:
    import torch

    torch.save(linear()[0].state_dict(), path)
    return path


def whole_model_pt(path: Path) -> Path:
    """A whole pickled nn.Module: legitimate, but only loadable with --trust."""
    import torch

    torch.save(linear()[0], path)
    return path


def payload_pt(path: Path, marker: Path, legacy: bool = False) -> Path:
    """A checkpoint whose unpickling would create `marker` (zip format, or the legacy one)."""
    import torch

    torch.save({"0.weight": torch.zeros(2, 4), "extra": Touch(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    return path


def payload_plain_pickle(path: Path, marker: Path) -> Path:
    """A bare pickle.dumps, as people ship `.pth`/`.bin` files from other tools."""
    path.write_bytes(pickle.dumps({"weights": Touch(marker)}))
    return path


def truncated(src: Path, dst: Path, keep: float = 0.5) -> Path:
    """The first `keep` fraction of `src` (a download cut short)."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def flipped(src: Path, dst: Path) -> Path:
    """`src` with a run of bytes in the middle overwritten (a corrupted copy of the same size)."""
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = b"\xff" * min(64, len(data) - mid)
    dst.write_bytes(bytes(data))
    return dst


# ---------------------------------------------------------------- safetensors

def safetensors_file(path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in linear()[0].state_dict().items()}, str(path))
    return path


def safetensors_huge_header(path: Path) -> Path:
    """A header length field claiming a terabyte: must fail fast, not allocate."""
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    return path


# ---------------------------------------------------------------- torch.export (.pt2)

def pt2_file(path: Path) -> Path:
    import torch

    module, example = linear()
    torch.export.save(torch.export.export(module, (example,)), str(path))
    return path


def _rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes], add: dict[str, bytes] = {}) -> Path:
    """Copy a zip archive, replacing entries whose name ends with a key of `replace`, adding `add`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for item in zin.infolist():
            data = zin.read(item.filename)
            for suffix, new in replace.items():
                if item.filename.endswith(suffix):
                    data = new
            zout.writestr(item, data)
        for name, data in add.items():
            zout.writestr(f"{root}/{name}", data)
    return dst


def pt2_payload_in_sample_inputs(src: Path, dst: Path, marker: Path) -> Path:
    """A .pt2 whose example inputs are a pickle that creates `marker`.

    torch.export.load tries weights-only loading first and then falls back to full unpickling.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(((Touch(marker),), {}), buffer)
    return _rewrite_zip(src, dst, {"data/sample_inputs/model.pt": buffer.getvalue()})


def pt2_payload_in_opaque_constant(src: Path, dst: Path, marker: Path) -> Path:
    """A .pt2 declaring an "opaque object" constant, which torch.export.load reads with pickle.loads."""
    config = {"config": {"evil": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                  "tensor_meta": None}}}
    return _rewrite_zip(src, dst, {"data/constants/model_constants_config.json": json.dumps(config).encode()},
                        {"data/constants/opaque_obj_0": pickle.dumps(Touch(marker))})


# ---------------------------------------------------------------- .pt2: strings torch turns into code

# Run by every payload below; relative, so it creates `ran` in the folder the loader runs in.
TOUCH = "__import__('pathlib').Path('ran').touch()"


def pt2_model_json(path: Path) -> dict:
    """The exported program (models/model.json) of a .pt2 archive, as JSON."""
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read(next(n for n in z.namelist() if n.endswith("/models/model.json"))))


def _edit_pt2_model(src: Path, dst: Path, edit) -> Path:
    """Copy a .pt2 archive, its models/model.json changed in place by `edit(doc)`."""
    doc = pt2_model_json(src)
    edit(doc)
    return _rewrite_zip(src, dst, {"/models/model.json": json.dumps(doc).encode()})


def _user_input(doc: dict) -> str:
    specs = doc["graph_module"]["signature"]["input_specs"]
    return next(s["user_input"]["arg"]["as_tensor"]["name"] for s in specs if "user_input" in s)


def _shape_expression_payload(doc: dict) -> None:
    size = {"as_expr": {"expr_str": f"{TOUCH} or 1", "hint": {"as_int": 1}}}
    doc["graph_module"]["graph"]["tensor_values"][_user_input(doc)]["sizes"][0] = size


def pt2_payload_in_shape_expression(src: Path, dst: Path) -> Path:
    """An input size whose expression string torch hands to sympy.sympify, which evaluates Python."""
    return _edit_pt2_model(src, dst, _shape_expression_payload)


def pt2_payload_in_guards_code(src: Path, dst: Path) -> Path:
    """guards_code: Python source torch execs when it builds the module."""
    return _edit_pt2_model(src, dst, lambda doc: doc.update(guards_code=[f"{TOUCH} is None"]))


def pt2_payload_in_graph_name(src: Path, dst: Path) -> Path:
    """The input's name, which torch writes into the source of forward(): a default argument runs."""
    def edit(doc):
        old, new = _user_input(doc), f"input={TOUCH}"
        text = json.dumps(doc).replace(json.dumps({"name": old}), json.dumps({"name": new}))
        doc.update(json.loads(text))
        values = doc["graph_module"]["graph"]["tensor_values"]
        values[new] = values.pop(old)
    return _edit_pt2_model(src, dst, edit)


def pt2_payload_in_enum_reference(src: Path, dst: Path) -> Path:
    """An in_spec dict keyed by an enum: torch imports its module, evil_keys.py placed beside `dst`."""
    def edit(doc):
        signature = doc["graph_module"]["module_call_graph"][0]["signature"]
        protocol, spec = json.loads(signature["in_spec"])
        kwargs = spec["children_spec"][1]
        kwargs["context"] = json.dumps([{"__enum__": True, "fqn": "evil_keys:Key", "name": "A"}])
        kwargs["children_spec"] = [{"type": None, "context": None, "children_spec": []}]
        signature["in_spec"] = json.dumps([protocol, spec])
    (dst.parent / "evil_keys.py").write_text(f"import enum\n{TOUCH}\nKey = enum.Enum('Key', 'A')\n")
    return _edit_pt2_model(src, dst, edit)


def pt2_payload_in_defaultdict_factory(src: Path, dst: Path) -> Path:
    """An out_spec defaultdict: torch imports its factory's module, evil_factory.py placed beside `dst`."""
    def edit(doc):
        signature = doc["graph_module"]["module_call_graph"][0]["signature"]
        context = {"default_factory_module": "evil_factory", "default_factory_name": "make", "dict_context": []}
        signature["out_spec"] = json.dumps([1, {"type": "collections.defaultdict", "context": context,
                                                "children_spec": []}])
    (dst.parent / "evil_factory.py").write_text(f"{TOUCH}\nmake = list\n")
    return _edit_pt2_model(src, dst, edit)


def pt2_payload_behind_case_twin(src: Path, dst: Path) -> Path:
    """An opaque (plainly pickled) constant declared in DATA/CONSTANTS/..., an entry that Python's
    zipfile keeps apart from data/constants/... but torch's zip reader finds under the lower-case name."""
    config = {"config": {"evil": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                  "tensor_meta": None}}}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for item in zin.infolist():
            if item.filename.endswith("data/constants/model_constants_config.json"):
                zout.writestr(f"{root}/DATA/CONSTANTS/model_constants_config.json", json.dumps(config))
            zout.writestr(item, zin.read(item.filename))
        zout.writestr(f"{root}/DATA/CONSTANTS/OPAQUE_OBJ_0", pickle.dumps(Touch(Path("ran"))))
    return dst


def pt2_legacy(dst: Path, edit=None) -> Path:
    """Linear(4, 2) in the layout before torch 2.7 (torch.export.load still falls back to it)."""
    import torch
    from torch._export.serde.serialize import serialize

    module, example = linear()
    artifact = serialize(torch.export.export(module, (example,)))
    doc = json.loads(artifact.exported_program)
    if edit:
        edit(doc)
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr("version", ".".join(map(str, doc["schema_version"].values())))
        z.writestr("serialized_exported_program.json", json.dumps(doc))
        z.writestr("serialized_state_dict.pt", artifact.state_dict)
        z.writestr("serialized_constants.pt", artifact.constants)
        z.writestr("serialized_example_inputs.pt", artifact.example_inputs)
    return dst


def pt2_legacy_payload_in_shape_expression(dst: Path) -> Path:
    return pt2_legacy(dst, _shape_expression_payload)


def dict_input_model():
    """A model whose input is a dict of tensors (its example inputs keep the dict's keys)."""
    import torch

    class Model(torch.nn.Module):
        def forward(self, inputs):
            return inputs["x"] * 2

    return Model(), ({"x": torch.ones(2, 3)},)


def pt2_payload_in_example_input_key(dst: Path) -> Path:
    """Example inputs (a weights-only pickle) with a dict key that torch copies into its guard code."""
    import torch

    plain = dst.with_name("dict_input.pt2")
    module, example = dict_input_model()
    torch.export.save(torch.export.export(module, example), str(plain))
    key = '"+str(__import__("pathlib").Path("ran").touch())+"'
    buffer = io.BytesIO()
    torch.save((({key: torch.ones(2, 3)},), {}), buffer)
    return _rewrite_zip(plain, dst, {"data/sample_inputs/model.pt": buffer.getvalue()})


def pt2_dynamic(path: Path) -> Path:
    """A legitimate archive with dynamic shapes: symbols, derived dimensions, range constraints, guards."""
    import torch

    class Model(torch.nn.Module):
        def forward(self, x, y, z):
            return x * 2, y[:, 1:] + x, z.sum() + x.shape[1] // 2

    batch, width = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("width", min=5, max=32)
    example = (torch.randn(4, 8), torch.randn(4, 9), torch.randn(4, 14))
    shapes = {"x": {0: batch, 1: width}, "y": {0: batch, 1: width + 1}, "z": {0: batch, 1: 2 * width - 2}}
    torch.export.save(torch.export.export(Model(), example, dynamic_shapes=shapes), str(path))
    return path


# ---------------------------------------------------------------- ONNX

def onnx_model(path: Path, external: str | None = None):
    """x[1,4] @ W[4,2] built with onnx.helper (no exporter, so it is instant).

    With `external`, W is stored as external data at that location (nothing is written there).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    if external is not None:
        tensor = proto.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", "32")):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def onnx_with_data(path: Path, data_name: str) -> Path:
    """The `onnx_model` graph with W stored in a real external data file `data_name` beside it."""
    import onnx

    onnx_model(path)
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, location=data_name,
                    size_threshold=0)
    return path


def onnx_conv_with_data(path: Path, data_name: str) -> Path:
    """A 16-channel 3x3 convolution (16x16 input) with its weights in an external data file.

    ONNX Runtime's dynamic int8 of a convolution (ConvInteger) is several times slower than fp32,
    so effkit's quantize step keeps this model in float, data file and all."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 16, 3, 3)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save_model(proto, str(path), save_as_external_data=True, location=data_name, size_threshold=0)
    return path


def onnx_naming(path: Path, locations: list[str]) -> Path:
    """A graph whose weights claim to live at each of `locations` (nothing is written there): an old
    output crafted so that whoever cleans up its data files deletes those paths."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(np.ones(2, np.float32), f"W{i}") for i in range(len(locations))]
    for tensor, location in zip(weights, locations):
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", "8")):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(proto, str(path))
    return path


def onnx_failing_checker(path: Path) -> Path:
    """A well-formed protobuf whose node reads a tensor nothing produces."""
    import onnx

    onnx_model(path)
    proto = onnx.load(str(path))
    proto.graph.node[0].input[1] = "nowhere"
    onnx.save(proto, str(path))
    return path


# ---------------------------------------------------------------- Hugging Face folders

TINY_BERT = dict(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=16, max_position_embeddings=64)


def hf_folder(path: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    BertForSequenceClassification(BertConfig(**TINY_BERT)).save_pretrained(str(path))
    return path


def hf_remote_code_folder(path: Path, marker: Path) -> Path:
    """A folder whose config.json asks for modeling code from the folder; that code creates `marker`."""
    from transformers import BertConfig

    path.mkdir()
    config = BertConfig(**TINY_BERT).to_dict()
    config["architectures"] = ["EvilModel"]
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    (path / "config.json").write_text(json.dumps(config))
    (path / "modeling_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import BertConfig as EvilConfig, BertModel as EvilModel\n")
    return path


def hf_pickled_weights_folder(path: Path, marker: Path) -> Path:
    """A plain BERT folder whose weights are a pytorch_model.bin pickle that creates `marker`."""
    import torch
    from transformers import BertConfig

    path.mkdir()
    (path / "config.json").write_text(json.dumps({**BertConfig(**TINY_BERT).to_dict(),
                                                  "architectures": ["BertModel"]}))
    torch.save({"bert.embeddings.word_embeddings.weight": torch.zeros(30, 8), "x": Touch(marker)},
               path / "pytorch_model.bin")
    return path


# ---------------------------------------------------------------- models that never finish

def onnx_endless_loop(path: Path) -> Path:
    """y = x after an ONNX `Loop` of 2**62 iterations whose body does nothing: it never returns."""
    import onnx
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 4])])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["trips"], value=helper.make_tensor("t", TensorProto.INT64, [], [2**62])),
         helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
         helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)],
        "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return path


def torchscript_endless(path: Path) -> Path:
    """A TorchScript archive whose forward loops until its input sums to 1e30, which never happens."""
    import torch

    class Endless(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            while bool(x.abs().sum() < 1e30):
                x = x * 1.0
            return x

    torch.jit.save(torch.jit.script(Endless()), str(path))
    return path


# ---------------------------------------------------------------- decompression bombs

BOMB_ELEMENTS = 200 * 2**20  # float32 zeros: 800 MiB once decompressed, under 4 MB compressed


def _npy_header(elements: int) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (elements,)})
    return header.getvalue()


def _write_zeros(stream, nbytes: int) -> None:
    chunk = bytes(2**24)
    for start in range(0, nbytes, len(chunk)):
        stream.write(chunk[:min(len(chunk), nbytes - start)])


def npz_bomb(path: Path, elements: int = BOMB_ELEMENTS) -> Path:
    """An .npz holding one float32 array of `elements` zeros, deflated (level 1: fast to make)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("x.npy", "w") as member:
            member.write(_npy_header(elements))
            _write_zeros(member, 4 * elements)
    return path


def pt_bomb(path: Path, elements: int = BOMB_ELEMENTS) -> Path:
    """torch.save of a float32 tensor of `elements` zeros, with its storage record deflated.

    Made from the archive of a small tensor: its pickle is patched to declare `elements`.
    """
    import struct

    import torch

    small, count = io.BytesIO(), 70_001  # a count that the pickle holds as a 4-byte BININT, twice
    torch.save(torch.zeros(count), small)
    with zipfile.ZipFile(small) as original, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out:
        for info in original.infolist():
            if info.filename.endswith("/data/0"):
                with out.open(info.filename, "w") as member:
                    _write_zeros(member, 4 * elements)
                continue
            data = original.read(info)
            if info.filename.endswith("/data.pkl"):
                data = data.replace(b"J" + struct.pack("<i", count), b"J" + struct.pack("<i", elements))
            out.writestr(info.filename, data)
    return path
