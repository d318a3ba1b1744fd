"""ONNX models over 2 GB, on tiny models: `onnx_files.EXTERNAL_DATA_THRESHOLD` lowered to a few KB sends
them down the path a real one takes (weights in external data, graphs loaded without them, work files
written with external data, paths handed to ONNX Runtime) through bench, quantize (dynamic and static)
and compress (export: tests/test_export.py); the results load back, match, and count their data files.
A data file shorter than its model declares is one error line. benchmarks/large_model.py runs a real
3 GB model."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST
from effkit.passes.onnx_preprocess import LARGE_NOTE
from test_old_onnx import _images, old_graph

OPTS = [*FAST, "--threads", "1", "--min-time", "0.05", "--allow-slower"]
DIM = 32  # 32 x 32 float32 weights: 4 KB each, over INLINE_TENSOR_BYTES, so they go to external data
THRESHOLD = 8192  # bytes: the three weights below (12 KB) make a "large" model


@pytest.fixture
def large(monkeypatch):
    """Models over a few KB count as over 2 GB."""
    from effkit import onnx_files

    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_THRESHOLD", THRESHOLD)


def chain(path: Path, data: str | None = "weights.bin", alpha: float = 1.0) -> Path:
    """MatMul -> Gemm (transposed weight, bias) -> Relu -> MatMul, the weights in the external data file
    `data` beside `path` (None: inside the graph). `alpha` != 1 leaves a Gemm effkit does not rewrite."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {name: (rng.standard_normal((DIM, DIM)) / np.sqrt(DIM)).astype(np.float32) for name in ("w0", "w1", "w2")}
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    inits.append(numpy_helper.from_array((rng.standard_normal(DIM) * 0.1).astype(np.float32), "b1"))
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="mm0"),
             helper.make_node("Gemm", ["h0", "w1", "b1"], ["h1"], name="gemm1", transB=1, alpha=alpha),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", DIM])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", DIM])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if data is None:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, location=data, size_threshold=1024)
    return path


def _inputs(n: int = 8) -> np.ndarray:
    return np.random.default_rng(5).standard_normal((n, DIM)).astype(np.float32)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def _sidecars(folder: Path, name: str) -> list[Path]:
    from effkit.onnx_files import is_sidecar_name

    return sorted(p for p in folder.iterdir() if is_sidecar_name(p.name, name))


def _only_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


# ---------------------------------------------------------------- quantize


def norm_chain(path: Path) -> Path:
    """LayerNormalization -> MatMul -> MatMul, as a transformer block feeds its projections (what
    SmoothQuant rescales), the weights in external data beside `path`; an outlier channel in the norm's scale."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    scale = np.ones(DIM, np.float32)
    scale[3] = 30.0  # one channel carries activations 30x the others, as in real checkpoints
    inits = [numpy_helper.from_array(scale, "gamma"), numpy_helper.from_array(np.zeros(DIM, np.float32), "beta")]
    inits += [numpy_helper.from_array((rng.standard_normal((DIM, DIM)) / np.sqrt(DIM)).astype(np.float32), n)
              for n in ("w0", "w1", "w2")]
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="ln", axis=-1),
             helper.make_node("MatMul", ["n", "w0"], ["h0"], name="mm0"),
             helper.make_node("MatMul", ["h0", "w1"], ["h1"], name="mm1"),
             helper.make_node("MatMul", ["h1", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "norm_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", DIM])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", DIM])], inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path),
                    save_as_external_data=True, location="weights.bin", size_threshold=1024)
    return path


def test_smoothquant_takes_the_external_data_path_and_the_result_loads_and_matches(cli, large):
    norm_chain(Path("m.onnx"))
    code, _, err = cli("quantize", "m.onnx", "--method", "smoothquant", "--calib", "random", "-o", "q.onnx",
                       "--json", "r.json", *OPTS)
    assert code == 0, err
    report = json.loads(Path("r.json").read_text())
    assert LARGE_NOTE in report["details"]["preprocessing"]
    assert "SmoothQuant" in report["details"]["label"]
    assert len(_sidecars(Path("."), "q.onnx")) == 1
    x = _inputs()
    assert _cosine(_run(Path("m.onnx"), x), _run(Path("q.onnx"), x)) >= 0.99


@pytest.mark.parametrize("method", ["dynamic", "static", "weight-only"])
def test_quantize_takes_the_external_data_path_and_the_result_loads_and_matches(cli, large, method):
    chain(Path("m.onnx"))
    extra = {"static": ["--calib", "random"], "weight-only": ["--bits", "4", "--group-size", "16"]}.get(method, [])
    code, _, err = cli("quantize", "m.onnx", "--method", method, *extra, "-o", "q.onnx", "--json", "r.json", *OPTS)
    assert code == 0, err
    data = _sidecars(Path("."), "q.onnx")
    assert len(data) == 1 and data[0].stat().st_size > DIM * DIM  # int8 weights beside the graph
    report = json.loads(Path("r.json").read_text())
    assert LARGE_NOTE in report["details"]["preprocessing"]
    after = report["after"]["size"]  # measured on the int8 work file, with its data file
    assert len(after["files"]) == 2 and after["files"][1].endswith(".data")
    assert after["bytes_on_disk"] > 3 * DIM * DIM  # the int8 weights: in the data file, not the graph
    assert report["before"]["size"]["bytes_on_disk"] == Path("m.onnx").stat().st_size + Path("weights.bin").stat().st_size
    x = _inputs()
    assert _cosine(_run(Path("m.onnx"), x), _run(Path("q.onnx"), x)) >= 0.99


def test_an_old_ir3_graph_with_external_data_takes_the_large_path_too(cli, monkeypatch):
    """The version converter and the IR 3 / Caffe2 rewrites work on the graph alone, weights left on disk."""
    import onnx

    from effkit import onnx_files

    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_THRESHOLD", 1000)  # its weights: 1.5 KB
    old_graph(Path("old.onnx"), 8)
    onnx.save_model(onnx.load("old.onnx"), "old.onnx", save_as_external_data=True, location="old.bin", size_threshold=0)
    np.savez("calib.npz", data=_images())
    code, _, err = cli("quantize", "old.onnx", "--method", "static", "--calib", "calib.npz", "-o", "q.onnx",
                       "--json", "r.json", *OPTS)
    assert code == 0, err
    steps = json.loads(Path("r.json").read_text())["details"]["preprocessing"]
    assert steps[0] == "converted opset 8 to 13" and LARGE_NOTE in steps
    assert "rewrote 1 BatchNormalization node(s) as Mul and Add" in steps
    import onnxruntime as ort

    x = _images(4)[:1]
    ref, got = (ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]
                for p in ("old.onnx", "q.onnx"))
    assert _cosine(ref, got) >= 0.99


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_the_large_path_quantizes_exactly_as_the_in_memory_one(tmp_path, monkeypatch, method):
    """Same weights, same calibration: the int8 model written from files equals the one built in memory."""
    from effkit import onnx_files
    from effkit.passes.onnx_preprocess import preprocess
    from effkit.passes.quantize_ort import quantize_dynamic, quantize_static

    x = _inputs()

    def build(model: Path) -> np.ndarray:
        ready, _ = preprocess(model)
        if method == "dynamic":
            int8 = quantize_dynamic(ready, per_channel=True, weight_type="s8", exclude=())
        else:
            int8 = quantize_static(ready, [(b[None],) for b in _inputs(16)], per_channel=True, activation_type="u8",
                                   weight_type="s8", calib_method="minmax", exclude=())
        return _run(int8, x)

    (tmp_path / "a").mkdir()
    in_memory = build(chain(tmp_path / "a" / "m.onnx", data=None))
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_THRESHOLD", THRESHOLD)
    (tmp_path / "b").mkdir()
    from_files = build(chain(tmp_path / "b" / "m.onnx"))
    np.testing.assert_allclose(from_files, in_memory, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha, reloads", [(1.0, 0), (2.0, 1)])
def test_ort_reloads_a_copy_of_the_model_only_when_a_gemm_is_left(tmp_path, monkeypatch, alpha, reloads):
    """ORT's dynamic quantizer saves a deep copy of the model and loads it back after its own Gemm rewrite
    (three copies of the weights at once); effkit rewrites the Gemms it can first and spares the reload
    when none is left."""
    from onnxruntime.quantization import onnx_quantizer

    from effkit.passes.quantize_ort import quantize_dynamic

    calls = []
    original = onnx_quantizer.save_and_reload_model_with_shape_infer
    monkeypatch.setattr(onnx_quantizer, "save_and_reload_model_with_shape_infer",
                        lambda model: calls.append(1) or original(model))
    int8 = quantize_dynamic(chain(tmp_path / "m.onnx", alpha=alpha), per_channel=False, weight_type="s8", exclude=())
    assert len(calls) == reloads
    assert onnx_quantizer.save_and_reload_model_with_shape_infer is not original  # the spy is back in place
    assert _run(int8, _inputs()).shape == (8, DIM)


# ---------------------------------------------------------------- bench, export, compress


def test_bench_counts_the_external_data(cli, large, monkeypatch):
    from effkit import size as size_module

    monkeypatch.setattr(size_module, "_GZIP_CHUNK", 1000)  # gzipped a chunk at a time
    chain(Path("m.onnx"))
    code, _, err = cli("bench", "m.onnx", "--json", "b.json", *FAST)
    assert code == 0, err
    size = json.loads(Path("b.json").read_text())["size"]
    onnx_bytes, data_bytes = Path("m.onnx").stat().st_size, Path("weights.bin").stat().st_size
    assert size["bytes_on_disk"] == onnx_bytes + data_bytes
    assert size["files"] == ["m.onnx", "weights.bin"]
    assert size["parameters"] == 3 * DIM * DIM + DIM and size["bytes_in_memory"] == 4 * size["parameters"]
    expected_gzip = sum(len(gzip.compress(Path(f).read_bytes(), compresslevel=6, mtime=0)) for f in size["files"])
    assert size["gzip_bytes"] == expected_gzip  # in chunks, the same size as gzipped whole


def test_compress_writes_the_int8_model_with_its_data_beside_it(cli, large):
    chain(Path("m.onnx"))
    code, _, err = cli("compress", "m.onnx", "--quantize", "int8", "-o", "out", *FAST)
    assert code == 0, err
    data = _sidecars(Path("out"), "model.onnx")
    assert len(data) == 1
    summary = json.loads(Path("out/report.json").read_text())["summary"]
    assert summary[0]["size_bytes"] == Path("m.onnx").stat().st_size + Path("weights.bin").stat().st_size
    assert summary[-1]["size_bytes"] > data[0].stat().st_size  # the int8 model's data file counts
    x = _inputs()
    assert _cosine(_run(Path("m.onnx"), x), _run(Path("out/model.onnx"), x)) >= 0.99


# ---------------------------------------------------------------- a truncated data file


def _truncate(data: Path, keep: int) -> None:
    data.write_bytes(data.read_bytes()[:keep])


def _without_lengths(path: Path) -> None:
    """Drop the declared lengths: the shapes alone say how many bytes each tensor needs."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for t in proto.graph.initializer:
        kept = [(e.key, e.value) for e in t.external_data if e.key != "length"]
        del t.external_data[:]
        for key, value in kept:
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    onnx.save_model(proto, str(path))


@pytest.mark.parametrize("command, extra", [("bench", []), ("quantize", ["-o", "q.onnx"]),
                                            ("quantize", ["--method", "static", "--calib", "random", "-o", "q.onnx"]),
                                            ("compress", ["--quantize", "int8", "-o", "out"])])
@pytest.mark.parametrize("lengths", [True, False])
def test_a_truncated_data_file_is_one_error_line_and_nothing_is_written(cli, large, command, extra, lengths):
    chain(Path("m.onnx"))
    if not lengths:
        _without_lengths(Path("m.onnx"))
    _truncate(Path("weights.bin"), 3 * 4096 - 100)  # the last weight is cut short
    code, stdout, stderr = cli(command, "m.onnx", *extra, "--json", "r.json", *FAST)
    assert code == 2
    assert _only_error_line(stderr) == (
        f"Error: m.onnx stores tensor 'w2' at 'weights.bin': 4096 bytes from offset 8192, past the end of that file "
        f"(12188 bytes) (the data file is truncated or belongs to another model; copy the right one)")
    assert sorted(p.name for p in Path(".").iterdir()) == ["m.onnx", "weights.bin"]


def test_a_length_shorter_than_the_shape_needs_is_refused(cli):
    import onnx

    chain(Path("m.onnx"))
    proto = onnx.load("m.onnx", load_external_data=False)
    for e in proto.graph.initializer[0].external_data:
        if e.key == "length":
            e.value = "100"
    onnx.save_model(proto, "m.onnx")
    code, _, stderr = cli("bench", "m.onnx", *FAST)
    assert (code, _only_error_line(stderr)) == (
        2, "Error: m.onnx stores tensor 'w0' at 'weights.bin': 100 bytes, fewer than its shape [32, 32] needs (4096) "
           "(the model file is corrupt; export it again)")


# ---------------------------------------------------------------- onnx_files


def test_write_model_copies_external_tensors_from_another_folder(tmp_path, monkeypatch):
    from effkit import onnx_files

    monkeypatch.setattr(onnx_files, "_CHUNK", 1000)  # several chunks per tensor
    src = chain(tmp_path / "m.onnx")
    graph = onnx_files.load_graph(src)
    assert onnx_files.tensor_data_bytes(graph) == 3 * 4096 + 4 * DIM
    (tmp_path / "work").mkdir()
    files = onnx_files.write_model(graph, tmp_path / "work" / "copy.onnx", src.parent)
    assert [f.name for f in files] == ["copy.onnx", "copy.onnx.data"]
    assert files[1].stat().st_size == 3 * 4096  # the bias (128 bytes) stays in the graph
    x = _inputs()
    np.testing.assert_array_equal(_run(files[0], x), _run(src, x))


def test_tensor_chunks_read_a_tensor_piece_by_piece(tmp_path, monkeypatch):
    from onnx import numpy_helper

    from effkit import onnx_files

    monkeypatch.setattr(onnx_files, "_CHUNK", 1000)
    src = chain(tmp_path / "m.onnx")
    tensor = onnx_files.load_graph(src).graph.initializer[1]
    chunks = list(onnx_files.tensor_chunks(tensor, src.parent))
    assert len(chunks) == 5 and all(c.nbytes <= 1000 for c in chunks)
    whole = numpy_helper.to_array(onnx_files.load_graph(src).graph.initializer[1], str(src.parent))
    np.testing.assert_array_equal(np.concatenate(chunks), whole.ravel())
