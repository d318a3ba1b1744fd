"""effkit prune: every coupled-layer pattern prunes for real, stays valid, exports and reloads; options are
honoured; bad input fails with one clear line."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, NO_BAR, TESTS, spec

from effkit.errors import ModelLoadError, UsageError
from effkit.load import load_model
from effkit.save import save_model
from effkit.export import export_onnx
from effkit.passes.prune import PruneConfig, prune
from effkit.passes.prune_unstructured import nm_mask
from effkit.export import make_runner

PATTERNS = TESTS / "models_prune.py"
EXAMPLES = TESTS.parent / "examples"


def pattern(name: str) -> str:
    return f"{PATTERNS}:{name}"


def outputs(model, inputs=None):
    return make_runner(model, "torch", 1).run(inputs or model.example_inputs)


@pytest.mark.parametrize("name", [spec("mlp"), spec("cnn"), pattern("concat"), pattern("grouped"),
                                  pattern("attention"), pattern("mha")],
                         ids=["mlp", "residual-bn", "concat", "grouped-depthwise", "qkv-attention", "torch-mha"])
def test_structured_prunes_for_real_exports_and_reloads(name, tmp_path):
    model = load_model(name)
    result = prune(model, PruneConfig(ratio=0.5))
    details = result.details
    assert details["parameters"]["after"] < 0.45 * details["parameters"]["before"]
    assert details["macs"]["after"] < 0.45 * details["macs"]["before"]
    # the output layer keeps its outputs; the input model is untouched
    out_layer = details["output_layers"][0]
    assert details["widths"][out_layer]["after"][1] == details["widths"][out_layer]["before"][1]
    assert sum(p.numel() for p in model.module.parameters()) == details["parameters"]["before"]
    before, after = outputs(model), outputs(result.model)
    assert [a.shape for a in after] == [b.shape for b in before]

    saved = tmp_path / "pruned.pt2"
    save_model(result.model, saved)
    reloaded = load_model(str(saved))
    for a, b in zip(outputs(reloaded, model.example_inputs), after):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    onnx_model = export_onnx(result.model, tmp_path / "pruned.onnx")
    assert onnx_model.meta["export"]["max_abs_diff"] < 1e-4


def test_attention_heads_keep_equal_sizes():
    result = prune(load_model(pattern("attention")), PruneConfig(ratio=0.5))
    widths = result.details["widths"]
    for proj in ("attn.q", "attn.k", "attn.v"):
        assert widths[proj]["after"][1] == 16  # 4 heads of 8 -> 4 heads of 4
    assert result.model.module.attn.num_heads == 4


def test_ignore_keeps_matching_layers_whole():
    model = load_model(pattern("grouped"))
    result = prune(model, PruneConfig(ignore=("pointwise*",)))
    widths = result.details["widths"]
    assert widths["pointwise.0"]["after"] == [16, 32]  # its outputs kept, its inputs follow the block before
    assert widths["stem.0"]["after"] == [3, 16]
    assert "pointwise.0" in result.details["ignored_layers"] and "fc" in result.details["ignored_layers"]


def test_round_to_keeps_widths_multiples():
    model = load_model(spec("mlp"))
    plain = prune(model, PruneConfig(ratio=0.3)).details["widths"]
    rounded = prune(model, PruneConfig(ratio=0.3, round_to=8)).details["widths"]
    assert plain["0"]["after"][1] % 8 != 0  # 32 * 0.7 = 22: the test can fail
    assert rounded["0"]["after"][1] % 8 == 0 and rounded["2"]["after"][1] % 8 == 0
    assert rounded["0"]["after"][1] == 16


def test_iterative_steps_reach_the_same_ratio():
    result = prune(load_model(spec("cnn")), PruneConfig(ratio=0.5, iterative_steps=3))
    assert result.details["widths"]["conv1"]["after"] == [8, 8]


def test_global_scope_ranks_across_layers():
    result = prune(load_model(pattern("wide_mlp")), PruneConfig(ratio=0.5, scope="global"))
    after = result.details["parameters"]["after"]
    assert after < 0.5 * result.details["parameters"]["before"]


def test_unstructured_is_permanent_and_honest(tmp_path):
    model = load_model(spec("cnn"))
    result = prune(model, PruneConfig(unstructured=True, sparsity=0.9))
    module = result.model.module
    state = module.state_dict()
    assert not [k for k in state if k.endswith(("_orig", "_mask"))]
    assert not any(m._forward_pre_hooks for m in module.modules())
    assert result.details["sparsity"]["conv1"] == pytest.approx(0.9, abs=0.01)
    assert "fc" not in result.details["sparsity"]  # the output layer is kept
    assert "dense size and latency do not drop" in result.notes[0]
    gz = result.details["gzip_bytes"]
    assert gz["after"] < 0.7 * gz["before"]
    save_model(result.model, tmp_path / "sparse.pt2")
    reloaded = load_model(str(tmp_path / "sparse.pt2"))
    weights = [v for k, v in reloaded.module.state_dict().items() if "conv1" in k and v.dim() == 4]
    assert float((weights[0] == 0).float().mean()) == pytest.approx(0.9, abs=0.01)


def test_unstructured_global_and_nm_pattern():
    model = load_model(spec("cnn"))
    result = prune(model, PruneConfig(unstructured=True, sparsity=0.5, scope="global"))
    assert result.details["overall_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert len({round(v, 2) for v in result.details["sparsity"].values()}) > 1  # ranked globally, not per layer

    nm = prune(model, PruneConfig(unstructured=True, pattern="2:4"))
    assert nm.details["skipped_layers"] == ["stem.0"]  # 3 input channels: not a multiple of 4
    w = nm.model.module.conv1.weight.detach().movedim(1, -1).reshape(-1, 4)
    assert int((w != 0).sum(1).max()) <= 2 and nm.details["sparsity"]["conv1"] == 0.5


def test_nm_mask_keeps_the_largest():
    import torch

    w = torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 9.0]])
    assert nm_mask(w, 2, 4).tolist() == [[0, 1, 1, 0, 1, 0, 0, 1]]


def test_target_macs_stops_at_the_first_ratio_that_reaches_it():
    result = prune(load_model(spec("cnn")), PruneConfig(target_macs=0.5))
    target = result.details["target"]
    assert target["reached"] and target["kind"] == "macs"
    assert target["steps"][-1]["factor"] <= 0.5 < target["steps"][-2]["factor"]
    assert result.details["ratio"] == target["steps"][-1]["ratio"]
    assert result.details["macs"]["after"] <= 0.5 * result.details["macs"]["before"]


def test_target_latency_stops_at_its_target():
    """A latency target is met when the whole 95% interval of the paired ratio (pruned / original) is at or
    below it; steps before it were not shown to meet it."""
    result = prune(load_model(pattern("wide_mlp")), PruneConfig(target_latency=0.9), threads=1, min_time=0.2)
    target = result.details["target"]
    assert target["reached"] and target["runtime"] == "onnxruntime"
    last = target["steps"][-1]
    assert last["verdict"] == "met" and last["factor"] <= last["ci95"][1] <= 0.9
    assert all(s["verdict"] != "met" for s in target["steps"][:-1])
    assert result.details["ratio"] == last["ratio"] < 0.9
    assert f"reached at pruning ratio {target['ratio']:.2f}" in result.notes[0]


def test_an_inconclusive_latency_step_is_not_claimed_and_says_so(monkeypatch):
    """The interval straddles the target: pruning goes on, and the note says the timing could not tell."""
    from types import SimpleNamespace

    import effkit.passes.prune_target as target_mod

    intervals = iter([(0.95, [0.85, 1.05]), (0.7, [0.6, 0.8])])  # ratio 0.05: straddles 0.9; 0.10: below

    def fake_paired(a, b, inputs, **kw):
        ratio, ci = next(intervals)
        return SimpleNamespace(stats={"p50": {"a_ms": 1.0, "b_ms": ratio, "ratio": ratio, "ci": ci}}, reasons=[])

    monkeypatch.setattr(target_mod, "measure_paired", fake_paired)
    result = prune(load_model(spec("mlp")), PruneConfig(target_latency=0.9, runtime="torch"))
    steps = result.details["target"]["steps"]
    assert [s["verdict"] for s in steps] == ["inconclusive", "met"]
    assert result.details["ratio"] == steps[-1]["ratio"]
    assert result.notes[0].startswith("latency on torch target 0.9x reached at pruning ratio 0.10 (0.70x of the "
                                      "original, 95% interval [0.60, 0.80])")
    assert result.notes[1].startswith("at pruning ratio 0.05 the timing could not tell whether the 0.9x target was met")


def test_digits_accuracy_recovers_within_one_point():
    from effkit.data import load_data

    model = load_model(f"{EXAMPLES / 'digits.py'}:mlp")
    train = load_data(str(EXAMPLES / "data" / "digits_train.npz"), model.input_names)
    test = load_data(str(EXAMPLES / "data" / "digits_test.npz"), model.input_names)
    result = prune(model, PruneConfig(ratio=0.5, finetune_epochs=5), data=train, eval_data=test)
    acc = result.details["accuracy"]
    assert acc["before"] > 0.95
    assert acc["pruned"] < acc["before"] - 0.02  # pruning really hurt...
    assert acc["recovered"] >= acc["before"] - 0.01  # ...and recovery brought it back
    assert result.details["recovery"]["kind"] == "distillation from the unpruned model"
    assert result.details["parameters"]["after"] < 0.35 * result.details["parameters"]["before"]


def test_cli_prune_end_to_end(cli, tmp_path):
    import onnxruntime as ort

    code, stdout, stderr = cli("prune", spec("cnn"), *NO_BAR, "-o", "small.pt2", "--export-onnx", "small.onnx",
                               "--round-to", "4", *FAST, "--threads", "1", "--json", "-")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["step"] == "prune" and result["outputs"] == ["small.pt2", "small.onnx"]
    assert result["details"]["macs"]["after"] < result["details"]["macs"]["before"]
    assert result["after"]["size"]["parameters"] < 0.4 * result["before"]["size"]["parameters"]
    assert {r["runtime"] for r in result["after"]["runs"]} == {"torch", "onnxruntime"}
    assert "effkit prune" in stderr  # the table, on stderr since stdout carries JSON
    reloaded = load_model(str(tmp_path / "small.pt2"))
    x = reloaded.example_inputs
    session = ort.InferenceSession(str(tmp_path / "small.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x[0]})[0]
    np.testing.assert_allclose(outputs(reloaded)[0], onnx_out, rtol=1e-4, atol=1e-5)


def test_cli_refuses_to_overwrite(cli, tmp_path):
    (tmp_path / "out.pt2").write_bytes(b"x")
    code, _, stderr = cli("prune", spec("mlp"), *NO_BAR, "-o", "out.pt2", *FAST)
    assert code == 2
    assert stderr.strip().splitlines() == ["Error: out.pt2 already exists (pass --force to overwrite it)"]


@pytest.mark.parametrize("args, message", [
    (["--ratio", "1.5"], "Error: --ratio must be between 0 and 1 (exclusive), got 1.5 (e.g. 0.5 removes half)"),
    (["--ratio", "0"], "Error: --ratio must be between 0 and 1 (exclusive), got 0 (e.g. 0.5 removes half)"),
    (["--scope", "world"], "Error: unknown --scope 'world' (use layer or global)"),
    (["--sparsity", "0.9"], "Error: --sparsity and --pattern apply to unstructured pruning (add --unstructured)"),
    (["--unstructured", "--pattern", "4:2"], "Error: cannot parse --pattern '4:2' (write N:M with 0 < N < M, e.g. 2:4)"),
    (["--unstructured"], "Error: --unstructured needs --sparsity (e.g. 0.9) or --pattern (e.g. 2:4)"),
    (["--target-macs", "2x"], "Error: --target-macs must be below 1x and above 0x, got '2x' (e.g. 0.5x halves it)"),
    (["--importance", "taylor"], "Error: --importance taylor needs --data (pass --data file.npz, or use --importance l1)"),
    (["-o", "out.onnx"], "Error: output out.onnx must end in .pt2 (a torch.export archive that loads back without "
                         "code) (for ONNX, add --export-onnx PATH)"),
])
def test_cli_bad_options_exit_2(cli, args, message):
    full = ["prune", spec("mlp"), *NO_BAR, "-o", "out.pt2", *FAST, *args]
    if "-o" in args:
        full = ["prune", spec("mlp"), *NO_BAR, *FAST, *args]
    code, _, stderr = cli(*full)
    assert code == 2
    assert stderr.strip().splitlines() == [message]


def test_cli_ignore_pattern_that_matches_nothing(cli):
    code, _, stderr = cli("prune", spec("cnn"), *NO_BAR, "-o", "out.pt2", "--ignore", "encoder.*", *FAST)
    assert code == 2
    assert stderr.strip().splitlines() == [
        "Error: --ignore 'encoder.*' matches no layer (layer names: stem, stem.0, stem.1, stem.2, conv1, bn1, relu1, "
        "conv2, bn2, relu2, pool, fc)"]


def test_cli_onnx_and_torchscript_models_cannot_be_pruned(cli, tmp_path):
    import torch

    model = load_model(spec("mlp"))
    save_model(model, tmp_path / "m.onnx")
    code, _, stderr = cli("prune", "m.onnx", *NO_BAR, "-o", "out.pt2", *FAST)
    assert code == 2
    assert stderr.strip().splitlines() == [
        "Error: m.onnx is an ONNX model, which effkit cannot prune (prune the PyTorch model it was exported from "
        "(a factory, or a state_dict with --arch))"]
    torch.jit.save(torch.jit.trace(model.module, torch.randn(2, 16)), str(tmp_path / "m.ts"))
    code, _, stderr = cli("prune", "m.ts", *NO_BAR, "-o", "out.pt2", "--input-shape", "2x16", *FAST)
    assert code == 2
    assert stderr.strip().startswith("Error: m.ts is a TorchScript archive: its layers are compiled code")


def test_untraceable_model_says_why():
    with pytest.raises(ModelLoadError) as info:
        prune(load_model(pattern("untraceable")), PruneConfig())
    assert str(info.value).startswith("cannot trace the model: layers fc1 ran but are not connected to the outputs "
                                      "through autograd (pruning traces forward() with autograd")


def test_config_rejects_conflicts():
    with pytest.raises(UsageError, match="cannot be combined"):
        PruneConfig(target_latency=0.5, target_macs=0.5)
    with pytest.raises(UsageError, match="--iterative-steps cannot be combined with a target"):
        PruneConfig(target_macs=0.5, iterative_steps=3)
    with pytest.raises(UsageError, match="need structured pruning"):
        PruneConfig(unstructured=True, sparsity=0.5, target_macs=0.5)
    with pytest.raises(UsageError, match="--no-distill fine-tunes on labels"):
        from effkit.data import Data

        model = load_model(spec("mlp"))
        prune(model, PruneConfig(finetune_epochs=1, distill=False),
              data=Data((np.zeros((4, 16), np.float32),), None, "unlabelled.npz"))


def test_prune_does_not_modify_its_input():
    model = load_model(spec("cnn"))
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    prune(model, PruneConfig(ratio=0.5))
    after = model.module.state_dict()
    assert all(after[k].shape == v.shape and bool((after[k] == v).all()) for k, v in before.items())
    assert Path(model.source).name == "models.py:cnn"


def test_taylor_importance_uses_the_data():
    from effkit.data import Data

    model = load_model(spec("mlp"))
    rng = np.random.default_rng(0)
    data = Data((rng.standard_normal((64, 16)).astype(np.float32),), rng.integers(0, 4, 64), "random.npz")
    taylor = prune(model, PruneConfig(importance="taylor"), data=data).model.module
    unlabelled = prune(model, PruneConfig(importance="taylor"), data=Data(data.inputs, None, "x.npz")).model.module
    l1 = prune(model, PruneConfig(importance="l1")).model.module
    assert taylor[0].weight.shape == l1[0].weight.shape == (16, 16)
    assert not bool((taylor[0].weight == l1[0].weight).all())  # other channels kept
    assert unlabelled[0].weight.shape == (16, 16)


def test_cli_reports_accuracy_before_right_after_and_after_recovery(cli, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=(x[:, 0] > 0).astype(np.int64))
    code, stdout, stderr = cli("prune", spec("mlp"), *NO_BAR, "-o", "p.pt2", "--ratio", "0.5", "--finetune-epochs", "1",
                               "--data", "d.npz", "--eval", "d.npz", *FAST, "--json", "-")
    assert code == 0, stderr
    result = json.loads(stdout)
    details = result["details"]["accuracy"]
    assert result["accuracy"] == {"before": details["before"], "after": details["recovered"],
                                  "right_after_pruning": details["pruned"]}


TWO_HEADS = """
import torch
from torch import nn


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.head_a = nn.Linear(16, 3)
        self.head_b = nn.Linear(16, 2)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.head_a(h), self.head_b(h)


def build():
    torch.manual_seed(0)
    return TwoHeads().eval(), torch.randn(2, 8)
"""


def test_inspect_shows_the_layers_prune_prunes(tmp_path):
    """Both heads produce outputs, so prune keeps both whole; inspect must not call the first one prunable."""
    from effkit.structure import describe

    (tmp_path / "two_heads.py").write_text(TWO_HEADS)
    model = load_model(f"{tmp_path / 'two_heads.py'}:build")
    result = prune(model, PruneConfig(ratio=0.5))
    assert result.details["output_layers"] == ["head_a", "head_b"]
    assert describe(model)["prunable_layers"] == ["body"]
    assert result.model.module.body.out_features < 16


def test_prune_heads_removes_whole_heads(tmp_path):
    """--prune-heads: half of the 4 heads go, each kept head keeps its 8 dims; outputs keep their shape,
    and the saved model loads back without code and gives the same outputs."""
    model = load_model(pattern("attention"))
    result = prune(model, PruneConfig(ratio=0.5, prune_heads=True))
    assert result.details["attention_heads"]["attn"] == {"before": 4, "after": 2}
    assert result.model.module.attn.num_heads == 2
    for proj in ("attn.q", "attn.k", "attn.v"):
        assert result.details["widths"][proj]["after"][1] == 16  # 2 heads of 8
    after = outputs(result.model)
    assert [a.shape for a in after] == [b.shape for b in outputs(model)]
    save_model(result.model, tmp_path / "heads.pt2")
    reloaded = load_model(str(tmp_path / "heads.pt2"))
    for a, b in zip(outputs(reloaded, model.example_inputs), after):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cli_prune_heads_reports_the_heads(cli):
    code, out, err = cli("prune", pattern("attention"), "--prune-heads", "--ratio", "0.5", "-o", "p.pt2",
                         "--warmup", "1", "--iterations", "3", "--json", "r.json", *NO_BAR)
    assert code == 0, err
    assert json.loads(Path("r.json").read_text())["details"]["attention_heads"]["attn"] == {"before": 4, "after": 2}
