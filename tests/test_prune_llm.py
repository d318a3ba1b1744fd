"""Width pruning of decoder language models (tiny GPT-2, Llama and Qwen2 folders): whole attention heads,
grouped-query aware, and FFN channels, chosen by weight norm, with the model's outputs and cache intact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FAST, spec
from models_llm import save_causal_lm

pytest.importorskip("transformers")

KINDS = ("gpt2", "llama", "qwen2")
NO_BAR = ["--max-accuracy-drop", "none", "--tolerance", "none"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm")
    return {kind: save_causal_lm(root / kind, kind) for kind in KINDS}


def _silence_half(module) -> None:
    """Zero every weight of the second half of each block's heads (whole key/value groups) and of its FFN
    channels: those units then add nothing, so removing exactly them leaves the outputs unchanged."""
    import torch

    from effkit.passes.prune_llm import _blocks

    with torch.no_grad():
        for block in _blocks(module):
            if hasattr(block, "self_attn"):  # Llama-style: q/k/v rows, o columns; gate/up rows, down columns
                attn, mlp = block.self_attn, block.mlp
                for p in (attn.q_proj, attn.k_proj, attn.v_proj):
                    p.weight[p.out_features // 2:] = 0
                attn.o_proj.weight[:, attn.o_proj.in_features // 2:] = 0
                mlp.gate_proj.weight[mlp.gate_proj.out_features // 2:] = 0
                mlp.up_proj.weight[mlp.up_proj.out_features // 2:] = 0
                mlp.down_proj.weight[:, mlp.down_proj.in_features // 2:] = 0
            else:  # GPT-2's Conv1D weights are [in, out]; c_attn's columns are [query | key | value]
                attn, mlp = block.attn, block.mlp
                width = attn.split_size
                for part in range(3):
                    attn.c_attn.weight[:, part * width + width // 2:(part + 1) * width] = 0
                    attn.c_attn.bias[part * width + width // 2:(part + 1) * width] = 0
                attn.c_proj.weight[width // 2:] = 0
                inner = mlp.c_fc.weight.shape[1]
                mlp.c_fc.weight[:, inner // 2:] = 0
                mlp.c_fc.bias[inner // 2:] = 0
                mlp.c_proj.weight[inner // 2:] = 0


@pytest.mark.parametrize("kind", KINDS)
def test_removing_the_silent_half_of_heads_and_channels_keeps_the_outputs(folders, kind):
    """The heads and channels whose weights are zero have the smallest norms, so they are the ones removed,
    and every index of every projection must line up for the outputs to stay the same."""
    import torch

    from effkit.load import load_model
    from effkit.passes.prune_llm import _blocks, prune_decoder

    model = load_model(f"hf:{folders[kind]}")
    module = model.module
    _silence_half(module)
    ids, mask = (torch.from_numpy(a) for a in model.example_inputs)
    def generate():  # greedy, with the model's KV cache
        return module.inner.generate(ids[:, :8], attention_mask=mask[:, :8], max_new_tokens=4, do_sample=False)

    with torch.no_grad():
        before, tokens = module(ids, mask), generate()
        params = sum(p.numel() for p in module.parameters())
        shapes = prune_decoder(module, 0.5, 0.5, "l2", None)
        after = module(ids, mask)
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()
    assert shapes["heads"] == {"before": 4, "after": 2}
    assert shapes["ffn_channels"]["after"] == shapes["ffn_channels"]["before"] // 2
    assert sum(p.numel() for p in module.parameters()) < params
    if kind != "gpt2":  # grouped-query attention: 2 key/value heads, one removed with its 2 query heads
        assert shapes["kv_heads"] == {"before": 2, "after": 1}
        config = module.inner.config
        assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (2, 1, 32)
        assert _blocks(module)[0].self_attn.k_proj.out_features == config.head_dim
    with torch.no_grad():  # the cache of the narrower blocks gives the same greedy tokens
        assert torch.equal(generate(), tokens)


def test_the_ratio_per_block_type_prunes_heads_only(folders):
    import torch

    from effkit.load import load_model
    from effkit.passes.prune_llm import prune_decoder

    module = load_model(f"hf:{folders['llama']}").module
    with torch.no_grad():
        shapes = prune_decoder(module, 0.5, 0.0, "l1", None)
    assert shapes["kv_heads"]["after"] == 1 and shapes["ffn_channels"] == {"before": 64, "after": 64}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_prune_command_on_a_decoder_lm_writes_a_narrower_model_that_loads_back(cli, tmp_path, folders, kind):
    from effkit.load import load_model
    from effkit.passes.prune import PruneConfig, prune
    from effkit.runners import TorchRunner

    code, stdout, stderr = cli("prune", f"hf:{folders[kind]}", "-o", "p.pt2", "--ratio", "heads=0.5,ffn=0.5",
                               "--runtime", "torch", "--json", "p.json", *NO_BAR, *FAST)
    assert code == 0, stderr
    report = json.loads((tmp_path / "p.json").read_text())
    decoder = report["details"]["decoder"]
    assert decoder["heads"] == {"before": 4, "after": 2}
    parameters = report["details"]["parameters"]
    assert parameters["after"] < 0.7 * parameters["before"]
    macs = report["details"]["macs"]
    assert macs["after"] < 0.7 * macs["before"]  # GPT-2's Conv1D layers are counted too
    assert "attention heads 4 -> 2 per block" in " ".join(stdout.split())
    # the written program gives what the same pruning gives in memory (the choice of heads is deterministic)
    original = load_model(f"hf:{folders[kind]}")
    in_memory = prune(original, PruneConfig(head_ratio=0.5, ffn_ratio=0.5)).model
    loaded = load_model(str(tmp_path / "p.pt2"))
    expected = TorchRunner(in_memory.module, 1).run(original.example_inputs)[0]
    out = TorchRunner(loaded.module, 1).run(original.example_inputs)[0]
    assert out.shape == (1, 64, 64)
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--ratio", "heads=0.5"], "Error: ratios per block type (heads=..., ffn=...) apply to decoder language models"),
    (["--ratio", "layers=0.5"], "Error: unknown block type 'layers' in --ratio 'layers=0.5'"),
    (["--ratio", "heads=0,ffn=0"], "Error: --ratio 'heads=0,ffn=0' removes nothing"),
    (["--ratio", "heads=1.5"], "Error: --ratio heads must be between 0 and 1 (exclusive), got 1.5"),
])
def test_bad_block_ratios_are_one_line_errors(cli, args, message):
    code, _, stderr = cli("prune", spec("mlp"), "-o", "p.pt2", *args, *NO_BAR, *FAST)
    assert code == 2
    assert stderr.splitlines()[0] == message or stderr.startswith(message), stderr


def test_a_latency_target_on_a_decoder_lm_is_refused(cli, folders):
    code, _, stderr = cli("prune", f"hf:{folders['llama']}", "-o", "p.pt2", "--target-latency", "0.5x", *NO_BAR, *FAST)
    assert code == 2
    assert stderr.startswith("Error: a decoder language model is pruned in one step to a fixed ratio"), stderr


# ---------------------------------------------------------------- recovery by distillation on text

LINES = ["the people of the water had made the way down to the time when they were",
         "one of them said that he would find the way out and then all of them could see",
         "there was no time for what they had to do and so they made it into the water",
         "he said that they were at the first of them and that the time was long",
         "she could not see the people who were out there in the water by the way",
         "when the time came they had made their way down to the water and said no"]
HELD_OUT = ["what time was it when she made the first way out of the water to see them",
            "they said the water was long and that he could not find the people there"]


def test_the_language_model_loss_compares_next_token_distributions_at_real_tokens_only():
    """A causal LM's logits are [batch, sequence, vocabulary]: the KL is over the vocabulary (the last
    dimension, where a classifier's classes are dim 1), and padded positions count for nothing."""
    import torch

    from effkit.passes.distill import DistillConfig
    from effkit.passes.distill_training import _per_sample_loss

    torch.manual_seed(0)
    teacher = torch.randn(2, 5, 7)
    student = teacher.clone()
    positions = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    config = DistillConfig(epochs=1)
    same = _per_sample_loss([student], [teacher], None, [], [], config, positions)
    assert torch.allclose(same, torch.zeros(2), atol=1e-6)
    student[0, 3:] = torch.randn(2, 7) * 10  # only padding differs in sample 0
    student[1, 0] = torch.randn(7) * 10
    loss = _per_sample_loss([student], [teacher], None, [], [], config, positions)
    assert loss[0].item() == pytest.approx(0.0, abs=1e-6) and loss[1].item() > 0.1
    # one position of five differs: the per-position mean over the vocabulary's KL
    log_s, log_t = torch.log_softmax(student[1, 0] / 4, -1), torch.log_softmax(teacher[1, 0] / 4, -1)
    expected = (log_t.exp() * (log_t - log_s)).sum() * 16 / 5
    assert loss[1].item() == pytest.approx(expected.item(), rel=1e-5)


def _kl_to(teacher, student, windows) -> float:
    from effkit.fidelity import compare_outputs
    from effkit.runners import TorchRunner

    batches = [tuple(a[i:i + 1] for a in windows.inputs) for i in range(len(windows))]
    reference = [TorchRunner(teacher.module, 1).run(b) for b in batches]
    return compare_outputs(reference, [TorchRunner(student.module, 1).run(b) for b in batches])["kl_mean"]


def test_recovery_distills_the_pruned_lm_towards_the_original_on_text(tmp_path, folders):
    from effkit.data import Reading, load_data, load_text_stream
    from effkit.load import load_model
    from effkit.passes.prune import PruneConfig, prune

    (tmp_path / "train.txt").write_text("\n".join(LINES * 4) + "\n")
    (tmp_path / "held.txt").write_text(" ".join(HELD_OUT * 3) + "\n")
    original = load_model(f"hf:{folders['llama']}")
    data = load_data(str(tmp_path / "train.txt"), model=original, reading=Reading(max_length=16))
    held = load_text_stream(str(tmp_path / "held.txt"), original, Reading(max_length=16))
    config = PruneConfig(head_ratio=0.5, ffn_ratio=0.5, seed=0)
    pruned = prune(original, config).model
    recovered = prune(original, PruneConfig(head_ratio=0.5, ffn_ratio=0.5, seed=0, finetune_epochs=8, lr=3e-3,
                                            batch_size=4), data=data, text=held)
    assert recovered.details["recovery"]["kind"] == "distillation from the unpruned model"
    assert recovered.details["perplexity_right_after_pruning"] > 1
    kl_pruned, kl_recovered = _kl_to(original, pruned, held), _kl_to(original, recovered.model, held)
    assert kl_recovered < 0.9 * kl_pruned, (kl_pruned, kl_recovered)  # 0.52 -> 0.44 here


def test_prune_reports_perplexity_before_right_after_pruning_and_after_recovery(cli, tmp_path, folders):
    (tmp_path / "train.txt").write_text("\n".join(LINES * 2) + "\n")
    (tmp_path / "held.txt").write_text(" ".join(HELD_OUT * 3) + "\n")
    code, stdout, stderr = cli("prune", f"hf:{folders['qwen2']}", "-o", "p.pt2", "--ratio", "heads=0.5,ffn=0.5",
                               "--finetune-epochs", "1", "--data", "train.txt", "--max-length", "16",
                               "--eval-text", "held.txt", "--runtime", "torch", "--tolerance", "none",
                               "--json", "p.json", "--markdown", "p.md", *FAST)
    assert code == 0, stderr
    ppl = json.loads((tmp_path / "p.json").read_text())["perplexity"]
    assert set(ppl) == {"before", "right_after_pruning", "after", "tokens", "source"}
    assert ppl["tokens"] == 6 * 15 and all(ppl[k] > 1 for k in ("before", "right_after_pruning", "after"))
    shown = f"{ppl['right_after_pruning']:.3f}"
    assert "perplexity (right after" in stdout and shown in stdout  # the label may wrap in its cell
    assert f"| perplexity (right after pruning) |  | {shown} |  |" in (tmp_path / "p.md").read_text()


def test_distill_judges_a_language_model_on_perplexity_by_default_with_eval_text(cli, tmp_path, folders):
    (tmp_path / "train.txt").write_text("\n".join(LINES * 2) + "\n")
    (tmp_path / "held.txt").write_text(" ".join(HELD_OUT * 3) + "\n")
    code, stdout, stderr = cli("distill", f"hf:{folders['llama']}", "--student-from-prune", "0.5", "--data",
                               "train.txt", "--max-length", "16", "--epochs", "1", "--eval-text", "held.txt",
                               "-o", "s.pt2", "--json", "d.json", *FAST)
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["bar"] == "perplexity:+5% (default)"
    ppl = report["perplexity"]
    assert ppl["tokens"] == 6 * 15  # 96 words in windows of 16: 15 predicted tokens each
    within = ppl["after"] <= 1.05 * ppl["before"]
    assert (code, report["status"] == "ok") == ((0, True) if within else (1, False)), (ppl, stderr)


def test_compress_narrows_distills_and_quantizes_a_language_model_from_its_recipe(cli, tmp_path, folders):
    """The shipped LLM recipe (prune heads and FFN, distill on text, 4-bit weights) runs on a tiny Llama."""
    from conftest import TESTS

    (tmp_path / "train.txt").write_text("\n".join(LINES * 2) + "\n")
    code, _, stderr = cli("compress", f"hf:{folders['llama']}", "--recipe", TESTS.parent / "examples/recipes/austen.toml",
                          "--data", "train.txt", "-o", "out", "--tolerance", "none", *FAST)
    assert code == 0, stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["name"] for s in report["states"]] == ["original", "prune", "distill", "quantize"]
    prune_step = next(s for s in report["steps"] if s["step"] == "prune")
    assert prune_step["details"]["decoder"]["kv_heads"] == {"before": 2, "after": 1}
    assert "MatMulNBits" in (tmp_path / "out" / "model.onnx").read_bytes().decode("latin-1")
