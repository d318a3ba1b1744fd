"""Generation speed of a GPT-2-small-shaped causal LM (124M parameters, built from a config with seeded
weights) under the compressions people apply to LLMs, side by side in one run.

Batch 1, a 128-token prompt, 64 new tokens, 2 threads (run it alone on the machine). Every row generates
greedily with the model's KV cache through effkit's generation loop (effkit.generation.greedy) and
prints: time to first token, decode ms per token (p50), decode tokens/s and its ratio to torch fp32
eager, peak RSS of the whole process so far, size against fp32 (weights in memory), and greedy
agreement: how many of the 64 tokens match torch fp32's. Random weights make perplexity meaningless,
so none is reported here.

Rows on torch: fp32 eager; bf16 (when the CPU has avx512_bf16 or AMX); torch.ao dynamic int8. Rows on
ONNX Runtime cannot generate yet (effkit has no export with past key/values), so for effkit's
weight-only int4/int8 (MatMulNBits) the script prints size and the prefill (one forward pass over the
prompt) speed against ONNX Runtime fp32 instead, marked as such. torchao anchors are not run (torchao is
not installed in this environment).

    .venv/bin/python benchmarks/llm.py            # GPT-2 small shape (minutes)
    .venv/bin/python benchmarks/llm.py --quick    # tiny model, seconds: checks that the script runs
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(folder: Path, quick: bool) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    config = (transformers.GPT2Config(vocab_size=512, n_positions=256, n_embd=64, n_layer=2, n_head=4) if quick
              else transformers.GPT2Config())  # 124M: 12 layers, 768 wide, 12 heads, 50257 tokens
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(str(folder))
    return folder


def generate_row(name, module, ids, new_tokens, reference, runs):
    from effkit.benchmark import PeakMemory
    from effkit.generation import greedy

    greedy(module, ids, new_tokens)  # warm-up
    ttft, decode, tokens = [], [], None
    with PeakMemory() as memory:
        for _ in range(runs):
            tokens, prefill_ms, steps = greedy(module, ids, new_tokens)
            ttft.append(prefill_ms)
            decode += steps
    p50 = float(np.median(decode))
    agree = int((tokens[0] == reference[0]).sum()) if reference is not None else new_tokens
    return {"name": name, "ttft": float(np.median(ttft)), "decode_p50": p50, "tps": 1000.0 / p50,
            "rss": memory.peak_bytes, "agree": agree, "tokens": tokens}


def weights_bytes(module) -> int:
    total = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
    for m in module.modules():  # torch.ao dynamic int8 keeps packed weights outside parameters
        weight = getattr(m, "weight", None)
        if callable(weight) and hasattr(m, "_packed_params"):
            w = weight()
            total += w.numel() * w.element_size()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and few tokens")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from effkit.env import cpu_info
    from effkit.load import load_model

    torch.set_num_threads(args.threads)
    prompt_len, new_tokens, runs = (16, 8, 2) if args.quick else (128, 64, 3)
    work = Path(tempfile.mkdtemp(prefix="effkit-llm-"))
    model = load_model(f"hf:{build(work / 'gpt2', args.quick)}")
    fp32 = model.module.inner
    ids = np.random.default_rng(0).integers(0, fp32.config.vocab_size, (1, prompt_len)).astype(np.int64)
    base_size = weights_bytes(fp32)
    rows = [generate_row("torch fp32 eager", fp32, ids, new_tokens, None, runs)]
    reference = rows[0]["tokens"]
    sizes = {"torch fp32 eager": base_size}
    isa = cpu_info()["isa"]
    if any(f in isa for f in ("avx512_bf16", "amx_bf16")):
        bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
        rows.append(generate_row("torch bf16", bf16, ids, new_tokens, reference, runs))
        sizes["torch bf16"] = weights_bytes(bf16)
    else:
        print("torch bf16: n/a (no avx512_bf16 or AMX on this CPU)")
    dynamic = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8)
    rows.append(generate_row("torch.ao dynamic int8", dynamic, ids, new_tokens, reference, runs))
    sizes["torch.ao dynamic int8"] = weights_bytes(dynamic)  # GPT-2's Conv1D stays fp32: it is no nn.Linear

    base = rows[0]["tps"]
    print(f"\n{'row':28} {'TTFT ms':>9} {'ms/tok p50':>11} {'tok/s':>8} {'x fp32':>7} {'size':>6} "
          f"{'agree':>7} {'peak RSS':>10}")
    for r in rows:
        print(f"{r['name']:28} {r['ttft']:9.1f} {r['decode_p50']:11.2f} {r['tps']:8.1f} {r['tps'] / base:6.2f}x "
              f"{sizes[r['name']] / base_size:5.2f}x {r['agree']:3d}/{new_tokens:<3d} {r['rss'] / 1e6:8.0f} MB")

    # ONNX Runtime: effkit's weight-only int4/int8 against ORT fp32, one forward pass over the prompt
    from effkit.passes.quantize import QuantizeConfig, quantize
    from effkit.runners import native_runner

    prompt_model = model.replace(example_inputs=(ids, np.ones_like(ids)))
    print("\nONNX Runtime (no generation path yet): prefill of the prompt, size of the file")
    for bits in (4, 8):
        result = quantize(prompt_model, QuantizeConfig(method="weight-only", backend="onnxruntime", bits=bits,
                                                       group_size=32 if args.quick else 128, allow_slower=True),
                          threads=args.threads, candidate_time=0.5 if args.quick else 3.0)
        d = result.details
        chosen = next(c for c in d["candidates"] if c["status"] == "chosen")
        ort_fp32 = d["baselines_ms"]["onnxruntime fp32"]
        runner = native_runner(result.model, args.threads)
        t0 = time.perf_counter()
        runner.run(prompt_model.example_inputs)
        print(f"  {chosen['label']:38} prefill {ort_fp32 / chosen['latency_ms']:.2f}x ORT fp32, "
              f"size {chosen['size_bytes'] / d['original_size_bytes']:.2f}x, "
              f"next-token agreement {chosen['fidelity'].get('token_agreement', float('nan')):.3f} "
              f"(one call {1000 * (time.perf_counter() - t0):.1f} ms)")


if __name__ == "__main__":
    main()
