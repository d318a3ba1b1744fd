"""`effkit compress` end to end on a tiny model: outputs, JSON, recipe round trip, errors, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import FAST, TESTS, spec

OUTPUTS = ["model.onnx", "model.pt2", "recipe.toml", "report.html", "report.json", "report.md"]


def _outputs(model_path: Path) -> np.ndarray:
    from effkit.load import load_model
    from effkit.export import make_runner

    x = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    return make_runner(load_model(str(model_path)), "onnxruntime").run((x,))[0]


def test_compress_end_to_end_with_json_and_a_reproducible_recipe(cli, tmp_path):
    code, stdout, stderr = cli("compress", spec("mlp"), "--prune", "0.5", "--tolerance", "none", "-o", "out", *FAST, "--json", "-",
                               "--export-onnx", "copy.onnx")
    assert code == 0, stderr
    report = json.loads(stdout)  # JSON alone on stdout; the table went to stderr
    assert report["schema"] == "effkit.compress/1" and report["status"] == "ok"
    assert report["steps_run"] == ["prune", "export"]
    assert report["overall"]["speedup_vs_torch_fp32"]["p50"] > 0
    assert "effkit compress:" in stderr and "wrote out: model.onnx, model.pt2" in stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    assert json.loads((out / "report.json").read_text())["summary"] == report["summary"]
    np.testing.assert_array_equal(_outputs(tmp_path / "copy.onnx"), _outputs(out / "model.onnx"))
    assert (out / "recipe.toml").read_text().splitlines()[1] == (
        f"# Reproduce: effkit compress {spec('mlp')} --recipe recipe.toml -o OUTDIR")

    code, _, stderr = cli("compress", spec("mlp"), "--recipe", "out/recipe.toml", "-o", "again")
    assert code == 0, stderr
    assert (tmp_path / "again" / "recipe.toml").read_text() == (out / "recipe.toml").read_text()
    np.testing.assert_array_equal(_outputs(tmp_path / "again" / "model.onnx"), _outputs(out / "model.onnx"))


def test_an_existing_outdir_needs_force(cli, tmp_path):
    (tmp_path / "out").mkdir()
    previous = '{"schema": "effkit.compress/1"}'
    (tmp_path / "out" / "report.json").write_text(previous)  # an earlier result
    code, _, stderr = cli("compress", spec("mlp"), "--prune", "0.5", "--tolerance", "none", "-o", "out", *FAST)
    assert code == 2
    assert stderr.strip() == "Error: out already holds files (pass --force to replace them)"
    assert (tmp_path / "out" / "report.json").read_text() == previous


def test_nothing_to_do_is_a_usage_error(cli):
    code, _, stderr = cli("compress", spec("mlp"), "-o", "out")
    assert code == 2
    assert stderr.strip() == ("Error: nothing to compress: no step was asked for (pass --prune RATIO, --quantize int8 "
                              "(and --distill), or --recipe FILE)")


def test_a_bad_recipe_names_its_line(cli, tmp_path):
    (tmp_path / "r.toml").write_text("[prune]\nratio = 0.5\n\n[quantize]\nmethods = \"static\"\n")
    code, _, stderr = cli("compress", spec("mlp"), "--recipe", "r.toml", "-o", "out")
    assert code == 2
    assert stderr.strip().startswith("Error: r.toml line 5: unknown key 'methods' in [quantize] (known keys: method, ")
    assert not (tmp_path / "out").exists()


def test_bad_options_fail_before_any_work(cli):
    code, _, stderr = cli("compress", spec("mlp"), "--prune", "2", "-o", "out")
    assert (code, stderr.strip()) == (2, "Error: --prune must be between 0 and 1 (exclusive), got 2 "
                                         "(e.g. 0.5 removes half)")
    code, _, stderr = cli("compress", spec("mlp"), "--quantize", "int4", "-o", "out")
    assert (code, stderr.strip()) == (2, "Error: unknown --quantize 'int4' (use one of int8, auto, dynamic, static, "
                                         "weight-only)")
    code, _, stderr = cli("compress", spec("mlp"), "--prune", "0.5", "--max-accuracy-drop", "1pt", "-o", "out")
    assert (code, stderr.strip().splitlines()[-1]) == (
        2, "Error: --max-accuracy-drop needs labelled evaluation data (pass --eval FILE with labels)")


def test_a_bar_that_cannot_be_met_exits_1_and_writes_no_model(cli, tmp_path):
    code, stdout, stderr = cli("compress", spec("mlp"), "--prune", "0.5", "--tolerance", "cosine>=1.5",
                               "-o", "out", *FAST)
    assert code == 1
    assert stderr.strip().splitlines()[-1].startswith(
        "Error: pruning breaks the quality bar even at ratio 0.0625: cosine is ")
    assert "prune: try 1 (ratio 0.5) broke the bar" in stdout  # the summary still shows what was tried
    assert "pruning breaks the quality bar" not in stdout  # the reason is said once, on the Error: line
    assert stdout.strip().endswith("wrote out: recipe.toml, report.json, report.md, report.html (the reports of the "
                                   "failed run, no model)")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["recipe.toml", "report.html", "report.json",
                                                                     "report.md"]


def _start(tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    return subprocess.Popen([sys.executable, "-m", "effkit", "compress", spec("mlp"), "--prune", "0.5", "--tolerance", "none", "-o", "out",
                             *FAST], cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)


def test_ctrl_c_during_the_pipeline_leaves_no_outdir(tmp_path):
    proc = _start(tmp_path)
    for line in proc.stderr:  # wait until it is busy timing the pruned model
        if "timing prune" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert "Error: interrupted; no output was left half-written" in rest
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_outdir_is_written_leaves_it_whole_or_absent(tmp_path):
    proc = _start(tmp_path)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:  # the staging folder appears at the very end
        if any(p.name.startswith(".out.effkit-") for p in tmp_path.iterdir()):
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.005)
    proc.wait(timeout=120)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names in ([], ["out"])  # no staging folder left behind
    if names:  # the move had happened: then it is complete
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == OUTPUTS


def test_force_never_replaces_a_folder_of_the_users_own_files(cli, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work")
    code, _, stderr = cli("compress", spec("mlp"), "--prune", "0.5", "--tolerance", "none", "-o", "mine", "--force", *FAST)
    assert code == 2
    assert stderr.strip() == "Error: mine holds files that effkit compress did not write (pass an empty or new folder for -o)"
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]


def test_force_replaces_an_earlier_outdir_and_dot_works(cli, tmp_path):
    code, _, stderr = cli("compress", spec("mlp"), "--prune", "0.5", "--tolerance", "none", "-o", "out", *FAST)
    assert code == 0, stderr
    code, _, stderr = cli("compress", spec("mlp"), "--prune", "0.5", "--tolerance", "none", "-o", "out", "--force", *FAST)
    assert code == 0, stderr
    empty = tmp_path / "here"
    empty.mkdir()
    os.chdir(empty)
    code, _, stderr = cli("compress", spec("mlp"), "--prune", "0.5", "--tolerance", "none", "-o", ".", *FAST)
    assert code == 0, stderr
    assert sorted(p.name for p in empty.iterdir()) == ["model.onnx", "model.pt2", "recipe.toml", "report.html",
                                                        "report.json", "report.md"]


# ---------------------------------------------------------------- the summary at 80 columns

def _speedup(estimate: float, lo: float, hi: float, verdict: str, reasons: tuple = ()) -> dict:
    return {"estimate": estimate, "ci95": [lo, hi], "verdict": verdict, "reasons": list(reasons)}


def _summary_doc(labelled: bool) -> dict:
    """A compress result document with the widest figures a summary shows: two-digit speedups,
    an inconclusive and a slower step, a 100% accuracy and a large loss."""
    rows = []
    for state, runtime, p50, step, vs, size, ratio, acc, cosine in [
            ("original", "torch", 0.1096, None, None, 4_508_873, None, 0.9833, None),
            ("original", "onnxruntime", 0.0817, None, _speedup(2.10, 2.05, 2.16, "faster"), 4_508_873, None, 0.9833,
             None),
            ("prune", "torch", 0.077, _speedup(2.19, 2.03, 2.42, "faster"), _speedup(2.34, 1.93, 2.77, "faster"),
             1_221_000, 0.2708, 1.0, 0.97306),
            ("prune", "onnxruntime", 0.0336, _speedup(0.76, 0.70, 0.80, "slower"),
             _speedup(5.59, 4.81, 6.54, "faster"), 1_221_000, 0.2708, 1.0, 0.97306),
            ("distill", "torch", 0.0771, _speedup(1.01, 0.70, 1.40, "inconclusive"),
             _speedup(2.33, 1.90, 2.80, "faster"), 1_221_000, 1.0, 0.1333, 0.41234),
            ("quantize", "onnxruntime", 0.013, _speedup(1.78, 1.67, 1.85, "faster"),
             _speedup(10.33, 9.41, 11.61, "faster"), 309_394, 0.2534, 0.9861, 0.97306)]:
        rows.append({"state": state, "runtime": runtime, "p50_ms": p50, "p90_ms": 1.2 * p50, "speedup_step_paired": step,
                     "speedup_vs_torch_fp32_paired": vs, "size_bytes": size, "size_ratio_step": ratio,
                     "accuracy": acc if labelled else None,
                     "accuracy_change_pt": 100 * (acc - 0.9833) if labelled else None,
                     "cosine_min": cosine, "warnings": []})
    p50, p90 = _speedup(10.33, 9.41, 11.61, "faster"), _speedup(11.72, 8.96, 14.41, "faster")
    overall = {"final_runtime": "onnxruntime", "speedup": {"vs_torch_fp32": {"p50": p50, "p90": p90}},
               "size_before": 4_508_873, "size_after": 309_394, "size_ratio": 0.0686,
               **({"accuracy_before": 0.9833, "accuracy_after": 0.9861, "accuracy_change_pt": 0.28} if labelled
                  else {"fidelity": {"cosine_min": 0.97306}})}
    steps = [{"step": name, "attempts": [{"attempt": 1, "setting": setting, "accepted": True, "violations": []}],
              "notes": [f"{name}: a note long enough to wrap at eighty columns, which it must do between words"]}
             for name, setting in (("prune", "ratio 0.5"), ("distill", None), ("quantize", None))]
    return {"schema": "effkit.compress/1", "source": "examples/digits.py:mlp_wide", "status": "ok", "message": None,
            "hint": None, "bar": "accuracy drop <= 1 pt" if labelled else "cosine>=0.99", "summary": rows, "overall": overall, "steps": steps,
            "notes": ["the final model is ONNX already, so it is the export"],
            "warnings": ["prune torch: busy machine: other processes used 1.16 of 2 cores during the measurement"]}


def test_the_terminal_summary_reads_at_80_columns_without_a_cut_figure():
    import io

    from rich.console import Console

    from effkit.report.compress import compress_summary

    for labelled in (True, False):
        console = Console(width=80, record=True, file=io.StringIO())
        console.print(compress_summary(_summary_doc(labelled)))
        text = console.export_text()
        lines = text.splitlines()
        assert "…" not in text and max(len(line.rstrip()) for line in lines) <= 80
        assert [line.split()[0] for line in lines if line.startswith(("original ", "prune ", "distill ", "quantize "))] \
            == ["original", "original", "prune", "prune", "distill", "quantize",  # latency: per state and runtime
                "original", "prune", "distill", "quantize"]  # size and quality: per state
        assert all(f"{name}: try 1" in text for name in ("prune", "distill", "quantize"))
        assert "10.33x faster" in text and "[9.41, 11.61]" in text  # the headline figure, whole, in the table
        assert "10.33x faster [9.41, 11.61] at p50 (11.72x faster [8.96, 14.41] at p90)" in text
        assert "1.01x inconclusive" in text and "1.32x slower" in text and "4.51 MB" in text and "309 KB" in text
        if labelled:
            assert "100.00%" in text and "-85.00" in text and "(+0.28 pt)" in text
        else:
            assert "cosine (min)" in text and "0.41234" in text and "accuracy" not in text
