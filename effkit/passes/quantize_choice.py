"""How quantize picks among the candidates that meet the tolerance: with paired intervals, not point
estimates, so that the same models give the same choice run after run (see `choose`)."""

from __future__ import annotations

from effkit.comparison import measure_paired
from effkit.export import make_runner
from effkit.passes.quantize_candidates import Candidate, CandidateContext
from effkit.util import quiet_torch

NEAR = 1.2  # candidates whose interleaved median is within this factor of the fastest are timed against it in pairs
DECISION_PAIRS = 10  # A/B pairs per paired decision
# A separation counts only when this many paired timings, each on fresh runners, show it: one timing's
# interval misses what changes between sessions (memory layout, which core), and on the BERT-like encoder
# single timings separated candidates within a few percent of each other differently from run to run.
DECISION_ROUNDS = 2


def runtime_of(model) -> str:
    """The runtime a candidate (or the original) runs on: torch for torch models, else ONNX Runtime."""
    return "torch" if model.kind == "torch" else "onnxruntime"


def paired_timing(ctx: CandidateContext, a, runtime_a: str, b, runtime_b: str):
    """Model `b` on `runtime_b` against `a` on `runtime_a`, interleaved in A/B pairs (`measure_paired`), in
    about the candidate timing budget."""
    with quiet_torch():
        return measure_paired(make_runner(a, runtime_a, ctx.threads), make_runner(b, runtime_b, ctx.threads),
                              a.example_inputs, pairs=DECISION_PAIRS,
                              block_time=max(ctx.candidate_time / DECISION_PAIRS, 1e-3),
                              iterations=ctx.candidate_iterations, warmup=2)


def paired_decision(ctx: CandidateContext, best: Candidate, c: Candidate) -> dict:
    """Candidate `c` against `best` in up to DECISION_ROUNDS paired timings, each on fresh runners: "faster"
    or "slower" only when every round says so (a round that does not separate ends it), else a tie
    ("same" or "inconclusive"). Returns the first round's speedup with that verdict and every round's."""
    rounds = []
    for _ in range(DECISION_ROUNDS):
        rounds.append(paired_timing(ctx, best.model, runtime_of(best.model), c.model, runtime_of(c.model)).speedup())
        if rounds[-1]["verdict"] not in ("faster", "slower") or rounds[-1]["verdict"] != rounds[0]["verdict"]:
            break
    agreed = len(rounds) == DECISION_ROUNDS and len({r["verdict"] for r in rounds}) == 1
    verdict = rounds[0]["verdict"] if agreed or rounds[0]["verdict"] not in ("faster", "slower") else "inconclusive"
    return {**rounds[0], "verdict": verdict, "rounds": [{"verdict": r["verdict"], "speedup": r["estimate"],
                                                        "ci95": r["ci95"]} for r in rounds]}


def stable_rank(c: Candidate, model) -> tuple:
    """Among candidates tied on speed: fewer float layers, then smaller, then the original's runtime."""
    return (len(c.kept_float), c.size_bytes or 0, c.backend != runtime_of(model), c.label)


def choose(passing: list[Candidate], ctx: CandidateContext, model) -> tuple[Candidate, dict]:
    """The fastest passing candidate, decided with intervals rather than point estimates: every candidate
    whose interleaved median is within NEAR of the fastest is timed against it in A/B pairs
    (`paired_decision`); one that is faster in every round wins outright, those that do not separate from
    it are tied, and a tie goes by `stable_rank`, so the same models give the same choice run after run."""
    best, tied, faster, compared = passing[0], [passing[0]], [], []
    for c in passing[1:]:
        if c.latency_ms > best.latency_ms * NEAR:
            break
        timing = paired_decision(ctx, best, c)
        compared.append({"candidate": c.label, "against": best.label, "verdict": timing["verdict"],
                         "speedup": timing["estimate"], "ci95": timing["ci95"], "rounds": timing["rounds"]})
        if timing["verdict"] == "faster":
            faster.append((timing["estimate"], c))
        elif timing["verdict"] in ("same", "inconclusive"):
            tied.append(c)
    if faster:
        return max(faster, key=lambda f: f[0])[1], {"compared": compared, "tied": []}
    chosen = min(tied, key=lambda c: stable_rank(c, model))
    return chosen, {"compared": compared, "tied": [c.label for c in tied] if len(tied) > 1 else []}
