"""effkit compare: paired statistics and verdicts on synthetic pairs, and small real interleaved runs."""

import io
import json
import re

import numpy as np
import pytest
from conftest import spec

import effkit
from effkit.comparison import CompareResult, _discard_reason, paired_ratio_ci, ratio_verdict
from effkit.errors import UsageError

TINY = ["--warmup", "1", "--iterations", "3", "--pairs", "3", "--threads", "1"]


@pytest.mark.parametrize("lo, hi, verdict", [
    (1.10, 1.30, "slower"),      # the whole interval beyond +5%
    (0.70, 0.90, "faster"),      # the whole interval below 1/1.05
    (0.98, 1.03, "same"),        # inside both limits
    (1.00, 1.08, "inconclusive"),  # straddles 1.05
    (0.90, 1.01, "inconclusive"),  # straddles 1/1.05
    (0.80, 1.30, "inconclusive"),
])
def test_ratio_verdict(lo, hi, verdict):
    assert ratio_verdict(lo, hi, 0.05) == verdict


def _synthetic(ratio: float, noise: float, pairs: int = 20, seed: int = 0, threshold: float = 0.05) -> CompareResult:
    """Pairs of blocks where B takes `ratio` times A's time, with multiplicative noise per block."""
    rng = np.random.default_rng(seed)
    kept = []
    for _ in range(pairs):
        drift = np.exp(rng.normal(0, 0.3))  # the machine's speed changes between pairs; pairing cancels it
        a = drift * np.exp(rng.normal(0, noise, 50))
        b = drift * ratio * np.exp(rng.normal(0, noise, 50))
        kept.append({"order": "AB", "a_ms": a.tolist(), "b_ms": b.tolist(), "load": [0.0, 0.0]})
    result = CompareResult(a={"source": "a"}, b={"source": "b"}, runtime="torch", threads=1, threshold=threshold,
                           calls_per_block=50, pairs=kept, attempts=pairs, discarded={"oversubscribed": 0},
                           size={"a": {"bytes_on_disk": 100}, "b": {"bytes_on_disk": 100}}, environment={},
                           duration_s=0.0)
    result.analyse(min_pairs=pairs // 2)
    return result


def test_verdicts_on_synthetic_pairs():
    same = _synthetic(1.0, 0.05)
    assert same.verdict == "same" and 0.97 < same.stats["p50"]["ci"][0] < same.stats["p50"]["ci"][1] < 1.03
    slower = _synthetic(1.25, 0.05)
    assert slower.verdict == "slower" and slower.stats["p50"]["ratio"] == pytest.approx(1.25, rel=0.02)
    assert _synthetic(0.7, 0.05).verdict == "faster"
    unsure = _synthetic(1.05, 0.4, pairs=12)
    assert unsure.verdict == "inconclusive"
    assert unsure.reasons[0].startswith("the 95% interval of p50 B/A [")
    assert unsure.reasons[0].endswith("straddles the ±5% threshold")


def test_table_and_markdown_render_every_verdict():
    from rich.console import Console

    from effkit.cli.compare_cmd import compare_markdown, compare_table

    for ratio, verdict in ((1.0, "same"), (1.25, "slower"), (0.7, "faster")):
        result = _synthetic(ratio, 0.05)
        console = Console(width=100, record=True, file=io.StringIO())
        console.print(compare_table(result))
        text = console.export_text()
        assert re.search(rf"^ *p50 .* {verdict} *$", text, re.M) and f"verdict: {verdict}" in text
        md = compare_markdown(result)
        assert f"Verdict: **{verdict}**" in md and re.search(rf"^\| p50 \| .* \| {verdict} \|$", md, re.M)


def test_too_few_quiet_pairs_is_inconclusive_with_the_reason():
    result = _synthetic(1.5, 0.01, pairs=3)
    result.attempts, result.discarded = 12, {"descheduled": 0, "oversubscribed": 9, "load changed": 0}
    result.analyse(min_pairs=10)
    assert result.verdict == "inconclusive"  # although B is clearly slower
    assert result.reasons == ["only 3 of 12 pairs were measured on a quiet enough machine (9 oversubscribed "
                              "discarded); need 10"]


def test_no_verdict_rests_on_fewer_than_ten_pairs_whatever_was_asked():
    """A bootstrap interval over 2 pairs is the range of 2 ratios: `compare A A --pairs 2` once failed a +5% gate."""
    result = _synthetic(1.5, 0.01, pairs=3)
    result.analyse(min_pairs=1)
    assert result.verdict == "inconclusive" and result.min_pairs == 10
    assert result.reasons == ["3 pairs are too few for a verdict: need at least 10 (--pairs 10 or more)"]
    report = effkit.gate(result, ["latency.p50:+5%", "size:+0%"])
    assert [v.status for v in report.verdicts] == ["inconclusive", "pass"] and report.passed
    assert _synthetic(1.5, 0.01, pairs=10).verdict == "slower"


def test_paired_interval_is_deterministic_and_contains_the_truth():
    ratios = np.exp(np.random.default_rng(1).normal(np.log(1.1), 0.02, 30))
    first, second = paired_ratio_ci(ratios, seed=3), paired_ratio_ci(ratios, seed=3)
    assert first == second
    estimate, lo, hi = first
    assert lo < 1.1 < hi and lo < estimate < hi and hi - lo < 0.03


def test_pairs_with_changing_load_or_oversubscription_are_discarded():
    quiet = {"measured": True, "other_cpu_cores": 0.1, "oversubscribed": False, "cpu_share": 0.99}
    loaded = {"measured": True, "other_cpu_cores": 1.0, "oversubscribed": False, "cpu_share": 0.98}
    over = {"measured": True, "other_cpu_cores": 1.0, "oversubscribed": True, "cpu_share": 0.95}
    preempted = dict(loaded, cpu_share=0.6)
    assert _discard_reason(quiet, quiet, 2) is None
    assert _discard_reason(loaded, loaded, 1) is None  # steady load hits both alike
    assert _discard_reason(quiet, loaded, 1) == "load changed"
    assert _discard_reason(over, over, 2) == "oversubscribed"
    assert _discard_reason(over, over, 1) is None  # one thread is only slowed, not stalled at barriers
    assert _discard_reason(loaded, preempted, 1) == "descheduled"  # ... unless it lost its core
    assert _discard_reason(preempted, preempted, 2) is None  # two threads need not both be busy all the time


def test_a_block_too_short_to_monitor_is_judged_by_the_whole_pair():
    # a fast "after" model's block can be shorter than /proc/stat's ticks can judge: the pair's
    # load over both blocks decides instead of letting it through
    over = {"measured": True, "other_cpu_cores": 1.0, "oversubscribed": True, "cpu_share": 0.95, "wall_s": 0.1}
    quiet = {"measured": True, "other_cpu_cores": 0.0, "oversubscribed": False, "cpu_share": 0.99, "wall_s": 0.1}
    short = {"measured": False, "cpu_share": 0.99, "wall_s": 0.03}
    assert _discard_reason(over, short, 2) == "oversubscribed"  # the block that was long enough
    assert _discard_reason(short, short, 2, over) == "oversubscribed"  # the pair as a whole
    assert _discard_reason(short, short, 2, quiet) is None
    assert _discard_reason(quiet, short, 2, quiet) is None
    assert _discard_reason(quiet, dict(over, oversubscribed=False), 1, quiet) == "load changed"


def test_gate_on_compare_decides_on_the_paired_interval():
    result = _synthetic(1.25, 0.05)
    report = effkit.gate(result, ["latency.p50:+5%", "latency.p50:+40%", "throughput:-10%", "size:+0%"])
    assert [v.status for v in report.verdicts] == ["fail", "pass", "fail", "pass"]
    assert "paired A/B" in report.verdicts[0].message
    assert report.verdicts[0].interval == tuple(result.stats["p50"]["ci"])


# ---------------------------------------------------------------- real runs (tiny)

def test_python_api_compare_and_gate():
    result = effkit.compare(spec("mlp"), spec("mlp"), iterations=3, pairs=3, warmup=1, threads=1)
    assert result.verdict in ("faster", "slower", "same", "inconclusive")
    assert result.attempts >= 3 and len(result.pairs) <= result.attempts
    assert all(len(p["a_ms"]) == len(p["b_ms"]) == 3 for p in result.pairs)
    data = json.loads(result.to_json())
    assert data["schema"] == "effkit.compare/1" and data["threads"] == 1
    report = effkit.gate(result, ["size:+0%", "parameters:==1732"])
    assert report.passed and [v.status for v in report.verdicts] == ["pass", "pass"]


def test_rerun_inconclusive_measures_more_rounds():
    seen = []

    def never_conclusive(result):
        seen.append(len(result.pairs))
        return False

    result = effkit.compare(spec("mlp"), spec("mlp"), iterations=3, pairs=2, warmup=1, threads=1,
                            rerun_inconclusive=2, conclusive=never_conclusive)
    assert len(seen) == 3  # the first round and two reruns
    assert 6 <= result.attempts <= 18 and result.attempts == len(result.pairs) + sum(result.discarded.values())


def test_cli_compare_json_and_gates(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    code, stdout, stderr = cli("compare", spec("mlp"), spec("mlp"), *TINY, "--fail-on", "size:+0%",
                               "--json", "-", "--junit", "compare.xml", "--markdown", "compare.md")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["schema"] == "effkit.compare/1" and data["calls_per_block"] == 3
    assert set(data["stats"]) <= {"p50", "p90", "mean"} and data["gates"]["verdicts"][0]["status"] == "pass"
    assert re.search(r"^PASS +size:\+0%: ratio 1\.000 <= 1\.000 \(exact\)$", stderr, re.M)
    assert "effkit compare" in stderr
    assert (tmp_path / "compare.xml").read_text().count("<testcase") == 1
    for md in (tmp_path / "compare.md", tmp_path / "summary.md"):
        text = md.read_text()
        assert text.startswith("### effkit compare: B `") and "\n### effkit gate: passed" in text
        assert "| `size:+0%` | ✅ pass |" in text
    # the saved comparison gates again later
    (tmp_path / "c.json").write_text(stdout)
    code, stdout, _ = cli("gate", "c.json", "--fail-on", "parameters:+0%", "--fail-on", "size:-50%")
    assert code == 0, stdout


def test_cli_compare_bigger_model_fails_a_size_gate(cli):
    code, stdout, stderr = cli("compare", spec("mlp"), spec("mlp"), *TINY, "--fail-on", "parameters:<=1000")
    assert code == 1, stdout + stderr
    assert re.search(r"^FAIL +parameters:<=1000: 1732 <= 1000$", stdout, re.M)


@pytest.mark.parametrize("args, error", [
    ([spec("mlp"), spec("cnn")], "Error: model B does not run on model A's example inputs (input: 2x16 float32): "),
    ([spec("mlp"), spec("mlp"), "--threshold", "abc"], "Error: cannot parse --threshold 'abc' (write a percentage, e.g. 5%)"),
    ([spec("mlp"), spec("mlp"), "--threshold", "5"], "Error: cannot parse --threshold '5' (write a percentage, e.g. 5%)"),
    ([spec("mlp"), "missing.pt"], "Error: no such file: missing.pt"),
])
def test_cli_compare_bad_input_exits_2(cli, args, error):
    code, _, stderr = cli("compare", *args, *TINY)
    assert code == 2 and stderr.strip().startswith(error), stderr


def test_config_gates_only_when_named(cli, tmp_path):
    (tmp_path / "effkit.toml").write_text('[gates]\nfail-on = ["accuracy:-0.5pt"]\n')  # written for bench results
    code, stdout, stderr = cli("compare", spec("mlp"), spec("mlp"), *TINY, "--threshold", "900%")
    assert code == 0, stdout + stderr
    assert re.search(r"^(PASS|INCONCLUSIVE) +latency\.p50:\+900%", stdout, re.M)
    code, _, stderr = cli("compare", spec("mlp"), spec("mlp"), *TINY, "--config", "effkit.toml")
    assert code == 2 and stderr.startswith("Error: the result has no numeric metric 'accuracy'")


def test_no_quiet_pair_is_inconclusive_not_an_error(cli, monkeypatch):
    monkeypatch.setattr("effkit.comparison.MIN_CPU_SHARE", 2.0)  # every one-thread block counts as descheduled
    code, stdout, stderr = cli("compare", spec("mlp"), spec("mlp"), *TINY)
    assert code == 0, stdout + stderr
    assert "verdict: inconclusive (only 0 of 9 pairs were measured on a quiet enough machine (9 descheduled" in \
        " ".join(stdout.split())
    assert re.search(r"^INCONCLUSIVE latency\.p50:\+5%: the comparison kept no A/B pairs", stdout, re.M)


def test_compare_refuses_bad_settings():
    with pytest.raises(UsageError, match="need --pairs >= 2"):
        effkit.compare(spec("mlp"), spec("mlp"), pairs=1)
