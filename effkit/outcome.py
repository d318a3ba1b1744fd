"""The before/after record every pass produces: both benchmarks, fidelity, accuracy, notes."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from effkit.benchmark import BenchResult, bench
from effkit.export import make_runner
from effkit.judge import Judge, held_out_batches
from effkit.runners import native_runner
from effkit.util import jsonable

SCHEMA = "effkit.step/1"


@dataclass
class Outcome:
    """What one step did, measured: the same runtimes, inputs and threads before and after."""

    step: str
    before: BenchResult
    after: BenchResult
    fidelity: dict | None = None
    accuracy: dict | None = None  # {"before": fraction, "after": fraction}
    details: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def speedup(self, runtime: str | None = None) -> float | None:
        """before p50 / after p50 on `runtime` (default: the first measured)."""
        try:
            b = self.before.run(runtime)["latency_ms"]["p50"]
            a = self.after.run(runtime)["latency_ms"]["p50"]
        except KeyError:
            return None
        return b / a if a else None

    def size_ratio(self) -> float | None:
        b, a = self.before.size.get("bytes_on_disk"), self.after.size.get("bytes_on_disk")
        return a / b if a and b else None

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "step": self.step,
            "speedup": {r["runtime"]: self.speedup(r["runtime"]) for r in self.after.runs},
            "size_ratio": self.size_ratio(),
            "fidelity": self.fidelity,
            "accuracy": self.accuracy,
            "details": self.details,
            "notes": self.notes,
            "outputs": self.outputs,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(jsonable(self.to_dict()), indent=2)


def measure_before_after(step: str, original, changed, *, runtimes: Sequence[str], threads: int | None = None,
                         warmup: int = 10, iterations: int | None = None, min_time: float = 1.0,
                         eval_data=None, progress: Callable[[str, float], None] | None = None,
                         fidelity_runtime: str | None = None) -> Outcome:
    """Benchmark `original` and `changed` alike, compare their outputs on held-out inputs (those of
    `eval_data` when given, else random ones), and with labels in `eval_data` their accuracy."""
    kwargs: dict[str, Any] = dict(threads=threads, warmup=warmup, iterations=iterations, min_time=min_time)
    before = bench(original, runtimes=runtimes, progress=_prefixed(progress, "before"), **kwargs)
    after = bench(changed, runtimes=runtimes, progress=_prefixed(progress, "after"), **kwargs)
    runtime = fidelity_runtime or runtimes[0]
    new_runner = make_runner(changed, runtime if changed.kind == "torch" else "onnxruntime", threads)
    inputs, source = held_out_batches(original.example_inputs, eval_data)
    judge = Judge(native_runner(original, threads), inputs, eval_data)
    return Outcome(step, before, after, fidelity={**judge.fidelity(new_runner), "inputs": source},
                   accuracy=judge.accuracy_change(new_runner))


def speed_verdict(outcome: Outcome, runtime: str, allow_slower: bool) -> float | None:
    """Whether the changed model measured slower than the original on `runtime`: recorded in the details
    (`slower_than_original`) and, when it is, as the first note. Returns the slowdown factor, or None."""
    speedup = outcome.speedup(runtime)
    slower = speedup is not None and speedup < 1.0
    outcome.details["slower_than_original"] = slower
    if not slower:
        return None
    outcome.notes.insert(0, f"SLOWER: the int8 model runs {1 / speedup:.2f}x slower than the original on {runtime}"
                            + ("" if allow_slower else "; nothing was written (pass --allow-slower to write it "
                                                        "anyway)"))
    return 1 / speedup


def _prefixed(progress, prefix: str):
    if progress is None:
        return None
    return lambda label, fraction: progress(f"{prefix}: {label}", fraction)
