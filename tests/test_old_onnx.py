"""ONNX graphs from old converters: IR 3 (initializers listed as graph inputs), opsets 7-9, Caffe2-era
patterns (a three-input Sum, a spatial BatchNormalization standing alone, a weight made by
ConstantOfShape). Static int8 calibrates them; models of images or text judged on random inputs are
flagged before any verdict. Every graph is built here with onnx.helper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST

OPTS = [*FAST, "--threads", "1", "--min-time", "0.05", "--allow-slower"]


def old_graph(path: Path, opset: int, ir_version: int = 3, positional: bool = False) -> None:
    """A small CNN as Caffe2 / early converters wrote it: every weight also a graph input; a Conv whose
    output feeds a spatial BatchNormalization and a three-input Sum (so the BatchNormalization cannot
    fold into it); from opset 9 on, a bias made by ConstantOfShape. `positional` (opsets 7 and 8): the
    BatchNormalization has spatial=0, statistics per position (8 x 16 x 16)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    stats = (8, 16, 16) if positional else 8
    weights = {"conv_w": rng.standard_normal((8, 3, 3, 3)) * 0.3, "conv_b": rng.standard_normal(8) * 0.1,
               "bn_scale": rng.uniform(0.5, 1.5, stats), "bn_bias": rng.standard_normal(stats) * 0.1,
               "bn_mean": rng.standard_normal(stats) * 0.1, "bn_var": rng.uniform(0.5, 1.5, stats),
               "fc_w": rng.standard_normal((10, 8)) * 0.3, "fc_b": rng.standard_normal(10) * 0.1}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()]
    bn = {"epsilon": 1e-5, **({"spatial": 0 if positional else 1} if opset < 9 else {})}
    logits = "out" if opset < 9 else "gemm"
    nodes = [helper.make_node("Conv", ["data", "conv_w", "conv_b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", *list(weights)[2:6]], ["bn"], **bn),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("Sum", ["r", "c", "bn"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], [logits], transB=1)]
    if opset >= 9:
        nodes += [helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([10], np.int64))),
                  helper.make_node("ConstantOfShape", ["shape"], ["shift"],
                                   value=numpy_helper.from_array(np.array([0.1], np.float32))),
                  helper.make_node("Add", ["gemm", "shift"], ["out"])]
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 16, 16])]
    inputs += [helper.make_tensor_value_info(i.name, TensorProto.FLOAT, list(i.dims)) for i in inits]
    graph = helper.make_graph(nodes, "caffe2_net", inputs,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="caffe2")
    model.ir_version = ir_version
    onnx.save(model, str(path))


def _images(n: int = 16) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 1, (n, 3, 16, 16)).astype(np.float32)


def _run(path, x) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]


def test_the_old_patterns_defeat_onnx_runtime_without_preprocessing(tmp_path):
    """The bug is live: ORT's static int8 of the graph, only converted to opset 13, does not run."""
    import onnx
    from onnx import version_converter

    from effkit.passes.quantize_ort import quantize_static

    old_graph(tmp_path / "old.onnx", 8)
    converted = version_converter.convert_version(onnx.load(str(tmp_path / "old.onnx")), 13)
    onnx.save(converted, str(tmp_path / "converted.onnx"))
    with pytest.raises(Exception, match="QuantizeLinear"):
        int8 = quantize_static(tmp_path / "converted.onnx", [(x[None],) for x in _images(4)], per_channel=True,
                               activation_type="u8", weight_type="s8", calib_method="minmax", exclude=())
        _run(int8, _images(1))


@pytest.mark.parametrize("opset", [7, 8, 9])
def test_static_int8_of_an_ir3_graph_calibrates_and_matches(cli, opset):
    old_graph(Path("old.onnx"), opset)
    np.savez("calib.npz", data=_images())
    code, out, err = cli("quantize", "old.onnx", "--method", "static", "--calib", "calib.npz", "-o", "q.onnx",
                         "--json", "r.json", *OPTS)
    assert code == 0, err
    report = json.loads(Path("r.json").read_text())
    steps = report["details"]["preprocessing"]
    assert f"converted opset {opset} to 13" in steps
    assert "took 8 weights off the graph inputs (an IR 3 convention) so that calibration feeds only the real inputs" in steps
    assert "rewrote 1 Sum node(s) as Adds" in steps and "rewrote 1 BatchNormalization node(s) as Mul and Add" in steps
    assert "not representative" not in err  # real calibration data was given
    import onnx

    written = onnx.load("q.onnx")
    assert [i.name for i in written.graph.input] == ["data"]
    assert "QuantizeLinear" in [n.op_type for n in written.graph.node]
    x = _images(4)[:1]
    ref, got = _run("old.onnx", x), _run("q.onnx", x)
    cosine = float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got))
    assert cosine >= 0.99
    assert Path("old.onnx").read_bytes() == _fresh_bytes(opset, Path("again.onnx"))  # the input is untouched


@pytest.mark.parametrize("opset", [7, 8])
def test_a_batchnorm_with_statistics_per_position_is_rewritten_before_the_opset_upgrade(cli, opset):
    """spatial=0 makes ONNX's version converter fail ("Attribute spatial must have value 1")."""
    old_graph(Path("old.onnx"), opset, positional=True)
    np.savez("calib.npz", data=_images())
    code, out, err = cli("quantize", "old.onnx", "--method", "static", "--calib", "calib.npz", "-o", "q.onnx",
                         "--json", "r.json", *OPTS)
    assert code == 0, err
    steps = json.loads(Path("r.json").read_text())["details"]["preprocessing"]
    assert "rewrote 1 BatchNormalization node(s) with spatial=0 (statistics per position) as Mul and Add" in steps
    import onnx

    assert [i.name for i in onnx.load("q.onnx").graph.input] == ["data"]
    x = _images(4)[:1]
    ref, got = _run("old.onnx", x), _run("q.onnx", x)
    assert float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got)) >= 0.99


def _fresh_bytes(opset: int, path: Path) -> bytes:
    old_graph(path, opset)
    return path.read_bytes()


def test_initializer_inputs_restores_the_ir3_input_list(cli):
    old_graph(Path("old.onnx"), 8)
    np.savez("calib.npz", data=_images())
    code, out, err = cli("quantize", "old.onnx", "--method", "static", "--calib", "calib.npz", "-o", "q.onnx",
                         "--initializer-inputs", *OPTS)
    assert code == 0, err
    import onnx

    written = onnx.load("q.onnx")
    listed = {i.name for i in written.graph.input}
    assert "data" in listed and {i.name for i in written.graph.initializer} <= listed
    assert _run("q.onnx", _images(1)).shape == (1, 10)


def test_initializer_inputs_needs_an_onnx_output(cli):
    old_graph(Path("old.onnx"), 8)
    code, out, err = cli("quantize", "old.onnx", "-o", "q.ts", "--initializer-inputs", *OPTS)
    assert code == 2
    assert err.strip() == "Error: --initializer-inputs applies to ONNX outputs (write OUT.onnx, or drop the flag)"


def test_an_ir4_graph_with_weights_as_inputs_is_quantized_too(cli):
    """Later converters (torch's keep_initializers_as_inputs) list weights as inputs in IR 4+ too."""
    old_graph(Path("old.onnx"), 9, ir_version=4)
    np.savez("calib.npz", data=_images())
    code, out, err = cli("quantize", "old.onnx", "--method", "static", "--calib", "calib.npz", "-o", "q.onnx", *OPTS)
    assert code == 0, err


IMAGES_WARNING = ("no real data was given, so this model of images is calibrated and judged on random inputs, "
                  "which are not representative of images")


def test_images_judged_on_random_inputs_are_flagged_before_the_verdict(cli):
    old_graph(Path("old.onnx"), 9)
    code, out, err = cli("quantize", "old.onnx", "--method", "static", "--calib", "random", "-o", "q.onnx",
                         "--tolerance", "sqnr>=300", *OPTS)
    assert code == 1
    warning, verdict = err.index("warning:"), err.index("Error:")
    assert warning < verdict and IMAGES_WARNING in " ".join(err[warning:verdict].split())
    assert err[verdict:].startswith(f"Error: {IMAGES_WARNING}: a verdict on them says little about real inputs; "
                                     "pass --calib DATA and --eval DATA with real samples")
    assert "no int8 model meets the tolerance" in err[verdict:]
    assert not Path("q.onnx").exists()


def test_text_models_are_flagged_and_real_data_silences_the_warning(tmp_path):
    from effkit.data import Data
    from effkit.model import Model
    from effkit.judge import random_inputs_warning

    ids = np.zeros((1, 12), np.int64)
    text = Model(kind="onnx", example_inputs=(ids,), input_names=["input_ids"], source="t", format="onnx")
    assert "this model of text is calibrated and judged on random inputs" in random_inputs_warning(text, None, None)
    assert random_inputs_warning(text, Data((np.zeros((4, 12), np.int64),), None, "d"), None) is None
    table = Model(kind="onnx", example_inputs=(np.zeros((1, 16), np.float32),), input_names=["x"], source="t",
                  format="onnx")
    assert random_inputs_warning(table, None, None) is None  # no claim about features of unknown meaning
