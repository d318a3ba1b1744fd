"""`effkit bench --generate`: greedy generation of tiny GPT-2, Llama and Qwen2 folders with their KV cache,
and the refusals that come before anything loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FAST
from models_llm import CONTEXT, save_causal_lm

pytest.importorskip("transformers")

KINDS = ("gpt2", "llama", "qwen2")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm")
    return {kind: save_causal_lm(root / kind, kind) for kind in KINDS}


def _greedy_without_cache(module, ids: np.ndarray, new_tokens: int) -> np.ndarray:
    """The reference: the whole sequence recomputed for every new token."""
    import torch

    seq = torch.from_numpy(ids)
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = module(input_ids=seq, use_cache=False).logits
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, ids.shape[1]:].numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_with_the_kv_cache_matches_recomputing_everything(folders, kind):
    from effkit.generation import causal_lm_module, greedy
    from effkit.load import load_model

    model = load_model(f"hf:{folders[kind]}")
    assert model.meta["causal_lm"] and model.meta["hf_architecture"].endswith(("ForCausalLM", "LMHeadModel"))
    module = causal_lm_module(model)
    ids = np.random.default_rng(1).integers(0, 64, (2, 12)).astype(np.int64)
    tokens, prefill_ms, decode_ms = greedy(module, ids, 10)
    assert tokens.shape == (2, 10) and prefill_ms > 0 and len(decode_ms) == 9
    np.testing.assert_array_equal(tokens, _greedy_without_cache(module, ids, 10))
    assert len(set(tokens[0].tolist())) > 1  # the seeded weights do not collapse onto one token


@pytest.mark.parametrize("kind", KINDS)
def test_bench_generate_writes_the_generation_block(cli, folders, kind, tmp_path):
    code, out, err = cli("bench", f"hf:{folders[kind]}", "--generate", "--prompt-len", "8", "--new-tokens", "5",
                         "--batch-size", "1", "--batch-size", "2", *FAST, "--json", tmp_path / "g.json")
    assert code == 0, err
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["schema"] == "effkit.bench/1"
    assert result["generation"]["prompt_tokens"] == 8 and result["generation"]["new_tokens"] == 5
    assert [r["batch_size"] for r in result["runs"]] == [1, 2]
    for run in result["runs"]:
        g = run["generation"]
        assert g["generations"] == 3 and g["time_to_first_token_ms"]["n"] == 3
        assert g["decode_ms_per_token"]["n"] == 3 * 4 and g["decode_ms_per_token"]["p99"] >= g["decode_ms_per_token"]["p50"]
        assert g["decode_tokens_per_s"] > 0 and g["prefill_tokens_per_s"] > 0 and run["peak_rss_bytes"] > 0
        assert run["latency_ms"] == g["decode_ms_per_token"]  # gates and compare read decode latency per token
    assert result["metrics"]["throughput"] == result["runs"][0]["generation"]["decode_tokens_per_s"]
    assert result["runs"][0]["generation"]["first_tokens"] == result["runs"][1]["generation"]["first_tokens"]
    threads_line, rest = out.split("\n", 1)  # the one thread policy's line, then the table
    assert f"{result['runs'][0]['threads']} thread" in threads_line and rest.startswith("effkit bench --generate: ")


def test_a_text_prompt_is_tokenized_with_the_folders_tokenizer(cli, folders, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("the water is long and we see it")
    code, _, err = cli("bench", f"hf:{folders['gpt2']}", "--generate", "--prompt-file", prompt, "--new-tokens", "3",
                       *FAST, "--json", tmp_path / "g.json")
    assert code == 0, err
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["generation"]["prompt"] == "text (8 tokens)" and result["runs"][0]["generation"]["prompt_tokens"] == 8


def test_the_forward_pass_of_a_causal_lm_returns_logits(folders):
    from effkit.load import load_model
    from effkit.runners import native_runner

    model = load_model(f"hf:{folders['llama']}")
    assert model.example_inputs[0].shape == (1, CONTEXT)  # shorter than the default length: the context decides
    assert native_runner(model, 1).run(model.example_inputs)[0].shape == (1, CONTEXT, 64)


# ---------------------------------------------------------------- refused before loading

def test_a_model_that_is_not_a_causal_lm_is_named(cli, tmp_path):
    import transformers

    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    code, _, err = cli("bench", f"hf:{tmp_path / 'bert'}", "--generate")
    assert code == 2
    assert err.strip() == (f"Error: {tmp_path / 'bert'} holds a BertModel, not a causal language model, so it cannot "
                           "generate (drop --generate to time its forward pass)")


@pytest.mark.parametrize("args, message", [
    (["--new-tokens", "0"], "--new-tokens must be at least 1, got 0 (e.g. --new-tokens 64)"),
    (["--prompt-len", "60", "--new-tokens", "5"],
     "a prompt of 60 tokens plus 5 new ones is longer than the model's context of 64 tokens "
     "(shorten the prompt or ask for fewer --new-tokens)"),
    (["--prompt", " ".join(["water"] * 62), "--new-tokens", "3"],
     "a prompt of 62 tokens plus 3 new ones is longer than the model's context of 64 tokens "
     "(shorten the prompt or ask for fewer --new-tokens)"),
])
def test_bad_generation_settings_are_one_error_line(cli, folders, args, message):
    code, _, err = cli("bench", f"hf:{folders['qwen2']}", "--generate", *args)
    assert (code, err.strip()) == (2, f"Error: {message}")


def test_a_prompt_without_a_tokenizer_is_refused(cli, tmp_path):
    folder = save_causal_lm(tmp_path / "bare", "gpt2", tokenizer=False)
    code, _, err = cli("bench", f"hf:{folder}", "--generate", "--prompt", "the water")
    assert code == 2
    assert err.strip() == (f"Error: {folder} has no tokenizer.json, so --prompt/--prompt-file text cannot be "
                           "tokenized (add the model's tokenizer.json, or use --prompt-len N for a random prompt)")


def test_prompt_needs_generate(cli, folders):
    code, _, err = cli("bench", f"hf:{folders['gpt2']}", "--prompt", "the")
    assert (code, err.strip()) == (2, "Error: --prompt applies to generation (add --generate)")


def test_a_model_larger_than_memory_is_refused_before_loading(cli, tmp_path, monkeypatch):
    from effkit import load_hf
    from effkit.limits import available_memory

    free = available_memory()
    folder = save_causal_lm(tmp_path / "huge", "gpt2")
    with open(folder / "model.safetensors", "r+b") as f:  # a sparse file: as large on paper as memory, twice
        f.truncate(2 * free)
    loads = []
    monkeypatch.setattr("transformers.GPT2LMHeadModel.from_pretrained", lambda *a, **k: loads.append(a))
    code, _, err = cli("bench", f"hf:{folder}", "--generate", "--prompt-len", "8", "--new-tokens", "4")
    assert code == 2 and loads == []
    assert err.startswith(f"Error: {folder} needs about ") and "of memory for generating 4 tokens at batch 1" in err
    code, _, err = cli("bench", f"hf:{folder}")
    assert code == 2 and loads == [] and "of memory for loading it, more than " in err
    assert load_hf.memory_estimate(folder, {}) >= 2 * free
