"""Weight-only int4/int8 (ONNX Runtime MatMulNBits) on tiny causal LMs and on a plain MLP, and the
language-model quality metrics the judge reads: next-token agreement and KL."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TESTS

pytest.importorskip("transformers")

from models_llm import save_causal_lm  # noqa: E402

FAST_Q = {"threads": 1, "candidate_time": 0.0, "candidate_iterations": 1}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm")
    return {kind: save_causal_lm(root / kind, kind) for kind in ("gpt2", "llama", "qwen2")}


def _nbits(model) -> list[int]:
    import onnx

    proto = onnx.load(str(model.onnx_path))
    return [next(a.i for a in n.attribute if a.name == "bits") for n in proto.graph.node if n.op_type == "MatMulNBits"]


@pytest.mark.parametrize("kind, bits, algorithm", [("gpt2", 4, "rtn"), ("llama", 8, "rtn"), ("qwen2", 4, "hqq")])
def test_weight_only_nbits_quantizes_every_matmul(folders, kind, bits, algorithm):
    from effkit.load import load_model
    from effkit.passes.quantize import QuantizeConfig, quantize

    model = load_model(f"hf:{folders[kind]}")
    config = QuantizeConfig(method="weight-only", backend="onnxruntime", bits=bits, group_size=32,
                            weight_algorithm=algorithm, tolerance=("agreement>=0.5",))
    result = quantize(model, config, **FAST_Q)
    found = _nbits(result.model)
    # every projection of both blocks (GPT-2's Conv1D Gemms rewritten first) and the LM head
    assert len(found) >= 2 * 4 + 1 and set(found) == {bits}
    chosen = next(c for c in result.details["candidates"] if c["status"] == "chosen")
    assert chosen["label"] == f"ORT MatMulNBits int{bits} {algorithm.upper()} group 32"
    fid = chosen["fidelity"]
    assert 0.5 <= fid["token_agreement"] <= 1 and fid["kl_mean"] >= 0
    assert chosen["size_bytes"] < result.details["original_size_bytes"]


def test_auto_on_a_causal_lm_measures_int4_and_int8_weights(folders):
    from effkit.load import load_model
    from effkit.passes.quantize import QuantizeConfig, quantize

    model = load_model(f"hf:{folders['gpt2']}")
    result = quantize(model, QuantizeConfig(backend="onnxruntime", group_size=32, tolerance=("kl<=10",)), **FAST_Q)
    labels = [c["label"] for c in result.details["candidates"]]
    assert "ORT MatMulNBits int4 RTN group 32" in labels and "ORT MatMulNBits int8 RTN group 32" in labels
    assert any(label.startswith("ORT dynamic") for label in labels)


def test_weight_only_nbits_works_on_a_model_that_is_not_a_language_model():
    from effkit.load import load_model
    from effkit.passes.quantize import QuantizeConfig, quantize

    model = load_model(f"{TESTS / 'models_quantize.py'}:wide_mlp")
    result = quantize(model, QuantizeConfig(method="weight-only", backend="onnxruntime", bits=4, group_size=32),
                      **FAST_Q)
    assert _nbits(result.model) and result.details["candidates"][0]["fidelity"]["cosine_min"] >= 0.99


@pytest.mark.parametrize("args, message", [
    (["--bits", "3"], "--bits 3 is not supported (use --bits 4 or --bits 8)"),
    (["--method", "dynamic", "--bits", "4"],
     "--bits applies to weight-only quantization, not --method dynamic (use --method weight-only)"),
    (["--bits", "8", "--weight-algorithm", "hqq"],
     "HQQ writes 4-bit weights only (ONNX Runtime's CPU kernel takes no 8-bit HQQ) (use --bits 4, or "
     "--weight-algorithm rtn)"),
    (["--bits", "4", "--group-size", "24"], "--group-size 24 is not a power of two of at least 16 (e.g. --group-size "
                                            "32 or 128)"),
    (["--tolerance", "agreement:+5%"], "--tolerance 'agreement:+5%': agreement takes an absolute bound (e.g. "
                                       "agreement>=0.99; only accuracy takes a change such as accuracy:-1pt)"),
])
def test_bad_weight_only_options_are_one_error_line(cli, folders, args, message):
    code, _, err = cli("quantize", f"hf:{folders['gpt2']}", "-o", "q.onnx", *args)
    assert (code, err.strip()) == (2, f"Error: {message}")


def test_agreement_on_a_classifier_names_what_it_applies_to():
    from effkit.judge import tolerance_failures
    from effkit.specs import parse_threshold

    from effkit.errors import UsageError

    with pytest.raises(UsageError, match=r"^--tolerance 'agreement>=0.9': agreement applies to language models"):
        tolerance_failures([parse_threshold("agreement>=0.9")], {"cosine_min": 1.0}, None)


def test_token_agreement_and_kl_of_language_model_logits():
    from effkit.fidelity import compare_outputs

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 5, 7)).astype(np.float32)
    same = compare_outputs([[ref]], [[ref.copy()]])
    assert same["token_agreement"] == 1.0 and same["kl_mean"] == pytest.approx(0.0, abs=1e-12)
    changed = ref.copy()
    top = ref[0, 0].argmax()
    changed[0, 0, top] = ref[0, 0].min() - 1  # one of ten positions picks another token
    result = compare_outputs([[ref]], [[changed]])
    assert result["token_agreement"] == pytest.approx(0.9)
    p = np.exp(ref[0, 0] - ref[0, 0].max()); p /= p.sum()
    q = np.exp(changed[0, 0] - changed[0, 0].max()); q /= q.sum()
    assert result["kl_mean"] == pytest.approx(float(np.sum(p * np.log(p / q))) / 10, rel=1e-6)
