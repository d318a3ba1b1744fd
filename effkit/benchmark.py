"""Timing, statistics, size and memory of a model, as a `BenchResult` that round-trips through JSON."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from effkit.env import CpuMonitor, default_threads, environment
from effkit.errors import InputError, UsageError, first_line
from effkit.export import make_runner
from effkit.files import mark_read
from effkit.inputs import batch_bytes, batched
from effkit.limits import check_fits_in_memory, check_threads
from effkit.size import size_info
from effkit.util import jsonable

SCHEMA = "effkit.bench/1"
DEFAULT_WARMUP = 10
DEFAULT_MIN_TIME = 1.0  # seconds of timed calls per measurement
MIN_SAMPLES = 10
# Calls timed per measurement at most, whatever --min-time asks: a guard on memory (and on the
# JSON's samples_ms) for models that run in microseconds. Reaching it is reported.
MAX_SAMPLES = 1_000_000
# Spread that makes a measurement suspect: IQR above 20% of the median, or p99 above 3x it.
NOISY_IQR = 0.20
NOISY_TAIL = 3.0
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- statistics

def latency_stats(samples_ms: Sequence[float], batch_size: int = 1) -> dict:
    """Summary statistics of latency samples (ms) and the throughput they imply (items/s)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples")
    q25, q50, q75, q90, q99 = np.percentile(a, [25, 50, 75, 90, 99])
    mean = float(a.mean())
    return {
        "n": int(a.size),
        "mean": mean,
        "median": float(q50),
        "p50": float(q50),
        "p90": float(q90),
        "p99": float(q99),
        "min": float(a.min()),
        "max": float(a.max()),
        "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "iqr": float(q75 - q25),
        "throughput": batch_size * 1000.0 / mean if mean > 0 else math.inf,
    }


def noise_warnings(stats: dict, contention: dict | None = None) -> list[str]:
    """Plain-language warnings when the spread or the machine's load says the figures are suspect."""
    warnings = []
    median = stats["median"]
    if median > 0 and stats["iqr"] / median > NOISY_IQR:
        warnings.append(f"noisy: IQR is {100 * stats['iqr'] / median:.0f}% of the median")
    if median > 0 and stats["p99"] / median > NOISY_TAIL:
        warnings.append(f"noisy: p99 is {stats['p99'] / median:.1f}x the median")
    if contention and contention.get("busy"):
        warnings.append(f"busy machine: other processes used {contention['other_cpu_cores']:.2f} of "
                        f"{contention['cores']} cores during the measurement")
    if contention and contention.get("oversubscribed") and not contention.get("busy"):
        warnings.append(f"{contention['threads']} threads asked for, {contention['free_cores']:.2f} cores free")
    return warnings


# ---------------------------------------------------------------- measuring

def time_calls(call: Callable[[], Any], *, warmup: int = DEFAULT_WARMUP, iterations: int | None = None,
               min_time: float = DEFAULT_MIN_TIME, progress: Callable[[float], None] | None = None) -> list[float]:
    """Time `call` repeatedly; return every sample in ms.

    Runs `warmup` untimed calls, then exactly `iterations` calls, or (without it) calls until
    `min_time` seconds have passed and at least MIN_SAMPLES were taken.
    """
    if warmup < 0 or (iterations is not None and iterations < 1) or not 0 <= min_time < math.inf:
        raise UsageError("--warmup must be >= 0, --iterations >= 1 and --min-time a number >= 0")
    for _ in range(warmup):
        call()
    samples: list[float] = []
    start = time.perf_counter()
    clock = time.perf_counter
    while True:
        t0 = clock()
        call()
        samples.append((clock() - t0) * 1000.0)
        elapsed = clock() - start
        if iterations is not None:
            done = len(samples) / iterations
            if len(samples) >= iterations:
                break
        else:
            done = min(elapsed / min_time if min_time else 1.0, len(samples) / MIN_SAMPLES)
            if (elapsed >= min_time and len(samples) >= MIN_SAMPLES) or len(samples) >= MAX_SAMPLES:
                break
        if progress is not None and len(samples) % 8 == 0:
            progress(min(done, 1.0))
    if progress is not None:
        progress(1.0)
    return samples


class PeakMemory:
    """Peak resident memory while a block runs (Linux: VmHWM reset through /proc/self/clear_refs)."""

    def __enter__(self) -> PeakMemory:
        self.reset = False
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            pass
        self.peak_bytes: int | None = None
        return self

    def __exit__(self, *exc) -> None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_bytes = int(line.split()[1]) * 1024
        except OSError:
            import resource

            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(runner, inputs: Sequence[np.ndarray], *, batch_size: int, warmup: int = DEFAULT_WARMUP,
            iterations: int | None = None, min_time: float = DEFAULT_MIN_TIME,
            progress: Callable[[float], None] | None = None) -> dict:
    """One timed run of `runner` on `inputs`: samples, statistics, memory, machine load, warnings."""
    call = runner.bind(inputs)
    log.debug("measuring %s at batch size %d", runner.name, batch_size)
    with PeakMemory() as memory, CpuMonitor(runner.threads) as load:
        samples = time_calls(call, warmup=warmup, iterations=iterations, min_time=min_time, progress=progress)
    stats = latency_stats(samples, batch_size)
    return {
        "runtime": runner.name,
        "batch_size": batch_size,
        "threads": runner.threads,
        "warmup": warmup,
        "latency_ms": {k: v for k, v in stats.items() if k != "throughput"},
        "throughput_per_s": stats["throughput"],
        "peak_rss_bytes": memory.peak_bytes,
        "contention": load.result,
        "warnings": noise_warnings(stats, load.result) + _cap_warnings(samples, iterations, min_time),
        "samples_ms": [round(s, 6) for s in samples],
    }


def _cap_warnings(samples: list[float], iterations: int | None, min_time: float) -> list[str]:
    """Say so when the sample cap, not --min-time, ended a measurement."""
    if iterations is not None or len(samples) < MAX_SAMPLES:
        return []
    seconds = sum(samples) / 1000.0
    if seconds >= min_time:
        return []
    return [f"stopped at {MAX_SAMPLES:,} calls after {seconds:.1f} s of timed calls, short of --min-time "
            f"{min_time:g} (pass --iterations to time a fixed number)"]


# ---------------------------------------------------------------- results

@dataclass
class BenchResult:
    """A model's measurements: runs (one per runtime and batch size), size, environment."""

    model: dict
    size: dict
    runs: list[dict]
    environment: dict
    extra: dict = field(default_factory=dict)  # fidelity, accuracy, ... added by commands
    schema: str = SCHEMA
    general_warnings: list[str] = field(default_factory=list)  # about the whole run (outputs not finite, ...)

    @property
    def warnings(self) -> list[str]:
        """The run's general warnings, then each measurement's (noisy, busy machine), once each."""
        return list(dict.fromkeys(self.general_warnings + self._run_warnings()))

    def _run_warnings(self) -> list[str]:
        return [f"{r['runtime']} batch {r['batch_size']}: {w}" for r in self.runs for w in r["warnings"]]

    def run(self, runtime: str | None = None, batch_size: int | None = None) -> dict:
        """The first run matching runtime and batch size."""
        for r in self.runs:
            if (runtime is None or r["runtime"] == runtime) and (batch_size is None or r["batch_size"] == batch_size):
                return r
        raise KeyError(f"no run for runtime={runtime} batch_size={batch_size}")

    @property
    def metrics(self) -> dict:
        """Flat metrics for gates: latency.p50 (ms), throughput, size (bytes on disk), parameters, memory, ..."""
        first = self.runs[0] if self.runs else {}
        metrics: dict[str, Any] = {
            "latency": dict(first.get("latency_ms", {})),
            "throughput": first.get("throughput_per_s"),
            "size": self.size.get("bytes_on_disk"),
            "parameters": self.size.get("parameters"),
            "nonzero_parameters": self.size.get("nonzero_parameters"),
            "gzip_size": self.size.get("gzip_bytes"),
            "memory": first.get("peak_rss_bytes"),
        }
        calibration = self.environment.get("calibration_ms")
        if calibration and metrics["latency"]:
            metrics["normalized_latency"] = {k: v / calibration for k, v in metrics["latency"].items() if k != "n"}
        for key in ("accuracy", "fidelity"):
            if key in self.extra:
                metrics[key] = self.extra[key]
        return metrics

    def to_dict(self) -> dict:
        return {"schema": self.schema, "model": self.model, "size": self.size, "environment": self.environment,
                "metrics": self.metrics, "warnings": self.warnings, "runs": self.runs, **self.extra}

    def to_json(self) -> str:
        return json.dumps(jsonable(self.to_dict()), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> BenchResult:
        if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("effkit.bench/"):
            raise UsageError("not an effkit bench result (no 'schema': 'effkit.bench/1')",
                             "pass a file written by effkit bench --json")
        if data["schema"] != SCHEMA:
            raise UsageError(f"result schema {data['schema']} is not supported by this effkit ({SCHEMA})")
        known = {"schema", "model", "size", "environment", "metrics", "warnings", "runs"}
        try:
            result = cls(model=data["model"], size=data["size"], runs=data["runs"], environment=data["environment"],
                         extra={k: v for k, v in data.items() if k not in known})
        except KeyError as e:
            raise UsageError(f"bench result lacks the field {e.args[0]!r}") from None
        saved = data.get("warnings") if isinstance(data.get("warnings"), list) else []
        result.general_warnings = [w for w in saved if w not in result._run_warnings()]
        return result

    @classmethod
    def load(cls, path: str | Path) -> BenchResult:
        path = Path(path)
        mark_read(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"no such result file: {path}") from None
        except (OSError, ValueError) as e:
            raise UsageError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(data)


def model_info(model) -> dict:
    return {"source": model.source, "format": model.format, "kind": model.kind, "inputs": model.input_specs}


def bench(model, *, runtimes: Sequence[str] = ("torch",), batch_sizes: Sequence[int] | None = None,
          threads: int | None = None, warmup: int = DEFAULT_WARMUP, iterations: int | None = None,
          min_time: float = DEFAULT_MIN_TIME, progress: Callable[[str, float], None] | None = None) -> BenchResult:
    """Measure `model` on each runtime and batch size; return a BenchResult.

    `progress(label, fraction)` is called while timing, for progress bars.
    """
    check_threads(threads)
    threads = threads or default_threads()
    default_batch = model.example_inputs[0].shape[0] if model.example_inputs and model.example_inputs[0].ndim else 1
    batch_sizes = list(batch_sizes or [default_batch])
    if any(b < 1 for b in batch_sizes):
        raise UsageError("--batch-size must be at least 1")
    for b in batch_sizes:
        check_fits_in_memory(batch_bytes(model.example_inputs, b), f"--batch-size {b}",
                             "use a smaller --batch-size")
    runs = []
    for runtime in runtimes:
        runner = make_runner(model, runtime, threads)
        for b in batch_sizes:
            inputs = batched(model.example_inputs, b)
            label = f"{runtime} batch {b}"
            try:
                runner.run(inputs)
            except Exception as e:
                raise InputError(f"the model does not run at batch size {b} on {runtime}: "
                                 f"{first_line(e, 200)}", "its batch dimension may be fixed") from e
            runs.append(measure(runner, inputs, batch_size=b, warmup=warmup, iterations=iterations, min_time=min_time,
                                progress=(lambda f, label=label: progress(label, f)) if progress else None))
            del inputs  # before the next batch's are made: one batch of inputs at a time, as checked above
    return BenchResult(model=model_info(model), size=size_info(model), runs=runs, environment=environment(threads))
