"""50% structured pruning through effkit against the pruning people call by hand, side by side in one run.

Models: the MLP 784-1024-1024-10 (batch 1 and 64) and the ResNet-18-style CNN (3x224x224, batch 1) of
benchmarks/quantize_vs_anchors.py (imported from there, so both benchmarks measure the same networks).
For each, with 2 threads, timed in interleaved rounds (a busy machine slows every variant alike):

  original   the dense fp32 model
  effkit     effkit.prune(PruneConfig(ratio=0.5)): channels removed, output layer kept
  effkit@.3  effkit.prune(PruneConfig(target_macs=0.3)): pruned in steps until MACs are 0.3x (the ratio
             that reached it is printed); 50% of the channels of 784-1024-1024-10 leave 0.36x of its
             weights, since the 784 inputs and 10 outputs stay, so a 0.3x size needs a higher ratio
  tp         Torch-Pruning called directly (MetaPruner, L2 group magnitude, ratio 0.5, output layer ignored)
  tnu        torch.nn.utils.prune.l1_unstructured 50% on every Linear/Conv but the output layer, made permanent

Printed per variant: parameters, state_dict size (ratio to the original), latency p50 on torch eager and
ONNX Runtime (each variant exported and verified by effkit.export) and the speedup over the original
on the same runtime. The goal: effkit >= 2.5x faster on the MLP and >= 2x on the CNN in ONNX Runtime, at
<= 0.3x the size.

Then accuracy on a real classifier (examples/digits.py, UCI handwritten digits, CC BY 4.0): before
pruning, right after 50% pruning, and after recovery (distillation from the unpruned model).

    .venv/bin/python benchmarks/prune_vs_anchors.py            # full size (minutes; run it alone)
    .venv/bin/python benchmarks/prune_vs_anchors.py --quick    # smoke run: small shapes, short timings
    .venv/bin/python benchmarks/prune_vs_anchors.py --models mlp,digits
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from quantize_vs_anchors import cases, quiet  # noqa: E402  (the same reference models and cases)

THREADS = 2
RATIO = 0.5
GOALS = {"mlp": 2.5, "cnn": 2.0}
SIZE_GOAL = 0.3
NOTES: list[str] = []  # lines the variants add to their case's table


def output_layer(module):
    from torch import nn

    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


def effkit_variant(model):
    from effkit.passes.prune import PruneConfig, prune

    with quiet():
        return prune(model, PruneConfig(ratio=RATIO)).model.module


def effkit_target_variant(model):
    from effkit.passes.prune import PruneConfig, prune

    with quiet():
        result = prune(model, PruneConfig(target_macs=0.3))
    target = result.details["target"]
    NOTES.append(f"effkit@.3: MACs {target['steps'][-1]['factor']:.2f}x at ratio {target['ratio']:.2f}"
                 f"{'' if target['reached'] else ' (target not reached)'}")
    return result.model.module


def tp_variant(model):
    import torch
    import torch_pruning as tp

    module = copy.deepcopy(model.module)
    example = torch.from_numpy(model.example_inputs[0])
    with quiet():
        pruner = tp.pruner.MetaPruner(module, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=RATIO, ignored_layers=[output_layer(module)],
                                      in_channel_groups={}, out_channel_groups={}, num_heads={})
        pruner.step()
    return module


def tnu_variant(model):
    from torch import nn
    from torch.nn.utils import prune as tprune

    module = copy.deepcopy(model.module)
    last = output_layer(module)
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and m is not last:
            tprune.l1_unstructured(m, "weight", amount=RATIO)
            tprune.remove(m, "weight")
    return module


def state_size(module) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


def measure_case(case: dict, quick: bool) -> list[dict]:
    import torch

    from effkit.benchmark import time_calls
    from effkit.model import Model
    from effkit.export import export_onnx
    from effkit.runners import OrtRunner, TorchRunner

    torch.manual_seed(0)
    module = case["build"]().eval()
    x = np.random.default_rng(0).standard_normal(case["shape"]).astype(np.float32)
    model = Model(kind="torch", module=module, example_inputs=(x,), input_names=["x"], source=case["name"],
                  format="factory")
    variants = {"original": module}
    for name, make in (("effkit", effkit_variant), ("effkit@.3", effkit_target_variant), ("tp", tp_variant),
                       ("tnu", tnu_variant)):
        try:
            variants[name] = make(model).eval()
        except Exception as e:  # an anchor that fails is a result too
            NOTES.append(f"{name}: n/a ({type(e).__name__}: {str(e).splitlines()[0][:90]})")
    rows, calls = [], []
    tmp = Path(tempfile.mkdtemp(prefix="prune-bench-"))
    for name, m in variants.items():
        with quiet():
            onnx_model = export_onnx(model.replace(module=m), tmp / f"{name}.onnx")
        params = sum(p.numel() for p in m.parameters())
        rows.append({"variant": name, "parameters": params, "size": state_size(m), "torch": [], "onnxruntime": []})
        calls.append((TorchRunner(m, THREADS).bind((x,)), OrtRunner(onnx_model.onnx_path, THREADS).bind((x,))))
    rounds, min_time = (1, 0.1) if quick else (5, 0.5)
    for _ in range(rounds):  # interleaved: load on the machine hits every variant alike
        for row, (torch_call, ort_call) in zip(rows, calls):
            row["torch"].append(float(np.median(time_calls(torch_call, warmup=3, min_time=min_time))))
            row["onnxruntime"].append(float(np.median(time_calls(ort_call, warmup=3, min_time=min_time))))
    for row in rows:
        for runtime in ("torch", "onnxruntime"):
            row[runtime] = float(np.median(row[runtime]))
    return rows


def print_case(case: dict, rows: list[dict]) -> None:
    base = rows[0]
    print(f"\n{case['name']}  input {'x'.join(map(str, case['shape']))}, {THREADS} threads")
    print(f"  {'variant':<10} {'params':>10} {'size':>9} {'size x':>7} {'torch ms':>9} {'speedup':>8} "
          f"{'ORT ms':>9} {'speedup':>8}")
    for row in rows:
        print(f"  {row['variant']:<10} {row['parameters']:>10,} {row['size'] / 1e6:>7.2f}MB "
              f"{row['size'] / base['size']:>6.2f}x {row['torch']:>9.3f} {base['torch'] / row['torch']:>7.2f}x "
              f"{row['onnxruntime']:>9.3f} {base['onnxruntime'] / row['onnxruntime']:>7.2f}x")
    goal = GOALS[case["key"]]
    for row in rows:
        if row["variant"].startswith("effkit"):
            speedup = base["onnxruntime"] / row["onnxruntime"]
            size = row["size"] / base["size"]
            print(f"  goal ({row['variant']}): ORT speedup >= {goal}x at <= {SIZE_GOAL}x size -> {speedup:.2f}x at "
                  f"{size:.2f}x: {'met' if speedup >= goal and size <= SIZE_GOAL else 'NOT met'}")
    for note in NOTES:
        print(f"  {note}")
    NOTES.clear()


def digits_accuracy(quick: bool) -> None:
    """Accuracy of the real digits classifiers: before, right after 50% pruning, after recovery."""
    sys.path.insert(0, str(HERE.parent / "examples"))
    from effkit.data import load_data
    from effkit.load import load_model
    from effkit.passes.prune import PruneConfig, prune

    examples = HERE.parent / "examples"
    train = load_data(str(examples / "data" / "digits_train.npz"))
    test = load_data(str(examples / "data" / "digits_test.npz"))
    print(f"\ndigits (UCI handwritten digits, CC BY 4.0; {len(train)} train / {len(test)} test), "
          f"{RATIO:.0%} structured pruning, recovery by distillation from the unpruned model")
    settings = [("mlp", PruneConfig(ratio=RATIO, finetune_epochs=2 if quick else 5))]
    if not quick:
        settings.append(("cnn", PruneConfig(ratio=RATIO, finetune_epochs=20, lr=3e-3)))
    for name, config in settings:
        with quiet():
            model = load_model(f"{examples / 'digits.py'}:{name}")
            start = time.perf_counter()
            result = prune(model, config, data=train, eval_data=test)
        acc = result.details["accuracy"]
        params = result.details["parameters"]
        drop = 100 * (acc["before"] - acc["recovered"])
        print(f"  {name}: parameters {params['before']:,} -> {params['after']:,}; accuracy {100 * acc['before']:.2f}% "
              f"-> {100 * acc['pruned']:.2f}% pruned -> {100 * acc['recovered']:.2f}% after "
              f"{config.finetune_epochs} epochs ({drop:+.2f} pt lost; goal <= 1 pt: "
              f"{'met' if drop <= 1.0 else 'NOT met'}; {time.perf_counter() - start:.0f}s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small CNN, short timings")
    parser.add_argument("--models", default="mlp,cnn,digits", help="comma-separated subset of mlp,cnn,digits")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = set(names) - {"mlp", "cnn", "digits"}
    if unknown:
        parser.error(f"unknown --models {', '.join(sorted(unknown))}; choose from mlp, cnn, digits")
    import torch

    torch.set_num_threads(THREADS)
    for case in cases(args.quick, names):
        print_case(case, measure_case(case, args.quick))
    if "digits" in names:
        digits_accuracy(args.quick)


if __name__ == "__main__":
    main()
