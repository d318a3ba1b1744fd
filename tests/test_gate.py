"""effkit gate: threshold parsing, verdicts on synthetic results, JUnit/Markdown/JSON outputs, config, exit codes."""

import json
import re
import shlex
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest

from effkit.errors import UsageError
from effkit.gates import GateReport, gate
from effkit.gate_config import load_gate_config
from effkit.specs import Threshold, parse_threshold

ROOT = Path(__file__).resolve().parent.parent
ENV = {"cpu": {"model": "Test CPU", "isa": []}, "cores": 2, "threads": 2, "calibration_ms": 10.0,
       "versions": {"torch": "2.13.0", "onnxruntime": "1.32.0"}}
QUIET = {"measured": True, "other_cpu_cores": 0.0, "cores": 2, "free_cores": 2.0, "threads": 2, "busy": False,
         "oversubscribed": False}


def bench_doc(median_ms=1.0, spread=0.02, n=400, seed=0, size=10_000_000, accuracy=None, contention=QUIET,
              env=ENV) -> dict:
    """A minimal effkit.bench/1 document with latency samples drawn around `median_ms`."""
    rng = np.random.default_rng(seed)
    samples = (median_ms * np.exp(rng.normal(0, spread, n))).tolist()
    metrics = {"latency": {"p50": float(np.median(samples)), "p90": float(np.percentile(samples, 90)),
                           "mean": float(np.mean(samples))},
               "throughput": 1000.0 / float(np.mean(samples)), "size": size, "parameters": 1000}
    if accuracy is not None:
        metrics["accuracy"] = accuracy
    return {"schema": "effkit.bench/1", "model": {"source": "m.py:net"}, "metrics": metrics, "environment": env,
            "runs": [{"runtime": "torch", "latency_ms": metrics["latency"], "samples_ms": samples,
                      "contention": contention}], "warnings": []}


def write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


# ---------------------------------------------------------------- threshold parsing

@pytest.mark.parametrize("text, expected", [
    ("latency.p50:+5%", ("latency.p50", "relative", "+", 0.05)),
    ("throughput:-10%", ("throughput", "relative", "-", -0.10)),
    ("latency.p50 : + 5 %", ("latency.p50", "relative", "+", 0.05)),
    ("accuracy:-0.5pt", ("accuracy", "points", "-", -0.5)),
    ("accuracy:-1points", ("accuracy", "points", "-", -1.0)),
    ("size:<=12MB", ("size", "absolute", "<=", 12e6)),
    ("size:<=12MiB", ("size", "absolute", "<=", 12 * 2**20)),
    ("size:<1.5GB", ("size", "absolute", "<", 1.5e9)),
    ("latency.p50:<=3ms", ("latency.p50", "absolute", "<=", 3.0)),
    ("latency.p99:<500us", ("latency.p99", "absolute", "<", 0.5)),
    ("latency.mean:<=0.002s", ("latency.mean", "absolute", "<=", 2.0)),
    ("accuracy:>=90%", ("accuracy", "absolute", ">=", 0.9)),
    ("cosine>=0.99", ("cosine", "absolute", ">=", 0.99)),
    ("sqnr>=20", ("sqnr", "absolute", ">=", 20.0)),
    ("parameters:==1000", ("parameters", "absolute", "==", 1000.0)),
    ("runs.0.latency_ms.p90:<=2ms", ("runs.0.latency_ms.p90", "absolute", "<=", 2.0)),
])
def test_every_threshold_form(text, expected):
    t = parse_threshold(text)
    assert (t.metric, t.kind, t.op) == expected[:3]
    assert t.value == pytest.approx(expected[3])


FORM = "write METRIC:+5%, METRIC:-0.5pt or METRIC<=VALUE, e.g. latency.p50:+5% or size:<=12MB"


@pytest.mark.parametrize("text, message", [
    ("latency.p50", f"cannot parse threshold 'latency.p50' ({FORM})"),
    ("latency.p50:5%", f"cannot parse threshold 'latency.p50:5%' ({FORM})"),
    (":+5%", f"cannot parse threshold ':+5%' ({FORM})"),
    ("latency.p50:+inf%", f"cannot parse threshold 'latency.p50:+inf%' ({FORM})"),
    ("size:<=12XB", "unknown unit 'XB' in threshold 'size:<=12XB' (use B/KB/MB/GB/KiB/MiB/GiB, ns/us/ms/s, %, or "
                    "pt (with + or -))"),
    ("size:<=abc", "cannot parse the value in threshold 'size:<=abc' (write e.g. size:<=12MB, latency.p50:<=3ms or "
                   "cosine>=0.99)"),
    ("size:<=", "cannot parse the value in threshold 'size:<=' (write e.g. size:<=12MB, latency.p50:<=3ms or "
                "cosine>=0.99)"),
])
def test_bad_thresholds_say_what_to_write(text, message):
    with pytest.raises(UsageError) as e:
        parse_threshold(text)
    assert str(e.value) == message


# ---------------------------------------------------------------- verdicts

def test_relative_latency_clear_pass_fail_and_inconclusive():
    base = bench_doc(1.0, seed=1)
    assert gate(bench_doc(1.0, seed=2), ["latency.p50:+5%"], base).verdicts[0].status == "pass"
    fail = gate(bench_doc(1.5, seed=2), ["latency.p50:+5%"], base).verdicts[0]
    assert fail.status == "fail" and fail.interval[0] > 1.05 and fail.change == pytest.approx(1.5, rel=0.02)
    # a 5% change measured with 30% spread and few samples: the interval straddles 1.05
    noisy = gate(bench_doc(1.05, spread=0.3, n=40, seed=2), ["latency.p50:+5%"], bench_doc(1.0, spread=0.3, n=40))
    v = noisy.verdicts[0]
    assert v.status == "inconclusive" and v.interval[0] < 1.05 < v.interval[1]
    assert noisy.passed and noisy.exit_code == 0  # inconclusive warns ...
    noisy.strict = True
    assert not noisy.passed and noisy.exit_code == 1  # ... and fails under --strict


def test_decided_on_the_bound_not_the_point_estimate():
    # point estimate 1.04 is under the 5% limit, but the noise allows more: not a pass
    base = bench_doc(1.0, spread=0.3, n=40)
    v = gate(bench_doc(1.04, spread=0.3, n=40, seed=3), ["latency.p50:+5%"], base).verdicts[0]
    assert v.change < 1.05 and v.status == "inconclusive"


def test_throughput_may_drop_at_most():
    base = bench_doc(1.0, seed=1)
    ok = gate(bench_doc(1.02, seed=2), ["throughput:-10%"], base).verdicts[0]
    assert ok.status == "pass" and ok.interval[0] < ok.change < ok.interval[1]  # decided on the interval
    bad = gate(bench_doc(1.5, seed=2), ["throughput:-10%"], base).verdicts[0]
    assert bad.status == "fail" and bad.change == pytest.approx(1 / 1.5, rel=0.03)


def test_absolute_gates():
    doc = bench_doc(1.0, size=11_000_000)
    report = gate(doc, ["size:<=12MB", "size:<=10MB", "latency.p50:<=3ms", "latency.p90:<0.5ms", "parameters:==1000"])
    assert [v.status for v in report.verdicts] == ["pass", "fail", "pass", "fail", "pass"]
    assert report.verdicts[2].interval is not None  # latency is decided on the bootstrap interval
    assert not report.passed and report.exit_code == 1


def test_points_on_accuracy_fractions():
    base = bench_doc(accuracy=0.900)
    assert gate(bench_doc(accuracy=0.897), ["accuracy:-0.5pt"], base).verdicts[0].status == "pass"
    v = gate(bench_doc(accuracy=0.894), ["accuracy:-0.5pt"], base).verdicts[0]
    assert v.status == "fail" and v.change == pytest.approx(-0.6)


def test_dotted_path_anywhere_in_the_document():
    v = gate(bench_doc(), ["runs.0.samples_ms.0:<=100ms", "environment.cores:>=2"]).verdicts
    assert [x.status for x in v] == ["pass", "pass"]


def test_busy_machine_makes_latency_inconclusive_not_size():
    busy = dict(QUIET, other_cpu_cores=1.0, free_cores=1.0, busy=True, oversubscribed=True)
    report = gate(bench_doc(2.0, seed=2, contention=busy), ["latency.p50:+5%", "size:+0%"], bench_doc(1.0))
    assert [v.status for v in report.verdicts] == ["inconclusive", "pass"]
    assert "the machine was busy during this run" in report.verdicts[0].message
    assert any("busy machine" in w for w in report.warnings)


def test_other_environment_is_warned_and_normalized_by_calibration():
    slow_machine = dict(ENV, cpu={"model": "Slower CPU", "isa": []}, calibration_ms=20.0)
    # twice the latency on a machine that runs the calibration workload twice as long: no regression
    report = gate(bench_doc(2.0, seed=2, env=slow_machine), ["latency.p50:+5%", "throughput:-5%"], bench_doc(1.0))
    assert [v.status for v in report.verdicts] == ["pass", "pass"]
    assert "machine-normalized" in report.verdicts[0].message
    assert report.warnings[0] == "the baseline ran in another environment (cpu: Test CPU -> Slower CPU)"
    assert report.warnings[1].startswith("the calibration workload ran 2.00x as long here")


def test_normalized_latency_gate_divides_out_the_machine():
    fast_machine = dict(ENV, calibration_ms=5.0)  # same fingerprint, but a faster moment of the same machine
    doc = bench_doc(0.5, seed=2, env=fast_machine)
    doc["metrics"]["normalized_latency"] = {"p50": doc["metrics"]["latency"]["p50"] / 5.0}
    base = bench_doc(1.0)
    base["metrics"]["normalized_latency"] = {"p50": base["metrics"]["latency"]["p50"] / 10.0}
    v = gate(doc, ["normalized_latency.p50:+5%", "latency.p50:-10%"], base).verdicts
    assert v[0].status == "pass" and v[0].change == pytest.approx(1.0, rel=0.02)
    assert v[1].status == "fail"  # raw latency halved: it "dropped" by more than 10%


def test_step_outcome_gates_after_against_before():
    step = {"schema": "effkit.step/1", "before": bench_doc(1.0, accuracy=0.9),
            "after": bench_doc(0.5, size=2_500_000, accuracy=0.899, seed=4)}
    report = gate(step, ["latency.p50:+0%", "size:+0%", "accuracy:-0.5pt"])
    assert [v.status for v in report.verdicts] == ["pass", "pass", "pass"]
    assert report.verdicts[1].change == pytest.approx(0.25)
    assert gate(step, ["accuracy:-0.05pt"]).verdicts[0].status == "fail"  # it dropped 0.1 pt


def test_compress_result_gates_the_final_state_against_the_original():
    doc = {"schema": "effkit.compress/1", "source": "m.py:net", "states": [
        {"name": "original", "accuracy": 0.9, "bench": bench_doc(1.0)},
        {"name": "prune", "accuracy": 0.899, "bench": None},
        {"name": "quantize", "accuracy": 0.893, "bench": bench_doc(0.6, size=2_500_000, seed=5)}]}
    report = gate(doc, ["latency.p50:+0%", "size:<=3MB", "accuracy:-0.5pt"])
    assert [v.status for v in report.verdicts] == ["pass", "pass", "fail"]
    assert report.subject == "m.py:net"


def test_relative_gate_without_baseline_is_a_usage_error():
    with pytest.raises(UsageError, match="compares with a baseline, and there is none"):
        gate(bench_doc(), ["latency.p50:+5%"])


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(UsageError) as e:
        gate(bench_doc(), ["latncy.p50:<=3ms"])
    assert e.value.message == "the result has no numeric metric 'latncy.p50'"
    assert e.value.hint.startswith("metrics: latency.p50, latency.p90, latency.mean, throughput, size")


# ---------------------------------------------------------------- outputs

def _report() -> GateReport:
    return gate(bench_doc(1.5, seed=2), ["latency.p50:+5%", "size:<=12MB", "latency.p50:+60%"], bench_doc(1.0))


def _mixed_report() -> GateReport:
    report = _report()
    report.verdicts.append(gate(bench_doc(1.05, spread=0.3, n=40, seed=2), ["latency.p90:+5%"],
                                bench_doc(1.0, spread=0.3, n=40)).verdicts[0])
    return report


def test_junit_one_testcase_per_gate():
    report = _mixed_report()
    assert [v.status for v in report.verdicts] == ["fail", "pass", "pass", "inconclusive"]
    root = ET.fromstring(report.junit().split("\n", 1)[1])
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["latency.p50:+5%", "size:<=12MB", "latency.p50:+60%", "latency.p90:+5%"]
    assert cases[0].find("failure") is not None and cases[1].find("failure") is None
    assert cases[3].find("skipped") is not None
    report.strict = True
    strict = ET.fromstring(report.junit().split("\n", 1)[1]).find("testsuite")
    assert (strict.get("failures"), strict.get("skipped")) == ("1", "0")
    assert strict.findall("testcase")[3].find("failure").get("type") == "inconclusive"


def test_markdown_table_has_a_row_per_gate():
    md = _mixed_report().markdown()
    lines = md.splitlines()
    assert lines[0] == "### effkit gate: FAILED (`m.py:net`)"
    rows = [line for line in lines if line.startswith("| `")]
    assert [r.split("|")[2].strip() for r in rows] == ["❌ fail", "✅ pass", "✅ pass", "⚠️ inconclusive"]
    assert "1 passed" not in md and "2 passed, 1 failed, 1 inconclusive" in md


def test_json_report_round_trips():
    data = json.loads(_report().to_json())
    assert data["schema"] == "effkit.gate/1" and data["passed"] is False
    assert [v["status"] for v in data["verdicts"]] == ["fail", "pass", "pass"]


# ---------------------------------------------------------------- CLI and exit codes

def test_cli_pass_fail_and_outputs(cli, tmp_path, monkeypatch):
    base, new = write(tmp_path / "base.json", bench_doc(1.0)), write(tmp_path / "new.json", bench_doc(1.5, seed=2))
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    code, stdout, _ = cli("gate", base, "--baseline", base, "--fail-on", "latency.p50:+5%", "--fail-on", "size:<=12MB")
    assert code == 0
    assert re.search(r"^PASS +latency\.p50:\+5%: ratio 1\.000", stdout, re.M)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code, stdout, stderr = cli("gate", new, "--baseline", base, "--fail-on", "latency.p50:+5%", "--fail-on",
                               "size:<=12MB", "--junit", "gate.xml", "--json", "gate.json", "--markdown", "gate.md")
    assert code == 1, stderr
    assert re.search(r"^FAIL +latency\.p50:\+5%: ratio 1\.5\d\d \[", stdout, re.M)
    assert re.search(r"^PASS +size:<=12MB: 10\.0 MB <= 12\.0 MB$", stdout, re.M)
    assert "gates failed: 1 passed, 1 failed, 0 inconclusive" in stdout
    assert ET.parse(tmp_path / "gate.xml").getroot().find("testsuite").get("failures") == "1"
    assert json.loads((tmp_path / "gate.json").read_text())["passed"] is False
    assert (tmp_path / "gate.md").read_text().startswith("### effkit gate: FAILED")
    appended = summary.read_text()
    assert appended.startswith("earlier step\n### effkit gate: FAILED") and appended.count("| `") == 2  # one row each
    code, _, stderr = cli("gate", new, "--baseline", base, "--fail-on", "size:<=12MB", "--junit", "gate.xml")
    assert code == 2 and stderr.strip() == "Error: gate.xml already exists (pass --force to overwrite it)"


def test_cli_json_to_stdout_is_json_alone(cli, tmp_path):
    new = write(tmp_path / "new.json", bench_doc())
    code, stdout, stderr = cli("gate", new, "--fail-on", "size:<=12MB", "--json", "-")
    assert code == 0 and json.loads(stdout)["verdicts"][0]["status"] == "pass"
    assert "PASS" in stderr


def test_cli_strict_fails_inconclusive(cli, tmp_path):
    base = write(tmp_path / "b.json", bench_doc(1.0, spread=0.3, n=40))
    new = write(tmp_path / "n.json", bench_doc(1.05, spread=0.3, n=40, seed=2))
    code, stdout, _ = cli("gate", new, "--baseline", base, "--fail-on", "latency.p50:+5%")
    assert code == 0 and stdout.startswith("INCONCLUSIVE latency.p50:+5%")
    assert cli("gate", new, "--baseline", base, "--fail-on", "latency.p50:+5%", "--strict")[0] == 1


@pytest.mark.parametrize("args, error", [
    (["missing.json", "--fail-on", "size:<=1MB"], "Error: no such result file: missing.json"),
    (["new.json", "--fail-on", "size<12XB"],
     "Error: unknown unit 'XB' in threshold 'size<12XB' (use B/KB/MB/GB/KiB/MiB/GiB, ns/us/ms/s, %, or pt "
     "(with + or -))"),
    (["new.json", "--fail-on", "latency.p50:+5%"],
     "Error: gate 'latency.p50:+5%' compares with a baseline, and there is none (pass --baseline BASE.json, or use "
     "an absolute gate such as latency.p50:<=3ms)"),
    (["new.json", "--fail-on", "latency.p50:<=12MB"],
     "Error: gate 'latency.p50:<=12MB' gives a size for a latency (latency takes ns/us/ms/s, sizes take "
     "B/KB/MB/GB/KiB/MiB/GiB)"),
    (["new.json", "--fail-on", "size:<=3ms"],
     "Error: gate 'size:<=3ms' gives a time for a size (latency takes ns/us/ms/s, sizes take B/KB/MB/GB/KiB/MiB/GiB)"),
    (["new.json"], "Error: no gates to check (pass --fail-on METRIC:THRESHOLD, or set fail-on in "
                   "[tool.effkit.gates] (pyproject.toml) or [gates] (effkit.toml))"),
    (["bad.json", "--fail-on", "size:<=1MB"], "Error: bad.json is not an effkit result (schema None) (pass a file "
                                               "written by effkit bench/compare/quantize/... --json)"),
])
def test_cli_bad_input_exits_2(cli, tmp_path, args, error):
    write(tmp_path / "new.json", bench_doc())
    (tmp_path / "bad.json").write_text("[1, 2]")
    code, _, stderr = cli("gate", *args)
    assert code == 2 and stderr.strip() == error


# ---------------------------------------------------------------- config files

def test_gates_from_pyproject_and_effkit_toml(cli, tmp_path):
    write(tmp_path / "new.json", bench_doc(size=11_000_000))
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n\n'
                                             '[tool.effkit.gates]\nfail-on = ["size:<=12MB"]\n')
    code, stdout, _ = cli("gate", "new.json")
    assert code == 0 and re.search(r"^PASS +size:<=12MB", stdout, re.M)
    (tmp_path / "effkit.toml").write_text('[gates]\nfail-on = ["size:<=10MB"]\nstrict = true\n')  # found first
    code, stdout, _ = cli("gate", "new.json")
    assert code == 1 and re.search(r"^FAIL +size:<=10MB", stdout, re.M)
    assert cli("gate", "new.json", "--fail-on", "size:<=12MB")[0] == 0  # the command line replaces the file's gates


def test_config_errors_name_file_line_and_key(tmp_path):
    cfg = tmp_path / "effkit.toml"
    cfg.write_text('[gates]\nfail-on = ["size:<=12MB"]\nfail_on = ["x"]\n')
    with pytest.raises(UsageError) as e:
        load_gate_config(cfg)
    assert str(e.value) == f"{cfg}:3: unknown key 'fail_on' in [gates] (known keys: fail-on, strict)"
    cfg.write_text('[gates]\nfail-on = size\n')
    with pytest.raises(UsageError, match=rf"^{re.escape(str(cfg))} is not valid TOML: .*line 2"):
        load_gate_config(cfg)
    cfg.write_text('[gates]\nstrict = false\nfail-on = ["size:12"]\n')
    with pytest.raises(UsageError) as e:
        load_gate_config(cfg)
    assert e.value.message == f"{cfg}:3: cannot parse threshold 'size:12'"
    assert load_gate_config(search_dir=tmp_path / "nowhere") == ([], False, None)


# ---------------------------------------------------------------- the CI example

def test_workflow_example_is_valid_yaml_running_real_commands(cli):
    import yaml

    workflow = yaml.safe_load((ROOT / "examples/ci/effkit-gate.yml").read_text())
    assert (True in workflow or "on" in workflow) and workflow["jobs"]  # YAML 1.1 reads `on:` as True
    commands = [line.strip() for job in workflow["jobs"].values() for step in job["steps"]
                for line in step.get("run", "").splitlines() if line.strip().startswith("effkit ")]
    used = {}
    for line in commands:
        words = shlex.split(line.rstrip("\\"))
        used.setdefault(words[1], set()).update(w.split("=")[0] for w in words if w.startswith("--"))
    assert {"compare", "gate", "bench"} <= set(used)
    for name, flags in used.items():
        code, stdout, _ = cli(name, "--help")
        assert code == 0
        for flag in flags:
            assert flag in stdout, f"effkit {name} has no option {flag}"


def test_threshold_objects_accepted():
    t = Threshold("size", "absolute", "<=", 12e6, "size:<=12MB")
    assert gate(bench_doc(), [t]).passed


def test_a_baseline_from_another_runtime_is_refused():
    from effkit.gates import gate

    base, ours = bench_doc(), bench_doc()
    base["runs"][0].update(runtime="onnxruntime", batch_size=1)
    ours["runs"][0]["batch_size"] = 1
    with pytest.raises(UsageError) as info:
        gate(ours, ["latency.p50:+5%"], baseline=base)
    assert str(info.value) == ("the baseline was measured on onnxruntime at batch 1, this result on torch at "
                               "batch 1: its gates would compare different things (bench both with the same "
                               "--runtime and --batch-size (the first of each is gated))")
