"""A/B comparison of two models measured interleaved in one process, with confidence intervals.

Timings on a shared machine drift by tens of percent between runs, so two models are never
compared across runs here: A and B run in short alternating blocks (A B, B A, ... with the order
inside each pair drawn at random), on the same runtime, threads and inputs, so that drift and
steady background load hit both alike. Each pair gives one ratio B/A per statistic; the ratio's
95% confidence interval comes from a bootstrap over pairs, and the verdict is read from the
interval's bounds, never from the point estimate.

Contention: every block runs under `CpuMonitor`. A pair is discarded (and measured again) when
either block asked for more threads than there were free cores (timings become bimodal: a
2-thread torch call went from 0.23 ms to 14 ms with one core busy elsewhere), when a one-thread
block was descheduled for a tenth of its time or more, or when the load of other processes
changed between its two blocks by half a core or more (the pairing no longer cancels it).
Steady load on the other cores is kept and reported. When too few pairs survive, the verdict is
"inconclusive" and says why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from effkit.benchmark import model_info, time_calls
from effkit.env import CpuMonitor, default_threads, environment
from effkit.errors import InputError, UsageError, first_line
from effkit.export import make_runner
from effkit.load import load_model
from effkit.model import Model
from effkit.size import size_info
from effkit.specs import parse_input_shape
from effkit.util import jsonable

SCHEMA = "effkit.compare/1"
DEFAULT_THRESHOLD = 0.05  # B/A beyond 1.05 (or below 1/1.05) is a change; see benchmarks/gate_noise.py
DEFAULT_PAIRS = 20
DEFAULT_BLOCK_TIME = 0.1  # seconds per block: long enough for /proc/stat's 10 ms ticks to mean something
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
# Interquartile mean of the pair log-ratios: blocks hit by a short spike (a tenth of the pairs, in
# simulation) neither move the estimate nor widen the interval much, and coverage stays ~93-95%.
TRIM = 0.25
LOAD_CHANGE_CORES = 0.5  # a pair whose two blocks saw loads this far apart is discarded
MIN_MONITORED_S = 0.05  # blocks shorter than this are too short for /proc/stat's load figures
MIN_CPU_SHARE = 0.9  # a one-thread block that ran less of its wall time than this was descheduled
MAX_ATTEMPTS_FACTOR = 3  # measure at most this many times the pairs asked for
# The fewest quiet pairs any verdict (faster, slower, same) may rest on, whatever was asked for. A
# bootstrap interval over 2 pairs is just the range of 2 ratios: `compare A A --pairs 2` now and then
# called two copies of the same MLP 6% slower and failed a +5% gate.
MIN_VERDICT_PAIRS = 10
STATISTICS = ("p50", "p90", "mean")
VERDICTS = ("faster", "slower", "same", "inconclusive")


# ---------------------------------------------------------------- statistics (pure, used by gates too)

def block_statistic(samples: Sequence[float], stat: str) -> float:
    """One statistic of a block of latency samples: p50/median, pNN or mean."""
    a = np.asarray(samples, dtype=np.float64)
    if stat in ("p50", "median"):
        return float(np.median(a))
    if stat == "mean":
        return float(a.mean())
    if stat.startswith("p") and stat[1:].isdigit():
        return float(np.percentile(a, int(stat[1:])))
    raise UsageError(f"unknown latency statistic {stat!r}", "use p50, median, p90, p99 or mean")


def _trimmed_mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    n = values.shape[axis]
    k = int(TRIM * n)
    s = np.sort(values, axis=axis)
    return s.take(range(k, n - k), axis=axis).mean(axis=axis)


def paired_ratio_ci(ratios: Sequence[float], *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES,
                    confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Estimate and confidence interval of a ratio from per-pair ratios B_i/A_i.

    Estimate: exp of the trimmed mean of log-ratios; interval: percentile bootstrap over pairs.
    """
    logs = np.log(np.asarray(ratios, dtype=np.float64))
    if logs.size == 0 or not np.all(np.isfinite(logs)):
        raise ValueError("ratios must be positive and finite, and there must be at least one")
    estimate = float(np.exp(_trimmed_mean(logs)))
    if logs.size == 1:
        return estimate, estimate, estimate
    rng = np.random.default_rng(seed)
    boots = _trimmed_mean(logs[rng.integers(0, logs.size, (resamples, logs.size))], axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return estimate, float(np.exp(lo)), float(np.exp(hi))


def _chunk_bootstrap(samples: Sequence[float], stat: str, rng: np.random.Generator, resamples: int,
                     chunks: int) -> np.ndarray:
    """Bootstrap distribution of a statistic, resampling contiguous chunks of the samples.

    Resampling chunks rather than single samples keeps drift within a run in the interval.
    """
    parts = [c for c in np.array_split(np.asarray(samples, dtype=np.float64), min(chunks, len(samples))) if c.size]
    out = np.empty(resamples)
    for i in range(resamples):
        picked = rng.integers(0, len(parts), len(parts))
        out[i] = block_statistic(np.concatenate([parts[j] for j in picked]), stat)
    return out


def independent_ratio_ci(samples_a: Sequence[float], samples_b: Sequence[float], stat: str, *, seed: int = 0,
                         resamples: int = 1000, confidence: float = CONFIDENCE,
                         chunks: int = 20) -> tuple[float, float, float]:
    """Ratio stat(B)/stat(A) of two separate runs, with a bootstrap confidence interval.

    Each run is cut into contiguous chunks that are resampled (so drift within a run widens the
    interval instead of hiding in it). Drift *between* the runs is invisible to any statistic of
    this kind: that is what `compare` (interleaved) is for.
    """
    rng = np.random.default_rng(seed)
    ba = _chunk_bootstrap(samples_a, stat, rng, resamples, chunks)
    bb = _chunk_bootstrap(samples_b, stat, rng, resamples, chunks)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(bb / ba, [alpha, 1 - alpha])
    return block_statistic(samples_b, stat) / block_statistic(samples_a, stat), float(lo), float(hi)


def statistic_ci(samples: Sequence[float], stat: str, *, seed: int = 0, resamples: int = 1000,
                 confidence: float = CONFIDENCE, chunks: int = 20) -> tuple[float, float, float]:
    """A latency statistic of one run with a bootstrap confidence interval over contiguous chunks."""
    boots = _chunk_bootstrap(samples, stat, np.random.default_rng(seed), resamples, chunks)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return block_statistic(samples, stat), float(lo), float(hi)


def ratio_verdict(lo: float, hi: float, threshold: float) -> str:
    """faster / slower / same / inconclusive for a latency ratio interval B/A.

    slower: the whole interval is above 1+threshold; faster: below 1/(1+threshold); same: inside
    both; inconclusive: the interval straddles a threshold.
    """
    up, down = 1 + threshold, 1 / (1 + threshold)
    if lo > up:
        return "slower"
    if hi < down:
        return "faster"
    if lo >= down and hi <= up:
        return "same"
    return "inconclusive"


# ---------------------------------------------------------------- result

@dataclass
class PairedResult:
    """Two runners measured interleaved: kept pairs, ratios B/A with 95% intervals, verdict, discards.

    `stats[stat]` holds `a_ms`/`b_ms` (the statistic over the quiet pairs' samples only), `ratio`
    (B/A), `ci` (its 95% interval) and `verdict`. With fewer quiet pairs than asked, every verdict
    is "inconclusive" and `reasons` says why.
    """

    threads: int = 1
    threshold: float = DEFAULT_THRESHOLD
    calls_per_block: int = 0
    pairs: list[dict] = field(default_factory=list)  # kept: {"order", "a_ms", "b_ms", "load": [a, b], "cpu_share"}
    attempts: int = 0
    discarded: dict = field(default_factory=dict)  # reason -> count
    stats: dict = field(default_factory=dict)  # stat -> {"a_ms", "b_ms", "ratio", "ci", "verdict"}
    verdict: str = "inconclusive"
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seed: int = 0
    min_pairs: int = MIN_VERDICT_PAIRS  # the fewest quiet pairs a verdict may rest on (set by `analyse`)

    def samples(self, side: str) -> list[float]:
        """Every kept sample of side "a" or "b", pooled."""
        return [s for p in self.pairs for s in p[f"{side}_ms"]]

    def analyse(self, min_pairs: int) -> None:
        """(Re)compute ratios, intervals and the verdict from the kept pairs."""
        self.stats, self.reasons = {}, []
        self.min_pairs = max(MIN_VERDICT_PAIRS, min_pairs)
        if len(self.pairs) < self.min_pairs:
            self.verdict = "inconclusive"
            self.reasons.append(
                f"only {len(self.pairs)} of {self.attempts} pairs were measured on a quiet enough machine "
                f"({_discard_text(self.discarded)}); need {self.min_pairs}" if self.attempts > len(self.pairs) else
                f"{len(self.pairs)} pairs are too few for a verdict: need at least {self.min_pairs} "
                f"(--pairs {self.min_pairs} or more)")
        pooled_a, pooled_b = self.samples("a"), self.samples("b")
        for i, stat in enumerate(STATISTICS):
            if not self.pairs:
                break
            ratios = [block_statistic(p["b_ms"], stat) / block_statistic(p["a_ms"], stat) for p in self.pairs]
            ratio, lo, hi = paired_ratio_ci(ratios, seed=self.seed + i)
            verdict = ratio_verdict(lo, hi, self.threshold) if not self.reasons else "inconclusive"
            self.stats[stat] = {"a_ms": block_statistic(pooled_a, stat), "b_ms": block_statistic(pooled_b, stat),
                                "ratio": ratio, "ci": [lo, hi], "verdict": verdict}
        if not self.reasons:
            self.verdict = self.stats["p50"]["verdict"]
            if self.verdict == "inconclusive":
                lo, hi = self.stats["p50"]["ci"]
                self.reasons.append(f"the 95% interval of p50 B/A [{lo:.3f}, {hi:.3f}] straddles the "
                                    f"±{100 * self.threshold:g}% threshold")

    def speedup(self, stat: str = "p50") -> dict:
        """A/B as a speedup of B over A ("before" over "after"), for reports: estimate, 95% interval,
        verdict (faster/slower/same/inconclusive, B against A), reasons, pairs kept and discarded."""
        s = self.stats.get(stat)
        return {"estimate": 1 / s["ratio"] if s else None, "ci95": [1 / s["ci"][1], 1 / s["ci"][0]] if s else None,
                "verdict": s["verdict"] if s else "inconclusive", "reasons": list(self.reasons),
                "pairs": len(self.pairs), "attempts": self.attempts,
                "discarded": {k: n for k, n in self.discarded.items() if n},
                "before_ms": s["a_ms"] if s else None, "after_ms": s["b_ms"] if s else None}


@dataclass
class CompareResult(PairedResult):
    """Two models measured interleaved (`PairedResult`), with what they are, their sizes and the machine."""

    a: dict = field(default_factory=dict)
    b: dict = field(default_factory=dict)
    runtime: str = ""
    size: dict = field(default_factory=dict)  # {"a": size_info, "b": size_info}
    environment: dict = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def metrics(self) -> dict:
        """B's metrics (the candidate), in the same names as a bench result's."""
        return _side_metrics(self.stats, self.size.get("b", {}), "b_ms")

    def to_dict(self) -> dict:
        ratios = {f"latency.{s}": {"ratio": v["ratio"], "ci": v["ci"], "verdict": v["verdict"]}
                  for s, v in self.stats.items()}
        if "mean" in self.stats:  # throughput is 1/mean latency: its ratio is the inverse
            m = self.stats["mean"]
            ratios["throughput"] = {"ratio": 1 / m["ratio"], "ci": [1 / m["ci"][1], 1 / m["ci"][0]],
                                    "verdict": {"faster": "higher", "slower": "lower"}.get(m["verdict"], m["verdict"])}
        return {
            "schema": SCHEMA, "a": self.a, "b": self.b, "runtime": self.runtime, "threads": self.threads,
            "threshold": self.threshold, "verdict": self.verdict, "reasons": self.reasons, "warnings": self.warnings,
            "min_pairs": self.min_pairs,
            "stats": self.stats, "ratios": ratios, "metrics": self.metrics,
            "baseline_metrics": _side_metrics(self.stats, self.size.get("a", {}), "a_ms"),
            "calls_per_block": self.calls_per_block, "attempts": self.attempts, "discarded": self.discarded,
            "size": self.size, "environment": self.environment, "duration_s": self.duration_s, "seed": self.seed,
            "pairs": self.pairs,
        }

    def to_json(self) -> str:
        return json.dumps(jsonable(self.to_dict()), indent=2)


def _side_metrics(stats: dict, size: dict, key: str) -> dict:
    latency = {s: v[key] for s, v in stats.items()}
    return {"latency": latency, "throughput": 1000.0 / latency["mean"] if latency.get("mean") else None,
            "size": size.get("bytes_on_disk"), "parameters": size.get("parameters"),
            "nonzero_parameters": size.get("nonzero_parameters"), "gzip_size": size.get("gzip_bytes")}


def _discard_text(discarded: dict) -> str:
    parts = [f"{n} {reason}" for reason, n in discarded.items() if n]
    return ", ".join(parts) + " discarded" if parts else "none discarded"


# ---------------------------------------------------------------- measuring

def _as_model(model: Any, arch: str | None, trust: bool, input_shape: str | Sequence[str] | None, inputs) -> Any:
    """An effkit Model as it is, or a spec (a path or a string) loaded as the commands load MODEL."""
    if isinstance(model, Model):
        return model
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        shapes = [input_shape] if isinstance(input_shape, str) else list(input_shape or ())
        return load_model(str(model), arch=arch, trust=trust, inputs=inputs,
                          input_shapes=[parse_input_shape(s) if isinstance(s, str) else s for s in shapes])
    raise UsageError(f"cannot compare a {type(model).__name__}", "pass an effkit Model or a model spec")


def _timed_block(call: Callable[[], Any], calls: int, threads: int) -> tuple[list[float], dict]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with CpuMonitor(threads) as monitor:
        samples = time_calls(call, warmup=0, iterations=calls)
    # The share of the block's wall time our process ran: /proc/stat counts whole ticks, this
    # counts nanoseconds, and it drops as soon as the scheduler hands our core to someone else.
    wall = time.perf_counter() - wall0
    share = (time.process_time() - cpu0) / (wall * threads)
    return samples, dict(monitor.result, cpu_share=round(share, 3), wall_s=round(wall, 4))


def _discard_reason(load_a: dict, load_b: dict, threads: int, pair: dict | None = None) -> str | None:
    """Why a pair must be measured again, from its blocks' loads and (`pair`) the load over both."""
    # One thread that did not run for all of its block was descheduled: calls that straddle a
    # time slice take milliseconds longer, and the block's statistics are the scheduler's.
    if threads == 1 and min(load_a.get("cpu_share", 1.0), load_b.get("cpu_share", 1.0)) < MIN_CPU_SHARE:
        return "descheduled"
    # A few 10 ms ticks of /proc/stat over a short block say nothing about the load: such a block is
    # judged by the pair as a whole. (Skipping them let a fast "after" model's pairs through under load.)
    blocks = [load for load in (load_a, load_b)
              if load.get("measured") and load.get("wall_s", 1.0) >= MIN_MONITORED_S]
    judged = blocks + ([pair] if pair is not None and pair.get("measured") else [])
    # More threads than free cores: threads that wait for each other at every barrier are
    # descheduled, and one call can take 60x as long. A single thread only shares its core; a
    # steady share hits A and B alike.
    if threads > 1 and any(load["oversubscribed"] for load in judged):
        return "oversubscribed"
    if len(blocks) == 2 and abs(load_a["other_cpu_cores"] - load_b["other_cpu_cores"]) >= LOAD_CHANGE_CORES:
        return "load changed"
    return None


def measure_paired(runner_a: Any, runner_b: Any, inputs: Sequence[np.ndarray], *, pairs: int = DEFAULT_PAIRS,
                   block_time: float = DEFAULT_BLOCK_TIME, iterations: int | None = None, warmup: int = 10,
                   threshold: float = DEFAULT_THRESHOLD, min_pairs: int | None = None, rerun_inconclusive: int = 0,
                   conclusive: Callable[[PairedResult], bool] | None = None, seed: int = 0,
                   result: PairedResult | None = None,
                   progress: Callable[[str, float], None] | None = None) -> PairedResult:
    """Measure runner B against runner A interleaved on the same `inputs`; return ratios B/A.

    A and B run in blocks of `iterations` calls each (default: as many as fill `block_time`
    seconds, sized by the slower one's warm-up), paired A B or B A in random order, every block
    under `CpuMonitor`. A pair measured while other processes took the cores it needed, or whose
    load changed between its two blocks, is discarded and measured again (at most
    MAX_ATTEMPTS_FACTOR times `pairs` attempts). With fewer than `min_pairs` quiet pairs (default:
    half of `pairs`) the verdict is "inconclusive" with the reason. While `conclusive(result)` is
    false (default: the p50 verdict is not inconclusive), up to `rerun_inconclusive` more rounds
    of `pairs` are measured. `result`: a PairedResult (or subclass) to fill in, else a new one.
    Runners are anything with `bind(inputs)` -> call and `threads`: those of `effkit.runtime`.
    """
    if pairs < 2 or block_time <= 0 or warmup < 0 or rerun_inconclusive < 0 or not (0 < threshold < 10):
        raise UsageError("need --pairs >= 2, --block-time > 0, --warmup >= 0, --rerun-inconclusive >= 0 "
                         "and a threshold between 0% and 1000%")
    threads = max(runner_a.threads, runner_b.threads)
    call_a, call_b = runner_a.bind(inputs), runner_b.bind(inputs)
    # the warm-up calls' median time, of the slower model, sizes the blocks
    cost = max(float(np.median(time_calls(call, warmup=0, iterations=max(1, warmup)))) for call in (call_a, call_b))
    per_block = iterations or max(3, min(100_000, round(block_time * 1000.0 / max(cost, 1e-4))))
    result = result if result is not None else PairedResult()
    result.threads, result.threshold, result.calls_per_block, result.seed = threads, threshold, per_block, seed
    result.pairs, result.attempts, result.warnings = [], 0, []
    result.discarded = {"descheduled": 0, "oversubscribed": 0, "load changed": 0}
    rng = np.random.default_rng(seed)
    conclusive = conclusive or (lambda r: r.verdict != "inconclusive")
    target = 0
    for round_ in range(rerun_inconclusive + 1):
        target += pairs
        max_attempts = result.attempts + MAX_ATTEMPTS_FACTOR * pairs
        while len(result.pairs) < target and result.attempts < max_attempts:
            order = "AB" if rng.random() < 0.5 else "BA"
            block = {}
            with CpuMonitor(threads) as whole:
                for side in order.lower():
                    block[side] = _timed_block(call_a if side == "a" else call_b, per_block, threads)
            result.attempts += 1
            reason = _discard_reason(block["a"][1], block["b"][1], threads, whole.result)
            if reason:
                result.discarded[reason] += 1
            else:
                result.pairs.append({"order": order, "a_ms": [round(s, 6) for s in block["a"][0]],
                                     "b_ms": [round(s, 6) for s in block["b"][0]],
                                     "load": [block[s][1].get("other_cpu_cores") for s in "ab"],
                                     "cpu_share": [block[s][1]["cpu_share"] for s in "ab"]})
            if progress is not None:
                progress(f"A/B pairs (round {round_ + 1})", min(1.0, (len(result.pairs) - target + pairs) / pairs))
        result.analyse(min_pairs=target // 2 if min_pairs is None else min_pairs * (round_ + 1))
        if conclusive(result):
            break
    result.warnings = load_warnings([result])
    return result


def load_warnings(results: Sequence[PairedResult]) -> list[str]:
    """What the load of other processes did to one or more paired timings, taken together: pairs measured
    again, and steady load that slowed both sides alike."""
    attempts, kept = sum(r.attempts for r in results), sum(len(r.pairs) for r in results)
    discarded: dict[str, int] = {}
    for r in results:
        for reason, n in r.discarded.items():
            discarded[reason] = discarded.get(reason, 0) + n
    warnings = []
    if attempts > kept and kept:
        warnings.append(f"busy machine: {_discard_text(discarded)} of {attempts} pairs, measured again")
    loads = [x for r in results for p in r.pairs for x in p["load"] if x is not None]
    if loads and float(np.median(loads)) >= 0.25:
        warnings.append(f"other processes used {float(np.median(loads)):.2f} cores (median) during the kept "
                        "pairs; steady load hits A and B alike, but the absolute times are slower than on an "
                        "idle machine")
    return warnings


def compare(model_a: Any, model_b: Any, *, runtime: str | None = None, threads: int | None = None,
            pairs: int = DEFAULT_PAIRS, block_time: float = DEFAULT_BLOCK_TIME, iterations: int | None = None,
            warmup: int = 10, threshold: float = DEFAULT_THRESHOLD, rerun_inconclusive: int = 0,
            conclusive: Callable[[CompareResult], bool] | None = None, seed: int = 0, arch: str | None = None,
            trust: bool = False, input_shape: str | Sequence[str] | None = None, inputs: str | None = None,
            progress: Callable[[str, float], None] | None = None) -> CompareResult:
    """Measure B against A interleaved; return ratios B/A with 95% intervals and a verdict.

    `model_a`/`model_b`: effkit Models, or specs loaded as the commands load MODEL with `arch`, `trust`,
    `input_shape` (`"1x3x224x224"`, `"int64:1x128"`, or one per input) and `inputs` (an .npz of example
    inputs), e.g. `effkit.compare("a.onnx", "b.onnx", input_shape="1x16")`. Both run A's example inputs, on `runtime` (default torch when both are torch models,
    else onnxruntime) with `threads` (default: the cores free when the comparison starts).
    `pairs` A/B block pairs are kept; each block is `iterations` calls (default: as many as fill
    `block_time` seconds). While the result is inconclusive (by `conclusive(result)`, default: the
    p50 verdict), up to `rerun_inconclusive` more rounds of `pairs` pairs are measured. The
    measuring itself is `measure_paired`.
    """
    if pairs < 2 or block_time <= 0 or warmup < 0 or rerun_inconclusive < 0 or not (0 < threshold < 10):
        raise UsageError("need --pairs >= 2, --block-time > 0, --warmup >= 0, --rerun-inconclusive >= 0 "
                         "and a threshold between 0% and 1000%")
    started = time.perf_counter()
    a, b = (_as_model(m, arch, trust, input_shape, inputs) for m in (model_a, model_b))
    runtime = runtime or ("torch" if a.kind == b.kind == "torch" else "onnxruntime")
    threads = threads or default_threads()
    runner_a, runner_b = make_runner(a, runtime, threads), make_runner(b, runtime, threads)
    inputs = a.example_inputs
    try:
        runner_b.bind(inputs)()
    except Exception as e:
        if isinstance(e, UsageError):
            raise
        raise InputError(f"model B does not run on model A's example inputs ({a.describe_inputs()}): "
                         f"{first_line(e, 200)}",
                         "compare two versions of the same model, with the same inputs") from e
    result = CompareResult(a=_model_info(a), b=_model_info(b), runtime=runtime,
                           size={"a": size_info(a), "b": size_info(b)})
    measure_paired(runner_a, runner_b, inputs, pairs=pairs, block_time=block_time, iterations=iterations,
                   warmup=warmup, threshold=threshold, rerun_inconclusive=rerun_inconclusive,
                   conclusive=conclusive, seed=seed, result=result, progress=progress)
    result.environment = environment(threads)
    result.duration_s = round(time.perf_counter() - started, 3)
    return result


def _model_info(model: Any) -> dict:
    return model_info(model)
