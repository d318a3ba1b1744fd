"""Quantizing a causal language model: its candidates run on ONNX Runtime with the KV cache, so that the
file written generates, and are timed on a decode step, the time per generated token that decides an LLM's
speed (`effkit.passes.quantize_candidates.CandidateContext` uses both functions)."""

from __future__ import annotations

from typing import Any

from effkit.generation import causal_lm_module
from effkit.generation_ort import OrtGreedy, export_with_past, verify_greedy

def decode_timed(model, config) -> bool:
    """Whether a model's candidates are timed on a decode step: a causal LM, whose speed is its time per
    generated token, when its candidates run on ONNX Runtime with past key/values (an hf: folder with
    --backend onnxruntime or auto, or an ONNX file exported with them). torch's int8 files (TorchScript,
    .pt2) carry no KV cache, so --backend torch times a causal LM on a forward pass over its inputs."""
    if model.kind == "onnx":
        return bool(model.meta.get("kv_cache"))
    return bool(model.meta.get("causal_lm")) and config.backend != "torch"


VERIFIED_TOKENS = 4  # greedy steps on which the export with past key/values is checked against torch


def with_past_export(model, threads: int | None, prompt_len: int) -> Any:
    """A causal LM exported to ONNX with its KV cache (`effkit.generation_ort.export_with_past`), checked
    against torch token by token on greedy steps after the first `prompt_len` tokens of its example inputs,
    so that what quantize writes generates (`effkit bench OUT.onnx --generate`) as the original does."""
    module = causal_lm_module(model)
    path = export_with_past(module)
    ids = model.example_inputs[0][:1, :prompt_len]
    verify_greedy(module, OrtGreedy(path, threads or 1), ids, VERIFIED_TOKENS)
    return path
