"""Are effkit's decisions stable? The same command several times, how often the choice and the verdict agree.

1. `quantize --backend auto` RUNS times on each reference model of benchmarks/quantize_vs_anchors.py
   (MLP 784-1024-1024-10 at batch 1 and 64, ResNet-18-style CNN, BERT-like encoder), with the same seeded
   calibration data every time. Per run: the candidate chosen and the speed verdict of the chosen int8
   model against the float original on the same runtime (paired interleaved timing with a 95% interval:
   faster / slower / same / inconclusive). Then, independently of effkit's own timing, every candidate the
   last run built is timed against the chosen one in interleaved A/B pairs (`measure_paired`): the chosen
   candidate's latency over the fastest candidate's, with its interval.
2. `compress` RUNS times on the README's main job (examples/digits.py:mlp_wide with
   examples/recipes/digits.toml, --data digits_train.npz --eval digits_test.npz): per run the status, the
   int8 candidate chosen and the final model's speed verdict against the original on its runtime.

Goals (issue 13): the same choice and verdict in every run on every model, or a tie reported; the chosen
candidate within 5% of the fastest. Run it alone on an otherwise idle machine, with 2 threads:

    .venv/bin/python benchmarks/verdict_stability.py              # full size (long: run it alone)
    .venv/bin/python benchmarks/verdict_stability.py --quick      # smoke run: small shapes, 2 runs, short timing
    .venv/bin/python benchmarks/verdict_stability.py --models mlp,digits --runs 3
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # the reference models of quantize_vs_anchors.py

THREADS = 2
CALIB_SAMPLES = 32


def quantize_runs(case: dict, runs: int, quick: bool) -> None:
    """quantize --backend auto `runs` times on one reference model; print agreement and the independent timing."""
    import torch

    import effkit.passes.quantize as quantize_mod
    from effkit.comparison import measure_paired
    from effkit.data import Data
    from effkit.export import make_runner
    from effkit.model import Model
    from effkit.util import quiet_torch

    torch.manual_seed(0)
    module = case["build"]().eval()
    example = (np.random.default_rng(1).standard_normal(case["shape"]).astype(np.float32),)
    batch = case["shape"][0]
    calib = np.random.default_rng(2).standard_normal((max(CALIB_SAMPLES, 2 * batch), *case["shape"][1:]))
    calib = calib.astype(np.float32)
    original = Model(kind="torch", module=module, example_inputs=example, input_names=["x"], source=case["name"],
                     format="factory")
    built: dict = {}
    real_time = quantize_mod._time

    def keep_candidates(ctx, models):  # the benchmark's own view of every candidate built, for timing them later
        built.clear()
        built.update(models)
        return real_time(ctx, models)

    quantize_mod._time = keep_candidates
    rows, start = [], time.perf_counter()
    try:
        for _ in range(runs):
            config = quantize_mod.QuantizeConfig(backend="auto", calib_samples=len(calib))
            with quiet_torch():
                result = quantize_mod.quantize(copy.copy(original), config, calib=Data((calib,), None, "bench"),
                                               threads=THREADS, candidate_time=0.1 if quick else 0.5)
            chosen = result.model
            runtime = "torch" if chosen.kind == "torch" else "onnxruntime"
            timing = measure_paired(make_runner(original, runtime, THREADS), make_runner(chosen, runtime, THREADS),
                                    example, pairs=6 if quick else 20, block_time=0.02 if quick else 0.05,
                                    warmup=2 if quick else 10, seed=len(rows))
            tied = any("tied within timing noise" in note for note in result.notes)
            rows.append((result.details["label"], timing.speedup()["verdict"], dict(built), tied))
    finally:
        quantize_mod._time = real_time
    choices = Counter(row[0] for row in rows)
    verdicts = Counter(row[1] for row in rows)
    print(f"\n{case['name']}: {runs} runs in {time.perf_counter() - start:.0f}s")
    print(f"  choice:  {dict(choices)}  ({max(choices.values())}/{runs} the same)")
    print(f"  verdict: {dict(verdicts)}  ({max(verdicts.values())}/{runs} the same; int8 against fp32 on its runtime)")
    print(f"  ties reported: {sum(row[3] for row in rows)}/{runs} runs (candidates within timing noise, resolved by "
          "the stable rule)")
    print("  runs: " + "; ".join(f"{row[0]}{' (tie)' if row[3] else ''}" for row in rows))
    same, all_tied = len(choices) == 1, all(row[3] for row in rows)
    print(f"  goal (the same choice every run, or a tie reported in each): "
          f"{'met' if same or all_tied else 'NOT met'}")
    label, _, candidates, _ = rows[-1]
    chosen_model = candidates[label]
    chosen_runtime = "torch" if chosen_model.kind == "torch" else "onnxruntime"
    worst = (1.0, [1.0, 1.0], label)
    for name, model in candidates.items():
        if name == label or "fp32" in name:
            continue
        runtime = "torch" if model.kind == "torch" else "onnxruntime"
        with quiet_torch():
            paired = measure_paired(make_runner(model, runtime, THREADS),
                                    make_runner(chosen_model, chosen_runtime, THREADS), example,
                                    pairs=6 if quick else 30, block_time=0.02 if quick else 0.05,
                                    warmup=2 if quick else 10, seed=7)
        stat = paired.stats.get("p50")
        if stat is None:
            print(f"  vs {name}: inconclusive ({'; '.join(paired.reasons)})")
            continue
        print(f"  chosen / {name}: {stat['ratio']:.3f} [{stat['ci'][0]:.3f}, {stat['ci'][1]:.3f}] (p50 ratio, "
              f"interleaved pairs)")
        if stat["ratio"] > worst[0]:
            worst = (stat["ratio"], stat["ci"], name)
    if worst[2] == label:
        print(f"  goal (chosen within 5% of the fastest candidate): met, {label} is the fastest")
    else:
        ratio, (lo, hi), name = worst
        print(f"  goal (chosen within 5% of the fastest candidate): {'met' if ratio <= 1.05 else 'NOT met'}: "
              f"{label} takes {ratio:.3f}x [{lo:.3f}, {hi:.3f}] the time of {name}")


def compress_runs(runs: int, quick: bool) -> None:
    """compress on the README's main job `runs` times: status, int8 choice and final speed verdict per run."""
    from effkit.data import load_data
    from effkit.load import load_model
    from effkit.pipeline import run_pipeline
    from effkit.recipe import Recipe
    from effkit.util import quiet_torch

    examples = ROOT / "examples"
    recipe = Recipe.load(examples / "recipes" / "digits.toml")
    if quick:
        recipe = recipe.with_changes("prune", finetune_epochs=1).with_changes("bench", min_time=0.05)
    train = load_data(str(examples / "data" / "digits_train.npz"))
    test = load_data(str(examples / "data" / "digits_test.npz"))
    outcomes, start = [], time.perf_counter()
    for _ in range(runs):
        with quiet_torch():
            result = run_pipeline(load_model(f"{examples / 'digits.py'}:mlp_wide"), recipe, data=train,
                                  eval_data=test)
        quantized = next((s for s in result.steps if s.name == "quantize"), None)
        choice = quantized.details.get("label") if quantized is not None else None
        same = result.same_runtime.speedup()["verdict"] if result.same_runtime is not None else None
        outcomes.append((result.status, choice, same))
    print(f"\ncompress, the README's main job (digits MLP, examples/recipes/digits.toml): {runs} runs in "
          f"{time.perf_counter() - start:.0f}s")
    for what, i in (("status", 0), ("int8 choice", 1), ("final vs original", 2)):
        counts = Counter(o[i] for o in outcomes)
        print(f"  {what}: {dict(counts)}  ({max(counts.values())}/{runs} the same)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small shapes, 2 runs, short timings")
    parser.add_argument("--runs", type=int, default=None, help="runs per model (default 5; 2 with --quick)")
    parser.add_argument("--models", default="mlp,cnn,encoder,digits",
                        help="comma-separated: mlp, cnn, encoder (quantize) and digits (compress)")
    args = parser.parse_args()
    import torch

    from effkit.env import cpu_info
    from quantize_vs_anchors import cases

    runs = args.runs or (2 if args.quick else 5)
    wanted = set(args.models.split(","))
    torch.set_num_threads(THREADS)
    cpu = cpu_info()
    print(f"# effkit verdict stability{' (quick)' if args.quick else ''}: {cpu['model']}, {THREADS} threads, "
          f"torch {torch.__version__}")
    for case in cases(args.quick, sorted(wanted - {"digits"})):
        quantize_runs(case, runs, args.quick)
    if "digits" in wanted:
        compress_runs(runs, args.quick)


if __name__ == "__main__":
    main()
