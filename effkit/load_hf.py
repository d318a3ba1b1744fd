"""Load a Hugging Face model folder (config.json + weights) as a Model taking input_ids / attention_mask.

A causal language model (GPT-2, Llama, Qwen2, Mistral, Phi, ... : an architecture named *ForCausalLM or
*LMHeadModel) is marked `meta["causal_lm"]` so that generation can reach the inner model and its KV cache.
A folder whose weights would not fit in the memory available is refused before anything is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from effkit.limits import memory_budget
from effkit.errors import InputError, ModelLoadError, first_line, unreadable
from effkit.inputs import DEFAULT_DYNAMIC_DIM, SEED, random_inputs
from effkit.model import Model
from effkit.util import fmt_bytes, quiet_torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# Loading holds the weights once in fp32 plus the module's own overhead (buffers, allocator slack).
LOAD_OVERHEAD = 1.2
_STORED_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def read_config(path: Path) -> dict:
    """A Hugging Face folder's config.json as a dict (ModelLoadError when missing or not an object)."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{path} has no config.json, so it is not a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise unreadable(config_path, "config.json", e) from e
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path} holds a JSON {type(config).__name__}, not a model configuration")
    return config


def architecture(config: dict) -> str:
    """The model class config.json names ("AutoModel" when it names none)."""
    names = config.get("architectures") or ["AutoModel"]
    return str(names[0])


def is_causal_lm(config: dict) -> bool:
    """Whether the folder holds a decoder language model that can generate text."""
    arch = architecture(config)
    return arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel")


def context_length(config: dict) -> int | None:
    """The most positions the model takes (max_position_embeddings, GPT-2's n_positions); None if unsaid."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def weights_bytes(path: Path) -> int:
    """Bytes of the weight files in a folder, as stored."""
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)


def memory_estimate(path: Path, config: dict, extra_bytes: int = 0) -> int:
    """Bytes needed to hold the folder's model in fp32 (weights widened from their stored dtype, plus
    overhead), plus `extra_bytes` (a KV cache, say)."""
    stored = _STORED_BYTES.get(str(config.get("dtype") or config.get("torch_dtype") or "float32"), 4)
    return int(weights_bytes(path) * 4 / stored * LOAD_OVERHEAD) + extra_bytes


def check_fits(path: Path, config: dict, extra_bytes: int = 0, what: str = "loading it") -> None:
    """Refuse, before loading, a model (and whatever runs beside it) larger than effkit's memory budget."""
    limit, bound = memory_budget()
    needed = memory_estimate(path, config, extra_bytes)
    if needed > limit:
        raise ModelLoadError(f"{path} needs about {fmt_bytes(needed)} of memory for {what}, more than {bound}",
                             "free memory, or use a machine with more; nothing was loaded")


def load_tokenizer(path: Path):
    """The folder's tokenizer from tokenizer.json (data only: no code runs), or None when it has none."""
    file = path / "tokenizer.json"
    if not file.is_file():
        return None
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast(tokenizer_file=str(file))
    except Exception as e:
        raise unreadable(file, "tokenizer.json", e) from e


def load_hf(path: Path, spec: str, trust: bool, input_shapes) -> Model:
    try:
        with quiet_torch():  # importing transformers logs deprecation chatter from torch and torchao
            import transformers
    except ImportError as e:
        raise ModelLoadError("loading a Hugging Face folder needs transformers",
                             "pip install 'effkit[hf]'") from e
    config = read_config(path)
    if "auto_map" in config and not trust:
        raise ModelLoadError(f"{path} needs custom code from its folder (auto_map in config.json), which would run",
                             "re-run with --trust only if you trust its source")
    check_fits(path, config)
    arch = architecture(config)
    hf_logging = transformers.utils.logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # progress bars and load reports on stderr are noise to effkit's users
    hf_logging.disable_progress_bar()
    try:
        with quiet_torch():  # transformers imports the model's module (and torchao) lazily, noisily
            import torch

            cls = getattr(transformers, arch, None) or transformers.AutoModel
            # fp32: what CPU kernels, ONNX export and the quantizers expect, and what check_fits assumed
            module = cls.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust,
                                         dtype=torch.float32)
    except Exception as e:
        first = first_line(e)
        raise ModelLoadError(f"transformers could not load {path}: {first}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    module.eval()
    names = ["input_ids", "attention_mask"]
    if len(input_shapes) > len(names):
        raise InputError(f"a Hugging Face model takes {' and '.join(names)} here; --input-shape was given "
                         f"{len(input_shapes)} times", "pass one or two, e.g. --input-shape int64:1x128")
    vocab = config.get("vocab_size")
    vocab = vocab if isinstance(vocab, int) and vocab > 1 else 2
    if input_shapes:
        example = random_inputs(input_shapes, vocab=vocab)
        limit = context_length(config)
        if limit and example[0].ndim == 2 and example[0].shape[1] > limit:
            raise InputError(f"--input-shape: sequences of {example[0].shape[1]} tokens are longer than the model's "
                             f"{limit} positions", f"give at most {limit}, e.g. --input-shape int64:1x{limit}")
    else:  # the default length, unless the model's position embeddings are shorter
        length = min(DEFAULT_DYNAMIC_DIM, context_length(config) or DEFAULT_DYNAMIC_DIM)
        ids = np.random.default_rng(SEED).integers(0, vocab, (1, length))
        example = (ids.astype(np.int64), np.ones((1, length), np.int64))
    if len(example) == 1:
        names = names[:1]
    wrapper = _hf_wrapper(module, names, causal_lm=is_causal_lm(config))
    model = Model(kind="torch", module=wrapper, example_inputs=tuple(example), input_names=names,
                  source=spec, format="hf", path=path, save_suffix=".pt2")
    model.meta["hf_architecture"] = arch
    model.meta["causal_lm"] = is_causal_lm(config)
    model.meta["context_length"] = context_length(config)  # how many positions a --text may fill
    model.meta["inputs_from"] = "--input-shape" if input_shapes else f"random token ids, length {example[0].shape[-1]}"
    return model


def _hf_wrapper(module: Any, names: list[str], causal_lm: bool) -> Any:
    import torch

    class HFModel(torch.nn.Module):
        """Positional inputs in, a tuple of tensors out, so the rest of effkit sees a plain module."""

        def __init__(self, inner: torch.nn.Module, input_names: list[str]):
            super().__init__()
            self.inner = inner
            self.input_names = list(input_names)
            # a causal LM without a KV cache returns the logits alone (generation drives `inner` itself)
            self.options = {"use_cache": False} if causal_lm else {}

        def forward(self, *args: torch.Tensor):
            out = self.inner(**dict(zip(self.input_names, args)), **self.options, return_dict=True)
            key = "logits" if "logits" in out else next(iter(out.keys()))
            return out[key]

    return HFModel(module, names).eval()
