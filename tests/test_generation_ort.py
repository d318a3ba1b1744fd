"""Generation on ONNX Runtime: tiny GPT-2, Llama and Qwen2 folders exported with past key/values decode greedily
on ORT to torch's tokens; `bench --generate --runtime onnxruntime|all`; the loop on a MatMulNBits copy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FAST
from models_llm import VOCAB, save_causal_lm

pytest.importorskip("transformers")

KINDS = ("gpt2", "llama", "qwen2")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each kind's folder, its torch module and its export with past key/values (an export takes seconds)."""
    from effkit.generation import causal_lm_module
    from effkit.generation_ort import export_with_past
    from effkit.load import load_model

    root = tmp_path_factory.mktemp("llm_ort")
    found = {}
    for kind in KINDS:
        folder = save_causal_lm(root / kind, kind)
        module = causal_lm_module(load_model(f"hf:{folder}"))
        found[kind] = (folder, module, export_with_past(module, root / f"{kind}.onnx"))
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_ort_greedy_tokens_equal_torchs_token_by_token(exported, kind):
    from effkit.generation import greedy
    from effkit.generation_ort import OrtGreedy, verify_greedy

    _, module, path = exported[kind]
    loop = OrtGreedy(path, 1)
    names = [i.name for i in loop.session.get_inputs()]
    assert names == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key",
                     "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"]
    assert [o.name for o in loop.session.get_outputs()][:2] == ["logits", "present.0.key"]
    for batch in (1, 2):  # the export saw batch 2: batch, past and sequence axes are all dynamic
        ids = np.random.default_rng(batch).integers(0, VOCAB, (batch, 12)).astype(np.int64)
        tokens, prefill_ms, decode_ms = loop(ids, 10)
        assert tokens.shape == (batch, 10) and prefill_ms > 0 and len(decode_ms) == 9
        np.testing.assert_array_equal(tokens, greedy(module, ids, 10)[0])
        assert len(set(tokens[0].tolist())) > 1  # not one token repeated: the comparison means something
        check = verify_greedy(module, loop, ids, 10)  # logits at every step within 1e-4 + 1e-3 x |logit|
        assert check["tokens_equal"] == check["tokens"] == 10 and check["max_abs_diff"] < 1e-4


def test_the_loop_runs_on_a_matmulnbits_copy(exported):
    """The later quantize step times int4 models with this loop: it takes any file of the layout."""
    import onnx

    from effkit.generation_ort import GenerationMismatch, OrtGreedy, verify_greedy
    from effkit.passes.quantize_ort import quantize_nbits

    _, module, path = exported["llama"]
    int4 = quantize_nbits(path, bits=4, group_size=16, algorithm="rtn", exclude=[])
    assert sum(n.op_type == "MatMulNBits" for n in onnx.load(str(int4)).graph.node) >= 7  # q k v o, 3 MLP: per layer
    ids = np.random.default_rng(3).integers(0, VOCAB, (2, 12)).astype(np.int64)
    tokens, prefill_ms, decode_ms = OrtGreedy(int4, 1)(ids, 10)
    assert tokens.shape == (2, 10) and ((0 <= tokens) & (tokens < VOCAB)).all() and len(decode_ms) == 9
    with pytest.raises(GenerationMismatch, match="ONNX Runtime's logits differ from torch's by up to"):
        verify_greedy(module, OrtGreedy(int4, 1), ids, 10)  # 4-bit weights are not the fp32 model


def _check_runs(result, runtimes, batches, new_tokens):
    assert [(r["runtime"], r["batch_size"]) for r in result["runs"]] == [(rt, b) for rt in runtimes for b in batches]
    loops = {"torch": "greedy decoding, KV cache (transformers DynamicCache), torch eager",
             "onnxruntime": "ONNX Runtime, exported with past key/values, greedy"}
    for run in result["runs"]:
        g = run["generation"]
        assert g["loop"] == loops[run["runtime"]] and g["generations"] == 3
        assert g["decode_ms_per_token"]["n"] == 3 * (new_tokens - 1) and run["latency_ms"] == g["decode_ms_per_token"]
        assert g["decode_tokens_per_s"] > 0 and g["prefill_tokens_per_s"] > 0 and run["peak_rss_bytes"] > 0
    assert len({tuple(r["generation"]["first_tokens"]) for r in result["runs"]}) == 1  # same tokens everywhere
    export = result["generation"]["onnx_export"]
    assert export["exporter"].startswith("torch.export") and export["export_seconds"] > 0
    assert export["verification"] == {**export["verification"], "tokens": new_tokens, "tokens_equal": new_tokens,
                                      "atol": 1e-4, "rtol": 1e-3}
    assert result["generation"]["loop"] == "; ".join(loops[r] for r in runtimes)


def test_bench_generate_on_both_runtimes_gives_the_decode_ratio(cli, exported, tmp_path, monkeypatch):
    folder, _, path = exported["qwen2"]
    monkeypatch.setattr("effkit.generation.export_with_past", lambda module: path)  # the same export, made once
    code, out, err = cli("bench", f"hf:{folder}", "--generate", "--runtime", "all", "--prompt-len", "8",
                         "--new-tokens", "5", "--batch-size", "1", "--batch-size", "2", *FAST,
                         "--json", tmp_path / "g.json")
    assert code == 0, err
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["generation"]["runtime"] == "torch, onnxruntime"
    _check_runs(result, ["torch", "onnxruntime"], [1, 2], 5)
    tps = {(r["runtime"], r["batch_size"]): r["generation"]["decode_tokens_per_s"] for r in result["runs"]}
    ratios = result["generation"]["onnxruntime_vs_torch"]
    assert [r["batch_size"] for r in ratios] == [1, 2]
    for r in ratios:
        assert r["decode_tokens_per_s_ratio"] == pytest.approx(tps[("onnxruntime", r["batch_size"])]
                                                               / tps[("torch", r["batch_size"])])
    assert "x torch's tokens/s at batch 2" in " ".join(out.split())


def test_bench_generate_on_onnxruntime(cli, exported, tmp_path, monkeypatch):
    folder, _, path = exported["gpt2"]
    monkeypatch.setattr("effkit.generation.export_with_past", lambda module: path)  # the same export, made once
    code, out, err = cli("bench", f"hf:{folder}", "--generate", "--runtime", "onnxruntime", "--prompt-len", "6",
                         "--new-tokens", "4", *FAST, "--json", tmp_path / "g.json")
    assert code == 0, err
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["generation"]["runtime"] == "onnxruntime" and "onnxruntime_vs_torch" not in result["generation"]
    _check_runs(result, ["onnxruntime"], [1], 4)
    assert result["metrics"]["throughput"] == result["runs"][0]["generation"]["decode_tokens_per_s"]
    assert "4/4 greedy tokens equal to torch's" in " ".join(out.split())


def test_an_unknown_generation_runtime_is_one_error_line(cli, exported):
    code, _, err = cli("bench", f"hf:{exported['gpt2'][0]}", "--generate", "--runtime", "tensorrt")
    assert (code, err.strip()) == (2, "Error: unknown runtime 'tensorrt' (use torch, onnxruntime or all)")


def test_the_loop_refuses_a_file_without_past_key_values(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("logits", TensorProto.INT64, ["b", "s"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "plain.onnx")
    from effkit.errors import UsageError
    from effkit.generation_ort import OrtGreedy

    with pytest.raises(UsageError, match="does not have the inputs and outputs of a causal LM with past key/values"):
        OrtGreedy(tmp_path / "plain.onnx", 1)


def test_onnxruntime_counts_the_exports_copies_before_loading(cli, exported, monkeypatch):
    """The export and the ORT session each hold the weights again, beside the torch model: a budget that
    fits torch alone refuses onnxruntime before anything loads."""
    from effkit.load_hf import memory_estimate, read_config
    from effkit.limits import MAX_MEMORY_ENV

    folder = exported["gpt2"][0]
    weights = memory_estimate(folder, read_config(folder))
    monkeypatch.setenv(MAX_MEMORY_ENV, str(2 * weights))
    code, _, err = cli("bench", f"hf:{folder}", "--generate", "--runtime", "onnxruntime", "--prompt-len", "4",
                       "--new-tokens", "2")
    assert code == 2 and err.startswith(f"Error: {folder} needs about ")
    assert "of memory for generating 2 tokens at batch 1 on onnxruntime, more than" in err
    code, _, err = cli("bench", f"hf:{folder}", "--generate", "--prompt-len", "4", "--new-tokens", "2", *FAST)
    assert code == 0, err
