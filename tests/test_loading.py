"""Every loading format: save, load back, same outputs; example inputs from every source."""

import numpy as np
import pytest
import torch

from conftest import MODELS, spec
from effkit.errors import InputError, ModelLoadError
from effkit.load import load_model
from effkit.save import save_model
from effkit.export import make_runner
from effkit.specs import parse_input_shape


def outputs(model, inputs=None):
    runtime = "torch" if model.kind == "torch" else "onnxruntime"
    return make_runner(model, runtime, threads=1).run(inputs or model.example_inputs)


@pytest.fixture
def mlp():
    return load_model(spec("mlp"))


def test_file_factory_gives_module_and_inputs(mlp):
    assert mlp.kind == "torch" and mlp.format == "factory"
    assert [a.shape for a in mlp.example_inputs] == [(2, 16)]
    assert outputs(mlp)[0].shape == (2, 4)


def test_package_module_factory(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(MODELS.read_text())
    monkeypatch.chdir(tmp_path)
    model = load_model("mymodels:cnn")
    assert outputs(model)[0].shape == (1, 10)


@pytest.mark.parametrize("suffix, fmt", [(".pt", "state_dict"), (".safetensors", "safetensors")])
def test_weights_with_arch_round_trip(mlp, tmp_path, suffix, fmt):
    path = tmp_path / f"w{suffix}"
    save_model(mlp, path)
    loaded = load_model(str(path), arch=spec("mlp"))
    assert loaded.format == fmt
    np.testing.assert_array_equal(outputs(loaded, mlp.example_inputs)[0], outputs(mlp)[0])


def test_weights_without_arch_say_what_to_pass(mlp, tmp_path):
    path = tmp_path / "w.pt"
    save_model(mlp, path)
    with pytest.raises(ModelLoadError, match="pass --arch"):
        load_model(str(path))


def test_nested_training_checkpoint(mlp, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "model_state_dict": mlp.module.state_dict()}, path)
    loaded = load_model(str(path), arch=spec("mlp"))
    np.testing.assert_array_equal(outputs(loaded, mlp.example_inputs)[0], outputs(mlp)[0])


def test_whole_pickled_model_needs_trust(mlp, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(mlp.module, path)
    with pytest.raises(ModelLoadError, match="re-run with --trust"):
        load_model(str(path), input_shapes=[parse_input_shape("2x16")])
    loaded = load_model(str(path), trust=True, input_shapes=[parse_input_shape("2x16")])
    assert loaded.format == "pickle"
    np.testing.assert_array_equal(outputs(loaded, mlp.example_inputs)[0], outputs(mlp)[0])


@pytest.mark.parametrize("name", ["mlp", "cnn", "two_inputs"])
def test_pt2_round_trip_keeps_inputs_and_outputs(tmp_path, name):
    model = load_model(spec(name))
    path = tmp_path / "m.pt2"
    save_model(model, path)
    loaded = load_model(str(path))
    assert loaded.format == "pt2"
    for a, b in zip(loaded.example_inputs, model.example_inputs):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(outputs(loaded)[0], outputs(model)[0], rtol=1e-5, atol=1e-6)


def test_torchscript_round_trip(mlp, tmp_path):
    path = tmp_path / "m.ts"
    save_model(mlp, path)
    loaded = load_model(str(path), input_shapes=[parse_input_shape("2x16")])
    assert loaded.format == "torchscript"
    np.testing.assert_allclose(outputs(loaded, mlp.example_inputs)[0], outputs(mlp)[0], rtol=1e-5, atol=1e-6)


def test_onnx_inputs_from_graph_with_dynamic_batch(mlp, tmp_path):
    path = tmp_path / "m.onnx"
    save_model(mlp, path)
    loaded = load_model(str(path))
    assert loaded.kind == "onnx"
    assert [a.shape for a in loaded.example_inputs] == [(1, 16)]  # dynamic batch filled with 1
    loaded = load_model(str(path), input_shapes=[parse_input_shape("5x16")])
    assert outputs(loaded)[0].shape == (5, 4)
    np.testing.assert_allclose(outputs(loaded, mlp.example_inputs)[0], outputs(mlp)[0], rtol=1e-4, atol=1e-5)


def test_onnx_wrong_shape_names_expected(mlp, tmp_path):
    path = tmp_path / "m.onnx"
    save_model(mlp, path)
    with pytest.raises(InputError) as e:
        load_model(str(path), input_shapes=[parse_input_shape("1x15")])
    assert str(e.value) == ("input 'input' expects shape [?, 16] float32; got 1x15 (pass --input-shape 1x16)")


def test_onnx_with_external_data(mlp, tmp_path):
    import onnx

    from effkit.onnx_files import write_onnx

    src = tmp_path / "m.onnx"
    save_model(mlp, src)
    dst = tmp_path / "ext" / "model.onnx"
    dst.parent.mkdir()
    files = write_onnx(onnx.load(str(src)), dst, force=False, external_data=True)
    assert len(files) == 2 and files[1].name.startswith("model.onnx.") and files[1].stat().st_size > 4000
    loaded = load_model(str(dst))
    np.testing.assert_allclose(outputs(loaded, mlp.example_inputs)[0], outputs(mlp)[0], rtol=1e-4, atol=1e-5)
    # replacing it leaves exactly one data file: the new graph's
    write_onnx(onnx.load(str(src)), dst, force=True, external_data=True)
    assert sorted(p.name for p in dst.parent.iterdir()) == sorted(f.name for f in files)


def test_two_inputs_of_different_dtypes():
    model = load_model(spec("two_inputs"))
    assert model.input_names == ["ids", "features"]
    assert [str(a.dtype) for a in model.example_inputs] == ["int64", "float32"]


def test_inputs_file_replaces_example(mlp, tmp_path):
    np.savez(tmp_path / "x.npz", input=np.ones((3, 16), np.float32))
    model = load_model(spec("mlp"), inputs=tmp_path / "x.npz")
    assert model.example_inputs[0].shape == (3, 16)


def test_input_shape_with_dtype_prefix():
    model = load_model(spec("two_inputs"), input_shapes=[parse_input_shape("int64:1x7"), parse_input_shape("1x4")])
    assert [a.shape for a in model.example_inputs] == [(1, 7), (1, 4)]
    assert model.example_inputs[0].dtype == np.int64


def test_hf_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64, num_labels=3,
                                     architectures=["BertForSequenceClassification"])
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    model = load_model(f"hf:{tmp_path / 'bert'}", input_shapes=[parse_input_shape("int64:2x8")])
    assert model.format == "hf" and outputs(model)[0].shape == (2, 3)
    auto = load_model(str(tmp_path / "bert"), input_shapes=[parse_input_shape("int64:2x8")])  # recognised by config.json
    np.testing.assert_array_equal(outputs(auto)[0], outputs(model)[0])


def test_pt2_from_batch_one_keeps_a_dynamic_batch(tmp_path):
    model = load_model(spec("cnn"))  # example batch 1: torch.export would fix the batch at 1
    path = tmp_path / "m.pt2"
    save_model(model, path)
    loaded = load_model(str(path))
    assert loaded.example_inputs[0].shape == (1, 3, 16, 16)
    wide = load_model(str(path), input_shapes=[parse_input_shape("3x3x16x16")])
    assert outputs(wide)[0].shape == (3, 10)
    # the ONNX Runtime path exports it again and verifies at another batch size
    assert make_runner(loaded, "onnxruntime", threads=1).run(wide.example_inputs)[0].shape == (3, 10)


def test_hf_folder_takes_at_most_its_text_inputs(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(InputError, match="^BertModel takes input_ids, attention_mask, token_type_ids here; "
                                         "--input-shape was given 4 times"):
        load_model(f"hf:{tmp_path / 'bert'}", input_shapes=[parse_input_shape("int64:1x8")] * 4)
