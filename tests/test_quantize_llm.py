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
def test_weight_only_nbits_quantizes_every_matmul(folders, kind, bits, algorithm, tmp_path):
    from effkit.export import export_onnx
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
    # 4-bit RTN is also measured with the embedding tables in 4 bits: both pass this bar, timing decides
    labels = {f"ORT MatMulNBits int{bits} {algorithm.upper()} group 32"}
    labels |= {"ORT MatMulNBits int4 RTN group 32, int4 embeddings"} if (bits, algorithm) == (4, "rtn") else set()
    assert chosen["label"] in labels
    fid = chosen["fidelity"]
    assert 0.5 <= fid["token_agreement"] <= 1 and fid["kl_mean"] >= 0
    # smaller than the float model in the same format; the original's size is its folder's fp32 weights,
    # which a model this tiny beats any ONNX graph of it with (the graph's own bytes dominate)
    assert result.details["original_size_bytes"] == sum(f.stat().st_size for f in folders[kind].iterdir()
                                                        if f.suffix in (".safetensors", ".json"))
    assert chosen["size_bytes"] < export_onnx(model, tmp_path / "fp32.onnx").onnx_path.stat().st_size


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
                                       "agreement>=0.99; only accuracy and perplexity take a change such as "
                                       "accuracy:-1pt or perplexity:+5%)"),
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


class _Logits:
    """A runner whose next-token logits are given: `right` puts all mass on the true next token."""

    def __init__(self, vocab: int, right: bool):
        self.vocab, self.right = vocab, right

    def run(self, batch):
        ids = batch[0]
        logits = np.zeros((*ids.shape, self.vocab))
        if self.right:
            np.put_along_axis(logits[:, :-1], ids[:, 1:, None], 50.0, axis=-1)
        return [logits]


def test_perplexity_is_one_for_a_perfect_model_and_the_vocabulary_for_a_uniform_one():
    from effkit.fidelity import perplexity

    ids = np.random.default_rng(0).integers(0, 10, (3, 6))
    assert perplexity(_Logits(10, right=True), (ids,))[0] == pytest.approx(1.0, abs=1e-6)
    ppl, tokens = perplexity(_Logits(10, right=False), (ids,))
    assert ppl == pytest.approx(10.0) and tokens == 3 * 5
    mask = np.ones_like(ids)
    mask[:, 4:] = 0  # padding: the last two positions predict nothing and are predicted by nothing
    assert perplexity(_Logits(10, right=False), (ids, mask))[1] == 3 * 3


def _text(path, words: int = 400):
    from models_llm import WORDS, VOCAB

    rng = np.random.default_rng(1)
    lines = [" ".join(rng.choice(WORDS[:VOCAB - 1], size=20)) for _ in range(words // 20)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_quantize_reports_perplexity_on_eval_text_and_holds_it_to_the_bar(cli, folders, tmp_path):
    import json

    text = _text(tmp_path / "book.txt")
    common = ["quantize", f"hf:{folders['gpt2']}", "--method", "weight-only", "--bits", "4", "--group-size", "32",
              "--backend", "onnxruntime", "--eval-text", text, "--input-shape", "int64:1x16", "--input-shape", "int64:1x16", "--min-time", "0.05",
              "--warmup", "1", "--iterations", "3", "--threads", "1", "--allow-slower"]
    code, out, err = cli(*common, "-o", tmp_path / "q.onnx", "--json", tmp_path / "q.json")
    assert code == 0, err
    result = json.loads((tmp_path / "q.json").read_text())
    ppl = result["perplexity"]
    assert ppl["tokens"] == 25 * 15 and ppl["source"] == str(text)  # 400 words: 25 windows of 16, 15 predictions
    assert 1 < ppl["before"] < 200 and 1 < ppl["after"] < 200
    assert result["bar"] == "perplexity:+5% (default)" and ppl["after"] <= 1.05 * ppl["before"]
    assert "perplexity (375 tokens)" in out
    chosen = next(c for c in result["details"]["candidates"] if c["status"] == "chosen")
    assert chosen["perplexity"]["after"] == pytest.approx(ppl["after"], rel=1e-6)  # judged on the figure reported
    code, _, err = cli(*common, "--tolerance", "perplexity<=1", "-o", tmp_path / "never.onnx")
    assert code == 1 and not (tmp_path / "never.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["--tolerance", "perplexity:+5%"], "Error: a perplexity tolerance needs text to measure it on"),
    (["--tolerance", "perplexity:-2pt", "--eval-text", "book.txt"], "perplexity is no percentage"),
])
def test_perplexity_without_text_or_in_points_is_a_usage_error(cli, folders, args, message):
    _text(__import__("pathlib").Path("book.txt"))
    code, _, err = cli("quantize", f"hf:{folders['gpt2']}", "--method", "weight-only", "--bits", "4",
                       "--backend", "onnxruntime", "-o", "q.onnx", *args)
    assert code == 2 and message in err, err
