"""Before/after figures measured side by side (issue 18): load during one half of a run must not
become a speedup, and every report carries the interval and the inconclusive mark."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import FAST, NO_BAR, spec

from effkit.benchmark import time_calls
from effkit.comparison import measure_paired

COST_MS = 0.3  # the fake models' time per call
SLOWDOWN = 3.0  # what the "busy" half does to any call that runs during it


class _Machine:
    """A machine whose calls all take SLOWDOWN times as long while it is busy."""

    def __init__(self) -> None:
        self.busy = False


class _SpinRunner:
    """A fake runner: each call spins for COST_MS (times SLOWDOWN while the machine is busy)."""

    name = "fake"
    threads = 1

    def __init__(self, machine: _Machine) -> None:
        self.machine = machine

    def bind(self, inputs):
        def call() -> None:
            end = time.perf_counter() + COST_MS * (SLOWDOWN if self.machine.busy else 1.0) / 1000.0
            while time.perf_counter() < end:
                pass

        return call


def _busy_for_first_half(machine: _Machine, pairs: int):
    """A progress hook (called after every pair measured) that ends the busy spell halfway."""
    measured = []

    def progress(label: str, fraction: float) -> None:
        measured.append(fraction)
        if len(measured) >= pairs // 2:
            machine.busy = False

    return progress


def test_a_busy_first_half_inflates_separate_medians_but_not_the_paired_speedup():
    machine = _Machine()
    before, after = _SpinRunner(machine), _SpinRunner(machine)  # the same model twice: true speedup 1.0
    # Live: timed one after the other, as commands did, the busy "before" half reads as a ~3x speedup.
    machine.busy = True
    before_ms = np.median(time_calls(before.bind(()), warmup=1, iterations=30))
    machine.busy = False
    after_ms = np.median(time_calls(after.bind(()), warmup=1, iterations=30))
    assert before_ms / after_ms > 2.0
    # Paired and interleaved, the same busy spell lands on both sides of every pair.
    machine.busy = True
    result = measure_paired(before, after, (), pairs=20, iterations=10, warmup=1,
                            progress=_busy_for_first_half(machine, 20))
    assert not machine.busy  # the busy spell really ended halfway
    speedup = result.speedup()
    assert speedup["verdict"] in ("same", "inconclusive"), speedup
    if speedup["verdict"] == "same":
        lo, hi = speedup["ci95"]
        assert lo < 1.06 and hi > 1 / 1.06 and speedup["estimate"] < 1.5
    if result.pairs:  # the absolute latencies shown beside the ratio are the kept pairs' own
        assert speedup["before_ms"] == result.stats["p50"]["a_ms"] == float(np.median(result.samples("a")))
    else:  # other processes left no quiet pair: no figure at all rather than one from a busy moment
        assert (speedup["before_ms"], speedup["estimate"], speedup["verdict"]) == (None, None, "inconclusive")


def _start_core_load() -> subprocess.Popen:
    """A busy-loop process on one core; returns once it says it runs."""
    load = subprocess.Popen([sys.executable, "-c", "import sys\nprint('started', flush=True)\nwhile True: pass"],
                            stdout=subprocess.PIPE, text=True)
    assert load.stdout.readline().strip() == "started"
    return load


def test_a_real_load_process_during_the_first_half_gives_no_confident_speedup():
    machine = _Machine()
    before, after = _SpinRunner(machine), _SpinRunner(machine)
    load = _start_core_load()
    try:
        measured = []

        def stop_load_halfway(label: str, fraction: float) -> None:  # called after every pair measured
            measured.append(fraction)
            if len(measured) >= 6 and load.poll() is None:
                load.kill()
                load.wait()

        # blocks of 60 ms: long enough for CpuMonitor's /proc/stat figures, so load changes are seen
        result = measure_paired(before, after, (), pairs=12, block_time=0.06, warmup=1,
                                progress=stop_load_halfway)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert load.returncode is not None
    assert result.speedup()["verdict"] in ("same", "inconclusive"), result.speedup()
    assert all(len(p["load"]) == 2 for p in result.pairs)  # every kept block was monitored
    assert result.attempts == len(result.pairs) + sum(result.discarded.values())


def test_no_quiet_pair_is_inconclusive_with_the_reason(monkeypatch):
    import effkit.comparison

    monkeypatch.setattr(effkit.comparison, "_discard_reason", lambda *blocks: "load changed")
    machine = _Machine()
    result = measure_paired(_SpinRunner(machine), _SpinRunner(machine), (), pairs=4, iterations=3, warmup=1)
    assert result.verdict == "inconclusive" and result.pairs == [] and result.attempts == 12
    assert result.reasons == ["only 0 of 12 pairs were measured on a quiet enough machine (12 load changed "
                              "discarded); need 10"]
    assert result.speedup() == {"estimate": None, "ci95": None, "verdict": "inconclusive",
                                "reasons": result.reasons, "pairs": 0, "attempts": 12,
                                "discarded": {"load changed": 12}, "before_ms": None, "after_ms": None}


# ---------------------------------------------------------------- every report says the same

def test_prune_reports_carry_the_interval(cli):
    code, out, err = cli("prune", spec("mlp"), *NO_BAR, "-o", "small.pt2", "--runtime", "torch", *FAST, "--threads", "1",
                         "--json", "r.json", "--markdown", "r.md")
    assert code == 0, err
    report = json.loads(Path("r.json").read_text())
    speedup = report["speedup"]["torch"]
    lo, hi = speedup["ci95"]
    assert lo <= speedup["estimate"] <= hi and speedup["verdict"] in ("faster", "slower", "same", "inconclusive")
    assert speedup["pairs"] + sum(speedup["discarded"].values()) == speedup["attempts"]
    assert speedup["p90"]["ci95"] is not None
    # the latencies beside the ratio are the quiet pairs' statistics
    assert report["before"]["runs"][0]["latency_ms"]["p50"] == speedup["before_ms"]
    from effkit.util import fmt_speedup

    shown = fmt_speedup(speedup)
    assert f"[{lo:.2f}, {hi:.2f}]" in shown or speedup["verdict"] == "slower"
    assert shown in Path("r.md").read_text()
    assert shown.replace(" [", "\n[").split("\n")[0] in out


def test_prune_reports_carry_the_inconclusive_mark(cli, monkeypatch):
    import effkit.comparison

    monkeypatch.setattr(effkit.comparison, "_discard_reason", lambda *blocks: "load changed")
    code, out, err = cli("prune", spec("mlp"), *NO_BAR, "-o", "small.pt2", "--runtime", "torch", *FAST, "--threads", "1",
                         "--json", "r.json", "--markdown", "r.md")
    assert code == 0, err
    report = json.loads(Path("r.json").read_text())
    speedup = report["speedup"]["torch"]
    assert speedup["verdict"] == "inconclusive" and speedup["estimate"] is None and speedup["pairs"] == 0
    reason = "timing on torch inconclusive: only 0 of 60 pairs were measured on a quiet enough machine"
    assert reason in Path("r.md").read_text()
    assert "| latency p50 (torch, batch 2) | - | - | inconclusive |" in Path("r.md").read_text()
    assert reason in " ".join(out.split()) and "inconclusive" in out


def test_compress_reports_carry_the_interval_and_the_inconclusive_mark(cli, monkeypatch):
    import effkit.comparison

    code, out, err = cli("compress", spec("mlp"), "--prune", "0.5", "--tolerance", "none", "-o", "out", *FAST)
    assert code == 0, err
    report = json.loads(Path("out/report.json").read_text())
    speedup = report["overall"]["speedup"]["vs_torch_fp32"]["p50"]
    from effkit.util import fmt_speedup

    shown = fmt_speedup(speedup)
    for name in ("report.md", "report.html"):
        assert shown in Path("out", name).read_text(), name
    monkeypatch.setattr(effkit.comparison, "_discard_reason", lambda *blocks: "load changed")
    code, out, err = cli("compress", spec("mlp"), "--prune", "0.5", "--tolerance", "none", "-o", "out2", *FAST)
    assert code == 0, err
    report = json.loads(Path("out2/report.json").read_text())
    assert report["overall"]["speedup"]["vs_torch_fp32"]["p50"]["verdict"] == "inconclusive"
    reason = "inconclusive at p50 (inconclusive at p90) against torch fp32 eager, on onnxruntime (only 0 of 60 pairs"
    for name in ("report.md", "report.html"):
        assert reason in Path("out2", name).read_text(), name
    assert "inconclusive" in out
