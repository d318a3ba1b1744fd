"""--min-time is honoured: only a sample cap (a guard on memory) ends a measurement early, and says so."""

import itertools

import numpy as np

from effkit import benchmark


class _Runner:
    name, threads = "fake", 1

    def bind(self, inputs):
        return lambda: None


def test_min_time_runs_past_the_old_cap_of_100000_calls(monkeypatch):
    seconds = itertools.count(0.0, 1e-6)  # a clock where every reading is 1 us later
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(seconds))
    samples = benchmark.time_calls(lambda: None, warmup=0, min_time=0.5)
    assert len(samples) > 100_000  # 0.5 s at 2 us a call (two readings each) is 250,000 calls


def test_reaching_the_cap_is_reported(monkeypatch):
    monkeypatch.setattr(benchmark, "MAX_SAMPLES", 50)
    run = benchmark.measure(_Runner(), [np.zeros(1)], batch_size=1, warmup=0, min_time=60.0)
    assert len(run["samples_ms"]) == 50
    assert any(w.startswith("stopped at 50 calls after ") and "short of --min-time 60" in w for w in run["warnings"])


def test_no_cap_report_when_iterations_decide():
    run = benchmark.measure(_Runner(), [np.zeros(1)], batch_size=1, warmup=0, iterations=5)
    assert not any(w.startswith("stopped at") for w in run["warnings"])
