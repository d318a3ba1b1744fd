"""bf16 as a quantize candidate (torch, saved as .pt2; skipped with the reason where the CPU has no native
bf16; ONNX Runtime's CPU provider said unsupported), and ONNX Runtime's transformer fusions as a candidate
base (fused fp32 graph and dynamic int8 on it) on a BERT-like encoder and tiny HF BERT and GPT-2 folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FAST, TESTS, spec

ENCODER = f"{TESTS / 'models_transformer.py'}:plain_encoder"
FAST_Q = {"threads": 1, "candidate_time": 0.0, "candidate_iterations": 1}
ANY = ("cosine>=-1",)  # no bar: these tests read the figures themselves
OPTS = [*FAST, "--threads", "1", "--min-time", "0.05", "--allow-slower"]
NO_BF16_ISA = {"model": "test CPU", "arch": "x86_64", "isa": ["avx2", "avx512f", "avx512_vnni"]}
BF16_ISA = {"model": "test CPU", "arch": "x86_64", "isa": ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]}


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with avx512_bf16, so the bf16 tests run alike on any machine (torch emulates bf16 elsewhere)."""
    from effkit import env

    monkeypatch.setattr(env, "cpu_info", lambda: BF16_ISA)


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    from effkit import env

    monkeypatch.setattr(env, "cpu_info", lambda: NO_BF16_ISA)


def _outputs(model) -> np.ndarray:
    from effkit.runners import native_runner

    return np.asarray(native_runner(model, 1).run(model.example_inputs)[0])


def _rows(result) -> dict:
    return {c["label"]: c for c in result.details["candidates"]}


def _hf_folder(tmp_path, kind: str):
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=64)
        model = transformers.BertModel(config)
    else:
        config = transformers.GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=4)
        model = transformers.GPT2Model(config)
    model.eval().save_pretrained(tmp_path / kind)
    return tmp_path / kind


# ---------------------------------------------------------------- bf16

def test_bf16_on_an_encoder_builds_keeps_cosine_and_reloads_with_the_same_outputs(bf16_cpu, tmp_path):
    from effkit.load import load_model
    from effkit.passes.quantize import QuantizeConfig, quantize
    from effkit.save import save_model

    result = quantize(load_model(ENCODER), QuantizeConfig(method="bf16", tolerance=ANY), **FAST_Q)
    rows = _rows(result)
    chosen = rows["torch bf16 weights and activations"]
    assert chosen["status"] == "chosen" and chosen["backend"] == "torch" and chosen["method"] == "bf16"
    assert chosen["fidelity"]["cosine_min"] >= 0.99
    assert rows["ORT bf16"]["status"].startswith("failed: ONNX Runtime ")
    assert "CPU provider has no bf16 MatMul kernel" in rows["ORT bf16"]["status"]
    out = _outputs(result.model)
    assert out.dtype == np.float32  # the interface stays fp32
    save_model(result.model, tmp_path / "q.pt2")
    loaded = load_model(str(tmp_path / "q.pt2"))
    np.testing.assert_array_equal(_outputs(loaded), out)


def test_bf16_on_an_hf_bert_folder_holds_every_weight_in_bf16_and_reloads(bf16_cpu, tmp_path):
    import torch

    from effkit.load import load_model
    from effkit.passes.quantize import QuantizeConfig, quantize
    from effkit.save import save_model

    result = quantize(load_model(f"hf:{_hf_folder(tmp_path, 'bert')}"),
                      QuantizeConfig(method="bf16", backend="torch", tolerance=ANY), **FAST_Q)
    chosen = _rows(result)["torch bf16 weights and activations"]
    assert chosen["status"] == "chosen" and chosen["fidelity"]["cosine_min"] >= 0.99
    weights = [p for p in result.model.module.parameters() if p.is_floating_point()]
    assert weights and all(p.dtype == torch.bfloat16 for p in weights)
    save_model(result.model, tmp_path / "q.pt2")
    np.testing.assert_array_equal(_outputs(load_model(str(tmp_path / "q.pt2"))), _outputs(result.model))


def test_bf16_keeps_excluded_layers_in_fp32():
    import torch

    from effkit.load import load_model
    from effkit.passes.quantize_bf16 import to_bf16

    model = load_model(ENCODER)
    bf16 = to_bf16(model.module, ["layers.0.query"])
    dtypes = {name: p.dtype for name, p in bf16.named_parameters()}
    assert dtypes["inner.layers.0.query.inner.weight"] == torch.float32
    assert dtypes["inner.layers.0.key.weight"] == torch.bfloat16
    ids, mask = (torch.from_numpy(a) for a in model.example_inputs)
    assert bf16(ids, mask).dtype == torch.float32


def test_auto_measures_bf16_beside_int8(bf16_cpu):
    from effkit.load import load_model
    from effkit.passes.quantize import QuantizeConfig, quantize

    result = quantize(load_model(spec("mlp")), QuantizeConfig(backend="torch", tolerance=ANY), **FAST_Q)
    row = _rows(result)["torch bf16 weights and activations"]
    assert row["latency_ms"] > 0 and row["fidelity"]["cosine_min"] >= 0.99


def test_without_bf16_auto_skips_it_with_the_reason_and_the_explicit_method_is_one_error(no_bf16_cpu, cli):
    code, _, err = cli("quantize", spec("mlp"), "--backend", "torch", "-o", "q", "--json", "q.json", *OPTS)
    assert code == 0, err
    rows = {c["label"]: c for c in json.loads(open("q.json").read())["details"]["candidates"]}
    assert rows["torch bf16 weights and activations"]["status"] == \
        "failed: this CPU has no avx512_bf16 or AMX: bf16 would be emulated and slow"
    code, _, err = cli("quantize", spec("mlp"), "--method", "bf16", "-o", "q2", *OPTS)
    assert code == 2
    assert err.strip() == ("Error: --method bf16 cannot run here: this CPU has no avx512_bf16 or AMX: bf16 would be "
                           "emulated and slow (use --method auto or dynamic (int8))")


def test_bf16_on_onnx_runtime_alone_is_one_error(bf16_cpu, cli):
    code, _, err = cli("quantize", spec("mlp"), "--method", "bf16", "--backend", "onnxruntime", "-o", "q.onnx", *OPTS)
    assert code == 2
    assert err.startswith("Error: --method bf16 cannot run here: ONNX Runtime ") and len(err.strip().splitlines()) == 1
    assert err.strip().endswith("(bf16 runs on torch and is saved as .pt2: a torch model, --backend torch or auto, "
                                "and OUT.pt2 or no suffix)")


# ---------------------------------------------------------------- ONNX Runtime transformer fusions

def _fused_against_unfused(model):
    """(fusion report, max |fused - unfused| over the outputs) on the model's example inputs."""
    import onnxruntime as ort

    from effkit.export import onnx_path_for
    from effkit.passes import ort_fusion
    from effkit.passes.onnx_preprocess import preprocess

    path, _ = preprocess(onnx_path_for(model))
    assert ort_fusion.not_transformer(path) is None
    fused, report = ort_fusion.fuse(path, model)
    feeds = {i.name: np.asarray(a) for i, a in zip(ort.InferenceSession(str(path)).get_inputs(), model.example_inputs)}
    before = ort.InferenceSession(str(path)).run(None, feeds)
    after = ort.InferenceSession(str(fused)).run(None, feeds)
    return report, max(float(np.abs(a - b).max()) for a, b in zip(before, after))


def test_fusions_on_the_encoder_keep_fp32_outputs_within_1e_4():
    from effkit.load import load_model

    report, diff = _fused_against_unfused(load_model(ENCODER))
    assert report["model_type"] == "bert" and report["fused"]["SkipLayerNormalization"] == 4
    assert diff <= 1e-4


def test_fusions_on_an_hf_bert_folder_keep_fp32_outputs_within_1e_4(tmp_path):
    from effkit.load import load_model
    from effkit.passes.ort_fusion import fusion_shape

    model = load_model(f"hf:{_hf_folder(tmp_path, 'bert')}")
    assert fusion_shape(model) == ("bert", 4, 32)
    report, diff = _fused_against_unfused(model)
    # torch's dynamo exporter writes attention in a form ORT 1.32's attention fusion does not match
    assert report["fused"] == {"BiasGelu": 2, "SkipLayerNormalization": 4}
    assert diff <= 1e-4


def test_where_the_optimizer_fails_on_an_hf_gpt2_folder_the_fused_candidates_are_skipped_with_the_reason(tmp_path):
    from effkit.load import load_model
    from effkit.passes.ort_fusion import fusion_shape
    from effkit.passes.quantize import QuantizeConfig, quantize

    model = load_model(f"hf:{_hf_folder(tmp_path, 'gpt2')}")
    assert fusion_shape(model) == ("gpt2", 4, 32)
    result = quantize(model, QuantizeConfig(backend="onnxruntime", method="dynamic", tolerance=ANY), **FAST_Q)
    assert not any("fused" in label for label in _rows(result))
    # ORT 1.32 fails on it ("Graph is not a DAG", or an index error on the dynamic-sequence export)
    assert result.details["ort_fusions"]["skipped"].startswith(
        "ONNX Runtime's transformer optimizer failed on this graph: ")


def test_auto_lists_the_fused_fp32_graph_and_int8_on_it_with_the_fusions_applied():
    from effkit.load import load_model
    from effkit.passes.quantize import QuantizeConfig, quantize

    result = quantize(load_model(ENCODER), QuantizeConfig(backend="onnxruntime", tolerance=ANY), **FAST_Q)
    rows = _rows(result)
    fp32, int8 = rows["ORT fp32 fused"], rows["ORT dynamic s8 per-channel on fused graph"]
    assert fp32["method"] == "fp32" and fp32["fidelity"]["cosine_min"] >= 0.99999
    assert int8["latency_ms"] > 0 and int8["fidelity"]["cosine_min"] >= 0.99
    assert result.details["ort_fusions"] == {"model_type": "bert", "fused": {"BiasGelu": 2, "SkipLayerNormalization": 4}}


def test_fusions_are_skipped_with_the_reason_on_a_graph_that_is_no_transformer():
    from effkit.load import load_model
    from effkit.passes.quantize import QuantizeConfig, quantize

    result = quantize(load_model(spec("mlp")), QuantizeConfig(backend="onnxruntime", method="dynamic", tolerance=ANY),
                      **FAST_Q)
    assert not any("fused" in label for label in _rows(result))
    assert result.details["ort_fusions"] == {"skipped": "not a transformer graph (no LayerNormalization, MatMul, Softmax): "
                                                        "ONNX Runtime's transformer fusions do not apply"}
