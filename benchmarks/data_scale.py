"""Data at scale (issue 16): does effkit's memory stay flat as the data grows, and does the image
pipeline keep up with the model?

1. Memory: `effkit quantize` (static int8 on ONNX Runtime, calibrated and judged on a folder of
   images) over 1,000 and over 50,000 generated 32x32 PNG images (10 classes, labelled by
   sub-folder), each run in its own process; its peak resident memory as large_model.py measures it:
   the child's `resource` usage at exit and its VmHWM polled while it runs (effkit resets the
   high-water mark to measure each model, so the figure at exit alone misses earlier peaks).
   Goal: the 50,000-image run peaks at most 200 MB above the 1,000-image one.
2. Throughput, in one process, side by side, at a real image size: images per second of the image
   pipeline (decode 320x240 JPEGs, resize to 256, centre-crop 224, normalize, batches of 32) with 0
   and 2 worker processes, against the model's own throughput on already-decoded batches: the
   ResNet-18-style CNN of quantize_vs_anchors.py on ONNX Runtime, 2 threads. Goal: the pipeline
   with 2 workers at >= 80% of the model's throughput (the loader is not the bottleneck).

3. Distillation with 2 processes (torchrun, gloo) against 1, on the README's digits job (a student
   pruned to half the teacher's channels, 5 epochs): the final accuracy of each. Goal: within 0.5 pt.

The memory runs' model is a small CNN (two 3x3 conv layers, 16 and 32 channels, pooling, a linear
layer) with seeded weights; the images are seeded noise with a class-dependent tint, so accuracy is
not the point here. Run it alone on an otherwise idle machine:

    .venv/bin/python benchmarks/data_scale.py            # 1,000 and 50,000 images (minutes)
    .venv/bin/python benchmarks/data_scale.py --quick    # 200 and 2,000 images
    .venv/bin/python benchmarks/data_scale.py --parts memory    # one part (memory, pipeline, distill)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
SIZE = 32
CLASSES = 10
BATCH = 32
THREADS = 2
sys.path.insert(0, str(HERE.parent))  # the ResNet-18-style CNN of quantize_vs_anchors.py, large_model's peak_run

from large_model import peak_run  # noqa: E402


def small_cnn():
    """The benchmark's model (a factory effkit loads: `benchmarks/data_scale.py:small_cnn`)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(32 * 16, CLASSES)).eval()


def make_images(root: Path, n: int, size: tuple[int, int] = (SIZE, SIZE), suffix: str = "png") -> Path:
    """`n` seeded images of `size` (H, W) in CLASSES sub-folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % CLASSES
        pixels = rng.integers(0, 200, (*size, 3), dtype=np.uint8) + np.uint8(5 * c)
        Image.fromarray(pixels).save(root / f"class{c}" / f"{i:06d}.{suffix}")
    return root


def peak_memory_run(folder: Path, work: Path) -> tuple[float, float]:
    """Peak RSS (MB) and wall time (s) of one effkit quantize over `folder`, in a fresh process."""
    out = work / f"q{len(list(folder.rglob('*.png')))}.onnx"
    args = ["quantize", f"{HERE}:small_cnn", "--input-shape", f"1x3x{SIZE}x{SIZE}", "--method", "static",
            "--backend", "onnxruntime", "--calib", str(folder), "--eval", str(folder), "--image-size", str(SIZE),
            "--threads", str(THREADS), "--min-time", "0.5", "--max-accuracy-drop", "none", "--tolerance", "none",
            "--allow-slower",  # the memory is the point here: a tiny CNN runs no faster in int8
            "-o", str(out), "--force"]
    peak, wall, _ = peak_run(args, threshold=-1, cwd=work)  # -1: effkit's own large-model threshold
    return peak / 2**20, wall


def throughput(folder: Path) -> dict:
    """Images per second: the pipeline with 0 and 2 workers, and the model on decoded batches."""
    from quantize_vs_anchors import build_resnet18

    from effkit.data import Reading, load_data
    from effkit.data_images import ImagePreprocess
    from effkit.export import export_onnx
    from effkit.model import Model
    from effkit.runners import OrtRunner

    rates = {}
    for workers in (0, 2):
        images = ImagePreprocess(image_size=(224, 224), resize=256, workers=workers)
        data = load_data(str(folder), reading=Reading(images=images))
        samples = data.inputs[0]
        batch = (samples[:BATCH],)  # also starts the workers before timing
        start = time.perf_counter()
        for b in range(1, len(samples) // BATCH):
            samples[b * BATCH:(b + 1) * BATCH]
        rates[f"pipeline, {workers} workers"] = (len(samples) // BATCH - 1) * BATCH / (time.perf_counter() - start)
    model = Model(kind="torch", module=build_resnet18().eval(), example_inputs=batch, input_names=["x"],
                  source="resnet18", format="factory")
    with tempfile.TemporaryDirectory() as tmp:
        runner = OrtRunner(export_onnx(model, Path(tmp) / "cnn.onnx").onnx_path, THREADS)
        for _ in range(2):
            runner.run(batch)
        start, runs = time.perf_counter(), 5
        for _ in range(runs):
            runner.run(batch)
        rates["model (ONNX Runtime)"] = runs * BATCH / (time.perf_counter() - start)
    return rates


def distill_accuracy(processes: int, work: Path) -> float:
    """The distilled student's accuracy on the digits test set, trained by `processes` processes."""
    import json

    root = HERE.parent.parent
    out, report = work / f"student{processes}.pt2", work / f"distill{processes}.json"
    command = ["-m", "effkit", "distill", "examples/digits.py:mlp", "--student-from-prune", "0.5", "--data",
               "examples/data/digits_train.npz", "--val-data", "examples/data/digits_test.npz", "--epochs", "5",
               "--seed", "0", "-o", str(out), "--json", str(report), "--force"]
    launcher = ([str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", str(processes)]
                if processes > 1 else [sys.executable])
    done = subprocess.run([*launcher, *command], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"effkit distill failed:\n{done.stderr[-2000:]}")
    return json.loads(report.read_text())["accuracy"]["after"]


def memory(work: Path, small: int, large: int) -> None:
    """Part 1: quantize's peak memory over a folder of `small` and of `large` images."""
    peaks = {}
    for n in (small, large):
        start = time.perf_counter()
        folder = make_images(work / f"images{n}", n)
        made = time.perf_counter() - start
        peaks[n], wall = peak_memory_run(folder, work)
        print(f"  quantize (static, calibrated and judged on the folder), {n:>6,} images: "
              f"peak {peaks[n]:7.1f} MB, {wall:6.1f} s  (images made in {made:.0f} s)", flush=True)
    growth = peaks[large] - peaks[small]
    print(f"  peak memory growth {small:,} -> {large:,} images: {growth:+.1f} MB "
          f"(goal <= 200 MB: {'met' if growth <= 200 else 'NOT met'})")


def pipeline(work: Path, quick: bool) -> None:
    """Part 2: the image pipeline's throughput against the model's."""
    photos = make_images(work / "photos", (4 if quick else 10) * BATCH, size=(240, 320), suffix="jpg")
    rates = throughput(photos)
    model_rate = rates["model (ONNX Runtime)"]
    for name, rate in rates.items():
        print(f"  {name:<22} {rate:9.0f} images/s  ({rate / model_rate:.2f}x the model)")
    ratio = rates["pipeline, 2 workers"] / model_rate
    print(f"  pipeline with 2 workers at {ratio:.2f}x the model's throughput "
          f"(goal >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 and 2,000 images")
    parser.add_argument("--parts", default="memory,pipeline,distill", help="comma-separated parts to run")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= {"memory", "pipeline", "distill"}:
        parser.error(f"unknown part(s): {', '.join(sorted(parts - {'memory', 'pipeline', 'distill'}))}")
    small, large = (200, 2_000) if args.quick else (1_000, 50_000)
    import torch

    from effkit.env import cpu_info

    print(f"# effkit data at scale{' (quick)' if args.quick else ''}: {cpu_info()['model']}, {os.cpu_count()} cores, "
          f"{THREADS} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "memory" in parts:
            memory(work, small, large)
        if "pipeline" in parts:
            pipeline(work, args.quick)
        if "distill" in parts:
            one, two = distill_accuracy(1, work), distill_accuracy(2, work)
            gap = 100 * abs(two - one)
            print(f"  distill, digits: 1 process {100 * one:.2f}%, 2 processes {100 * two:.2f}% "
                  f"({gap:.2f} pt apart; goal <= 0.5 pt: {'met' if gap <= 0.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
