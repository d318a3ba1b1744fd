"""torchao candidates on the torch path (int8 and int4 weight-only, per-token dynamic int8), saved as .pt2
and loaded back, skipped with the reason when torchao is missing; GPTQ on the ONNX Runtime path."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import FAST, TESTS, spec

OPTS = [*FAST, "--threads", "1", "--min-time", "0.05", "--allow-slower"]
FAST_Q = {"threads": 1, "candidate_time": 0.0, "candidate_iterations": 1}
ANY = ("cosine>=-1",)  # no bar: these tests read the figures themselves

# (config, label, the least min cosine against fp32): int8 keeps 3 nines on these tiny models, int4 in groups
# of 16 about 0.95 (GPT-2's weights are drawn with a 0.2 spread, wider than a trained model's)
MLP_CASES = [
    (dict(method="weight-only", bits=8), "torchao int8 weight-only per-channel", 0.999),
    (dict(method="weight-only", bits=4, group_size=16), "torchao int4 weight-only group 16", 0.98),
    (dict(method="dynamic"), "torchao int8 dynamic per-token act, per-channel weights", 0.999),
]
GPT2_CASES = [
    (dict(method="weight-only", bits=4, group_size=16), "torchao int4 weight-only group 16", 0.9),
    (dict(method="dynamic"), "torchao int8 dynamic per-token act, per-channel weights", 0.999),
]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    pytest.importorskip("transformers")
    from models_llm import save_causal_lm

    return save_causal_lm(tmp_path_factory.mktemp("llm") / "gpt2", "gpt2")


def _quantized(model, config_kw):
    from effkit.passes.quantize import QuantizeConfig, quantize

    config = QuantizeConfig(backend="torch", output_format=".pt2", tolerance=ANY, **config_kw)
    return quantize(model, config, **FAST_Q)


def _outputs(model) -> np.ndarray:
    from effkit.runners import native_runner

    return np.asarray(native_runner(model, 1).run(model.example_inputs)[0])


def _check_saved(result, tmp_path):
    """The chosen model saves as .pt2, loads back (no --trust) and gives the same outputs."""
    from effkit.load import load_model
    from effkit.save import save_model

    path = tmp_path / "q.pt2"
    save_model(result.model, path)
    loaded = load_model(str(path))
    assert loaded.save_suffix == ".pt2"
    np.testing.assert_allclose(_outputs(loaded), _outputs(result.model), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config_kw, label, cosine", MLP_CASES, ids=["int8-weight", "int4-weight", "int8-dynamic"])
def test_each_torchao_candidate_on_an_mlp_builds_meets_its_cosine_and_reloads(config_kw, label, cosine, tmp_path):
    pytest.importorskip("torchao")
    from effkit.load import load_model

    result = _quantized(load_model(spec("mlp")), config_kw)
    chosen = next(c for c in result.details["candidates"] if c["status"] == "chosen")
    assert chosen["label"] == label and chosen["backend"] == "torch"
    assert chosen["fidelity"]["cosine_min"] >= cosine
    assert chosen["latency_ms"] > 0 and chosen["size_bytes"] > 0
    _check_saved(result, tmp_path)


@pytest.mark.parametrize("config_kw, label, cosine", GPT2_CASES, ids=["int4-weight", "int8-dynamic"])
def test_torchao_on_a_tiny_gpt2_quantizes_its_conv1d_layers_and_reloads(gpt2, config_kw, label, cosine, tmp_path):
    pytest.importorskip("torchao")
    from effkit.load import load_model

    model = load_model(f"hf:{gpt2}")
    result = _quantized(model, config_kw)
    chosen = next(c for c in result.details["candidates"] if c["status"] == "chosen")
    assert chosen["label"] == label
    assert chosen["fidelity"]["cosine_min"] >= cosine
    # every projection of both blocks (Conv1D, turned into Linear) and the LM head hold int8 values now
    int8 = [n for n, p in result.model.module.named_parameters() if str(p.dtype) == "torch.int8"]
    assert len({n.rsplit(".parametrizations", 1)[0] for n in int8}) == 2 * 4 + 1
    _check_saved(result, tmp_path)


def test_auto_on_a_linear_model_measures_torchaos_per_token_int8(tmp_path):
    pytest.importorskip("torchao")
    from effkit.load import load_model
    from effkit.passes.quantize import QuantizeConfig, quantize

    result = quantize(load_model(spec("mlp")), QuantizeConfig(backend="torch", tolerance=ANY), **FAST_Q)
    rows = {c["label"]: c for c in result.details["candidates"]}
    assert rows["torchao int8 dynamic per-token act, per-channel weights"]["latency_ms"] > 0
    assert "torch.ao dynamic per-channel" in rows


def test_excluded_layers_stay_float_in_a_torchao_model():
    pytest.importorskip("torchao")
    from effkit.load import load_model

    result = _quantized(load_model(spec("mlp")), dict(method="weight-only", bits=8, exclude=("0",)))
    int8 = {n.split(".")[0] for n, p in result.model.module.named_parameters() if str(p.dtype) == "torch.int8"}
    assert int8 == {"2", "4"}
    assert result.details["excluded"] == ["0"]


def test_auto_on_a_causal_lm_with_calibration_lists_gptq_beside_rtn(gpt2):
    from effkit.load import load_model
    from effkit.passes.quantize import QuantizeConfig
    from effkit.passes.quantize_candidates import CandidateContext, candidates_for

    model = load_model(f"hf:{gpt2}")
    batches = [tuple(model.example_inputs)]
    ctx = CandidateContext(model, QuantizeConfig(backend="onnxruntime", group_size=16), batches, None, None, 1, 0.0, 1)
    labels = [c.label for c in candidates_for(ctx)]
    assert "ORT MatMulNBits int4 GPTQ group 16" in labels and "ORT MatMulNBits int4 RTN group 16" in labels
    ctx.calib_batches = None
    assert not any("GPTQ" in c.label for c in candidates_for(ctx))


def test_explicit_int4_on_torch_to_torchscript_is_a_usage_error(cli):
    code, _, err = cli("quantize", spec("mlp"), "--method", "weight-only", "--bits", "4", "--backend", "torch",
                       "-o", "q.ts", *OPTS)
    assert code == 2
    assert err.strip() == "Error: no candidate of --method weight-only --bits 4 writes .ts (give the output no suffix)"


def test_without_torchao_auto_skips_its_candidates_and_the_explicit_method_is_one_error(cli, monkeypatch):
    from effkit.passes import quantize_torchao

    monkeypatch.setattr(quantize_torchao, "import_torchao", lambda: None)
    code, out, err = cli("quantize", spec("mlp"), "--backend", "torch", "-o", "q", "--json", "q.json", *OPTS)
    assert code == 0, err
    rows = {c["label"]: c for c in json.loads(open("q.json").read())["details"]["candidates"]}
    assert rows["torchao int8 dynamic per-token act, per-channel weights"]["status"] == \
        "failed: needs torchao: pip install torchao"
    code, _, err = cli("quantize", spec("mlp"), "--method", "weight-only", "--bits", "4", "--backend", "torch",
                       "--group-size", "16", "-o", "q4", *OPTS)
    assert code == 2
    assert err.strip() == ("Error: torchao int4 weight-only group 16 needs torchao, which is not installed "
                           "(pip install torchao, or use --backend onnxruntime)")


def test_a_torchao_model_without_torchao_is_one_load_error(tmp_path, monkeypatch):
    pytest.importorskip("torchao")
    from effkit import load, load_pt2
    from effkit.errors import ModelLoadError
    from effkit.save import save_model

    result = _quantized(load.load_model(spec("mlp")), dict(method="weight-only", bits=4, group_size=16))
    save_model(result.model, tmp_path / "q.pt2")
    monkeypatch.setattr(load_pt2, "import_torchao", lambda: None)
    with pytest.raises(ModelLoadError, match=r"q\.pt2 is a torchao int8/int4 model, which needs torchao to run"):
        load.load_model(str(tmp_path / "q.pt2"))


def test_torchao_import_noise_stays_away_from_users(tmp_path):
    pytest.importorskip("torchao")
    run = subprocess.run([sys.executable, "-m", "effkit", "quantize", spec("mlp"), "--method", "weight-only",
                          "--bits", "8", "--backend", "torch", "-o", str(tmp_path / "q.pt2"), *OPTS],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Failed to load" not in run.stderr and "_pytree" not in run.stderr and "Enum subclass" not in run.stderr
    assert (tmp_path / "q.pt2").exists()


# ---------------------------------------------------------------- GPTQ on ONNX Runtime

def _book(path, words: int = 400):
    from models_llm import VOCAB, WORDS

    rng = np.random.default_rng(1)
    path.write_text("\n".join(" ".join(rng.choice(WORDS[:VOCAB - 1], size=20)) for _ in range(words // 20)) + "\n")
    return path


GPT2_OPTS = ["--input-shape", "int64:1x16", "--input-shape", "int64:1x16", "--group-size", "16",
             "--backend", "onnxruntime", "--tolerance", "kl<=10", *OPTS]


def test_gptq_without_calibration_is_a_usage_error(cli):
    code, out, err = cli("quantize", spec("mlp"), "--method", "weight-only", "--bits", "4", "--weight-algorithm",
                         "gptq", "-o", "q.onnx", *OPTS)
    assert code == 2
    assert err.strip() == ("Error: --weight-algorithm gptq needs calibration data (pass --calib DATA (text for a "
                           "language model), or use --weight-algorithm rtn or hqq)")


def test_gptq_is_one_more_weight_only_candidate_with_calibration_text(cli, gpt2):
    _book(__import__("pathlib").Path("book.txt"))
    code, _, err = cli("quantize", f"hf:{gpt2}", "--method", "weight-only", "--bits", "4", "--calib", "book.txt",
                       "-o", "q.onnx", "--json", "q.json", *GPT2_OPTS)
    assert code == 0, err
    rows = {c["label"]: c for c in json.loads(open("q.json").read())["details"]["candidates"]}
    assert set(rows) == {"ORT MatMulNBits int4 RTN group 16", "ORT MatMulNBits int4 RTN group 16, int4 embeddings",
                         "ORT MatMulNBits int4 GPTQ group 16"}
    gptq = rows["ORT MatMulNBits int4 GPTQ group 16"]
    assert not gptq["status"].startswith("failed") and gptq["fidelity"]["cosine_min"] >= 0.8


def test_explicit_gptq_writes_matmulnbits_with_excluded_layers_kept_in_float(cli, gpt2):
    import onnx

    _book(__import__("pathlib").Path("book.txt"))
    code, _, err = cli("quantize", f"hf:{gpt2}", "--method", "weight-only", "--bits", "4", "--weight-algorithm",
                       "gptq", "--calib", "book.txt", "--exclude", "*lm_head*", "-o", "q.onnx", *GPT2_OPTS)
    assert code == 0, err
    nodes = onnx.load("q.onnx").graph.node
    nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2 * 4 and not any("lm_head" in n.name for n in nbits)
    # the LM head, still a float MatMul (torch.export names it node_linear; its scope names lm_head)
    head = [n for n in nodes if n.op_type == "MatMul" and ("lm_head" in n.name or "linear" in n.name)]
    assert len(head) == 1
