"""Transformers: effkit quantize (no method named) against the int8/bf16 paths people call by hand.

Two encoders from tests/models_transformer.py, seeded weights, fed realistic token batches (Zipf ids,
varied lengths, padding, attention mask), 2 threads, timed in interleaved rounds:

  outlier  BERT-like encoder whose LayerNorm outputs carry channels 20-100x larger than the rest, as in
           real checkpoints (4 layers, hidden 384, seq 128; --quick: 2 layers, 64, seq 32)
  base     BERT-base-shaped encoder without outliers (12 layers, hidden 768, seq 128; --quick: 2, 128, 32)

Anchors: torch fp32; ONNX Runtime fp32; ORT quantize_dynamic per-tensor and per-channel; ORT static
QDQ; SmoothQuant (effkit's smoothing, alpha searched) + ORT static QDQ; torch.ao dynamic int8;
torchao int8 dynamic-activation (if installed); torch bf16 (where the CPU has avx512_bf16/amx_bf16).
effkit: `quantize` with calibration data and the default tolerance (cosine >= 0.99).

Printed per anchor: p50 latency, speedup over ONNX Runtime fp32, size against fp32, min cosine over
held-out sequences against torch fp32. The goals (issue 14): on the outlier encoder effkit's choice
has cosine >= 0.99 at >= 1.8x ONNX Runtime fp32 and size <= 0.3x; on base it is at least as fast as
the fastest anchor with cosine >= 0.999.

    .venv/bin/python benchmarks/transformers_int8.py            # full size (minutes; run it alone)
    .venv/bin/python benchmarks/transformers_int8.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from quantize_vs_anchors import Anchor, first_line, quiet, state_size, tensors, torch_outputs  # noqa: E402

THREADS = 2
CALIB = 32
HELD_OUT = 16


def cases(quick: bool) -> list[dict]:
    if quick:
        return [{"name": "outlier", "outliers": True, "shape": dict(layers=2, hidden=64, heads=4), "seq": 32},
                {"name": "base", "outliers": False, "shape": dict(layers=2, hidden=128, heads=4), "seq": 32}]
    return [{"name": "outlier", "outliers": True, "shape": dict(layers=4, hidden=384, heads=6), "seq": 128},
            {"name": "base", "outliers": False, "shape": dict(layers=12, hidden=768, heads=12), "seq": 128}]


def run_case(case: dict, args) -> list[Anchor]:
    import torch

    import models_transformer as mt
    from effkit.data import Data
    from effkit.env import cpu_info
    from effkit.export import make_runner
    from effkit.fidelity import compare_outputs
    from effkit.model import Model
    from effkit.passes.quantize import QuantizeConfig, quantize, time_interleaved
    from effkit.passes.onnx_preprocess import preprocess
    from effkit.passes.quantize_ort import quantize_dynamic, quantize_static
    from effkit.passes.smoothquant import smooth_onnx
    from effkit.export import onnx_path_for
    from effkit.runners import OrtRunner

    seq = case["seq"]
    model, example = mt.build(outliers=case["outliers"], batch=1, seq=seq, **case["shape"])
    example = tuple(t.numpy() for t in example)
    vocab = model.words.num_embeddings
    calib = mt.token_batch(CALIB, seq, vocab, seed=3)
    held = mt.token_batch(HELD_OUT, seq, vocab, seed=21)
    held_out = [(held[0][i:i + 1], held[1][i:i + 1]) for i in range(HELD_OUT)]
    calib_batches = [(calib[0][i:i + 1], calib[1][i:i + 1]) for i in range(CALIB)]
    reference = [torch_outputs(model, b) for b in held_out]
    fp32_size = state_size(model)
    effkit_model = Model(kind="torch", module=model, example_inputs=example, input_names=["input_ids", "attention_mask"],
                         source=case["name"], format="factory")
    anchors: list[Anchor] = []

    def add(name: str, make):
        anchor = Anchor(name)
        anchors.append(anchor)
        print(f"  building {name} ...", file=sys.stderr, flush=True)
        try:
            with quiet():
                call, outputs_fn, size, note = make()
                anchor.cosine = compare_outputs(reference, [outputs_fn(b) for b in held_out])["cosine_min"]
                call()
            anchor.call, anchor.size, anchor.note = call, size / fp32_size, note
        except ImportError as e:
            anchor.error = f"not installed: {e.name or first_line(e)}"
        except Exception as e:
            anchor.error = f"{type(e).__name__}: {first_line(e)}"

    def eager(module, size, note=""):
        def run(batch):
            with torch.inference_mode():
                out = module(*tensors(batch))
            return [out.float().numpy()]

        args_ = tensors(example)

        def call():
            with torch.inference_mode():
                return module(*args_)
        return call, run, size, note

    def ort(path: Path, note=""):
        runner = OrtRunner(path, THREADS)
        sidecar = path.with_name(path.name + ".data")
        size = path.stat().st_size + (sidecar.stat().st_size if sidecar.exists() else 0)
        return runner.bind(example), runner.run, size, note

    with quiet():
        fp32_onnx, _ = preprocess(onnx_path_for(effkit_model))

    add("torch fp32", lambda: eager(model, fp32_size))
    add("onnxruntime fp32", lambda: ort(fp32_onnx))
    add("ORT quantize_dynamic per-tensor",
        lambda: ort(quantize_dynamic(fp32_onnx, per_channel=False, weight_type="s8", exclude=[])))
    add("ORT quantize_dynamic per-channel",
        lambda: ort(quantize_dynamic(fp32_onnx, per_channel=True, weight_type="s8", exclude=[])))
    add("ORT static QDQ u8/s8", lambda: ort(quantize_static(
        fp32_onnx, calib_batches, per_channel=True, activation_type="u8", weight_type="s8", calib_method="minmax",
        exclude=[])))
    add("SmoothQuant + ORT static QDQ", lambda: ort(quantize_static(
        smooth_onnx(fp32_onnx, calib_batches, None)[0], calib_batches, per_channel=True, activation_type="u8",
        weight_type="s8", calib_method="minmax", exclude=[]), "alpha searched per LayerNorm"))

    def ao_dynamic():
        from torch.ao.quantization import quantize_dynamic as ao

        q = ao(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
        return eager(q, state_size(q))

    def torchao_dynamic():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        q = copy.deepcopy(model)
        quantize_(q, Int8DynamicActivationInt8WeightConfig())
        return eager(q, state_size(q))

    def bf16():
        isa = cpu_info()["isa"]
        if not {"avx512_bf16", "amx_bf16"} & set(isa):
            raise RuntimeError("this CPU has neither avx512_bf16 nor amx_bf16")
        q = copy.deepcopy(model).to(torch.bfloat16)  # embeddings take int ids; all float math runs in bf16
        return eager(q, state_size(q))

    add("torch.ao dynamic int8", ao_dynamic)
    add("torchao int8 dyn-act", torchao_dynamic)
    add("torch bf16", bf16)

    def effkit_default():
        result = quantize(effkit_model, QuantizeConfig(calib_samples=CALIB), calib=Data(calib, None, "bench"),
                          threads=THREADS, candidate_time=args.candidate_time)
        chosen = result.model
        runner = make_runner(chosen, "torch" if chosen.kind == "torch" else "onnxruntime", THREADS)
        size = next(c["size_bytes"] for c in result.details["candidates"] if c["status"] == "chosen")
        from effkit.size import size_info

        size = size / size_info(effkit_model)["bytes_on_disk"] * fp32_size
        kept = result.details.get("kept_in_float") or []
        for c in result.details["candidates"]:  # what effkit measured, and how it decided
            print(f"    {c['label']:52} {c['status'][:60]}", file=sys.stderr)
        for d in (result.details.get("decision") or {}).get("compared", []):
            rounds = ", ".join(f"{r['verdict']} {r['speedup']:.3f}" if r["speedup"] else r["verdict"] for r in d["rounds"])
            print(f"    paired: {d['candidate']} against {d['against']}: {d['verdict']} "
                  f"[{', '.join(f'{x:.3f}' for x in d['ci95'] or [])}] (rounds: {rounds}; pooled {d['pooled']})",
                  file=sys.stderr)
        for note in result.notes:
            print(f"    note: {note}", file=sys.stderr)
        return runner.bind(example), runner.run, size, result.details["label"] + (f", {len(kept)} float" if kept else "")

    add("effkit quantize (default)", effkit_default)

    ready = {a.name: a.call for a in anchors if a.call is not None}
    print(f"  timing {len(ready)} anchors, interleaved ...", file=sys.stderr, flush=True)
    timings = time_interleaved(ready, seconds=args.seconds, iterations=args.iterations, rounds=args.rounds)
    for a in anchors:
        a.latency = timings.get(a.name)
    return anchors


def print_table(case: dict, anchors: list[Anchor]) -> None:
    base = next((a.latency for a in anchors if a.name == "onnxruntime fp32"), None)
    print(f"\n## {case['name']} encoder {case['shape']}, seq {case['seq']}, batch 1, {THREADS} threads")
    print(f"{'anchor':34} {'p50 ms':>10} {'vs ORT fp32':>12} {'size':>7} {'cosine':>9}  note")
    for a in anchors:
        if a.error:
            print(f"{a.name:34} n/a ({a.error})")
            continue
        speed = f"{base / a.latency:.2f}x" if base and a.latency else "-"
        print(f"{a.name:34} {a.latency:10.3f} {speed:>12} {a.size:6.2f}x {a.cosine:9.5f}  {a.note}")
    ours = next((a for a in anchors if a.name.startswith("effkit") and a.latency), None)
    others = [a for a in anchors if a.latency and "fp32" not in a.name and not a.name.startswith("effkit")]
    if ours and base:
        fastest = min(others, key=lambda a: a.latency) if others else None
        bar = 0.99 if case["name"] == "outlier" else 0.999
        verdict = [f"{base / ours.latency:.2f}x ORT fp32", f"size {ours.size:.2f}x",
                   f"cosine {ours.cosine:.5f} ({'ok' if ours.cosine >= bar else 'below'} {bar})"]
        if fastest:
            verdict.append(f"{ours.latency / fastest.latency:.2f}x the latency of the fastest anchor ({fastest.name})")
        print("effkit: " + "; ".join(verdict))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small shapes, few timed calls")
    parser.add_argument("--case", choices=("outlier", "base"), help="run one encoder only")
    args = parser.parse_args()
    args.seconds = 0.3 if args.quick else 3.0
    args.rounds = 2 if args.quick else 5
    args.iterations = 3 if args.quick else None
    args.candidate_time = 0.1 if args.quick else 1.0
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    import torch

    torch.set_num_threads(THREADS)
    from datetime import date

    from effkit.env import cpu_info

    cpu = cpu_info()
    print(f"# effkit transformers benchmark, {date.today()}, {cpu['model']} ({', '.join(cpu['isa'])})")
    for case in [c for c in cases(args.quick) if args.case in (None, c["name"])]:
        print(f"{case['name']} ...", file=sys.stderr, flush=True)
        print_table(case, run_case(case, args))


if __name__ == "__main__":
    main()
