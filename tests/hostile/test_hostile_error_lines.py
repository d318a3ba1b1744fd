"""One `Error:` line, always: whatever goes wrong, stderr holds exactly one line and nothing else.

No ONNX Runtime log lines before it (its C++ logger writes to fd 2 by itself, so those cases run
effkit as a real process), no Click/Rich usage box, no "unexpected X", no Rich MarkupError from a
path that looks like markup, and no half-written output. Recipes and gate results with values that
cannot be (NaN, infinity, 10**20 samples, a negative latency) are refused naming the file and key.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, NO_BAR, spec
from hostile_helpers import EXTRA_ARGS, error_line, model_commands

import hostile_files as hf

ROOT = Path(__file__).parents[2]
COMMANDS = model_commands()
CORRUPT = "(the model file is corrupt; export it again)"


def effkit(*args: str, cwd: Path) -> tuple[int, str, str]:
    """effkit as a real process: what ONNX Runtime's C++ code writes to fd 2 is captured too."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "effkit", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    return out.returncode, out.stdout, out.stderr


def only_error_line(stderr: str) -> str:
    """`error_line`, and none of the noise this file is about."""
    line = error_line(stderr)
    assert "onnxruntime:" not in stderr and "╭" not in stderr and "Error: unexpected" not in stderr, stderr
    return line


# ---------------------------------------------------------------- crafted ONNX graphs

def onnx_external(path: Path, **entries: str) -> Path:
    """`hf.onnx_model` with W's 32 bytes in `w.bin` beside it, and its external-data entries replaced."""
    import onnx

    (path.parent / "w.bin").write_bytes(b"\x00\x00\x80\x3f" * 8)
    hf.onnx_model(path, external="w.bin")
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        entry.value = entries.get(entry.key, entry.value)
    onnx.save(proto, str(path))
    return path


def onnx_expand(path: Path, elements: int = 4 * 10**12) -> Path:
    """y = Expand(x[1], [elements]): valid ONNX whose run asks for elements * 4 bytes (16 TB by default)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([elements], np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Expand", ["x", "shape"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])], [shape])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return path


def onnx_custom_op(path: Path) -> Path:
    """A graph with one operator of a custom domain, which passes the ONNX checker."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Foo", ["x"], ["y"], domain="com.example")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return path


ORT_PROBE = """
import sys, numpy as np, onnxruntime as ort
try:
    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    session.run(None, {"x": np.ones(session.get_inputs()[0].shape, np.float32)})
except Exception:
    pass
"""


def _ort_logs(model: Path) -> str:
    """What ONNX Runtime itself writes to stderr for `model`, at its default log severity."""
    out = subprocess.run([sys.executable, "-c", ORT_PROBE, str(model)], capture_output=True, text=True, timeout=120)
    return out.stderr


ORT_CASES = [
    ("length-1e15", lambda tmp: onnx_external(tmp / "m.onnx", length=str(10**15)), "inspect",
     "Error: m.onnx stores tensor 'W' at 'w.bin': 1000000000000000 bytes from offset 0, past the end of that file "
     "(32 bytes) (the data file is truncated or belongs to another model; copy the right one)"),
    ("negative-offset", lambda tmp: onnx_external(tmp / "m.onnx", offset="-64"), "inspect",
     f"Error: m.onnx stores tensor 'W' at 'w.bin' with a negative offset (-64) {CORRUPT}"),
    ("expand-16TB", lambda tmp: onnx_expand(tmp / "m.onnx"), "bench", None),  # ORT's words: checked below
]


@pytest.mark.parametrize("build", [pytest.param(b, id=i) for i, b, _, _ in ORT_CASES])
def test_the_crafted_graphs_make_onnxruntime_log(tmp_path, build):
    """Live: without effkit, ONNX Runtime prints its own error lines for each of these graphs."""
    assert "[E:onnxruntime:" in _ort_logs(build(tmp_path))


@pytest.mark.parametrize("build, command, expected", [pytest.param(b, c, e, id=i) for i, b, c, e in ORT_CASES])
def test_onnxruntime_logs_nothing_before_the_error_line(tmp_path, build, command, expected):
    build(tmp_path)
    code, stdout, stderr = effkit(command, "m.onnx", *EXTRA_ARGS[command], "--json", "out.json", cwd=tmp_path)
    line = only_error_line(stderr)
    if expected is None:
        assert line.startswith("Error: the model failed on inputs x: 1 float32: "), line
        assert "Failed to allocate memory for requested buffer of size 16000000000000" in line, line
        assert line.endswith("(check --input-shape / --inputs against what the model expects)"), line
    else:
        assert line == expected
    # stdout holds at most the inputs line a command prints after loading, never a part of the error
    assert code == 2 and all(line.startswith("inputs (") for line in stdout.splitlines())
    assert not (tmp_path / "out.json").exists()


def test_debug_lets_onnxruntime_log(tmp_path):
    onnx_expand(tmp_path / "m.onnx")
    code, _, stderr = effkit("inspect", "m.onnx", "--debug", cwd=tmp_path)
    assert code == 2 and "[E:onnxruntime:" in stderr and "Traceback" in stderr


def test_the_expand_graph_runs_when_small(cli, tmp_path):
    """The control: the same graph, expanding to 4 elements, is an ordinary model."""
    onnx_expand(tmp_path / "m.onnx", elements=4)
    code, _, stderr = cli("inspect", "m.onnx")
    assert code == 0, stderr


# ---------------------------------------------------------------- ONNX models refused before ONNX Runtime

def _nul_location(tmp: Path):
    hf.onnx_model(tmp / "m.onnx", external="w\x00.bin")


def _long_location(tmp: Path):
    hf.onnx_model(tmp / "m.onnx", external="a" * 5000)


BAD_ONNX = [
    ("nul-location", _nul_location,
     f"Error: m.onnx stores tensor 'W' at 'w\\x00.bin', a location with a NUL byte, which no file name has {CORRUPT}"),
    ("5000-char-location", _long_location,
     f"Error: m.onnx stores tensor 'W' at '{'a' * 200}'..., which is not a usable file name: File name too long "
     f"{CORRUPT}"),
    ("offset-not-a-number", lambda tmp: onnx_external(tmp / "m.onnx", offset="12abc"),
     f"Error: m.onnx stores tensor 'W' at 'w.bin' with offset '12abc', which is not a whole number {CORRUPT}"),
    ("offset-past-the-end", lambda tmp: onnx_external(tmp / "m.onnx", offset="8"),
     "Error: m.onnx stores tensor 'W' at 'w.bin': 32 bytes from offset 8, past the end of that file (32 bytes) "
     "(the data file is truncated or belongs to another model; copy the right one)"),
    ("custom-domain-op", lambda tmp: onnx_custom_op(tmp / "m.onnx"),
     "Error: m.onnx uses the operator com.example:Foo, which ONNX Runtime does not implement (effkit runs models on "
     "ONNX Runtime's CPU provider: export with standard ONNX operators)"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("build, expected", [pytest.param(b, e, id=i) for i, b, e in BAD_ONNX])
def test_bad_onnx_is_one_clear_error_line(cli, tmp_path, command, build, expected):
    build(tmp_path)
    code, _, stderr = cli(command, "m.onnx", *EXTRA_ARGS[command])
    assert (code, only_error_line(stderr)) == (2, expected)
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "out").exists()


def test_intact_external_data_loads(cli, tmp_path):
    """The control for the offsets and lengths above: the untouched entries are accepted."""
    onnx_external(tmp_path / "m.onnx")
    code, _, stderr = cli("inspect", "m.onnx")
    assert code == 0, stderr


# ---------------------------------------------------------------- Click's usage errors

# What each command with timing options needs besides MODEL to get past Click's checks.
TIMING_COMMANDS = {**{c: EXTRA_ARGS[c] for c in ("bench", "quantize", "prune", "compress")},
                   "distill": ["-o", "s.pt2", "--data", "x.npz"], "compare": [spec("mlp")]}


@pytest.mark.parametrize("command", TIMING_COMMANDS)
@pytest.mark.parametrize("option, value, message", [
    ("--iterations", "0", "Invalid value for '--iterations': Input should be greater than or equal to 1"),
    ("--warmup", "-1", "Invalid value for '--warmup': Input should be greater than or equal to 0"),
    ("--min-time", "nan", "Invalid value for '--min-time': Input should be greater than or equal to 0"),
    ("--min-time", "inf", "--min-time must be a finite number, got inf"),
])
def test_bad_timing_options_are_one_line(cli, tmp_path, command, option, value, message):
    if option == "--min-time" and command == "compare":
        option = "--block-time"
        message = message.replace("--min-time", "--block-time").replace("equal to 0", "equal to 0.001")
    code, stdout, stderr = cli(command, spec("mlp"), *TIMING_COMMANDS[command], option, value)
    hint = "(write an ordinary number)" if value == "inf" else f"(see effkit {command} --help)"
    assert (code, only_error_line(stderr)) == (2, f"Error: {message} {hint}")
    assert not stdout


@pytest.mark.parametrize("args, expected", [
    (["bench", spec("mlp"), "--bogus"], "Error: No such option: --bogus (see effkit bench --help)"),
    (["bench"], "Error: Missing argument 'MODEL'. (see effkit bench --help)"),
    (["bench", spec("mlp"), "--runtime"], "Error: Option '--runtime' requires an argument. (see effkit --help)"),
])
def test_other_usage_errors_are_one_line(cli, args, expected):
    code, stdout, stderr = cli(*args)
    assert (code, only_error_line(stderr), stdout) == (2, expected, "")


def test_usage_errors_of_the_real_command(tmp_path):
    code, stdout, stderr = effkit("bench", spec("mlp"), "--iterations", "0", cwd=tmp_path)
    assert (code, only_error_line(stderr)) == (
        2, "Error: Invalid value for '--iterations': Input should be greater than or equal to 1 "
           "(see effkit bench --help)")
    code, _, stderr = effkit("bnch", cwd=tmp_path)
    assert (code, only_error_line(stderr)) == (2, "Error: No such command 'bnch'. Did you mean 'bench'? "
                                                  "(see effkit --help)")


def test_help_still_reads(cli):
    code, stdout, _ = cli("bench", "--help")
    assert code == 0 and "Usage:" in stdout and "--iterations" in stdout and "--min-time" in stdout


@pytest.mark.parametrize("option, value", [("--lr", "nan"), ("--temperature", "inf"), ("--seed", str(10**20))])
def test_number_options_of_every_command_are_finite(cli, option, value):
    code, _, stderr = cli("distill", spec("mlp"), *TIMING_COMMANDS["distill"], option, value)
    expected = (f"Error: {option} must be a finite number, got {value} (write an ordinary number)" if value in
                ("nan", "inf") else f"Error: {option} is a 67-bit number, too large for any count or size (write an "
                                    "ordinary number, at most 9223372036854775807)")
    assert (code, only_error_line(stderr)) == (2, expected)


# ---------------------------------------------------------------- paths that look like Rich markup

def test_rich_reads_such_a_path_as_markup():
    """Live: a console with markup on fails on the very line effkit prints after writing."""
    from rich.console import Console
    from rich.errors import MarkupError

    with pytest.raises(MarkupError):
        Console(file=open(os.devnull, "w")).print("wrote d[/]out.json")


@pytest.fixture
def markup_dir(tmp_path) -> str:
    (tmp_path / "d[").mkdir()
    return "d[/]"  # the folder "d[" and a "]" at the start of the file name


def test_markup_path_as_output(cli, tmp_path, markup_dir):
    code, stdout, stderr = cli("bench", spec("mlp"), *FAST, "--json", f"{markup_dir}r.json",
                               "--markdown", f"{markup_dir}r.md")
    assert code == 0, stderr
    assert stderr.splitlines() == [f"wrote {markup_dir}r.json", f"wrote {markup_dir}r.md"]
    assert json.loads((tmp_path / "d[" / "]r.json").read_text())["schema"] == "effkit.bench/1"


def test_markup_path_as_model(cli, tmp_path, markup_dir):
    hf.state_dict_pt(tmp_path / "d[" / "]w.pt")
    code, stdout, stderr = cli("bench", f"{markup_dir}w.pt", "--arch", f"{hf.__file__}:linear", *FAST)
    assert code == 0, stderr
    assert f"effkit bench: {markup_dir}w.pt" in [line.strip() for line in stdout.splitlines()]


def test_markup_path_as_output_printed_after_writing(cli, tmp_path, markup_dir):
    code, stdout, stderr = cli("prune", spec("mlp"), *FAST, *NO_BAR, "-o", f"{markup_dir}p.pt2")
    assert code == 0, stderr
    assert stdout.splitlines()[-1] == f"wrote {markup_dir}p.pt2"
    assert (tmp_path / "d[" / "]p.pt2").is_file()


def test_markup_path_in_gate_outputs(cli, tmp_path, markup_dir):
    (tmp_path / "d[" / "]r.json").write_text(json.dumps(bench_result()))
    code, stdout, stderr = cli("gate", f"{markup_dir}r.json", "--fail-on", "size:<=1MB",
                               "--junit", f"{markup_dir}j.xml")
    assert code == 0, stderr
    assert stderr.splitlines() == [f"wrote {markup_dir}j.xml"]
    assert (tmp_path / "d[" / "]j.xml").is_file()


def test_markup_path_that_is_missing(cli, markup_dir):
    code, _, stderr = cli("inspect", f"{markup_dir}missing.onnx")
    assert code == 2 and only_error_line(stderr).startswith(f"Error: no such file: {markup_dir}missing.onnx (")


# ---------------------------------------------------------------- recipes

RECIPE_ERRORS = [
    ("[bench]\nmin-time = nan\n", "r.toml line 2: [bench] min-time must be a finite number, got nan "
                                  "(write an ordinary number)"),
    ("[quantize]\nalpha = inf\n", "r.toml line 2: [quantize] alpha must be a finite number, "
                                  "got inf (write an ordinary number)"),
    ("[quantize]\ncalib-samples = 100000000000000000000\n",
     "r.toml line 2: [quantize] calib-samples is a 67-bit number, too large for any count or size (write an "
     "ordinary number, at most 9223372036854775807)"),
    ("[quantize]\ncalib-samples = 1e20\n", "r.toml line 2: [quantize] calib-samples must be an integer, got a number "
                                           "(1e+20)"),
    ("[prune]\nratio = 0.5\n[distill]\nlr = -inf\n", "r.toml line 4: [distill] lr must be a finite number, got -inf "
                                                      "(write an ordinary number)"),
    ("\ufeff[prune]\nratio = nan\n", "r.toml line 2: [prune] ratio must be a finite number, got nan "
                                     "(write an ordinary number)"),
    ("[bench]\nwarmup = " + "9" * 5000 + "\n", "r.toml holds a number with thousands of digits "
                                               "(write an ordinary number)"),
]


@pytest.mark.parametrize("text, expected", RECIPE_ERRORS)
def test_recipe_values_that_cannot_be(cli, tmp_path, text, expected):
    (tmp_path / "r.toml").write_text(text, encoding="utf-8")
    code, _, stderr = cli("compress", spec("mlp"), "--recipe", "r.toml", "-o", "out", *FAST)
    assert (code, only_error_line(stderr)) == (2, f"Error: {expected}")
    assert not (tmp_path / "out").exists()


def test_recipe_with_a_byte_order_mark_is_read(tmp_path):
    from effkit.recipe import Recipe

    (tmp_path / "r.toml").write_bytes(b"\xef\xbb\xbf[prune]\nratio = 0.25\n[bench]\nmin-time = 0.5\n")
    recipe = Recipe.load(tmp_path / "r.toml")
    assert (recipe.steps, recipe.prune.ratio, recipe.bench.min_time) == (["prune", "export"], 0.25, 0.5)


@pytest.mark.parametrize("make, expected", [
    (lambda: __import__("effkit.recipe").recipe.BenchConfig(min_time=math.nan),
     "--min-time must be a finite number, got nan"),
    (lambda: __import__("effkit.passes.quantize").passes.quantize.QuantizeConfig(alpha=math.inf),
     "--alpha must be a finite number, got inf"),
    (lambda: __import__("effkit.passes.quantize").passes.quantize.quantize(None, __import__(
        "effkit.passes.quantize").passes.quantize.QuantizeConfig(), candidate_time=math.inf),
     "candidate timing needs a finite time >= 0 and iterations >= 1"),
    (lambda: __import__("effkit.passes.distill").passes.distill.DistillConfig(alpha=math.nan),
     "--alpha must be a finite number, got nan"),
])
def test_configs_refuse_what_a_recipe_or_the_api_could_give(make, expected):
    from effkit.errors import UsageError

    with pytest.raises(UsageError) as info:
        make()
    assert info.value.message == expected


# ---------------------------------------------------------------- gate results

def bench_result(p50: float | str = 0.5, size: float | str = 1000, samples: list | None = None) -> dict:
    """A bench result document as effkit writes it, with the values under test."""
    samples = [0.5, 0.4, 0.6, 0.5] * 5 if samples is None else samples
    return {"schema": "effkit.bench/1", "model": {"source": "m.onnx"},
            "metrics": {"latency": {"p50": p50, "p90": 0.6}, "size": size, "accuracy": 0.9},
            "environment": {"cores": 2, "threads": 1, "calibration_ms": 3.0},
            "runs": [{"runtime": "onnxruntime", "batch_size": 1, "samples_ms": samples,
                      "contention": {"busy": False, "oversubscribed": False}}]}


def _write(path: Path, doc) -> None:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))


NOT_PHYSICAL = ", which no measurement can be (latencies, sizes and counts are finite and never negative) " \
               "(the file was edited or corrupted; measure again)"
AS_WRITTEN = "(pass a result file as effkit wrote it)"

GATE_ERRORS = [
    ("negative-latency", bench_result(p50=-1.0), ["latency.p50:<=1ms"],
     f"Error: r.json: metrics.latency.p50 is -1.0{NOT_PHYSICAL}"),
    ("-inf-size", bench_result(size="-inf"), ["size:<=1MB"], f"Error: r.json: metrics.size is '-inf'{NOT_PHYSICAL}"),
    ("negative-size", bench_result(size=-5), ["size:<=1MB"], f"Error: r.json: metrics.size is -5{NOT_PHYSICAL}"),
    ("inf-latency", bench_result(p50=math.inf), ["latency.p50:>=1ms"],
     f"Error: r.json: metrics.latency.p50 is inf{NOT_PHYSICAL}"),
    ("negative-sample", bench_result(samples=[0.5, -0.5, 0.5]), ["latency.p50:<=1ms"],
     f"Error: r.json: runs.0.samples_ms.1 is -0.5{NOT_PHYSICAL}"),
    ("nan-accuracy", {**bench_result(), "metrics": {"accuracy": "nan"}}, ["accuracy:>=0.5"],
     "Error: r.json: metrics.accuracy is NaN, which no gate can compare (the file was edited or corrupted; "
     "measure again)"),
    ("malformed-json", '{"schema": "effkit.bench/1", ', ["size:<=1MB"],
     f"Error: r.json is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 30 "
     f"(char 29) {AS_WRITTEN}"),
    ("nested-too-deeply", '{"schema": "effkit.bench/1", "x": ' + "[" * 100000 + "]" * 100000 + "}", ["size:<=1MB"],
     f"Error: r.json nests its JSON too deeply to be an effkit result {AS_WRITTEN}"),
    ("runs-not-a-list", {**bench_result(), "runs": 5}, ["size:<=1MB"],
     f"Error: r.json: runs is a number, not a list {AS_WRITTEN}"),
    ("metrics-a-list", {**bench_result(), "metrics": [1]}, ["size:<=1MB"],
     f"Error: r.json: metrics is a list, not a table {AS_WRITTEN}"),
    ("step-without-tables", {"schema": "effkit.step/1", "before": 1, "after": 2}, ["size:<=1MB"],
     f"Error: r.json: after is a number, not a table {AS_WRITTEN}"),
    ("sample-not-a-number", bench_result(samples=["fast"]), ["latency.p50:<=1ms"],
     f"Error: r.json: runs.0.samples_ms.0 is 'fast', not a number {AS_WRITTEN}"),
    ("compare-without-pairs-table", {"schema": "effkit.compare/1", "pairs": [[1]]}, ["latency.p50:+5%"],
     f"Error: r.json: pairs.0 is a list, not a table {AS_WRITTEN}"),
]


@pytest.mark.parametrize("doc, gates, expected", [pytest.param(d, g, e, id=i) for i, d, g, e in GATE_ERRORS])
def test_gate_results_that_cannot_be(cli, tmp_path, doc, gates, expected):
    _write(tmp_path / "r.json", doc)
    args = [a for g in gates for a in ("--fail-on", g)]
    code, stdout, stderr = cli("gate", "r.json", *args, "--json", "g.json", "--junit", "j.xml")
    assert (code, only_error_line(stderr)) == (2, expected)
    assert not stdout and not (tmp_path / "g.json").exists() and not (tmp_path / "j.xml").exists()


def test_a_baseline_that_cannot_be_is_named(cli, tmp_path):
    _write(tmp_path / "r.json", bench_result())
    _write(tmp_path / "base.json", bench_result(p50="-inf"))
    code, _, stderr = cli("gate", "r.json", "--baseline", "base.json", "--fail-on", "latency.p50:+5%")
    assert (code, only_error_line(stderr)) == (2, f"Error: base.json: metrics.latency.p50 is '-inf'{NOT_PHYSICAL}")


def test_gate_results_as_effkit_writes_them_pass(cli, tmp_path):
    """The control: the same documents with physical values are gated (here: every gate passes)."""
    _write(tmp_path / "r.json", bench_result())
    _write(tmp_path / "bom.json", "\ufeff" + json.dumps(bench_result()))
    for name in ("r.json", "bom.json"):
        code, _, stderr = cli("gate", name, "--fail-on", "latency.p50:<=1ms", "--fail-on", "size:<=1MB",
                              "--fail-on", "accuracy:>=0.5")
        assert code == 0, stderr
