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
