"""effkit compress (prune 50% then int8) against the best single step alone, side by side in one run.

Models: the MLP 784-1024-1024-10 (batch 1) and the ResNet-18-style CNN (3x224x224, batch 1) of
benchmarks/quantize_vs_anchors.py (imported from there, so every benchmark measures the same networks).
Calibration data: 32 seeded random inputs (these networks have no data set; the digits run below
has real data). For each model, with 2 threads, timed in interleaved rounds (a busy machine slows
every variant alike):

  torch fp32     the original on torch eager: the reference
  ort fp32       the original exported to ONNX Runtime
  prune          effkit.prune(ratio 0.5) alone, on the faster of torch and ONNX Runtime
  int8           effkit.quantize (backend and method auto) alone
  compress       effkit.pipeline.run_pipeline: prune 0.5 -> quantize (auto) -> export

Printed per variant: latency p50, speedup over torch fp32 eager, size on disk and its ratio to the
original. The goal: compress >= 8x faster than torch fp32 eager on the MLP and >= 15x on the CNN,
and faster than the best single step alone.

Then the bundled example end to end: `compress` of the trained digits MLP with
examples/recipes/digits.toml (prune 0.5 with 5 epochs of distillation, int8, export) and its
accuracy change on the test split (goal: within 1 point).

    .venv/bin/python benchmarks/compress.py            # full size (minutes; run it alone)
    .venv/bin/python benchmarks/compress.py --quick    # smoke run: small CNN, short timings
    .venv/bin/python benchmarks/compress.py --models mlp,digits
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from quantize_vs_anchors import build_mlp, build_resnet18  # noqa: E402  (the same reference models)

THREADS = 2
CALIB = 32
GOALS = {"mlp": 8.0, "cnn": 15.0}


def cases(quick: bool) -> list[dict]:
    return [
        {"name": "mlp b1", "key": "mlp", "build": build_mlp, "shape": (1, 784)},
        {"name": "resnet18 b1", "key": "cnn", "build": (lambda: build_resnet18(16, 100)) if quick else build_resnet18,
         "shape": (1, 3, 64, 64) if quick else (1, 3, 224, 224)},
    ]


def variants(case: dict, quick: bool) -> tuple[dict, dict]:
    """{label: Model} for every variant, and the compress result's summary."""
    import torch

    from effkit.data import Data
    from effkit.model import Model
    from effkit.util import quiet_torch
    from effkit.passes.prune import PruneConfig, prune
    from effkit.passes.quantize import QuantizeConfig, quantize
    from effkit.pipeline import run_pipeline
    from effkit.recipe import Recipe

    torch.manual_seed(0)
    module = case["build"]().eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(case["shape"]).astype(np.float32)
    calib = Data((rng.standard_normal((CALIB, *case["shape"][1:])).astype(np.float32),), None, "random")
    model = Model(kind="torch", module=module, example_inputs=(x,), input_names=["x"], source=case["name"],
                  format="factory")
    qconfig = QuantizeConfig(calib_samples=CALIB)
    recipe = (Recipe().with_changes("prune", ratio=0.5).with_changes("quantize", **_fields(qconfig))
              .with_changes("bench", threads=THREADS, min_time=0.05 if quick else 0.2, warmup=2))
    out: dict = {"torch fp32": model}
    with quiet_torch():
        out["prune"] = prune(model, PruneConfig(ratio=0.5)).model
        out["int8"] = quantize(model, qconfig, calib=calib, candidate_time=0.1 if quick else 0.5).model
        start = time.perf_counter()
        result = run_pipeline(model, recipe, data=calib)
    seconds = time.perf_counter() - start
    out["compress"] = result.final.model
    return out, {"steps": [s.name for s in result.steps], "notes": result.notes, "seconds": seconds,
                 "overall": result.overall()}


def _fields(config) -> dict:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def measure(models: dict, quick: bool) -> list[dict]:
    """Interleaved rounds over every (variant, runtime); each variant keeps its faster runtime."""
    from effkit.benchmark import time_calls
    from effkit.errors import EffkitError
    from effkit.size import size_info
    from effkit.util import quiet_torch
    from effkit.export import make_runner

    calls = []
    for label, m in models.items():
        runtimes = ["torch"] if label == "torch fp32" else (["torch", "onnxruntime"] if m.kind == "torch"
                                                            else ["onnxruntime"])
        if label == "torch fp32":
            calls.append(("ort fp32", "onnxruntime", m))
        calls += [(label, r, m) for r in runtimes]
    bound = []
    with quiet_torch():
        for label, runtime, m in list(calls):
            try:
                bound.append(make_runner(m, runtime, THREADS).bind(m.example_inputs))
            except EffkitError:  # torch int8 modules do not export to ONNX: they run on torch only
                calls.remove((label, runtime, m))
        sizes = {label: size_info(m)["bytes_on_disk"] for label, m in models.items()}
    sizes["ort fp32"] = sizes["torch fp32"]
    samples: dict[tuple, list[float]] = {(label, runtime): [] for label, runtime, _ in calls}
    rounds, min_time = (2, 0.1) if quick else (5, 0.5)
    for _ in range(rounds):
        for (label, runtime, _), call in zip(calls, bound):
            samples[(label, runtime)].append(float(np.median(time_calls(call, warmup=3, min_time=min_time))))
    best: dict[str, dict] = {}
    for (label, runtime), values in samples.items():
        p50 = float(np.median(values))
        if label not in best or p50 < best[label]["p50"]:
            best[label] = {"variant": label, "runtime": runtime, "p50": p50, "size": sizes[label]}
    return list(best.values())


def report(case: dict, rows: list[dict], summary: dict) -> None:
    ref = next(r for r in rows if r["variant"] == "torch fp32")
    print(f"\n{case['name']}  input {'x'.join(map(str, case['shape']))}, {THREADS} threads; compress ran "
          f"{' -> '.join(summary['steps'])} in {summary['seconds']:.0f}s")
    print(f"  {'variant':<11} {'runtime':<12} {'p50 ms':>9} {'speedup':>8} {'size':>10} {'size x':>7}")
    for r in rows:
        print(f"  {r['variant']:<11} {r['runtime']:<12} {r['p50']:>9.3f} {ref['p50'] / r['p50']:>7.2f}x "
              f"{r['size'] / 1e6:>8.2f}MB {r['size'] / ref['size']:>6.2f}x")
    for note in summary["notes"]:
        print(f"  note: {note}")
    final = next(r for r in rows if r["variant"] == "compress")
    single = min((r for r in rows if r["variant"] in ("prune", "int8")), key=lambda r: r["p50"])
    speedup = ref["p50"] / final["p50"]
    goal = GOALS[case["key"]]
    print(f"  compress: {speedup:.2f}x over torch fp32 at {final['size'] / ref['size']:.2f}x the size; best single "
          f"step ({single['variant']}) {ref['p50'] / single['p50']:.2f}x; goal >= {goal:g}x: "
          f"{'met' if speedup >= goal else 'NOT met'}")


def digits(quick: bool) -> None:
    """The bundled example end to end through the recipe the README uses."""
    from effkit.data import load_data
    from effkit.load import load_model
    from effkit.util import quiet_torch
    from effkit.pipeline import run_pipeline
    from effkit.recipe import Recipe

    examples = ROOT / "examples"
    recipe = Recipe.load(examples / "recipes" / "digits.toml")
    if quick:
        recipe = recipe.with_changes("prune", finetune_epochs=1)
    train = load_data(str(examples / "data" / "digits_train.npz"))
    test = load_data(str(examples / "data" / "digits_test.npz"))
    start = time.perf_counter()
    with quiet_torch():
        model = load_model(f"{examples / 'digits.py'}:mlp_wide")
        result = run_pipeline(model, recipe, data=train, eval_data=test)
    o = result.overall()
    print(f"\ndigits MLP 64-1024-1024-10 (UCI handwritten digits, CC BY 4.0), examples/recipes/digits.toml: "
          f"{' -> '.join(s.name for s in result.steps)} in {time.perf_counter() - start:.0f}s (training included)")
    if result.status != "ok":
        print(f"  FAILED: {result.message}")
        return
    drop = -o["accuracy_change_pt"]
    print(f"  accuracy {100 * o['accuracy_before']:.2f}% -> {100 * o['accuracy_after']:.2f}% ({-drop:+.2f} pt; goal "
          f"within 1 pt: {'met' if drop <= 1.0 else 'NOT met'}); {o['speedup_vs_torch_fp32']['p50']:.2f}x over torch "
          f"fp32 (short in-pipeline timings), size {o['size_ratio']:.2f}x")
    for note in result.notes:
        print(f"  note: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small CNN, short timings")
    parser.add_argument("--models", default="mlp,cnn,digits", help="which of mlp, cnn, digits to run")
    args = parser.parse_args()
    import torch

    wanted = set(args.models.split(","))
    torch.set_num_threads(THREADS)
    for case in cases(args.quick):
        if case["key"] in wanted:
            models, summary = variants(case, args.quick)
            report(case, measure(models, args.quick), summary)
    if "digits" in wanted:
        digits(args.quick)


if __name__ == "__main__":
    main()
