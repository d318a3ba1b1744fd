"""Dynamic sequence length: exports of text models (a Hugging Face folder, a plain torch encoder) have
dynamic batch and sequence axes, verified at two lengths; quantized models calibrated at one length run
at others; data longer than the model's positions is one error line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import models_transformer as mt
from conftest import FAST, NO_BAR, TESTS

pytest.importorskip("transformers")

POSITIONS = 40  # the tiny BERT's max_position_embeddings
ENCODER = f"{TESTS / 'models_transformer.py'}:small_text_encoder"
SHAPE = ["--input-shape", "int64:1x16", "--input-shape", "int64:1x16"]
QUICK = [*FAST, "--threads", "1", "--min-time", "0.05", "--allow-slower"]


def save_bert(folder: Path) -> Path:
    """A tiny BERT encoder (hidden 32, 1 layer) with 40 positions, seeded."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=POSITIONS)
    transformers.BertModel(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return save_bert(tmp_path_factory.mktemp("bert") / "bert")


def tokens(n: int, length: int, seed: int = 3) -> dict:
    """Token ids below 50 with an attention mask whose last rows are padded."""
    rng = np.random.default_rng(seed)
    mask = np.ones((n, length), np.int64)
    mask[n // 2:, length // 2:] = 0
    return {"input_ids": rng.integers(1, 50, (n, length)).astype(np.int64), "attention_mask": mask}


def _load(spec: str, shape: str | None = "int64:1x16"):
    from effkit.load import load_model
    from effkit.specs import parse_input_shape

    return load_model(spec, input_shapes=[parse_input_shape(shape)] * 2 if shape else [])


def _ort(path, feed: dict) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})[0]


def _torch(model, feed: dict) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model.module(*(torch.from_numpy(feed[n]) for n in model.input_names))
    return (out[0] if isinstance(out, tuple) else out).numpy()


def _input_dims(path) -> dict[str, list]:
    import onnx

    graph = onnx.load(str(path)).graph
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}


# ---------------------------------------------------------------- export

@pytest.mark.parametrize("which", ["hf", "plain"])
def test_export_of_a_text_model_has_dynamic_batch_and_sequence_axes(bert, tmp_path, which):
    from effkit.export import export_onnx

    model = _load(f"hf:{bert}") if which == "hf" else _load(ENCODER, None)
    exported = export_onnx(model, tmp_path / "m.onnx")
    report = exported.meta["export"]
    names = model.input_names  # input_ids, attention_mask: HF's, and the encoder's forward arguments
    assert report["exporter"] == "torch.export" and "sequence_static_reason" not in report
    assert report["dynamic_axes"] == {n: {"0": "batch", "1": "sequence"} for n in names}
    # a second length within the model's positions: 3 longer where they are known (HF), else 1 shorter
    assert report["sequence_lengths_checked"] == ([16, 19] if which == "hf" else [16, 15])
    assert all(dims[1] == "sequence" for dims in _input_dims(tmp_path / "m.onnx").values())
    for length in (7, 25):
        feed = tokens(3, length)
        np.testing.assert_allclose(_ort(tmp_path / "m.onnx", feed), _torch(model, feed), atol=1e-4, rtol=1e-3)


def test_export_command_says_which_axes_are_dynamic(bert, cli):
    code, out, err = cli("export", f"hf:{bert}", *SHAPE, "-o", "m.onnx", "--json", "r.json")
    assert code == 0, err
    assert "dynamic batch and sequence" in out and "sequence lengths 16, 19" in " ".join(out.split())
    report = json.loads(Path("r.json").read_text())
    assert report["dynamic_axes"]["attention_mask"] == {"0": "batch", "1": "sequence"}
    assert report["sequence_lengths_checked"] == [16, 19] and report["warnings"] == []


def test_a_sequence_length_fixed_by_the_code_stays_static_with_a_warning(cli):
    code, out, err = cli("export", f"{TESTS / 'models_transformer.py'}:flat_text", "-o", "m.onnx", "--json", "r.json")
    assert code == 0, err
    report = json.loads(Path("r.json").read_text())
    assert report["dynamic_axes"] == {"input_ids": {"0": "batch"}, "attention_mask": {"0": "batch"}}
    assert "sequence_lengths_checked" not in report
    assert report["sequence_static_reason"].startswith("torch.export cannot make it dynamic (the model's code fixes it")
    assert "warning: the sequence axis is static: torch.export cannot make it dynamic" in err
    assert _input_dims("m.onnx")["input_ids"][1] == 16


def test_an_example_too_short_to_verify_another_length_keeps_the_axis_static(cli):
    code, out, err = cli("export", ENCODER, "--input-shape", "int64:2x2", "--input-shape", "int64:2x2", "-o", "m.onnx")
    assert code == 0, err
    assert ("warning: the sequence axis is static: its example has 2 token(s), too few to verify another length "
            "(give at least 3)") in err
    assert _input_dims("m.onnx")["input_ids"][1] == 2


def test_an_export_right_at_its_own_length_only_is_made_again_static(tmp_path):
    """TorchScript traces whatever the example did: verified at another length, torch itself fails there."""
    import torch

    from effkit.export import export_onnx
    from effkit.model import Model

    module, example = mt.flat_text()
    traced = torch.jit.trace(module, example)
    model = Model(kind="torch", module=traced, example_inputs=tuple(e.numpy() for e in example),
                  input_names=["input_ids", "attention_mask"], source="traced", format="torchscript")
    report = export_onnx(model, tmp_path / "m.onnx").meta["export"]
    assert report["exporter"] == "TorchScript"
    assert report["sequence_static_reason"].startswith("the export matches torch at its example's length only "
                                                       "(torch fails at sequence length 15")
    assert report["dynamic_axes"] == {"input_ids": {"0": "batch"}, "attention_mask": {"0": "batch"}}


# ---------------------------------------------------------------- quantized models take other lengths

def test_every_onnx_runtime_candidate_calibrated_at_9_tokens_builds_on_a_16_token_export(bert, tmp_path):
    from effkit.data import Data
    from effkit.passes.quantize import QuantizeConfig, quantize

    model = _load(f"hf:{bert}")
    calib = tokens(16, 9)
    data = Data((calib["input_ids"], calib["attention_mask"]), None, "calib9")
    fast = {"threads": 1, "candidate_time": 0.0, "candidate_iterations": 1}
    result = quantize(model, QuantizeConfig(backend="onnxruntime", tolerance=(), allow_slower=True), calib=data, **fast)
    labels = {c["label"]: c["error"] for c in result.details["candidates"]}
    assert {"ORT dynamic s8 per-channel", "ORT dynamic s8 per-tensor", "ORT static QDQ u8/s8 minmax"} <= set(labels)
    # every candidate builds at the other length; ORT bf16 is only said to be missing (no CPU bf16 MatMul)
    built = {label: error for label, error in labels.items() if "bf16" not in label}
    assert len(built) == 7 and all(error is None for error in built.values()), labels
    nbits = quantize(model, QuantizeConfig(method="weight-only", bits=4, group_size=16, backend="onnxruntime",
                                           tolerance=(), allow_slower=True), calib=data, **fast)
    assert nbits.details["candidates"][0]["error"] is None
    feed = tokens(2, 23)
    for int8 in (result.model, nbits.model):
        out = _ort(int8.onnx_path, feed)
        assert out.shape == (2, 23, 32) and np.isfinite(out).all()


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_torch_int8_calibrated_at_9_tokens_runs_at_23(method):
    """torch.ao's int8 modules, traced to TorchScript at the example's 16 tokens, keep any length."""
    import torch

    from effkit.data import Data
    from effkit.passes.quantize import QuantizeConfig, quantize

    model = _load(ENCODER, None)
    calib = tokens(16, 9)
    config = QuantizeConfig(method=method, backend="torch", tolerance=("cosine>=0.5",), allow_slower=True)
    result = quantize(model, config, calib=Data((calib["input_ids"], calib["attention_mask"]), None, "calib9"),
                      threads=1, candidate_time=0.0, candidate_iterations=1)
    assert result.details["label"].startswith(f"torch.ao {'FX static' if method == 'static' else 'dynamic'}")
    feed = tokens(2, 23)
    with torch.no_grad():
        out = result.model.module(*(torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask")))
    assert out.shape == (2, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("which, output", [("hf", "q.onnx"), ("plain", "q.ts")])
def test_quantize_calibrated_at_another_length_writes_a_model_that_runs_at_a_third(bert, cli, which, output):
    spec, shape = (f"hf:{bert}", SHAPE) if which == "hf" else (ENCODER, [])
    np.savez("calib.npz", **tokens(16, 9))
    code, out, err = cli("quantize", spec, *shape, "--calib", "calib.npz", "-o", output, *NO_BAR, *QUICK)
    assert code == 0, err
    feed, model = tokens(2, 23), _load(spec, "int64:1x16" if which == "hf" else None)
    if output.endswith(".onnx"):
        got = _ort(output, feed)
    else:
        import torch

        got = torch.jit.load(output)(*(torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask")))
        got = (got[0] if isinstance(got, tuple) else got).detach().numpy()
    expected = _torch(model, feed)
    assert got.shape == expected.shape
    cosine = float(np.sum(got * expected) / np.linalg.norm(got) / np.linalg.norm(expected))
    assert cosine > 0.95


# ---------------------------------------------------------------- longer than the model's positions

def test_calibration_data_longer_than_the_positions_is_one_error_line(bert, cli):
    np.savez("calib.npz", **tokens(8, POSITIONS + 10))
    code, out, err = cli("quantize", f"hf:{bert}", *SHAPE, "--calib", "calib.npz", "-o", "q.onnx", *NO_BAR, *QUICK)
    assert code == 2
    assert err.strip().splitlines() == [f"Error: calib.npz: sequences of {POSITIONS + 10} tokens are longer than the "
                                        f"model's {POSITIONS} positions (cut them to at most {POSITIONS} tokens)"]


def test_example_inputs_longer_than_the_positions_are_one_error_line(bert, cli):
    code, out, err = cli("export", f"hf:{bert}", "--input-shape", "int64:1x64", "-o", "m.onnx")
    assert code == 2
    assert err.strip().splitlines() == [f"Error: --input-shape: sequences of 64 tokens are longer than the model's "
                                        f"{POSITIONS} positions (give at most {POSITIONS}, e.g. --input-shape "
                                        f"int64:1x{POSITIONS})"]


def test_data_of_another_length_for_an_export_that_had_to_stay_static_is_one_error_line(cli):
    """torch runs the parity model at 9 tokens, its ONNX export (right at even lengths only) cannot."""
    np.savez("calib.npz", **tokens(16, 9))
    code, out, err = cli("quantize", f"{TESTS / 'models_transformer.py'}:parity_text", "--calib", "calib.npz",
                         "-o", "q.onnx", *NO_BAR, *QUICK)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: the ONNX export takes sequences of 16 tokens only (")
    assert lines[0].endswith("the data has 9 (give data of the example inputs' length)")


def test_onnx_runtime_wrong_size_error_is_one_clear_line():
    from effkit.runners import onnxruntime_message

    raw = RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: input_ids for "
                       "the following indices\n index: 1 Got: 9 Expected: 16\n Please fix either the inputs/outputs or "
                       "the model.")
    assert onnxruntime_message(raw) == "input 'input_ids' has size 9 on axis 1; the model takes 16 there"
