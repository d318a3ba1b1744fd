"""Statistics on known samples, the timing loop, batching, and the result's JSON schema."""

import json
import time
import math

import numpy as np
import pytest

from conftest import FAST, spec
from effkit.benchmark import SCHEMA, BenchResult, bench, latency_stats, noise_warnings, time_calls
from effkit.inputs import batched
from effkit.errors import UsageError
from effkit.load import load_model


def test_stats_on_known_samples():
    stats = latency_stats([1.0, 2.0, 3.0, 4.0, 10.0], batch_size=4)
    assert stats["n"] == 5
    assert stats["mean"] == pytest.approx(4.0)
    assert stats["median"] == stats["p50"] == pytest.approx(3.0)
    assert stats["min"] == 1.0 and stats["max"] == 10.0
    assert stats["iqr"] == pytest.approx(2.0)  # numpy linear percentiles: q75=4, q25=2
    assert stats["p90"] == pytest.approx(7.6)
    assert stats["std"] == pytest.approx(np.std([1, 2, 3, 4, 10], ddof=1))
    assert stats["throughput"] == pytest.approx(4 * 1000 / 4.0)


def test_noise_warnings():
    quiet = latency_stats([1.0, 1.01, 0.99, 1.0, 1.02] * 4)
    assert noise_warnings(quiet) == []
    spread = latency_stats([1.0, 2.0, 1.0, 2.0, 1.5] * 4)
    assert noise_warnings(spread) == ["noisy: IQR is 67% of the median"]
    busy = {"busy": True, "other_cpu_cores": 0.9, "cores": 2, "oversubscribed": True, "free_cores": 1.1, "threads": 2}
    assert noise_warnings(quiet, busy) == ["busy machine: other processes used 0.90 of 2 cores during the measurement"]


def test_time_calls_counts_and_progress():
    calls, seen = [], []
    samples = time_calls(lambda: calls.append(1), warmup=3, iterations=5, progress=seen.append)
    assert len(samples) == 5 and len(calls) == 8 and seen[-1] == 1.0
    samples = time_calls(lambda: None, warmup=0, min_time=0.0)
    assert len(samples) == 10  # at least MIN_SAMPLES even with no time budget


def test_time_calls_rejects_bad_counts():
    with pytest.raises(UsageError):
        time_calls(lambda: None, iterations=0)


def test_batched_repeats_and_cuts():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert batched((x,), 5)[0].shape == (5, 3)
    np.testing.assert_array_equal(batched((x,), 5)[0][2], x[0])
    assert batched((x,), 1)[0].shape == (1, 3)


def test_bench_result_round_trips_through_json(tmp_path):
    model = load_model(spec("mlp"))
    result = bench(model, runtimes=["torch", "onnxruntime"], batch_sizes=[1, 3], warmup=1, iterations=4)
    data = json.loads(result.to_json())
    assert data["schema"] == SCHEMA
    assert [(r["runtime"], r["batch_size"]) for r in data["runs"]] == [
        ("torch", 1), ("torch", 3), ("onnxruntime", 1), ("onnxruntime", 3)]
    assert set(data) >= {"model", "size", "environment", "metrics", "warnings", "runs"}
    size = data["size"]
    assert size["parameters"] == 16 * 32 + 32 + 32 * 32 + 32 + 32 * 4 + 4
    assert size["nonzero_parameters"] == size["parameters"]
    assert size["bytes_on_disk"] > 4 * size["parameters"] and 0 < size["gzip_bytes"] < size["bytes_on_disk"]
    env = data["environment"]
    assert env["cores"] >= 1 and env["versions"]["torch"] and env["calibration_ms"] > 0
    assert isinstance(env["cpu"]["isa"], list)
    run = data["runs"][0]
    assert len(run["samples_ms"]) == 4 and run["contention"]["measured"] in (True, False)
    assert run["latency_ms"]["p50"] == pytest.approx(float(np.median(run["samples_ms"])), rel=1e-3)
    assert data["metrics"]["latency"]["p50"] == run["latency_ms"]["p50"]
    assert data["metrics"]["size"] == size["bytes_on_disk"]
    path = tmp_path / "r.json"
    path.write_text(result.to_json())
    again = BenchResult.load(path)
    assert again.runs == json.loads(result.to_json())["runs"] and again.size == result.size


def test_infinite_values_are_valid_json():
    result = BenchResult(model={}, size={}, runs=[], environment={}, extra={"fidelity": {"sqnr_db": math.inf}})
    assert json.loads(result.to_json())["fidelity"]["sqnr_db"] == "inf"


def test_load_rejects_non_results(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(UsageError, match="not an effkit bench result"):
        BenchResult.load(tmp_path / "x.json")


def test_cli_sweep_and_markdown(cli, tmp_path):
    code, stdout, stderr = cli("bench", spec("cnn"), *FAST, "--runtime", "all", "--batch-size", "1",
                               "--batch-size", "2", "--threads", "1", "--json", "r.json", "--markdown", "r.md")
    assert code == 0, stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert [(r["runtime"], r["batch_size"], r["threads"]) for r in data["runs"]] == [
        ("torch", 1, 1), ("torch", 2, 1), ("onnxruntime", 1, 1), ("onnxruntime", 2, 1)]
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("### effkit bench:") and "| onnxruntime | 2 |" in md
    # outputs are not overwritten without --force
    code, _, stderr = cli("bench", spec("cnn"), *FAST, "--json", "r.json")
    assert code == 2 and stderr.strip() == "Error: r.json already exists (pass --force to overwrite it)"


def test_cpu_monitor_refuses_blocks_shorter_than_its_ticks():
    from effkit.env import CpuMonitor

    with CpuMonitor(threads=1) as monitor:
        pass
    assert monitor.result["measured"] is False and "too short" in monitor.result["reason"]
    with CpuMonitor(threads=1) as monitor:
        deadline = time.perf_counter() + 0.12
        while time.perf_counter() < deadline:  # busy ourselves: our own CPU is not "other processes"
            pass
    assert monitor.result["measured"] is True
    assert 0.0 <= monitor.result["other_cpu_cores"] <= monitor.result["cores"]
