"""Models over 2 GB (issue 16): does effkit quantize a ~3 GB fp32 ONNX model, with its weights in external
data, in at most 2.5x the model's size of memory, and does the result load and match?

The model: a chain of 11 MatMuls with seeded 8192 x 8192 float32 weights scaled by 1/sqrt(8192) (2.95 GB),
written with onnx.helper, its weights in one external data file beside it. Each run is one effkit
command in a fresh process: `effkit bench MODEL`, then `effkit quantize MODEL --method dynamic -o q.onnx`
(ONNX Runtime, per-channel and per-tensor candidates, judged on random inputs). Its peak resident
memory is the larger of the child's `resource` usage at exit (os.wait4, the per-child form of
getrusage(RUSAGE_CHILDREN)) and its VmHWM polled every 20 ms while it runs: effkit resets the high-water
mark to measure each model's peak memory, so the figure at exit alone would miss the peaks before the
last reset. The int8 result is then loaded in ONNX Runtime and compared with the fp32 chain computed
in numpy, one weight at a time (cosine, min over 8 random inputs).

Needs about 3.5x the model's size of free disk where temporary files go (the model, effkit's work
copies, the int8 output). Run it alone on an otherwise idle machine:

    .venv/bin/python benchmarks/large_model.py            # the 3 GB model (minutes, ~8 GB of memory)
    .venv/bin/python benchmarks/large_model.py --quick    # a 32 MB model taking the same path
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOAL = 2.5  # peak memory of quantize, in model sizes
THREADS = 2
# The child: effkit's CLI, with models over `threshold` bytes taken as large (the quick run lowers it
# so that its small model takes the path of a 3 GB one; -1 keeps effkit's own threshold).
CHILD = """
import sys
from effkit import onnx_files
if int(sys.argv[1]) >= 0:
    onnx_files.EXTERNAL_DATA_THRESHOLD = int(sys.argv[1])
sys.argv = ["effkit", *sys.argv[2:]]
from effkit.cli import app
app()
"""


def make_model(path: Path, dim: int, layers: int) -> None:
    """Write the MatMul chain at `path` with its weights in `path.name + '.weights'` (seeded, one weight
    in memory at a time)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    data = path.with_name(path.name + ".weights")
    inits, nodes = [], []
    with open(data, "wb") as f:
        for i in range(layers):
            w = rng.standard_normal((dim, dim), dtype=np.float32)
            w *= np.float32(1 / np.sqrt(dim))
            offset = f.tell()
            f.write(w.tobytes())
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[dim, dim],
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(w.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            inits.append(tensor)
            nodes.append(helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"],
                                          ["y" if i == layers - 1 else f"h{i}"], name=f"matmul{i}"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])], inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def fp32_reference(path: Path, x: np.ndarray, dim: int, layers: int) -> np.ndarray:
    """The chain's fp32 output in numpy, reading one weight at a time from the data file."""
    data = path.with_name(path.name + ".weights")
    for i in range(layers):
        x = x @ np.fromfile(data, dtype=np.float32, count=dim * dim, offset=i * dim * dim * 4).reshape(dim, dim)
    return x


def files_bytes(path: Path) -> tuple[int, list[str]]:
    """Bytes of an ONNX file and the external data files it names, and their names."""
    from effkit.onnx_files import external_files

    names = [path.name, *sorted(external_files(path))]
    return sum((path.parent / n).stat().st_size for n in names), names


def peak_run(args: list[str], threshold: int, cwd: Path) -> tuple[int, float, str]:
    """Peak resident bytes, wall seconds and stderr of one effkit command in a fresh process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(threshold), *args], cwd=cwd,
                                 stdout=subprocess.DEVNULL, stderr=err, text=True)
        status = Path(f"/proc/{child.pid}/status")
        polled = 0
        while True:
            pid, code, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            try:
                hwm = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
                polled = max(polled, int(hwm.split()[1]) * 1024)
            except (OSError, StopIteration):  # exiting
                pass
            time.sleep(0.02)
        child.returncode = os.waitstatus_to_exitcode(code)
        wall = time.perf_counter() - start
        err.seek(0)
        stderr = err.read()
    if child.returncode != 0:
        raise SystemExit(f"effkit {' '.join(args)} failed ({child.returncode}):\n{stderr[-3000:]}")
    return max(polled, usage.ru_maxrss * 1024), wall, stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 32 MB model (1024 x 1024 weights) taking the same path")
    args = parser.parse_args()
    dim, layers, threshold = (1024, 8, 2**20) if args.quick else (8192, 11, -1)
    model_bytes = dim * dim * 4 * layers

    from effkit.env import cpu_info

    print(f"# effkit large ONNX model{' (quick)' if args.quick else ''}: {cpu_info()['model']}, {os.cpu_count()} "
          f"cores, {THREADS} threads, {time.strftime('%Y-%m-%d')}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="effkit-large-"))
    try:
        free = shutil.disk_usage(work).free
        if free < 3.5 * model_bytes:
            raise SystemExit(f"not enough free disk in {work.parent}: {free / 1e9:.1f} GB free, about "
                             f"{3.5 * model_bytes / 1e9:.1f} GB needed (set TMPDIR to a larger disk)")
        model = work / "model.onnx"
        start = time.perf_counter()
        make_model(model, dim, layers)
        size, names = files_bytes(model)
        print(f"  model: {layers} MatMuls of {dim}x{dim} fp32, {size / 1e9:.2f} GB ({', '.join(names)}), "
              f"made in {time.perf_counter() - start:.0f} s", flush=True)
        common = ["--threads", str(THREADS), "--warmup", "1", "--iterations", "3"]
        peak, wall, _ = peak_run(["bench", str(model), *common], threshold, work)
        print(f"  bench:    peak {peak / 1e9:5.2f} GB = {peak / size:.2f}x the model, {wall:5.0f} s", flush=True)
        peak, wall, _ = peak_run(["quantize", str(model), "--method", "dynamic", "-o", "q.onnx", "--json", "q.json",
                                  "--min-time", "0.5", *common], threshold, work)
        out_size, out_names = files_bytes(work / "q.onnx")
        verdict = ("quick: the interpreter and its libraries outweigh so small a model" if args.quick
                   else "met" if peak <= GOAL * size else "NOT met")
        print(f"  quantize: peak {peak / 1e9:5.2f} GB = {peak / size:.2f}x the model (goal <= {GOAL}x: {verdict}), "
              f"{wall:5.0f} s; output {out_size / 1e9:.2f} GB ({', '.join(out_names)})", flush=True)
        report = json.loads((work / "q.json").read_text())
        print(f"  chosen: {report['details']['label']}; sizes in its report: "
              f"{report['before']['size']['bytes_on_disk'] / 1e9:.2f} GB -> "
              f"{report['after']['size']['bytes_on_disk'] / 1e9:.2f} GB (data files counted)")
        import onnxruntime as ort

        x = np.random.default_rng(1).standard_normal((8, dim)).astype(np.float32)
        session = ort.InferenceSession(str(work / "q.onnx"), providers=["CPUExecutionProvider"])
        got, want = session.run(None, {"x": x})[0], fp32_reference(model, x, dim, layers)
        cosine = min(float(g @ w / np.linalg.norm(g) / np.linalg.norm(w)) for g, w in zip(got, want))
        print(f"  result: loads in ONNX Runtime; cosine to the fp32 chain {cosine:.5f} (min over {len(x)} inputs)")
        print(f"  this process: peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB "
              "(generating the model and checking the result)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
