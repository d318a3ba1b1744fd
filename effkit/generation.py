"""Generation benchmark of a causal language model: greedy decoding with the model's own KV cache on torch.

What users measure an LLM by: time to first token (the prefill of the prompt), latency per generated token
(decode, p50/p90/p99), tokens per second of prefill and of decode separately, and peak memory. The loop is
written here rather than calling `generate()` so that every step is timed on its own: one forward pass over
the prompt, then one pass per new token feeding the cache back (transformers' DynamicCache). On ONNX Runtime
the same loop runs over an export that carries past key/values (effkit.generation_ort), checked against torch
token by token before it is timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from effkit.benchmark import BenchResult, PeakMemory, latency_stats, model_info, noise_warnings
from effkit.env import CpuMonitor, default_threads, environment
from effkit.errors import InputError, UsageError
from effkit.generation_ort import EXPORTER, OrtGreedy, cache_argument, export_with_past, verify_greedy
from effkit.generation_ort import LOOP as ORT_LOOP
from effkit.inputs import SEED
from effkit.load_hf import (architecture, check_fits, context_length, is_causal_lm, load_tokenizer, memory_estimate,
                             read_config)
from effkit.size import size_info

DEFAULT_PROMPT_LEN = 128
DEFAULT_NEW_TOKENS = 64
DEFAULT_WARMUP = 1  # generations run untimed first (each is many forward passes already)
MIN_GENERATIONS = 3
LOOP = "greedy decoding, KV cache (transformers DynamicCache), torch eager"
RUNTIMES = ("torch", "onnxruntime")
LOOPS = {"torch": LOOP, "onnxruntime": ORT_LOOP}


# ---------------------------------------------------------------- checks before loading

def _kv_cache_bytes(config: dict, tokens: int) -> int:
    """fp32 keys and values for `tokens` positions (batch x length) over all layers."""
    layers = config.get("num_hidden_layers") or config.get("n_layer") or 0
    heads = config.get("num_attention_heads") or config.get("n_head") or 1
    hidden = config.get("hidden_size") or config.get("n_embd") or 0
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // max(1, heads)
    return int(2 * layers * tokens * kv_heads * head_dim * 4)


def check_generation(path: Path, *, prompt_len: int, new_tokens: int, batch_sizes: Sequence[int],
                     prompt: str | None, runtimes: Sequence[str] = ("torch",)) -> dict:
    """Everything about a generation run that can be refused before the model loads; returns config.json.

    A folder that is not a causal LM, no new tokens, a prompt plus continuation longer than the context,
    `prompt` text without a tokenizer, or weights plus KV cache larger than the memory available (on
    onnxruntime, twice more weights: the exporter's copy and the session's, beside the torch model).
    """
    config = read_config(path)
    if not is_causal_lm(config):
        raise UsageError(f"{path} holds a {architecture(config)}, not a causal language model, so it cannot generate",
                         "drop --generate to time its forward pass")
    check_counts(prompt_len, new_tokens)
    if prompt is not None and not (path / "tokenizer.json").is_file():
        raise UsageError(f"{path} has no tokenizer.json, so --prompt/--prompt-file text cannot be tokenized",
                         "add the model's tokenizer.json, or use --prompt-len N for a random prompt")
    if prompt is not None:  # the text decides the length
        prompt_len = prompt_tokens(path, prompt, prompt_len, 2)[0].shape[1]
    check_length(config, prompt_len, new_tokens)
    extra = _kv_cache_bytes(config, max(batch_sizes) * (prompt_len + new_tokens))
    on_ort = "onnxruntime" in runtimes
    check_fits(path, config, extra + (2 * memory_estimate(path, config) if on_ort else 0),
               f"generating {new_tokens} tokens at batch {max(batch_sizes)}" + (" on onnxruntime" if on_ort else ""))
    return config


def check_counts(prompt_len: int, new_tokens: int) -> None:
    """Refuse no new tokens, or an empty prompt."""
    if new_tokens < 1:
        raise UsageError(f"--new-tokens must be at least 1, got {new_tokens}", "e.g. --new-tokens 64")
    if prompt_len < 1:
        raise UsageError(f"--prompt-len must be at least 1, got {prompt_len}", "e.g. --prompt-len 128")


def check_length(config: dict, prompt_len: int, new_tokens: int) -> None:
    """Refuse a prompt plus continuation longer than the model's context."""
    context = context_length(config)
    if context is not None and prompt_len + new_tokens > context:
        raise UsageError(f"a prompt of {prompt_len} tokens plus {new_tokens} new ones is longer than the model's "
                         f"context of {context} tokens", "shorten the prompt or ask for fewer --new-tokens")


def prompt_tokens(path: Path, prompt: str | None, prompt_len: int, vocab: int) -> tuple[np.ndarray, str]:
    """The prompt as token ids [1, length] and where it came from: `prompt` tokenized with the folder's
    tokenizer, else `prompt_len` seeded random ids."""
    if prompt is None:
        ids = np.random.default_rng(SEED).integers(0, vocab, (1, prompt_len), dtype=np.int64)
        return ids, f"random ({prompt_len} tokens, seed {SEED})"
    tokenizer = load_tokenizer(path)
    ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise InputError("the prompt has no tokens", "pass some text to --prompt / --prompt-file")
    return np.asarray([ids], dtype=np.int64), f"text ({len(ids)} tokens)"


# ---------------------------------------------------------------- the loop

def causal_lm_module(model) -> Any:
    """The transformers model inside a loaded causal LM (effkit's wrapper keeps it as `inner`)."""
    if not model.meta.get("causal_lm") or model.kind != "torch":
        raise UsageError(f"{model.source} is not a causal language model loaded on torch, so it cannot generate",
                         "pass a Hugging Face causal LM folder (hf:PATH)")
    return getattr(model.module, "inner", model.module)


def greedy(module: Any, ids: np.ndarray, new_tokens: int) -> tuple[np.ndarray, float, list[float]]:
    """Greedy decoding of `new_tokens` after `ids` [batch, length]: (generated ids [batch, new_tokens],
    prefill ms (time to first token), decode ms of each further token)."""
    import torch
    from transformers import DynamicCache

    cache_arg = cache_argument(module)
    clock = time.perf_counter
    with torch.inference_mode():
        cache = DynamicCache(config=module.config)
        t0 = clock()
        out = module(input_ids=torch.from_numpy(ids), use_cache=True, return_dict=True, **{cache_arg: cache})
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        prefill_ms = (clock() - t0) * 1000.0
        tokens, decode_ms = [token], []
        for _ in range(new_tokens - 1):
            t0 = clock()
            out = module(input_ids=token, use_cache=True, return_dict=True, **{cache_arg: cache})
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            decode_ms.append((clock() - t0) * 1000.0)
            tokens.append(token)
    return torch.cat(tokens, dim=1).numpy(), prefill_ms, decode_ms


def measure_generation(loop: Callable[[np.ndarray, int], tuple[np.ndarray, float, list[float]]], ids: np.ndarray,
                       new_tokens: int, *, runtime: str, description: str, threads: int, warmup: int = DEFAULT_WARMUP,
                       iterations: int | None = None, min_time: float = 1.0,
                       progress: Callable[[float], None] | None = None) -> dict:
    """Time whole generations of `loop(ids, new_tokens)` (`greedy` on torch, an `OrtGreedy` on ONNX Runtime) at
    the batch size of `ids`; pool their prefill and per-token decode samples into one run of a BenchResult,
    with a `generation` block whose `loop` is `description`."""
    batch, length = ids.shape
    for _ in range(warmup):
        loop(ids, new_tokens)
    prefill, decode, first = [], [], None
    start = time.perf_counter()
    with PeakMemory() as memory, CpuMonitor(threads) as load:
        while True:
            generated, ttft, steps = loop(ids, new_tokens)
            first = generated if first is None else first
            prefill.append(ttft)
            decode += steps
            elapsed, n = time.perf_counter() - start, len(prefill)
            done = n / iterations if iterations else min(elapsed / min_time if min_time else 1.0, n / MIN_GENERATIONS)
            if progress:
                progress(min(done, 1.0))
            if done >= 1.0:
                break
    ttft_stats = latency_stats(prefill)
    decode_stats = latency_stats(decode or [0.0], batch)
    prefill_tps = batch * length * 1000.0 / ttft_stats["mean"]
    decode_tps = decode_stats["throughput"] if decode else None
    return {
        "runtime": runtime,
        "batch_size": batch,
        "threads": threads,
        "warmup": warmup,
        # for gates and comparisons: latency is the decode time per token, throughput decode tokens/s
        "latency_ms": {k: v for k, v in decode_stats.items() if k != "throughput"},
        "throughput_per_s": decode_tps,
        "peak_rss_bytes": memory.peak_bytes,
        "contention": load.result,
        "warnings": noise_warnings(decode_stats, load.result),
        "samples_ms": [round(s, 6) for s in decode],
        "generation": {
            "loop": description,
            "generations": len(prefill),
            "prompt_tokens": int(length),
            "new_tokens": new_tokens,
            "time_to_first_token_ms": {k: v for k, v in ttft_stats.items() if k != "throughput"},
            "decode_ms_per_token": {k: v for k, v in decode_stats.items() if k != "throughput"},
            "prefill_tokens_per_s": prefill_tps,
            "decode_tokens_per_s": decode_tps,
            "first_tokens": first[0, :16].tolist(),
        },
    }


def check_onnx_generation(model, runtimes: Sequence[str], prompt: str | None) -> None:
    """An ONNX file generates on ONNX Runtime when it carries past key/values, from a random prompt (it has no
    tokenizer); anything else is a usage error."""
    if not model.meta.get("kv_cache"):
        raise UsageError(f"{model.source} has no past key/values (KV cache) inputs, so it cannot generate",
                         "effkit quantize hf:FOLDER -o OUT.onnx writes a causal LM with its KV cache; or time its "
                         "forward pass without --generate")
    if list(runtimes) != ["onnxruntime"]:
        raise UsageError("an ONNX file generates on onnxruntime only", "use --runtime onnxruntime")
    if prompt is not None:
        raise UsageError("an ONNX file carries no tokenizer, so --prompt/--prompt-file text cannot be tokenized",
                         "use --prompt-len N for a random prompt, or bench the hf: folder")


def _onnxruntime_loop(module: Any, ids: np.ndarray, new_tokens: int, threads: int) -> tuple[OrtGreedy, dict]:
    """Export with past key/values and check ORT against torch token by token on the prompt (all untimed)."""
    start = time.perf_counter()
    loop = OrtGreedy(export_with_past(module), threads)
    seconds = time.perf_counter() - start
    return loop, {"exporter": EXPORTER, "export_seconds": round(seconds, 3),
                  "verification": verify_greedy(module, loop, ids, new_tokens)}


def bench_generation(model, *, prompt: str | None = None, prompt_len: int = DEFAULT_PROMPT_LEN,
                     new_tokens: int = DEFAULT_NEW_TOKENS, batch_sizes: Sequence[int] = (1,),
                     runtimes: Sequence[str] = ("torch",), threads: int | None = None, warmup: int = DEFAULT_WARMUP,
                     iterations: int | None = None, min_time: float = 1.0,
                     progress: Callable[[str, float], None] | None = None) -> BenchResult:
    """Measure greedy generation of a loaded causal LM on each runtime ("torch", "onnxruntime") and batch size;
    a BenchResult whose runs hold decode latency per token (and a `generation` block each) and whose
    `generation` field says how. On onnxruntime the model is first exported with past key/values and
    verified against torch token by token (`onnx_export`: how, in how long, how close), none of it timed;
    with both runtimes, `onnxruntime_vs_torch` gives the ratio of decode tokens/s at each batch size."""
    import torch

    module = None if model.kind == "onnx" else causal_lm_module(model)
    if module is None:
        check_onnx_generation(model, runtimes, prompt)
    threads = threads or default_threads()
    if threads < 1:
        raise UsageError("--threads must be at least 1")
    if warmup < 0 or (iterations is not None and iterations < 1) or min_time < 0:
        raise UsageError("--warmup must be >= 0, --iterations >= 1 and --min-time >= 0")
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise UsageError(f"generation runs on torch or onnxruntime, not {', '.join(unknown) or 'nothing'}",
                         "use --runtime torch, onnxruntime or all")
    path = model.path
    config = read_config(path) if path is not None and path.is_dir() and (path / "config.json").is_file() else {}
    loops = {}
    if module is None:  # an ONNX file with past key/values (effkit quantize's of a causal LM): it generates as it is
        loops["onnxruntime"] = OrtGreedy(model.onnx_path, threads)
        config = {"vocab_size": loops["onnxruntime"].vocab}
    ids, source = prompt_tokens(path, prompt, prompt_len, int(config.get("vocab_size") or 2))
    check_length(config, ids.shape[1], new_tokens)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    generation = {"runtime": ", ".join(runtimes), "loop": "; ".join(LOOPS[r] for r in runtimes), "prompt": source,
                  "prompt_tokens": int(ids.shape[1]), "new_tokens": new_tokens}
    if module is not None:
        loops["torch"] = lambda x, n: greedy(module, x, n)
        if "onnxruntime" in runtimes:
            loops["onnxruntime"], generation["onnx_export"] = _onnxruntime_loop(module, ids, new_tokens, threads)
    runs = []
    for runtime in runtimes:
        for b in batch_sizes:
            label = f"{runtime} generate batch {b}"
            runs.append(measure_generation(loops[runtime], np.repeat(ids, b, axis=0), new_tokens, runtime=runtime,
                                           description=LOOPS[runtime], threads=threads, warmup=warmup,
                                           iterations=iterations, min_time=min_time,
                                           progress=(lambda f, label=label: progress(label, f)) if progress else None))
    if set(RUNTIMES) <= set(runtimes):
        tps = {(r["runtime"], r["batch_size"]): r["generation"]["decode_tokens_per_s"] for r in runs}
        generation["onnxruntime_vs_torch"] = [
            {"batch_size": b, "decode_tokens_per_s_ratio": tps[("onnxruntime", b)] / tps[("torch", b)]}
            for b in batch_sizes if tps[("onnxruntime", b)] and tps[("torch", b)]]
    return BenchResult(model=model_info(model), size=size_info(model), runs=runs, environment=environment(threads),
                       extra={"generation": generation})
