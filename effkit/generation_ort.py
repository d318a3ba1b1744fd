"""Generation on ONNX Runtime: a causal LM exported with its KV cache, and a greedy loop over any ONNX file of
that layout (the export here, or a copy of it quantized with MatMulNBits, say).

The layout (the one Hugging Face Optimum uses): inputs `input_ids` [batch, sequence], `attention_mask`
[batch, past + sequence], `position_ids` [batch, sequence] (when the model takes them) and `past_key_values.N.key` / `.value`
[batch, kv heads, past, head dim] for each layer N; outputs `logits` [batch, sequence, vocab] and
`present.N.key` / `.value` [batch, kv heads, past + sequence, head dim]. Every batch and length axis is
dynamic, so one file serves the prefill (an empty past) and each decode step (one new token).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from effkit.errors import EffkitError, StepFailed, UsageError, first_line
from effkit.export import DEFAULT_OPSET
from effkit.runners import OrtRunner
from effkit.util import quiet_torch, workdir

LOOP = "ONNX Runtime, exported with past key/values, greedy"
EXPORTER = "torch.export (dynamo), transformers DynamicCache built from the flat past tensors"
# How close ORT's logits must be to torch's at every step of the verification (fp32 on both sides).
ATOL, RTOL = 1e-4, 1e-3


class GenerationMismatch(StepFailed):
    """The exported model's logits differ from torch's beyond the tolerances during greedy decoding."""


def cache_argument(module: Any) -> str:
    """transformers 5 takes the cache as `cache=`, earlier versions as `past_key_values=`."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _returned_cache(out: Any) -> Any:
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _takes_positions(module: Any) -> bool:
    import inspect

    return "position_ids" in inspect.signature(module.forward).parameters


def _with_cache(module: Any) -> Any:
    """A torch module taking flat tensors (input_ids, attention_mask, position_ids when the model takes them,
    past key and value of each layer) that builds a DynamicCache from them and returns (logits, present key
    and value of each layer)."""
    import torch
    from transformers import DynamicCache

    cache_arg, positions = cache_argument(module), _takes_positions(module)

    class WithCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = module

        def forward(self, input_ids, attention_mask, *rest):
            past = rest[1:] if positions else rest
            extra = {"position_ids": rest[0]} if positions else {}
            cache = DynamicCache(list(zip(past[0::2], past[1::2])), config=self.lm.config)
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, return_dict=True,
                          **extra, **{cache_arg: cache})
            present = [t for layer in _returned_cache(out).layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    return WithCache().eval()


def export_with_past(module: Any, path: Path | None = None, *, opset: int = DEFAULT_OPSET) -> Path:
    """Export a transformers causal LM (the module itself, e.g. `effkit.generation.causal_lm_module(model)`)
    to ONNX with its KV cache in the layout of this module's docstring; weights in external data beside the
    file. Returns the ONNX path (`path`, or a new file in effkit's work folder). Check it with `verify_greedy`."""
    import torch

    batch, past_len, seq_len = 2, 4, 3  # none of them 0 or 1, which torch.export would specialize on
    vocab = int(module.config.get_text_config(decoder=True).vocab_size)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, vocab, (batch, past_len + seq_len)))
    with torch.inference_mode():  # a real past (its heads and head size are the model's own)
        out = module(input_ids=ids[:, :past_len], use_cache=True, return_dict=True)
    past = [t.clone() for layer in _returned_cache(out).layers for t in (layer.keys, layer.values)]
    positions = [torch.arange(past_len, past_len + seq_len).expand(batch, seq_len)] if _takes_positions(module) else []
    args = (ids[:, past_len:], torch.ones(batch, past_len + seq_len, dtype=torch.int64), *positions, *past)
    kv = [f"{i}.{kind}" for i in range(len(past) // 2) for kind in ("key", "value")]
    dyn = torch.export.Dim.DYNAMIC
    shapes = ({0: dyn, 1: dyn}, {0: dyn, 1: dyn}, tuple([{0: dyn, 1: dyn}] * len(positions)
                                                       + [{0: dyn, 2: dyn}] * len(past)))
    if path is None:
        path = Path(tempfile.mkdtemp(dir=workdir())) / "model_with_past.onnx"
    try:
        with quiet_torch():
            program = torch.onnx.export(_with_cache(module), args, dynamo=True, opset_version=opset,
                                        input_names=["input_ids", "attention_mask",
                                                     *["position_ids"] * len(positions),
                                                     *[f"past_key_values.{n}" for n in kv]],
                                        output_names=["logits", *[f"present.{n}" for n in kv]],
                                        dynamic_shapes=shapes, verbose=False)
            program.save(str(path), external_data=True)
    except Exception as e:
        raise EffkitError(f"the ONNX exporter cannot export this language model with its KV cache: {first_line(e)}",
                          "run with --debug for details, or use --runtime torch") from e
    return Path(path)


class OrtGreedy:
    """Greedy decoding on ONNX Runtime over an ONNX file of this module's layout: `loop(ids, new_tokens)`
    returns (generated ids [batch, new_tokens], prefill ms (time to first token), decode ms of each further
    token), as `effkit.generation.greedy` does on torch. Each step feeds the previous step's `present`
    outputs back as `past_key_values` inputs; `attention_mask` and `position_ids` are fed when the file
    takes them. The session runs on the CPU with `threads` intra-op threads (effkit's OrtRunner)."""

    def __init__(self, onnx_path: Path, threads: int):
        self.runner = OrtRunner(Path(onnx_path), threads)
        self.session, cache = self.runner.session, self.runner.cache
        if cache is None or "logits" not in cache.outputs:
            raise UsageError(f"{onnx_path} does not have the inputs and outputs of a causal LM with past key/values "
                             "(input_ids, past_key_values.N.key/value, logits, present.N.key/value)",
                             "export it with effkit.generation_ort.export_with_past")
        self.cache = cache
        self.present = {present: past for past, present in cache.present.items()}
        self.outputs = ["logits", *self.present]
        vocab = next(o.shape[-1] for o in self.session.get_outputs() if o.name == "logits")
        self.vocab = vocab if isinstance(vocab, int) else 2  # a symbolic size: random prompts of ids 0 and 1

    def step(self, tokens: np.ndarray, past: dict, total: int) -> tuple[np.ndarray, dict]:
        """One forward pass of `tokens` [batch, n] after `past` (total = past length + n): the last
        position's logits [batch, vocab] and the new past."""
        logits, *present = self.session.run(self.outputs, self.cache.feed(tokens, past, total))
        return logits[:, -1], {self.present[name]: t for name, t in zip(self.outputs[1:], present)}

    def empty_past(self, batch: int) -> dict:
        return self.cache.empty_past(batch)

    def __call__(self, ids: np.ndarray, new_tokens: int) -> tuple[np.ndarray, float, list[float]]:
        clock = time.perf_counter
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        past = self.empty_past(ids.shape[0])
        t0 = clock()
        logits, past = self.step(ids, past, ids.shape[1])
        token = logits.argmax(-1)[:, None]
        prefill_ms = (clock() - t0) * 1000.0
        tokens, decode_ms = [token], []
        for i in range(new_tokens - 1):
            t0 = clock()
            logits, past = self.step(token, past, ids.shape[1] + i + 1)
            token = logits.argmax(-1)[:, None]
            decode_ms.append((clock() - t0) * 1000.0)
            tokens.append(token)
        return np.concatenate(tokens, axis=1), prefill_ms, decode_ms


def verify_greedy(module: Any, loop: OrtGreedy, ids: np.ndarray, new_tokens: int, *, atol: float = ATOL,
                  rtol: float = RTOL) -> dict:
    """Check ONNX Runtime against torch token by token: ORT decodes greedily from `ids`, torch runs the same
    tokens through its own cache, and at every step (the prefill, then each new token) the logits must agree
    within atol + rtol * |torch's|. Returns {"tokens", "tokens_equal" (how many of ORT's greedy tokens
    torch's greedy decoding gives too, from the first), "max_abs_diff", "atol", "rtol"}; raises
    GenerationMismatch past the tolerances."""
    import torch
    from transformers import DynamicCache

    cache_arg = cache_argument(module)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    past, token, worst, equal, agreeing = loop.empty_past(ids.shape[0]), ids, 0.0, 0, True
    with torch.inference_mode():
        cache = DynamicCache(config=module.config)
        for step in range(new_tokens):
            total = ids.shape[1] + step
            logits, past = loop.step(token, past, total)
            ref = module(input_ids=torch.from_numpy(token), use_cache=True, return_dict=True,
                         **{cache_arg: cache}).logits[:, -1].float().numpy()
            diff = np.abs(logits.astype(np.float32) - ref)
            worst = max(worst, float(diff.max()))
            if not np.all(diff <= atol + rtol * np.abs(ref)):
                raise GenerationMismatch(f"ONNX Runtime's logits differ from torch's by up to {worst:.3g} at "
                                         f"generation step {step + 1} (tolerance {atol:g} + {rtol:g} x |logit|)",
                                         "use --runtime torch; run with --debug for details")
            token = logits.argmax(-1)[:, None]
            agreeing = agreeing and bool(np.array_equal(token[:, 0], ref.argmax(-1)))
            equal += agreeing
    return {"tokens": new_tokens, "tokens_equal": equal, "max_abs_diff": worst, "atol": atol, "rtol": rtol}
