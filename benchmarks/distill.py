"""Does distillation beat training the small model from scratch? Measured on real data.

Data: the handwritten digits shipped in examples/data (UCI "Optical Recognition of Handwritten
Digits", E. Alpaydin and C. Kaynak, 1998, CC BY 4.0; see examples/digits.py): 1437 training and
360 test images of 8x8 pixels, 10 classes.

Teacher: the trained 64-256-256-10 MLP of examples/digits.py. Student: the same MLP at half the
width (64-128-128-10), from the same random initialization for every contender of a seed. All
contenders run the same engine (effkit.passes.distill) with the same budget (epochs, batch size,
learning rate, schedule, best epoch picked on a 10% split of the training data); they differ only
in the loss:
  from scratch       alpha=0: cross-entropy on the labels alone
  distilled          alpha=0.5: KL to the teacher (T=4) plus cross-entropy
  distilled, KD only alpha=1: KL to the teacher, labels unused
  distilled + features  alpha=0.5 plus MSE between the second hidden layers (128 -> 256 through
                        a learned linear map, FitNets-style)
Accuracy is on the test split, mean ± std over seeds, at the full training set and at 10% of it
(where soft targets usually matter more). Then teacher/student latency and size ratios, and
training throughput with 1 and 2 processes (torchrun, gloo).

    .venv/bin/python benchmarks/distill.py           # 3 seeds, 30 epochs
    .venv/bin/python benchmarks/distill.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

# name, alpha, feature pairs (student layer, teacher layer): "3" is the second ReLU, 128 vs 256 wide
CONTENDERS = (("from scratch", 0.0, ()), ("distilled", 0.5, ()), ("distilled, KD only", 1.0, ()),
              ("distilled + features", 0.5, (("3", "3"),)))


def _setup():
    import numpy as np

    import digits
    from effkit.data import Data
    from effkit.load import load_model

    teacher = load_model(f"{ROOT / 'examples' / 'digits.py'}:mlp")
    x, y = digits.load("train")
    xt, yt = digits.load("test")
    train = Data((x.numpy(),), y.numpy().astype(np.int64), "digits_train")
    test = Data((xt.numpy(),), yt.numpy().astype(np.int64), "digits_test")
    return teacher, train, test


def _student(teacher, seed: int):
    import torch

    import digits

    torch.manual_seed(1000 + seed)
    return teacher.replace(module=digits.mlp_architecture(128), path=None, format="factory", source="mlp_128")


def _accuracy(model, data) -> float:
    from effkit.fidelity import accuracy
    from effkit.export import make_runner

    return accuracy(make_runner(model, "torch", 1), data.inputs, data.labels)


def _ms(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:6.2f}% ± {100 * std:4.2f}"


def quality(teacher, train, test, seeds: int, epochs: int) -> None:
    from effkit.passes.distill import DistillConfig, distill

    print(f"teacher (64-256-256-10) test accuracy: {100 * _accuracy(teacher, test):.2f}%")
    for fraction in (1.0, 0.1):
        subset = train if fraction == 1.0 else train.split(fraction, seed=7)[1]
        # fewer samples, same number of optimizer steps: the budget is steps, not epochs
        run_epochs = epochs if fraction == 1.0 else int(epochs / fraction)
        print(f"\nstudent (64-128-128-10), {len(subset)} training samples, {run_epochs} epochs, {seeds} seeds:")
        for name, alpha, pairs in CONTENDERS:
            accs = []
            for seed in range(seeds):
                config = DistillConfig(epochs=run_epochs, batch_size=64, lr=3e-3, alpha=alpha, feature_pairs=pairs,
                                       seed=seed)
                result = distill(teacher, _student(teacher, seed), config, data=subset, threads=1)
                accs.append(_accuracy(result.model, test))
            print(f"  {name:<22} {_ms(accs)}   ({', '.join(f'{100 * a:.2f}' for a in accs)})")


def ratios(teacher) -> None:
    from effkit.benchmark import bench
    from effkit.size import size_info

    student = _student(teacher, 0)
    t_size, s_size = size_info(teacher), size_info(student)
    print(f"\nsize: parameters {t_size['parameters']:,} -> {s_size['parameters']:,} "
          f"({t_size['parameters'] / s_size['parameters']:.2f}x smaller), bytes on disk "
          f"{t_size['bytes_on_disk'] / s_size['bytes_on_disk']:.2f}x smaller")
    for batch in (1, 64):
        # alternate teacher and student so drift on a shared machine hits both alike
        t_p50, s_p50 = [], []
        for _ in range(3):
            for model, out in ((teacher, t_p50), (student, s_p50)):
                result = bench(model, runtimes=["torch"], batch_sizes=[batch], threads=1, warmup=20, min_time=0.3)
                out.append(result.run("torch", batch)["latency_ms"]["p50"])
        t, s = statistics.median(t_p50), statistics.median(s_p50)
        print(f"latency p50, torch, 1 thread, batch {batch:>2}: teacher {t:.4f} ms, student {s:.4f} ms "
              f"-> teacher/student {t / s:.2f}x")


def throughput(epochs: int) -> None:
    """Training samples/s (optimizer steps only, not validation) with 1 and 2 torchrun processes."""
    print(f"\ntraining throughput (distill, {epochs} epochs, 1 thread per process, gloo):")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for batch in (64, 512):  # a larger global batch means fewer gradient all-reduces per sample
        rates = {}
        for procs in (1, 2):
            cmd = [str(ROOT / ".venv" / "bin" / "torchrun"), "--nproc-per-node", str(procs), "--master-port",
                   str(_free_port()), str(Path(__file__).resolve()), "--worker", "--epochs", str(epochs),
                   "--batch-size", str(batch)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                print(f"  batch {batch}, {procs} process(es): failed\n{done.stderr[-2000:]}")
                return
            rates[procs] = json.loads(done.stdout.strip().splitlines()[-1])["samples_per_s"]
        print(f"  batch {batch:>3}: 1 process {rates[1]:>9,.0f} samples/s, 2 processes {rates[2]:>9,.0f} samples/s "
              f"-> {rates[2] / rates[1]:.2f}x (cores on this machine: {os.cpu_count()})")


def worker(epochs: int, batch_size: int) -> None:
    """One torchrun process: distill under DDP; rank 0 prints samples/s as JSON."""
    import torch.distributed as dist

    from effkit.passes.distill import DistillConfig, distill

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    teacher, train, _ = _setup()
    result = distill(teacher, _student(teacher, 0), DistillConfig(epochs=epochs, batch_size=batch_size, val_split=0),
                     data=train, threads=1)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"samples_per_s": result.details["samples_per_s"]}))
    if distributed:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, few epochs: a smoke run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.epochs, args.batch_size)
        return
    seeds, epochs = (1, 3) if args.quick else (args.seeds, args.epochs)
    teacher, train, test = _setup()
    quality(teacher, train, test, seeds, epochs)
    ratios(teacher)
    throughput(2 if args.quick else 10)


if __name__ == "__main__":
    main()
