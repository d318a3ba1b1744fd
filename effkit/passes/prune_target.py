"""Structured pruning steps, and the search for a MACs or latency target (`prune --target-*`).

The search prunes in steps of increasing ratio and measures after each, until the target is met. MACs
are counted. Latency is decided as every timing decision in effkit is: the original against the pruned
candidate, interleaved in A/B pairs (`effkit.comparison.measure_paired`), the ratio candidate/original
with its 95% interval. The target counts as met only when the whole interval is at or below it. An
interval that straddles the target (or a machine too busy for enough quiet pairs) is inconclusive:
pruning goes on, because a target the timing does not show is not claimed, and the notes say so.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from effkit.comparison import measure_paired
from effkit.export import make_runner
from effkit.passes.prune_graph import (count_macs_params, head_counts, importance, modules_named, set_head_counts,
                                       taylor_gradients)
from effkit.util import quiet_torch

# The most a target search removes: past this, models are rarely worth keeping.
MAX_SEARCH_RATIO = 0.9
SEARCH_STEPS = 18  # ratio increments of MAX_SEARCH_RATIO / SEARCH_STEPS (0.05)
TARGET_PAIRS = 10  # A/B pairs per latency measurement of the search
DEFAULT_TARGET_TIME = 0.3  # seconds of timed calls per model and search step (split over the pairs)


def pruner(module, example, config, ignored: list[str], ratio: float, steps: int):
    """A Torch-Pruning pruner for `config` (a PruneConfig). Every dict argument is passed fresh: tp 1.6.1
    mutates its mutable defaults (out_channel_groups, in_channel_groups), which would leak one model's
    layers into the next pruner."""
    import torch_pruning as tp

    with quiet_torch():
        return tp.pruner.BasePruner(
            module, list(example), importance=importance(config.importance), global_pruning=config.scope == "global",
            pruning_ratio=ratio, iterative_steps=steps, ignored_layers=modules_named(module, ignored),
            round_to=config.round_to, num_heads=head_counts(module), in_channel_groups={}, out_channel_groups={},
            prune_num_heads=config.prune_heads, prune_head_dims=not config.prune_heads,
            head_pruning_ratio=ratio if config.prune_heads else 0.0,
        )


def prune_step(step_pruner, module, config, data) -> None:
    """One pruning step; taylor importance first needs gradients of a loss on the data."""
    if config.importance == "taylor":
        taylor_gradients(module, data, config.batch_size)
    with quiet_torch():
        step_pruner.step()
    module.zero_grad(set_to_none=True)
    if config.prune_heads:  # the modules' own head counts drive their reshapes: they follow the pruner's
        set_head_counts(module, step_pruner.num_heads)


def search_target(model, module, example, config, ignored, data, details: dict, notes: list[str],
                  progress: Callable[[str, float], None] | None, threads: int | None,
                  min_time: float = DEFAULT_TARGET_TIME, iterations: int | None = None) -> None:
    """Prune `module` (a copy of `model`'s) in steps of increasing ratio, measuring after each, until the MACs
    or latency target of `config` is met; record every step in `details["target"]` and say how it ended in
    `notes`. Latency: `min_time` seconds of calls per model and step (or `iterations` calls per block)."""
    target = config.target_latency if config.target_latency is not None else config.target_macs
    kind = "latency" if config.target_latency is not None else "macs"
    if kind == "macs":
        baseline = count_macs_params(module, example)[0]
        measure = lambda m: _macs_step(count_macs_params(m, example)[0], baseline, target)  # noqa: E731
    else:
        baseline = None
        measure = _latency_meter(model, config, threads, target, min_time, iterations)
    search = pruner(module, example, config, ignored, MAX_SEARCH_RATIO, SEARCH_STEPS)
    trail = []
    for step in range(1, SEARCH_STEPS + 1):
        prune_step(search, module, config, data)
        trail.append({"ratio": round(search.per_step_pruning_ratio[step], 4), **measure(module)})
        if progress:
            progress(f"pruning to {kind} {target}x", step / SEARCH_STEPS)
        if trail[-1]["verdict"] == "met":
            break
    last = trail[-1]
    reached = last["verdict"] == "met"
    details["target"] = {"kind": kind, "factor": target, "reached": reached, "ratio": last["ratio"],
                         "baseline": baseline if kind == "macs" else last["baseline"], "steps": trail,
                         **({"runtime": config.runtime, "decided_on": "the paired ratio's 95% interval"}
                            if kind == "latency" else {})}
    details["ratio"] = last["ratio"]
    notes += _target_notes(kind, config, target, trail)


def _macs_step(macs: int, baseline: int, target: float) -> dict:
    return {"macs": macs, "factor": macs / baseline, "verdict": "met" if macs <= target * baseline else "not met"}


def _latency_meter(model, config, threads: int | None, target: float, min_time: float,
                   iterations: int | None) -> Callable[[Any], dict]:
    """A function of a pruned module: its latency against the original's on the config's runtime, paired."""
    original = make_runner(model, config.runtime, threads)

    def measure(module) -> dict:
        # a snapshot: the ONNX export cache is keyed by module, and this one keeps changing
        snapshot = model.replace(module=copy.deepcopy(module).eval(), path=None, format="derived")
        with quiet_torch():
            result = measure_paired(original, make_runner(snapshot, config.runtime, threads), model.example_inputs,
                                    pairs=TARGET_PAIRS, block_time=max(min_time / TARGET_PAIRS, 1e-3),
                                    iterations=iterations, warmup=2)
        p50 = result.stats.get("p50")
        if p50 is None:
            return {"latency": None, "baseline": None, "factor": None, "ci95": None, "verdict": "inconclusive",
                    "reasons": list(result.reasons)}
        low, high = p50["ci"]
        verdict = ("inconclusive" if result.reasons else "met" if high <= target
                   else "not met" if low > target else "inconclusive")
        return {"latency": p50["b_ms"], "baseline": p50["a_ms"], "factor": p50["ratio"], "ci95": [low, high],
                "verdict": verdict, "reasons": list(result.reasons)}

    return measure


def _target_notes(kind: str, config, target: float, trail: list[dict]) -> list[str]:
    """How the search ended, in words, with the steps whose timing could not tell."""
    last = trail[-1]
    what = f"{kind} on {config.runtime}" if kind == "latency" else "MACs"
    shown = (f"{last['factor']:.2f}x of the original" if last["factor"] is not None else "not measured")
    if kind == "latency" and last["ci95"]:
        shown += f", 95% interval [{last['ci95'][0]:.2f}, {last['ci95'][1]:.2f}]"
    if last["verdict"] == "met":
        notes = [f"{what} target {target}x reached at pruning ratio {last['ratio']:.2f} ({shown})"]
    else:
        notes = [f"{what} target {target}x NOT reached: stopped at the maximum ratio {MAX_SEARCH_RATIO} ({shown})"]
    unsure = [s for s in trail if s["verdict"] == "inconclusive"]
    if unsure:
        ratios = ", ".join(f"{s['ratio']:.2f}" for s in unsure)
        notes.append(f"at pruning ratio {ratios} the timing could not tell "
                     f"whether the {target}x target was met (the 95% interval straddled it, or too few quiet pairs), "
                     "so pruning went on: a target is claimed only when the whole interval is below it")
    return notes
