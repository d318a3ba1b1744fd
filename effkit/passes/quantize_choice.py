"""How quantize picks among the candidates that meet the tolerance: with paired intervals, not point
estimates, so that the same models give the same choice run after run (see `choose`)."""

from __future__ import annotations

import math

from effkit.comparison import DEFAULT_THRESHOLD, PairedResult, measure_paired
from effkit.passes.quantize_candidates import Candidate, CandidateContext
from effkit.util import quiet_torch

# Candidates whose interleaved median is within this factor of the fastest are timed against it in pairs.
# The medians are rough: interleaved with slow torch candidates (bf16, torchao), whose OpenMP threads spin
# on after each call, torch.ao FX static at batch 64 once measured over 1.2x ORT static QDQ, which it beats
# by 1.36x in pairs; so the paired timings get a wide net.
NEAR = 2.0
DECISION_PAIRS = 10  # A/B pairs per paired decision
# How far apart two candidates must be for one to beat the other: wider than compare's 5%, because what
# changes from one process to the next (memory layout, which core) is not in one process's intervals.
# On the BERT-like encoder, candidates within a few percent of each other separated at 5% in every run,
# each run differently (benchmarks/verdict_stability.py: four different choices in five runs).
DECISION_MARGIN = 0.10
# Paired timings one decision may take while the pooled interval still straddles the margin: on BERT-base
# (44 ms a call, 3 calls a block) two timings left ORT dynamic int8 and torch.ao "tied" though the first ran
# 1.25x faster in the benchmark, and the stable rule then took the slower one.
MAX_DECISION_TIMINGS = 4


def runtime_of(model) -> str:
    """The runtime a candidate (or the original) runs on: torch for torch models, else ONNX Runtime."""
    return "torch" if model.kind == "torch" else "onnxruntime"


def paired_timing(ctx: CandidateContext, a, runtime_a: str, b, runtime_b: str, threshold: float = DEFAULT_THRESHOLD):
    """Model `b` on `runtime_b` against `a` on `runtime_a`, interleaved in A/B pairs (`measure_paired`), in
    about the candidate timing budget; a change beyond `threshold` is a separation."""
    with quiet_torch():
        return measure_paired(ctx.timing_runner(a, runtime_a), ctx.timing_runner(b, runtime_b), a.example_inputs,
                              pairs=DECISION_PAIRS, threshold=threshold,
                              block_time=max(ctx.candidate_time / DECISION_PAIRS, 1e-3),
                              iterations=ctx.candidate_iterations, warmup=2)


def paired_decision(ctx: CandidateContext, best: Candidate, c: Candidate) -> dict:
    """Candidate `c` against `best` in paired timings on fresh runners, a separation being a change beyond
    DECISION_MARGIN: a first one that calls them the same ends it; otherwise a second, and "faster" or
    "slower" when both say so, else what their pairs pooled say (one timing's separation that the other does
    not repeat is then a tie unless the pooled interval separates); while the pooled interval straddles the
    margin, more timings, up to MAX_DECISION_TIMINGS. One timing's interval misses what changes between
    sessions (memory layout, which core): on the BERT-like encoder single timings separated candidates within
    a few percent of each other, differently from run to run. Returns the deciding speedup
    (`PairedResult.speedup`) with every round's verdict."""
    def timing():
        return paired_timing(ctx, best.model, runtime_of(best.model), c.model, runtime_of(c.model), DECISION_MARGIN)

    timings = [timing()]
    if timings[0].speedup()["verdict"] != "same":
        timings.append(timing())
    first = [t.speedup() for t in timings]
    agreed = len(first) == 1 or (first[0]["verdict"] == first[1]["verdict"] in ("faster", "slower"))
    decided = first[0] if agreed else pooled(timings).speedup()
    # a fixed number of timed calls (--iterations) is a fixed budget: only the two timings it asked for
    most = MAX_DECISION_TIMINGS if getattr(ctx, "candidate_iterations", None) is None else 2
    while decided["verdict"] == "inconclusive" and len(timings) < most:
        timings.append(timing())  # more pairs until the pooled interval separates or the budget ends
        decided = pooled(timings).speedup()
    rounds = [t.speedup() for t in timings]
    return {**decided, "pooled": not agreed,
            "rounds": [{"verdict": r["verdict"], "speedup": r["estimate"], "ci95": r["ci95"]} for r in rounds]}


def pooled(timings: list) -> PairedResult:
    """The pairs of several paired timings of the same two models as one, analysed afresh."""
    merged = PairedResult(threshold=timings[0].threshold, threads=timings[0].threads, seed=timings[0].seed,
                          pairs=[p for t in timings for p in t.pairs], attempts=sum(t.attempts for t in timings))
    merged.analyse(max(t.min_pairs for t in timings))  # as many pairs as one timing needs: the floor of any verdict
    return merged


SIZE_BAND = 1.05  # sizes within this factor of each other count as the same size for the stable rule


def stable_rank(c: Candidate, model) -> tuple:
    """Among candidates tied on speed: fewer float layers, then smaller (in bands of 5%: a few scales
    more or less are no reason to switch runtime), then the original's runtime."""
    band = round(math.log(c.size_bytes) / math.log(SIZE_BAND)) if c.size_bytes else 0
    return (len(c.kept_float), band, c.backend != runtime_of(model), c.label)


def choose(passing: list[Candidate], ctx: CandidateContext, model) -> tuple[Candidate, dict]:
    """The fastest passing candidate, decided with intervals rather than point estimates: every candidate
    whose interleaved median is within NEAR of the fastest is timed against it in A/B pairs
    (`paired_decision`); one that is faster wins outright, those that do not separate from it are tied, and a tie goes by `stable_rank`, so the same models give the same choice run after run."""
    best, tied, faster, compared = passing[0], [passing[0]], [], []
    for c in passing[1:]:
        if c.latency_ms > best.latency_ms * NEAR:
            break
        timing = paired_decision(ctx, best, c)
        compared.append({"candidate": c.label, "against": best.label, "verdict": timing["verdict"],
                         "speedup": timing["estimate"], "ci95": timing["ci95"], "rounds": timing["rounds"],
                         "pooled": timing["pooled"]})
        if timing["verdict"] == "faster":
            faster.append((timing["estimate"], c))
        elif timing["verdict"] in ("same", "inconclusive"):
            tied.append(c)
    if faster:
        return max(faster, key=lambda f: f[0])[1], {"compared": compared, "tied": []}
    chosen = min(tied, key=lambda c: stable_rank(c, model))
    return chosen, {"compared": compared, "tied": [c.label for c in tied] if len(tied) > 1 else []}
