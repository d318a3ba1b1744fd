"""effkit quantize: each method and backend, reloaded outputs, the tolerance loop, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, TESTS, spec

QMODELS = TESTS / "models_quantize.py"
# fast, single-threaded, and never refused for speed (timings are not asserted here)
OPTS = [*FAST, "--threads", "1", "--min-time", "0.05", "--allow-slower"]


def qspec(name: str) -> str:
    return f"{QMODELS}:{name}"


def _load(name: str, models=None):
    from effkit.load import load_model

    return load_model(qspec(name) if models is None else spec(name))


def _config(**kw):
    from effkit.passes.quantize import QuantizeConfig

    return QuantizeConfig(**kw)


FAST_Q = {"threads": 1, "candidate_time": 0.02}  # timing is the call's, not the config's


def _calib(model, n=32):
    from effkit.data import Data

    shape = model.example_inputs[0].shape[1:]
    return Data((np.random.default_rng(3).standard_normal((n, *shape)).astype(np.float32),), None, "test")


def _run(model, inputs):
    from effkit.export import make_runner

    return make_runner(model, "torch" if model.kind == "torch" else "onnxruntime", 1).run(inputs)


def _cosine(model, ref, inputs) -> float:
    from effkit.fidelity import compare_outputs

    return compare_outputs([_run(ref, inputs)], [_run(model, inputs)])["cosine_min"]


def _ops(path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _fresh(model):
    from effkit.fidelity import held_out_inputs

    return held_out_inputs(model.example_inputs, 1, seed=5)[0]


def _save_and_reload(result_model, path: Path, example):
    """Save the int8 model, load it back as `effkit bench` would, and return both outputs."""
    from effkit.load import load_model
    from effkit.save import save_model
    from effkit.util import quiet_torch
    from effkit.specs import InputShape

    with quiet_torch():
        save_model(result_model, path)
    shapes = [InputShape(str(a.dtype), a.shape) for a in example]
    reloaded = load_model(str(path), input_shapes=shapes if path.suffix == ".ts" else ())
    return _run(result_model, example), _run(reloaded, example)


# ---------------------------------------------------------------- each method and backend

@pytest.mark.parametrize("backend,model_name,suffix", [
    ("onnxruntime", "wide_mlp", ".onnx"),
    ("torch", "wide_mlp", ".ts"),
    ("torch", "recurrent", ".ts"),
])
def test_dynamic_keeps_fidelity_and_reloads(tmp_path, backend, model_name, suffix):
    from effkit.passes.quantize import quantize

    model = _load(model_name)
    result = quantize(model, **FAST_Q, config=_config(method="dynamic", backend=backend))
    assert result.details["backend"] == backend and result.details["method"] == "dynamic"
    assert result.model.save_suffix == suffix
    example = _fresh(model)
    assert _cosine(result.model, model, example) >= 0.995
    saved, reloaded = _save_and_reload(result.model, tmp_path / f"q{suffix}", example)
    np.testing.assert_allclose(reloaded[0], saved[0], rtol=1e-5, atol=1e-6)
    if backend == "onnxruntime":
        assert "MatMulInteger" in _ops(tmp_path / "q.onnx") or "DynamicQuantizeMatMul" in _ops(tmp_path / "q.onnx")
    else:
        code = str(result.model.module.code) + "".join(str(m.code) for m in result.model.module.modules()
                                                      if hasattr(m, "code"))
        assert "quantized" in code  # the saved graph runs torch's int8 kernels


@pytest.mark.parametrize("backend,suffix", [("onnxruntime", ".onnx"), ("torch", ".ts")])
def test_static_on_cnn_keeps_fidelity_and_reloads(tmp_path, backend, suffix):
    from effkit.passes.quantize import quantize

    model = _load("cnn", models="core")
    result = quantize(model, **FAST_Q, config=_config(method="static", backend=backend, calib_samples=16), calib=_calib(model))
    assert result.details["method"] == "static"
    assert result.details["calibration"]["samples"] == 16
    example = _fresh(model)
    assert _cosine(result.model, model, example) >= 0.99
    saved, reloaded = _save_and_reload(result.model, tmp_path / f"q{suffix}", example)
    np.testing.assert_allclose(reloaded[0], saved[0], rtol=1e-5, atol=1e-6)
    if backend == "onnxruntime":
        ops = _ops(tmp_path / "q.onnx")
        assert ops.count("QuantizeLinear") >= 3 and "ConvInteger" not in ops


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_weight_only_shrinks_the_file(backend):
    from effkit.passes.quantize import quantize

    model = _load("wide_mlp")
    result = quantize(model, **FAST_Q, config=_config(method="weight-only", backend=backend))
    chosen = next(c for c in result.details["candidates"] if c["status"] == "chosen")
    assert chosen["size_bytes"] / result.details["original_size_bytes"] < 0.35
    assert chosen["fidelity"]["cosine_min"] >= 0.999


def test_auto_measures_every_candidate_and_keeps_the_fastest_passing():
    from effkit.passes.quantize import quantize

    model = _load("cnn", models="core")
    result = quantize(model, **FAST_Q, config=_config(), calib=_calib(model, 8))
    candidates = result.details["candidates"]
    assert {(c["backend"], c["method"]) for c in candidates} == {
        ("onnxruntime", "dynamic"), ("onnxruntime", "static"), ("torch", "dynamic"), ("torch", "static"),
        ("onnxruntime", "bf16"), ("torch", "bf16")}  # bf16 is measured (or skipped with the reason) too
    chosen = [c for c in candidates if c["status"] == "chosen"]
    assert len(chosen) == 1
    passing = [c for c in candidates if c["latency_ms"] is not None and not c["tolerance_missed"]]
    assert chosen[0]["latency_ms"] == min(c["latency_ms"] for c in passing)
    assert set(result.details["baselines_ms"]) == {"torch fp32", "onnxruntime fp32"}


def test_output_format_limits_auto_to_backends_that_write_it():
    from effkit.passes.quantize import quantize

    model = _load("mlp", models="core")
    result = quantize(model, **FAST_Q, config=_config(output_format=".onnx"))
    assert {c["backend"] for c in result.details["candidates"]} == {"onnxruntime"}
    assert result.model.kind == "onnx"


def test_exclude_keeps_that_layer_in_float():
    from effkit.passes.quantize import quantize

    model = _load("wide_mlp")
    result = quantize(model, **FAST_Q, config=_config(method="dynamic", backend="onnxruntime", exclude=("2",)))
    assert result.details["excluded"] == ["2"]
    ops = _ops(result.model.onnx_path)
    assert ops.count("MatMulInteger") + ops.count("DynamicQuantizeMatMul") == 2
    assert ops.count("MatMul") == 1  # the excluded Linear, still float


# ---------------------------------------------------------------- the tolerance loop

@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_tolerance_loop_keeps_the_sensitive_layer_in_float(backend):
    from effkit.passes.quantize import quantize

    model = _load("one_sensitive")
    # per-channel only: per-tensor scales make more layers sensitive, and this test is about the one
    result = quantize(model, **FAST_Q, config=_config(method="dynamic", backend=backend, per_channel=True,
                                     tolerance=("cosine>=0.999",)))
    kept = result.details["kept_in_float"]
    assert kept == ["fc2"]
    assert result.details["kept_cost"]["size_bytes"]["with_float_layers"] > 0
    assert _cosine(result.model, model, _fresh(model)) >= 0.999
    assert any("kept 1 sensitive layer" in n for n in result.notes)


def test_the_tolerance_loop_sets_aside_a_candidate_its_paired_timing_calls_slower(monkeypatch):
    """With layers kept in float a candidate can end slower than the float model. That is decided on the
    paired timing's interval: "slower" sets it aside for the next candidate; "inconclusive" is no reason to."""
    from types import SimpleNamespace

    import effkit.passes.quantize_tolerance as loop
    from effkit.passes.quantize import quantize

    verdicts, timed = ["slower", "inconclusive"], []

    def fake_paired(ctx, a, runtime_a, b, runtime_b):
        verdict = verdicts[len(timed)]
        timed.append(runtime_b)
        estimate, ci = (0.8, [0.75, 0.85]) if verdict == "slower" else (1.0, [0.8, 1.2])
        return SimpleNamespace(speedup=lambda stat="p50": {
            "estimate": estimate, "ci95": ci, "verdict": verdict, "reasons": [], "pairs": 10, "attempts": 10,
            "discarded": {}, "before_ms": 1.0, "after_ms": 1 / estimate})

    monkeypatch.setattr(loop, "paired_timing", fake_paired)
    model = _load("one_sensitive")
    result = quantize(model, **FAST_Q, config=_config(method="dynamic", backend="auto", per_channel=True,
                                                      tolerance=("cosine>=0.999",)))
    assert len(timed) == 2 and timed[0] != timed[1]  # the first candidate timed slower, the second was tried
    first = "torch" if timed[0] == "torch" else "onnxruntime"
    assert result.details["backend"] != first and result.details["kept_in_float"] == ["fc2"]
    assert result.details["against_float"]["verdict"] == "inconclusive"
    assert not result.details["slower_than_original"]  # inconclusive claims neither faster nor slower
    assert any(n.endswith("1.25x slower [1.18, 1.33] than the float model, so the next candidate was tried")
               for n in result.notes), result.notes


def test_tolerance_that_cannot_pass_exits_1_and_writes_nothing(cli):
    code, out, err = cli("quantize", qspec("one_sensitive"), "-o", "q.onnx", "--method", "dynamic",
                         "--tolerance", "sqnr>=300", *OPTS)
    assert code == 1
    assert err.startswith("Error: no int8 model meets the tolerance, even with sensitive layers kept in float:")
    assert "sqnr>=300 (got" in err
    assert not Path("q.onnx").exists()


# ---------------------------------------------------------------- the command

def test_cli_writes_onnx_json_and_reloads_with_bench(cli):
    np.savez("calib.npz", x=np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32))
    code, out, err = cli("quantize", spec("mlp"), "-o", "q.onnx", "--calib", "calib.npz", "--json", "r.json",
                         "--export-onnx", "copy.onnx", *OPTS)
    assert code == 0, err
    assert "int8 candidates" in out and "cosine (min / mean)" in out
    report = json.loads(Path("r.json").read_text())
    assert report["step"] == "quantize" and report["outputs"] == ["q.onnx", "copy.onnx"]
    assert report["fidelity"]["cosine_min"] >= 0.99
    assert report["details"]["calibration"]["source"] == "calib.npz"
    code, out, err = cli("bench", "q.onnx", *FAST)
    assert code == 0, err


def test_cli_torch_artifact_loads_back_in_bench(cli):
    code, out, err = cli("quantize", qspec("recurrent"), "-o", "q", "--backend", "torch", *OPTS)
    assert code == 0, err
    assert Path("q.ts").is_file()
    code, out, err = cli("bench", "q.ts", "--input-shape", "2x5x8", *FAST)
    assert code == 0, err


def test_cli_random_calibration_warns(cli):
    code, out, err = cli("quantize", spec("cnn"), "-o", "q.onnx", "--method", "static", "--calib", "random",
                         "--json", "-", *OPTS)
    assert code == 0, err
    report = json.loads(out)
    assert any("calibrated on random inputs" in w for w in report["warnings"])
    assert report["details"]["calibration"]["source"] == "random"


def test_cli_slower_result_is_not_written_without_allow_slower(cli, monkeypatch):
    from effkit.outcome import Outcome

    slower = {"estimate": 0.5, "ci95": [0.45, 0.55], "verdict": "slower", "reasons": [], "pairs": 20,
              "attempts": 20, "discarded": {}}
    monkeypatch.setattr(Outcome, "comparison", lambda self, runtime=None, stat="p50": slower)
    args = ["quantize", spec("mlp"), "-o", "q.onnx", "--method", "dynamic", *FAST, "--threads", "1"]
    code, out, err = cli(*args)
    assert code == 1
    assert "SLOWER: the int8 model runs 2.00x slower [1.82, 2.22] than the original on onnxruntime" in " ".join(
        out.split())
    assert err.strip() == ("Error: the int8 model is slower than the original on onnxruntime (2.00x slower "
                           "[1.82, 2.22]) (nothing was written; pass --allow-slower to write it anyway)")
    assert not Path("q.onnx").exists()
    code, out, err = cli(*args, "--allow-slower")
    assert code == 0 and Path("q.onnx").exists()


def test_cli_inconclusive_timing_is_written_and_claims_neither_faster_nor_slower(cli, monkeypatch):
    from effkit.outcome import Outcome

    unsure = {"estimate": 0.7, "ci95": [0.4, 1.3], "verdict": "inconclusive", "reasons": ["straddles"],
              "pairs": 20, "attempts": 20, "discarded": {}}
    monkeypatch.setattr(Outcome, "comparison", lambda self, runtime=None, stat="p50": unsure)
    code, out, err = cli("quantize", spec("mlp"), "-o", "q.onnx", "--method", "dynamic", *FAST, "--threads", "1",
                         "--markdown", "r.md")
    assert code == 0 and Path("q.onnx").exists(), err
    out = " ".join(out.split())
    assert "0.70x inconclusive" in out and "[0.40, 1.30]" in out
    out = Path("r.md").read_text()
    assert "no measurable speedup on onnxruntime" in out and "SLOWER" not in out
    assert "0.70x inconclusive [0.40, 1.30]" in out


# ---------------------------------------------------------------- third-party ONNX

def _third_party_onnx(path: Path) -> None:
    """An MLP as an old exporter might write it: opset 11, weights in Constant nodes, no shapes, no names."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((16, 32)).astype(np.float32) * 0.3, np.zeros(32, np.float32)
    w2 = rng.standard_normal((32, 4)).astype(np.float32) * 0.3
    const = lambda name, a: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(a))  # noqa: E731
    nodes = [const("w1", w1), const("b1", b1), const("w2", w2),
             helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, str(path))


@pytest.mark.parametrize("method", ["dynamic", "static", "weight-only"])
def test_third_party_onnx_is_quantized(tmp_path, method):
    from effkit.load import load_model
    from effkit.passes.quantize import quantize

    _third_party_onnx(tmp_path / "m.onnx")
    model = load_model(str(tmp_path / "m.onnx"))
    calib = _calib(model, 8) if method == "static" else None
    result = quantize(model, **FAST_Q, config=_config(method=method), calib=calib)
    assert result.model.kind == "onnx"
    assert any("Constant-node" in n for n in result.details["preprocessing"])
    assert any("opset 11" in n for n in result.details["preprocessing"])
    assert _cosine(result.model, model, _fresh(model)) >= 0.99
    assert any(op in _ops(result.model.onnx_path) for op in ("DequantizeLinear", "MatMulInteger"))


# ---------------------------------------------------------------- bad input: one clear line, exit 2

def test_static_without_calibration_data(cli):
    code, out, err = cli("quantize", spec("mlp"), "-o", "q.onnx", "--method", "static", *OPTS)
    assert code == 2
    assert err.strip() == ("Error: --method static needs calibration data (pass --calib DATA (.npz, .pt, a folder "
                           "of .npy, or module:factory), or --calib random to calibrate on random inputs "
                           "(less accurate))")


def test_calibration_data_of_the_wrong_shape(cli):
    np.savez("calib.npz", x=np.zeros((8, 7), np.float32))
    code, out, err = cli("quantize", spec("mlp"), "-o", "q.onnx", "--method", "static", "--calib", "calib.npz",
                         *OPTS)
    assert code == 2
    assert err.strip() == ("Error: calib.npz: samples of input 'input' have shape [7], the model expects [16] "
                           "(reshape the data or give the model matching --input-shape)")
    assert not Path("q.onnx").exists()


def test_exclude_that_matches_nothing(cli):
    code, out, err = cli("quantize", spec("mlp"), "-o", "q.onnx", "--exclude", "decoder.*", *OPTS)
    assert code == 2
    assert err.strip().startswith("Error: --exclude 'decoder.*' matches no quantizable layer (layers: 0, 2, 4")


@pytest.mark.parametrize("text,message", [
    ("cosine>>0.9", "Error: cannot parse the value in threshold 'cosine>>0.9' "
                    "(write e.g. size:<=12MB, latency.p50:<=3ms or cosine>=0.99)"),
    ("speed>=2", "Error: --tolerance 'speed>=2': unknown metric 'speed' "
                 "(use cosine, cosine_mean, sqnr, max_abs_diff, top1, agreement, kl, accuracy or perplexity, "
                 "e.g. cosine>=0.99)"),
    ("cosine:-1%", "Error: --tolerance 'cosine:-1%': cosine takes an absolute bound "
                   "(e.g. cosine>=0.99; only accuracy and perplexity take a change such as accuracy:-1pt or "
                   "perplexity:+5%)"),
])
def test_tolerance_that_cannot_be_parsed(cli, text, message):
    code, out, err = cli("quantize", spec("mlp"), "-o", "q.onnx", "--tolerance", text, *OPTS)
    assert code == 2
    assert err.strip() == message


def test_accuracy_tolerance_needs_eval_data(cli):
    code, out, err = cli("quantize", spec("mlp"), "-o", "q.onnx", "--tolerance", "accuracy:-1pt", *OPTS)
    assert code == 2
    assert err.strip() == "Error: an accuracy tolerance needs labelled data (pass --eval DATA with inputs and labels)"


def test_accuracy_before_and_after_with_eval_data(cli):
    rng = np.random.default_rng(0)
    np.savez("eval.npz", x=rng.standard_normal((40, 16)).astype(np.float32), labels=rng.integers(0, 4, 40))
    code, out, err = cli("quantize", spec("mlp"), "-o", "q.onnx", "--eval", "eval.npz", "--tolerance",
                         "accuracy:-5pt", "--json", "-", *OPTS)
    assert code == 0, err
    accuracy = json.loads(out)["accuracy"]
    assert abs(accuracy["after"] - accuracy["before"]) <= 0.05


def test_bad_options_are_usage_errors(cli):
    code, out, err = cli("quantize", spec("mlp"), "-o", "q.pt", *OPTS)
    assert code == 2
    assert err.strip() == ("Error: int8 models cannot be written as .pt (write .onnx (ONNX Runtime), .ts "
                           "(TorchScript, torch.ao) or .pt2 (torchao), or give no suffix)")
    code, out, err = cli("quantize", spec("mlp"), "-o", "q.onnx", "--method", "fast", *OPTS)
    assert code == 2
    assert err.strip() == "Error: unknown --method 'fast' (use one of auto, dynamic, static, smoothquant, weight-only, bf16)"


def test_dynamic_measures_per_tensor_too_unless_the_user_chose():
    from effkit.passes.quantize import quantize

    model = _load("mlp", models="core")
    both = quantize(model, **FAST_Q, config=_config(method="dynamic", backend="onnxruntime"))
    assert sorted(c["label"] for c in both.details["candidates"]) == [
        "ORT dynamic s8 per-channel", "ORT dynamic s8 per-tensor"]
    chosen = quantize(model, **FAST_Q, config=_config(method="dynamic", backend="onnxruntime", per_channel=False))
    assert [c["label"] for c in chosen.details["candidates"]] == ["ORT dynamic s8 per-tensor"]


def test_output_without_suffix_can_never_be_the_input(cli, tmp_path):
    from effkit.load import load_model
    from effkit.save import save_model

    save_model(load_model(spec("mlp")), tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    code, _, stderr = cli("quantize", "m.onnx", "-o", "m", "--force", *OPTS)
    assert code == 2
    assert stderr.strip() == "Error: output m.onnx is the input model (write the result to another path)"
    assert (tmp_path / "m.onnx").read_bytes() == before
