"""Recipes (parsing, errors with line numbers, round trip) and the compress pipeline on tiny models:
step order, the back-off loop, the reports (charts, no network references), atomic OUTDIR."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

from conftest import spec
from effkit.errors import UsageError
from effkit.recipe import Recipe

FAST_BENCH = {"warmup": 1, "iterations": 3}


# ---------------------------------------------------------------- recipes

GOOD = """\
# every section, listed out of pipeline order on purpose
[quantize]
method = "static"
backend = "onnxruntime"
tolerance = ["cosine>=0.98"]

[export]
opset = 17

[distill]
epochs = 2
temperature = 2

[prune]
ratio = 0.25
finetune-epochs = 1
ignore = ["fc"]

[pipeline]
max-accuracy-drop = "1pt"
tolerance = ["cosine>=0.99"]

[bench]
min_time = 0.1
"""


def test_recipe_reads_every_section_with_its_types():
    r = Recipe.parse(GOOD, "good.toml")
    assert r.steps == ["prune", "distill", "quantize", "export"]  # pipeline order, not file order
    assert (r.prune.ratio, r.prune.finetune_epochs, r.prune.ignore) == (0.25, 1, ("fc",))
    assert (r.distill.epochs, r.distill.temperature) == (2, 2.0) and isinstance(r.distill.temperature, float)
    assert (r.quantize.method, r.quantize.backend) == ("static", "onnxruntime")
    assert [t.text for t in r.quantize.tolerance] == ["cosine>=0.98"]
    assert r.export.opset == 17
    bar = r.pipeline.bar(labelled=True)
    assert bar.max_drop_pt == 1.0 and [t.text for t in bar.bounds] == ["cosine>=0.99"] and bar.source == "set"
    assert r.bench.min_time == 0.1  # snake_case keys are accepted too


def test_recipe_round_trips_through_toml():
    r = Recipe.parse(GOOD, "good.toml")
    text = r.to_toml()
    assert "finetune-epochs = 1" in text and "[bench]" in text
    assert Recipe.parse(text, "resolved.toml") == r


def test_an_empty_section_turns_a_step_on_with_defaults():
    from effkit.passes.quantize import QuantizeConfig

    r = Recipe.parse("[quantize]\n")
    assert r.steps == ["quantize", "export"] and r.quantize == QuantizeConfig()


@pytest.mark.parametrize("text, message", [
    ("[prune]\nratio = 0.5\nration = 0.3\n",
     "bad.toml line 3: unknown key 'ration' in [prune] (known keys: unstructured, ratio, scope, importance, ignore, "
     "round-to, iterative-steps, prune-heads, head-ratio, ffn-ratio, target-latency, target-macs, sparsity, pattern, finetune-epochs, distill, lr, "
     "batch-size, seed, runtime)"),
    ("[export]\nopset = 18\n\n[prun]\nratio = 0.5\n",
     "bad.toml line 4: unknown section [prun] (sections are [prune], [distill], [quantize], [export], [pipeline], "
     "[bench])"),
    ("[prune]\nratio = \"half\"\n", "bad.toml line 2: [prune] ratio must be a number, got a string (\"half\")"),
    ("[distill]\nepochs = 2.5\n", "bad.toml line 2: [distill] epochs must be an integer, got a number (2.5)"),
    ("[quantize]\nper-channel = 1\n",
     "bad.toml line 2: [quantize] per-channel must be true or false, got an integer (1)"),
    ("[prune]\nignore = \"fc\"\n", "bad.toml line 2: [prune] ignore must be a list of strings, got a string (\"fc\")"),
    ("[prune]\nratio = 1.5\n",
     "bad.toml line 2: [prune] --ratio must be between 0 and 1 (exclusive), got 1.5 (e.g. 0.5 removes half)"),
    ("[pipeline]\nmax-accuracy-drop = \"a lot\"\n",
     "bad.toml line 2: [pipeline] cannot parse max-accuracy-drop 'a lot' (write percentage points of accuracy, "
     "e.g. 1pt or 0.5pt, or none to switch the bar off)"),
    ("ratio = 0.5\n[prune]\n",
     "bad.toml line 1: key 'ratio' is outside any section (put it under one of [prune], [distill], [quantize], "
     "[export], [pipeline], [bench])"),
])
def test_recipe_errors_name_the_line_the_section_and_the_key(text, message):
    with pytest.raises(UsageError) as e:
        Recipe.parse(text, "bad.toml")
    assert str(e.value) == message


def test_invalid_toml_names_the_line():
    with pytest.raises(UsageError, match=r"^bad.toml is not valid TOML: .*\(at line 2, column \d+\)"):
        Recipe.parse("[prune]\nratio = \n", "bad.toml")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UsageError, match="^no such recipe: "):
        Recipe.load(tmp_path / "nope.toml")


def test_shipped_recipes_parse():
    from pathlib import Path

    recipes = sorted((Path(__file__).parent.parent / "examples" / "recipes").glob("*.toml"))
    assert recipes
    for path in recipes:
        assert Recipe.load(path).steps[-1] == "export"


# ---------------------------------------------------------------- the pipeline on a tiny model

def _tiny():
    """The tiny test MLP and labelled data: labels are the model's own predictions on these inputs,
    so the original is 100% accurate and any damage shows as a drop."""
    from effkit.data import Data
    from effkit.load import load_model
    from effkit.export import make_runner

    model = load_model(spec("mlp"))
    x = np.random.default_rng(0).standard_normal((256, 16)).astype(np.float32)
    labels = make_runner(model, "torch").run((x,))[0].argmax(1)
    return model, Data((x,), labels, "tiny.npz")


def _recipe(**sections) -> Recipe:
    """A recipe with fast timing and, unless `pipeline` is given, no quality bar: these tests are about
    the steps, and the tiny model loses more than the default bar's 1 pt to a 50% prune."""
    r = Recipe().with_changes("bench", **FAST_BENCH)
    sections.setdefault("pipeline", {"max_accuracy_drop": "none"})
    for name, changes in sections.items():
        r = r.with_changes(name, **changes)
    return r


@pytest.fixture(scope="module")
def pruned_result():
    """One real run, prune 0.5 then export, shared by the report tests."""
    from effkit.pipeline import run_pipeline

    model, data = _tiny()
    return run_pipeline(model, _recipe(prune={"ratio": 0.5}), data=data, eval_data=data)


def test_steps_run_in_pipeline_order_and_every_state_is_timed(monkeypatch):
    import effkit.passes.prune as prune_mod
    import effkit.passes.quantize as quantize_mod
    from effkit.pipeline import run_pipeline

    calls = []
    real_prune, real_quantize = prune_mod.prune, quantize_mod.quantize
    monkeypatch.setattr(prune_mod, "prune", lambda m, c, **kw: calls.append(("prune", m.kind)) or real_prune(m, c, **kw))
    monkeypatch.setattr(quantize_mod, "quantize",
                        lambda m, c, **kw: calls.append(("quantize", m.kind)) or real_quantize(m, c, **kw))
    model, data = _tiny()
    recipe = Recipe.parse("[quantize]\nbackend = \"onnxruntime\"\nmethod = \"dynamic\"\nallow-slower = true\n"
                          "[prune]\nratio = 0.5\n[bench]\nwarmup = 1\niterations = 3\n"
                          "[pipeline]\nmax-accuracy-drop = \"none\"\n")
    result = run_pipeline(model, recipe, data=data, eval_data=data)
    assert calls == [("prune", "torch"), ("quantize", "torch")]
    assert [s.name for s in result.steps] == ["prune", "quantize"]  # quantize made ONNX: that is the export
    assert [s.name for s in result.states] == ["original", "prune", "quantize"]
    assert [[r["runtime"] for r in s.bench.runs] for s in result.states] == [
        ["torch", "onnxruntime"], ["torch", "onnxruntime"], ["onnxruntime"]]
    assert result.final.model.kind == "onnx"
    assert result.steps[1].before is result.states[1]  # a step's "before" is the previous step's "after"
    overall = result.overall()
    assert overall["final_runtime"] == "onnxruntime" and overall["speedup_vs_torch_fp32"]["p50"] > 0


def test_prune_then_export_records_both(pruned_result):
    assert [s.name for s in pruned_result.steps] == ["prune", "export"]
    assert pruned_result.status == "ok"
    prune_step = pruned_result.steps[0]
    decided = prune_step.after.decision  # attempts are judged on the decisions' data, held out of --data
    assert prune_step.attempts == [{"attempt": 1, "setting": "ratio 0.5", "accuracy": decided["accuracy"],
                                    "fidelity": decided["fidelity"], "violations": [], "accepted": True}]
    assert pruned_result.original.accuracy == 1.0
    layers = pruned_result.layers()
    assert [layer["name"] for layer in layers] == ["0", "2", "4"]
    assert layers[0]["weights_after"] < layers[0]["weights_before"]


def test_distill_recovers_the_pruned_model_from_the_original():
    from effkit.pipeline import run_pipeline

    model, data = _tiny()
    recipe = _recipe(prune={"ratio": 0.5}, distill={"epochs": 10, "batch_size": 32, "lr": 5e-3}, export={"opset": 17})
    result = run_pipeline(model, recipe, data=data, eval_data=data)
    assert [s.name for s in result.steps] == ["prune", "distill", "export"]
    assert result.steps[-1].details["opset"] == 17 and result.steps[-1].details["max_abs_diff"] < 1e-4
    prune_step, distill_step = result.steps[:2]
    assert distill_step.before is prune_step.after and distill_step.config["epochs"] == 10
    assert distill_step.details["epochs"] == 10
    # trained towards the original's predictions: more of them right than right after pruning
    assert distill_step.after.accuracy > prune_step.after.accuracy


def test_torch_int8_is_refused_because_compress_ends_in_onnx():
    from effkit.pipeline import run_pipeline

    model, _ = _tiny()
    with pytest.raises(UsageError, match=r"^compress ends in a verified ONNX export, and torch int8 models"):
        run_pipeline(model, _recipe(quantize={"backend": "torch"}))


def _bad(model):
    """The model with its last layer's weights zeroed: every output the same, accuracy at chance."""
    import copy

    import torch

    module = copy.deepcopy(model.module)
    with torch.no_grad():
        for p in list(module.parameters())[-2:]:
            p.zero_()
    return model.replace(module=module, path=None, format="derived")


def test_a_prune_that_breaks_the_bar_is_backed_off(monkeypatch):
    import effkit.passes.prune as prune_mod
    from effkit.passes import PassResult
    from effkit.pipeline import run_pipeline

    ratios = []
    real = prune_mod.prune

    def first_one_bad(model, config, **kw):
        ratios.append(config.ratio)
        result = real(model, config, **kw)
        return PassResult(_bad(result.model), result.details, result.notes) if len(ratios) == 1 else result

    monkeypatch.setattr(prune_mod, "prune", first_one_bad)
    model, data = _tiny()
    recipe = _recipe(prune={"ratio": 0.5}, pipeline={"max_accuracy_drop": "40pt"})
    result = run_pipeline(model, recipe, data=data, eval_data=data)
    assert ratios == [0.5, 0.25]
    step = result.steps[0]
    assert [(a["setting"], a["accepted"]) for a in step.attempts] == [("ratio 0.5", False), ("ratio 0.25", True)]
    assert re.fullmatch(r"accuracy dropped \d+\.\d\d pt \(at most 40 pt allowed\)", step.attempts[0]["violations"][0])
    assert step.config["ratio"] == 0.25
    assert "backed off: ratio 0.5 broke the bar; ratio 0.25 keeps it" in step.notes
    assert result.status == "ok"


def test_a_bar_that_cannot_be_met_fails_with_reports_and_no_model(monkeypatch, tmp_path):
    import effkit.passes.prune as prune_mod
    from effkit.passes import PassResult
    from effkit.pipeline import CompressFailed
    from effkit.outdir import compress

    real = prune_mod.prune
    monkeypatch.setattr(prune_mod, "prune", lambda m, c, **kw: PassResult(_bad(real(m, c, **kw).model)))
    model, data = _tiny()
    recipe = _recipe(prune={"ratio": 0.5}, pipeline={"max_accuracy_drop": "40pt", "backoff_tries": 1})
    with pytest.raises(CompressFailed) as e:
        compress(model, recipe, tmp_path / "out", data=data, eval_data=data)
    assert e.value.exit_code == 1
    assert e.value.message.startswith("pruning breaks the quality bar even at ratio 0.25: accuracy dropped ")
    assert [a["setting"] for a in e.value.result.steps[0].attempts] == ["ratio 0.5", "ratio 0.25"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["recipe.toml", "report.html", "report.json",
                                                                     "report.md"]
    assert "**Failed:** pruning breaks the quality bar" in (tmp_path / "out" / "report.md").read_text()


def test_a_quantize_that_breaks_the_bar_is_redone_with_the_bar_as_its_tolerance(monkeypatch):
    import effkit.passes.quantize as quantize_mod
    from effkit.passes import PassResult
    from effkit.pipeline import run_pipeline

    configs = []

    def first_one_bad(model, config, **kw):
        configs.append(config)
        if len(configs) == 1:
            return PassResult(_bad(model), {"kept_in_float": []}, [])
        return PassResult(model, {"kept_in_float": ["node_linear"]}, ["kept 1 layer in float"])

    monkeypatch.setattr(quantize_mod, "quantize", first_one_bad)
    model, data = _tiny()
    recipe = _recipe(quantize={}, pipeline={"max_accuracy_drop": "2pt", "tolerance": ("cosine>=0.99",)})
    result = run_pipeline(model, recipe, data=data, eval_data=data)
    assert [c.tolerance for c in configs][0] == ()
    assert [t.text for t in configs[1].tolerance] == ["accuracy:-2pt", "cosine>=0.99"]
    step = result.steps[0]
    assert [a["accepted"] for a in step.attempts] == [False, True]
    assert step.notes[-1] == "backed off: quantized again with tolerance accuracy:-2pt, cosine>=0.99, which keeps " \
                             "1 layer(s) in float"
    assert [s.name for s in result.steps] == ["quantize", "export"]


def test_distill_without_prune_is_refused():
    from effkit.pipeline import run_pipeline

    model, data = _tiny()
    with pytest.raises(UsageError) as e:
        run_pipeline(model, _recipe(distill={}), data=data)
    assert str(e.value) == ("distill needs a smaller student than the original (add --prune (the pruned model is the "
                            "student, the original its teacher))")


def test_accuracy_bar_needs_labelled_eval_data():
    from effkit.pipeline import run_pipeline

    model, _ = _tiny()
    with pytest.raises(UsageError, match=r"^--max-accuracy-drop needs labelled evaluation data"):
        run_pipeline(model, _recipe(prune={}, pipeline={"max_accuracy_drop": "1pt"}))


# ---------------------------------------------------------------- reports

def test_html_is_self_contained_with_its_charts(pruned_result):
    from effkit.report.render import render_html

    html = render_html(json.loads(pruned_result.to_json()))
    assert re.findall(r'data-chart="([a-z-]+)"', html) == ["latency", "latency-distribution", "size", "tradeoff", "layers"]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "http://" not in html and "https://" not in html and "<script" not in html and "<link" not in html
    assert "<h2>Summary</h2>" in html and "<td class=\"l\">prune.ratio</td><td>0.5</td>" in html  # tables, recipe


def test_markdown_fits_a_pull_request_comment(pruned_result):
    from effkit.report.compress import compress_markdown

    md = compress_markdown(json.loads(pruned_result.to_json()))
    assert md.startswith(f"### effkit compress: `{spec('mlp')}`\n\n**Result:** ")
    assert "| original | torch |" in md and "| prune | onnxruntime |" in md and "| export | onnxruntime |" in md
    assert len(md) < 65536  # GitHub's comment limit


def test_report_json_round_trips_its_numbers(pruned_result):
    import json

    data = json.loads(pruned_result.to_json())
    assert data["schema"] == "effkit.compress/1" and data["status"] == "ok"
    assert data["steps_run"] == ["prune", "export"]
    assert [(r["state"], r["runtime"]) for r in data["summary"]] == [
        ("original", "torch"), ("original", "onnxruntime"), ("prune", "torch"), ("prune", "onnxruntime"),
        ("export", "onnxruntime")]
    # the overall speedup is the paired one (final model against the original on torch), with its interval
    paired = data["overall"]["speedup"]["vs_torch_fp32"]["p50"]
    lo, hi = paired["ci95"]
    assert lo <= paired["estimate"] <= hi and paired["pairs"] + sum(paired["discarded"].values()) == paired["attempts"]
    assert data["overall"]["speedup_vs_torch_fp32"]["p50"] == paired["estimate"]
    assert data["summary"][-1]["speedup_vs_torch_fp32_paired"] == paired


def test_report_json_thins_long_sample_lists_but_keeps_them_in_memory(pruned_result, monkeypatch):
    import json

    import effkit.pipeline_result

    monkeypatch.setattr(effkit.pipeline_result, "JSON_SAMPLES", 2)
    data = json.loads(pruned_result.to_json())
    run = data["states"][0]["bench"]["runs"][0]
    assert (len(run["samples_ms"]), run["samples_ms_every"]) == (2, 2)
    assert len(pruned_result.original.bench.runs[0]["samples_ms"]) == 3  # FAST_BENCH: 3 iterations


# ---------------------------------------------------------------- OUTDIR is written whole or not at all

def test_written_outdir_holds_models_that_load_back(pruned_result, tmp_path):
    from effkit.load import load_model
    from effkit.outdir import write_outdir
    from effkit.export import make_runner

    out = tmp_path / "out"
    write_outdir(pruned_result, out)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.pt2", "recipe.toml", "report.html",
                                                     "report.json", "report.md"]
    x = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    expected = make_runner(pruned_result.steps[0].after.model, "torch").run((x,))[0]
    for name, runtime in (("model.onnx", "onnxruntime"), ("model.pt2", "torch")):
        got = make_runner(load_model(str(out / name)), runtime).run((x,))[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert Recipe.load(out / "recipe.toml") == pruned_result.recipe


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_write_leaves_outdir_as_it_was(pruned_result, tmp_path, monkeypatch, interruption):
    import effkit.outdir as outdir_mod  # write_outdir renders the HTML report through its own name
    from effkit.outdir import write_outdir

    out = tmp_path / "out"
    out.mkdir()
    previous = '{"schema": "effkit.compress/1", "note": "the previous result"}'
    (out / "report.json").write_text(previous)

    def boom(document):  # the models are written by now: the reports come last
        raise interruption("stopped")

    monkeypatch.setattr(outdir_mod, "render_html", boom)
    with pytest.raises(interruption):
        write_outdir(pruned_result, out, force=True)
    assert [p.name for p in out.iterdir()] == ["report.json"] and (out / "report.json").read_text() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind
    with pytest.raises(interruption):
        write_outdir(pruned_result, tmp_path / "new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
