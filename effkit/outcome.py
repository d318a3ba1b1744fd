"""The before/after record every pass produces: both measurements, fidelity, accuracy, notes.

Before and after are timed side by side, interleaved in A/B pairs (`effkit.comparison.measure_paired`),
so that load from other processes hits both alike; the speedup is the paired ratio with its 95%
interval, never the quotient of two separately timed medians.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from effkit.benchmark import BenchResult, latency_stats, model_info
from effkit.comparison import measure_paired
from effkit.env import default_threads, environment
from effkit.export import make_runner
from effkit.judge import Judge, bar_violations, held_out_batches, tolerance_failures
from effkit.runners import native_runner
from effkit.size import size_info
from effkit.util import fmt_speedup, jsonable

SCHEMA = "effkit.step/1"


@dataclass
class Outcome:
    """What one step did, measured: the same runtimes, inputs and threads before and after."""

    step: str
    before: BenchResult
    after: BenchResult
    fidelity: dict | None = None
    accuracy: dict | None = None  # {"before": fraction, "after": fraction}
    perplexity: dict | None = None  # language models on --eval-text: {"before", "after", "tokens", "source"}
    details: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    paired: dict = field(default_factory=dict)  # runtime -> effkit.comparison.PairedResult (A before, B after)
    status: str = "ok"  # "failed": the changed model misses the quality bar (nothing is written then)
    failure: str | None = None  # how it misses the bar, in words
    bar: str | None = None  # the quality bar it was held to (effkit.judge.QualityBar.describe)
    general_warnings: list[str] = field(default_factory=list)  # the command's and the pass's (random inputs, ...)

    def comparison(self, runtime: str | None = None, stat: str = "p50") -> dict | None:
        """The paired speedup (before/after) on `runtime` (default: the first measured): estimate,
        ci95, verdict (faster/slower/same/inconclusive), reasons, pairs kept and discarded."""
        result = self.paired.get(runtime or next(iter(self.paired), None))
        return result.speedup(stat) if result is not None else None

    def speedup(self, runtime: str | None = None) -> float | None:
        """The paired p50 speedup's estimate on `runtime` (see `comparison` for its interval)."""
        found = self.comparison(runtime)
        return found["estimate"] if found else None

    def timing_notes(self) -> list[str]:
        """Why a speedup is inconclusive, per runtime, for the reports."""
        notes = []
        for runtime, result in self.paired.items():
            if result.verdict == "inconclusive":
                notes.append(f"timing on {runtime} inconclusive: {'; '.join(result.reasons)}")
        return notes

    def warnings(self) -> list[str]:
        """The general warnings, then the measurement warnings of both sides (noisy timing, a busy machine),
        once each: what every rendering (terminal, JSON, Markdown, HTML) lists."""
        return list(dict.fromkeys(self.general_warnings + self.before.warnings + self.after.warnings))

    def hold_to(self, bar) -> list[str]:
        """Check the changed model against `bar` (an `effkit.judge.QualityBar`) on the accuracy and fidelity
        measured here; record the bar and, when missed, status "failed" and why. Returns the misses."""
        self.bar = bar.describe()
        acc = self.accuracy or {}
        missed = bar_violations(bar.max_drop_pt, [b for b in bar.bounds if b.metric != "accuracy"],
                                acc.get("before"), acc.get("after"), self.fidelity)
        on_accuracy = [b for b in bar.bounds if b.metric == "accuracy"]
        if on_accuracy and self.accuracy:
            missed += [f"accuracy breaks {f}" for f in tolerance_failures(on_accuracy, {}, self.accuracy)]
        on_text = [b for b in bar.bounds if b.metric in ("perplexity", "ppl")]
        if on_text:
            missed += [f"perplexity breaks {f}" for f in tolerance_failures(on_text, {}, None, self.perplexity)]
        if missed:
            self.status, self.failure = "failed", "; ".join(missed)
        return missed

    def size_ratio(self) -> float | None:
        b, a = self.before.size.get("bytes_on_disk"), self.after.size.get("bytes_on_disk")
        return a / b if a and b else None

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "step": self.step,
            "status": self.status,
            "failure": self.failure,
            "bar": self.bar,
            "warnings": self.warnings(),
            "speedup": {rt: dict(self.comparison(rt), p90=self.comparison(rt, "p90")) for rt in self.paired},
            "size_ratio": self.size_ratio(),
            "fidelity": self.fidelity,
            "accuracy": self.accuracy,
            "perplexity": self.perplexity,
            "details": self.details,
            "notes": self.notes,
            "outputs": self.outputs,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(jsonable(self.to_dict()), indent=2)


PAIRS = 20  # A/B pairs per before/after comparison


def measure_before_after(step: str, original, changed, *, runtimes: Sequence[str], threads: int | None = None,
                         warmup: int = 10, iterations: int | None = None, min_time: float = 1.0,
                         eval_data=None, progress: Callable[[str, float], None] | None = None,
                         fidelity_runtime: str | None = None, judge_data=None, text=None,
                         timed: dict | None = None) -> Outcome:
    """Time `original` against `changed` side by side on each runtime, compare their outputs on
    held-out inputs (`judge_data`, else `eval_data`, else random ones: `effkit.judge.held_out_batches`,
    as quantize judges its candidates), with labels in `eval_data` their accuracy, and with `text`
    (windows of token ids, `effkit.data.load_text_stream`) a language model's perplexity. The
    fidelity record says which inputs and how many batches and rows.

    Timing: PAIRS interleaved A/B block pairs per runtime (`measure_paired`), each block
    `iterations` calls or `min_time / PAIRS` seconds, so each model gets about `min_time` seconds.
    The before/after latencies are those of the quiet pairs only. `timed` (runtime -> PairedResult): the
    step's own paired timing of the same two models (`PassResult.timed`), used as it is on its runtime, so
    that the verdict reported is the one the step decided on.
    """
    threads = threads or default_threads()
    inputs = original.example_inputs
    batch = inputs[0].shape[0] if inputs and inputs[0].ndim else 1
    paired, runs_before, runs_after = {}, [], []
    for runtime in runtimes:
        result = (timed or {}).get(runtime) or measure_paired(
            make_runner(original, runtime, threads), make_runner(changed, runtime, threads), inputs, pairs=PAIRS,
            block_time=max(min_time / PAIRS, 1e-3), iterations=iterations, warmup=warmup,
            progress=_prefixed(progress, f"before/after on {runtime}"))
        paired[runtime] = result
        runs_before.append(_paired_run(result, "a", runtime, batch, warmup, []))
        runs_after.append(_paired_run(result, "b", runtime, batch, warmup, result.warnings))
    env = environment(threads)
    before = BenchResult(model=model_info(original), size=size_info(original), runs=runs_before, environment=env)
    after = BenchResult(model=model_info(changed), size=size_info(changed), runs=runs_after, environment=env)
    runtime = fidelity_runtime or runtimes[0]
    new_runner = make_runner(changed, runtime if changed.kind == "torch" else "onnxruntime", threads)
    held_out, source = held_out_batches(original.example_inputs, judge_data if judge_data is not None else eval_data)
    judge = Judge(native_runner(original, threads), held_out, eval_data, text)
    rows = int(sum(len(b[0]) if b and getattr(b[0], "ndim", 0) else 1 for b in held_out))
    return Outcome(step, before, after, paired=paired,
                   fidelity={**judge.fidelity(new_runner), "inputs": source, "rows": rows},
                   accuracy=judge.accuracy_change(new_runner), perplexity=judge.perplexity_change(new_runner))


def speed_verdict(outcome: Outcome, runtime: str, allow_slower: bool) -> str | None:
    """The int8 model's paired before/after timing on `runtime` as a verdict, recorded in the details
    (`slower_than_original`, `speedup_verdict`) and said in the first note. Slower only when the paired
    interval says so; an inconclusive timing claims neither faster nor slower, because refusing it would
    turn a busy machine into a failed quantization. Returns the slowdown in words when slower, else None."""
    timing = outcome.comparison(runtime) or {"verdict": "inconclusive", "estimate": None, "ci95": None}
    slower = timing["verdict"] == "slower"
    outcome.details["slower_than_original"] = slower
    outcome.details["speedup_verdict"] = timing["verdict"]
    if slower:
        outcome.notes.insert(0, f"SLOWER: the int8 model runs {fmt_speedup(timing)} than the original on {runtime}"
                                + ("" if allow_slower else "; nothing was written (pass --allow-slower to write it "
                                                           "anyway)"))
        return fmt_speedup(timing)
    if timing["verdict"] == "inconclusive":
        outcome.notes.insert(0, f"no measurable speedup on {runtime}: the before/after timing was inconclusive, so "
                                "neither faster nor slower is claimed; the int8 model is written")
    return None


def _paired_run(result, side: str, runtime: str, batch_size: int, warmup: int, warnings: list[str]) -> dict:
    """One side of a paired measurement as a bench run: statistics of the quiet pairs' samples."""
    samples = result.samples(side)
    stats = latency_stats(samples, batch_size) if samples else {}
    return {"runtime": runtime, "batch_size": batch_size, "threads": result.threads, "warmup": warmup,
            "latency_ms": {k: v for k, v in stats.items() if k != "throughput"},
            "throughput_per_s": stats.get("throughput"), "peak_rss_bytes": None,
            "timing": "interleaved A/B pairs, quiet pairs only", "contention": {},
            "warnings": list(warnings), "samples_ms": samples}


def _prefixed(progress, prefix: str):
    if progress is None:
        return None
    return lambda label, fraction: progress(f"{prefix}: {label}", fraction)
