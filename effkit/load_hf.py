"""Load a Hugging Face model folder (config.json + weights) as a Model taking input_ids / attention_mask."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from effkit.errors import InputError, ModelLoadError, first_line, unreadable
from effkit.inputs import DEFAULT_DYNAMIC_DIM, SEED, random_inputs
from effkit.model import Model
from effkit.util import quiet_torch


def load_hf(path: Path, spec: str, trust: bool, input_shapes) -> Model:
    try:
        with quiet_torch():  # importing transformers logs deprecation chatter from torch and torchao
            import transformers
    except ImportError as e:
        raise ModelLoadError("loading a Hugging Face folder needs transformers",
                             "pip install 'effkit[hf]'") from e
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{path} has no config.json, so it is not a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise unreadable(config_path, "config.json", e) from e
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path} holds a JSON {type(config).__name__}, not a model configuration")
    if "auto_map" in config and not trust:
        raise ModelLoadError(f"{path} needs custom code from its folder (auto_map in config.json), which would run",
                             "re-run with --trust only if you trust its source")
    arch_names = config.get("architectures") or ["AutoModel"]
    hf_logging = transformers.utils.logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # progress bars and load reports on stderr are noise to effkit's users
    hf_logging.disable_progress_bar()
    try:
        with quiet_torch():  # transformers imports the model's module (and torchao) lazily, noisily
            cls = getattr(transformers, str(arch_names[0]), None) or transformers.AutoModel
            module = cls.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust)
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
    else:  # the default length, unless the model's position embeddings are shorter
        positions = config.get("max_position_embeddings")
        length = min(DEFAULT_DYNAMIC_DIM, positions) if isinstance(positions, int) and positions > 0 else DEFAULT_DYNAMIC_DIM
        ids = np.random.default_rng(SEED).integers(0, vocab, (1, length))
        example = (ids.astype(np.int64), np.ones((1, length), np.int64))
    if len(example) == 1:
        names = names[:1]
    wrapper = _hf_wrapper(module, names)
    model = Model(kind="torch", module=wrapper, example_inputs=tuple(example), input_names=names,
                  source=spec, format="hf", path=path, save_suffix=".pt2")
    model.meta["hf_architecture"] = arch_names[0]
    model.meta["inputs_from"] = "--input-shape" if input_shapes else f"random token ids, length {example[0].shape[-1]}"
    return model


def _hf_wrapper(module: Any, names: list[str]) -> Any:
    import torch

    class HFModel(torch.nn.Module):
        """Positional inputs in, a tuple of tensors out, so the rest of effkit sees a plain module."""

        def __init__(self, inner: torch.nn.Module, input_names: list[str]):
            super().__init__()
            self.inner = inner
            self.input_names = list(input_names)

        def forward(self, *args: torch.Tensor):
            out = self.inner(**dict(zip(self.input_names, args)), return_dict=True)
            key = "logits" if "logits" in out else next(iter(out.keys()))
            return out[key]

    return HFModel(module, names).eval()
