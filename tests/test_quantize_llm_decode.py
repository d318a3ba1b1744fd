"""A causal LM quantized for generation: its ONNX Runtime candidates carry the KV cache, are timed on a decode
step, and the file written generates (`effkit bench OUT.onnx --generate`). The runner of such a file runs it as a
plain model (empty past) and as one decode step, both equal to torch's logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FAST, NO_BAR
from models_llm import VOCAB, save_causal_lm

pytest.importorskip("transformers")

FAST_Q = {"threads": 1, "candidate_time": 0.0, "candidate_iterations": 1}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_causal_lm(tmp_path_factory.mktemp("decode") / "llama", "llama")


def test_a_file_with_past_runs_as_a_plain_model_and_as_one_decode_step(llama):
    import torch

    from effkit.generation import causal_lm_module
    from effkit.generation_ort import cache_argument, export_with_past
    from effkit.load import load_model
    from effkit.runners import OrtRunner

    module = causal_lm_module(load_model(f"hf:{llama}"))
    runner = OrtRunner(export_with_past(module), 1)
    assert runner.input_names == ["input_ids", "attention_mask"] and runner.output_names == ["logits"]
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, 9)).astype(np.int64)
    (logits,) = runner.run((ids, np.ones_like(ids)))
    with torch.inference_mode():
        out = module(input_ids=torch.from_numpy(ids), use_cache=True, return_dict=True)
        np.testing.assert_allclose(logits, out.logits.numpy(), atol=1e-4, rtol=1e-3)
        token = out.logits[:, -1].argmax(-1, keepdim=True)  # the step after the prompt, through torch's cache
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        step = module(input_ids=token, use_cache=True, return_dict=True, **{cache_argument(module): cache})
    decode_logits = runner.bind_decode((ids, np.ones_like(ids)))()[0]
    assert decode_logits.shape == (2, 1, VOCAB)
    np.testing.assert_allclose(decode_logits, step.logits.numpy(), atol=1e-4, rtol=1e-3)


def test_quantize_times_a_causal_lm_on_decode_steps_and_writes_a_file_that_generates(llama):
    from effkit.generation_ort import OrtGreedy
    from effkit.load import load_model
    from effkit.passes.quantize import QuantizeConfig, quantize

    model = load_model(f"hf:{llama}")
    result = quantize(model, QuantizeConfig(group_size=32, tolerance=("kl<=10",)), **FAST_Q)
    details = result.details
    assert details["timed_on"].startswith(f"one decode step (a new token after a {model.example_inputs[0].shape[1] - 4}"
                                          "-token prompt from the example inputs, with its KV cache) on ONNX Runtime")
    assert {c["backend"] for c in details["candidates"]} == {"onnxruntime"}  # torch's files carry no KV cache
    assert "torch's int8 files carry no KV cache (--backend torch times them on a forward pass)" in " ".join(result.notes)
    assert list(details["baselines_ms"]) == ["onnxruntime fp32"]
    assert f"speed timed on {details['timed_on']}" in result.notes  # terminal, JSON, Markdown and HTML list notes
    assert result.model.kind == "onnx" and result.model.meta["kv_cache"]
    ids = np.random.default_rng(1).integers(0, VOCAB, (1, 8)).astype(np.int64)
    tokens, _, decode_ms = OrtGreedy(result.model.onnx_path, 1)(ids, 5)
    assert tokens.shape == (1, 5) and len(decode_ms) == 4
    assert result.timed["onnxruntime"].speedup() == details["against_float"]  # one timing, reported as decided


def test_backend_torch_times_a_causal_lm_on_a_forward_pass(llama):
    from effkit.load import load_model
    from effkit.passes.quantize import QuantizeConfig, quantize

    model = load_model(f"hf:{llama}")
    result = quantize(model, QuantizeConfig(method="dynamic", backend="torch", tolerance=("kl<=10",)), **FAST_Q)
    assert result.details["timed_on"].startswith("a forward pass on the example inputs")


def test_the_written_int4_model_generates_with_bench(cli, llama):
    code, _, err = cli("quantize", f"hf:{llama}", "--method", "weight-only", "--bits", "4", "--group-size", "32",
                       "-o", "q.onnx", "--allow-slower", *NO_BAR, *FAST, "--json", "q.json")
    assert code == 0, err
    record = json.load(open("q.json"))
    # the command reports the paired timing quantize decided on, not a second one
    assert record["speedup"]["onnxruntime"]["estimate"] == record["details"]["against_float"]["estimate"]
    code, out, err = cli("bench", "q.onnx", "--generate", "--prompt-len", "6", "--new-tokens", "4", "--iterations",
                         "2", "--json", "g.json")
    assert code == 0, err
    run = json.load(open("g.json"))["runs"][0]
    assert run["runtime"] == "onnxruntime" and run["generation"]["new_tokens"] == 4
    assert run["generation"]["decode_ms_per_token"]["n"] == 2 * 3 and run["generation"]["prompt_tokens"] == 6
    code, _, err = cli("bench", "q.onnx", *FAST)  # and as a plain model: one forward pass
    assert code == 0, err


@pytest.mark.parametrize("args, message", [
    (["--prompt", "the"], "an ONNX file carries no tokenizer, so --prompt/--prompt-file text cannot be tokenized "
                          "(use --prompt-len N for a random prompt, or bench the hf: folder)"),
    (["--runtime", "torch"], "an ONNX file generates on onnxruntime only (use --runtime onnxruntime)"),
    (["--new-tokens", "0"], "--new-tokens must be at least 1, got 0 (e.g. --new-tokens 64)"),
])
def test_bad_generation_of_an_onnx_file_is_one_error_line(cli, llama, args, message, tmp_path):
    from effkit.generation import causal_lm_module
    from effkit.generation_ort import export_with_past
    from effkit.load import load_model

    path = export_with_past(causal_lm_module(load_model(f"hf:{llama}")), tmp_path / "lm.onnx")
    code, _, err = cli("bench", str(path), "--generate", *args)
    assert (code, err.strip()) == (2, f"Error: {message}")


def test_an_onnx_file_without_past_cannot_generate(cli, llama, tmp_path):
    code, _, err = cli("export", f"hf:{llama}", "-o", "plain.onnx")
    assert code == 0, err
    code, _, err = cli("bench", "plain.onnx", "--generate")
    assert code == 2 and err.strip().startswith("Error: plain.onnx has no past key/values (KV cache) inputs, so it "
                                                "cannot generate")
