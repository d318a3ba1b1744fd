"""effkit quantize --backend auto against the int8 paths people call by hand, side by side in one run.

Three reference models built in code: an MLP 784-1024-1024-10 (batch 1 and 64), a ResNet-18-style
CNN (3x224x224, batch 1) and a BERT-base-like encoder (6 layers, hidden 768, 12 heads, seq 128,
batch 1). For each, with 2 threads, timed in interleaved rounds (a busy machine slows all alike):

  torch fp32 eager and compiled; torch.ao dynamic int8; torch.ao FX static int8 (x86);
  torchao int8 dynamic-activation (eager and compiled) and PT2E with the X86 Inductor quantizer
  (compiled); ONNX Runtime fp32; onnxruntime.quantization quantize_dynamic and quantize_static
  (QDQ, u8 and s8 activations) called directly; and effkit's quantize --backend auto with the same
  calibration data the static anchors get.

Printed per anchor: latency p50, speedup over torch fp32 eager, size ratio (serialized artifact
against fp32) and cosine (min over held-out inputs) against torch fp32 eager. An anchor whose
library is missing or that fails prints "n/a (reason)". The goal: effkit's choice at least as fast
as the fastest anchor on every model, at <= 0.26x the fp32 size, with cosine >= 0.999.

    .venv/bin/python benchmarks/quantize_vs_anchors.py            # full size (minutes; run it alone)
    .venv/bin/python benchmarks/quantize_vs_anchors.py --quick    # smoke run: small shapes, few calls
    .venv/bin/python benchmarks/quantize_vs_anchors.py --models mlp,cnn

torchao anchors need `pip install torchao==0.18.0` (the `bench` extra); without it they print n/a.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

THREADS = 2
CALIB_SAMPLES = 32
FIDELITY_SAMPLES = 4


# ---------------------------------------------------------------- reference models

def build_mlp():
    from torch import nn

    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


def build_resnet18(width: int = 64, classes: int = 1000):
    """ResNet-18 layout (BasicBlocks 2-2-2-2), each ReLU use its own module (PT2E quantizers and
    FX fusion pattern-match per module use)."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu1 = nn.ReLU()
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            self.relu2 = nn.ReLU()

        def forward(self, x):
            y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
            return self.relu2(y + (x if self.down is None else self.down(x)))

    layers = [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = width
    for i, cout in enumerate([width, width * 2, width * 4, width * 8]):
        layers += [Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    model = nn.Sequential(*layers)
    for m in model.modules():  # non-trivial BatchNorm statistics, as in a trained network
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.running_mean.uniform_(-0.1, 0.1)
    return model


def build_encoder(layers: int = 6, hidden: int = 768, heads: int = 12):
    """BERT-base-like encoder on embeddings: explicit q/k/v/out Linears, GELU FFN, post-LayerNorm."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = heads
            self.q, self.k, self.v = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
            self.out = nn.Linear(hidden, hidden)
            self.norm1 = nn.LayerNorm(hidden)
            self.ff1, self.ff2 = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)
            self.gelu = nn.GELU()
            self.norm2 = nn.LayerNorm(hidden)

        def forward(self, x):
            b, s, d = x.shape
            split = lambda t: t.view(b, s, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
            att = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
            x = self.norm1(x + self.out(att.transpose(1, 2).reshape(b, s, d)))
            return self.norm2(x + self.ff2(self.gelu(self.ff1(x))))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(*[Layer() for _ in range(layers)])

        def forward(self, x):
            return self.layers(x)

    _ = torch
    return Encoder()


def cases(quick: bool, names: list[str]) -> list[dict]:
    """(name, builder, input shape) per benchmark case; --quick shrinks the heavy ones."""
    all_cases = [
        {"name": "mlp b1", "key": "mlp", "build": build_mlp, "shape": (1, 784)},
        {"name": "mlp b64", "key": "mlp", "build": build_mlp, "shape": (64, 784)},
        {"name": "resnet18 b1", "key": "cnn", "build": (lambda: build_resnet18(16, 100)) if quick else build_resnet18,
         "shape": (1, 3, 64, 64) if quick else (1, 3, 224, 224)},
        {"name": "encoder b1", "key": "encoder", "build": (lambda: build_encoder(2, 256, 4)) if quick else build_encoder,
         "shape": (1, 32, 256) if quick else (1, 128, 768)},
    ]
    return [c for c in all_cases if c["key"] in names]


# ---------------------------------------------------------------- helpers

@contextlib.contextmanager
def quiet():
    """torch.ao deprecation warnings, torchao's import chatter, compile logs: not results."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def tensors(arrays):
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


def torch_call(module, example):
    import torch

    args = tensors(example)

    def call():
        with torch.inference_mode():
            return module(*args)

    return call


def torch_outputs(module, inputs):
    import torch

    from effkit.runners import flatten_outputs

    with torch.inference_mode():
        return flatten_outputs(module(*tensors(inputs)))


def state_size(module) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:90] if text else type(e).__name__)


class Anchor:
    """One way to run the model: a zero-argument call for timing, outputs on held-out inputs, size."""

    def __init__(self, name: str):
        self.name, self.call, self.size, self.cosine, self.error, self.latency = name, None, None, None, None, None
        self.note = ""


# ---------------------------------------------------------------- the anchors

def run_case(case: dict, args) -> list[Anchor]:
    import torch

    from effkit.fidelity import compare_outputs, held_out_inputs

    torch.manual_seed(0)
    model = case["build"]().eval()
    rng = np.random.default_rng(0)
    example = (rng.standard_normal(case["shape"]).astype(np.float32),)
    batch = case["shape"][0]
    calib_rows = rng.standard_normal((max(CALIB_SAMPLES, batch), *case["shape"][1:])).astype(np.float32)
    calib_batches = [(calib_rows[i:i + batch],) for i in range(0, len(calib_rows) - batch + 1, batch)]
    held_out = held_out_inputs(example, FIDELITY_SAMPLES, seed=11)
    reference = [torch_outputs(model, b) for b in held_out]
    fp32_size = state_size(model)
    work = Path(tempfile.mkdtemp(prefix="effkit-bench-"))
    onnx_fp32 = work / "fp32.onnx"

    anchors: list[Anchor] = []

    def add(name: str, make):
        """make() -> (call, outputs_fn, size_bytes, note); failures become n/a rows."""
        anchor = Anchor(name)
        anchors.append(anchor)
        print(f"  building {name} ...", file=sys.stderr, flush=True)
        try:
            with quiet():
                call, outputs_fn, size, note = make()
                anchor.cosine = compare_outputs(reference, [outputs_fn(b) for b in held_out])["cosine_min"]
                call()  # first call: compile / warm caches outside the timing
            anchor.call, anchor.size, anchor.note = call, size / fp32_size, note
        except ImportError as e:
            anchor.error = f"not installed: {e.name or first_line(e)}"
        except Exception as e:
            anchor.error = f"{type(e).__name__}: {first_line(e)}"

    def eager(module, size, note=""):
        return torch_call(module, example), (lambda b: torch_outputs(module, b)), size, note

    def compiled(module, size, note=""):
        with quiet():
            c = torch.compile(module)
        return eager(c, size, note)

    # torch fp32
    add("torch fp32 eager", lambda: eager(model, fp32_size))
    add("torch fp32 compiled", lambda: compiled(copy.deepcopy(model), fp32_size))

    # torch.ao (deprecated on 2.13, still runs)
    def ao_dynamic():
        from torch.ao.quantization import quantize_dynamic

        q = quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
        return eager(q, state_size(q), "Linear only")

    def ao_fx_static():
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), tensors(example))
        with torch.inference_mode():
            for b in calib_batches:
                prepared(*tensors(b))
        q = convert_fx(prepared)
        return eager(q, state_size(q))

    add("torch.ao dynamic int8", ao_dynamic)
    add("torch.ao FX static int8 (x86)", ao_fx_static)

    # torchao
    def torchao_dynamic(compile_it: bool):
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        q = copy.deepcopy(model)
        quantize_(q, Int8DynamicActivationInt8WeightConfig())
        size = state_size(q)
        return compiled(q, size) if compile_it else eager(q, size)

    def torchao_pt2e():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config,
        )

        quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
        exported = torch.export.export(copy.deepcopy(model), tensors(example)).module()
        prepared = prepare_pt2e(exported, quantizer)
        for b in calib_batches:
            prepared(*tensors(b))
        q = convert_pt2e(prepared)
        size = state_size(q)
        return compiled(q, size, "static u8/s8, compiled; size: fp32 weights kept until compile folds them")

    add("torchao int8 dyn-act eager", lambda: torchao_dynamic(False))
    add("torchao int8 dyn-act compiled", lambda: torchao_dynamic(True))
    add("torchao PT2E X86Inductor", torchao_pt2e)

    # ONNX Runtime, called directly
    from effkit.runners import OrtRunner

    def export_fp32():
        if not onnx_fp32.exists():
            torch.onnx.export(model, tensors(example), str(onnx_fp32), dynamo=True, input_names=["x"],
                              dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), verbose=False)
        return onnx_fp32

    def ort(path: Path, note=""):
        runner = OrtRunner(path, THREADS)
        sidecar = path.with_name(path.name + ".data")  # the exporter stores large weights beside the graph
        size = path.stat().st_size + (sidecar.stat().st_size if sidecar.exists() else 0)
        return runner.bind(example), runner.run, size, note

    def ort_dynamic():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = work / "dynamic.onnx"
        quantize_dynamic(str(export_fp32()), str(out), weight_type=QuantType.QInt8)
        return ort(out)

    def ort_static(activation: str):
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter([{"x": b[0]} for b in calib_batches])

            def get_next(self):
                return next(self.items, None)

        out = work / f"static_{activation}.onnx"
        act = QuantType.QUInt8 if activation == "u8" else QuantType.QInt8
        quantize_static(str(export_fp32()), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=act, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": activation == "s8"})
        return ort(out)

    add("onnxruntime fp32", lambda: ort(export_fp32()))
    add("ORT quantize_dynamic", ort_dynamic)
    add("ORT quantize_static QDQ u8s8", lambda: ort_static("u8"))
    add("ORT quantize_static QDQ s8s8", lambda: ort_static("s8"))

    # effkit
    def effkit_auto():
        from effkit.data import Data
        from effkit.model import Model
        from effkit.passes.quantize import QuantizeConfig, quantize
        from effkit.export import make_runner

        m = Model(kind="torch", module=copy.deepcopy(model), example_inputs=example, input_names=["x"],
                  source=case["name"], format="factory")
        config = QuantizeConfig(backend="auto", calib_samples=len(calib_rows), tolerance=("cosine>=0.999",))
        result = quantize(m, config, calib=Data((calib_rows,), None, "bench"), threads=THREADS,
                          candidate_time=args.candidate_time)
        chosen = result.model
        runner = make_runner(chosen, "torch" if chosen.kind == "torch" else "onnxruntime", THREADS)
        size = next(c["size_bytes"] for c in result.details["candidates"] if c["status"] == "chosen")
        # effkit sizes artifacts on disk; rescale by the fp32 state_dict for one common denominator
        from effkit.size import size_info

        size = size / size_info(m)["bytes_on_disk"] * fp32_size
        return runner.bind(example), runner.run, size, result.details["label"]

    add("effkit quantize --backend auto", effkit_auto)

    ready = {a.name: a.call for a in anchors if a.call is not None}
    print(f"  timing {len(ready)} anchors, interleaved ...", file=sys.stderr, flush=True)
    from effkit.passes.quantize import time_interleaved

    timings = time_interleaved(ready, seconds=args.seconds, iterations=args.iterations, rounds=args.rounds)
    for a in anchors:
        a.latency = timings.get(a.name)
    return anchors


# ---------------------------------------------------------------- report

def print_table(case: dict, anchors: list[Anchor]) -> None:
    base = next((a.latency for a in anchors if a.name == "torch fp32 eager"), None)
    int8 = [a for a in anchors if a.latency and "fp32" not in a.name and not a.name.startswith("effkit")]
    fastest = min(int8, key=lambda a: a.latency) if int8 else None
    print(f"\n## {case['name']}  input {'x'.join(map(str, case['shape']))}, {THREADS} threads")
    print(f"{'anchor':34} {'p50 ms':>10} {'vs torch fp32':>14} {'size':>7} {'cosine':>9}  note")
    for a in anchors:
        if a.error:
            print(f"{a.name:34} n/a ({a.error})")
            continue
        speed = f"{base / a.latency:.2f}x" if base and a.latency else "-"
        print(f"{a.name:34} {a.latency:10.3f} {speed:>14} {a.size:6.2f}x {a.cosine:9.5f}  {a.note}")
    ours = next((a for a in anchors if a.name.startswith("effkit") and a.latency), None)
    if ours and fastest:
        verdict = []
        verdict.append("as fast as the fastest anchor" if ours.latency <= fastest.latency * 1.05 else
                       f"{ours.latency / fastest.latency:.2f}x the latency of the fastest anchor ({fastest.name})")
        verdict.append("size ok" if ours.size <= 0.26 else f"size {ours.size:.2f}x > 0.26x")
        verdict.append("cosine ok" if ours.cosine >= 0.999 else f"cosine {ours.cosine:.5f} < 0.999")
        print(f"effkit: {'; '.join(verdict)} (fastest anchor: {fastest.name}, {fastest.latency:.3f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small shapes, few timed calls")
    parser.add_argument("--models", default="mlp,cnn,encoder", help="comma-separated: mlp, cnn, encoder")
    args = parser.parse_args()
    args.seconds = 0.3 if args.quick else 3.0
    args.rounds = 2 if args.quick else 5
    args.iterations = 3 if args.quick else None
    args.candidate_time = 0.1 if args.quick else 1.0
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    import torch

    torch.set_num_threads(THREADS)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = set(names) - {"mlp", "cnn", "encoder"}
    if unknown:
        parser.error(f"unknown model(s): {', '.join(sorted(unknown))}")
    from effkit.env import cpu_info

    cpu = cpu_info()
    print(f"# effkit quantize vs anchors{' (quick)' if args.quick else ''}: {cpu['model']}, ISA {' '.join(cpu['isa'])}, "
          f"torch {torch.__version__}")
    for case in cases(args.quick, names):
        print(f"[{case['name']}]", file=sys.stderr, flush=True)
        start = time.perf_counter()
        anchors = run_case(case, args)
        print_table(case, anchors)
        print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
