"""Load a Hugging Face model folder (config.json + weights) as a Model with the inputs its kind takes.

Text models take input_ids, attention_mask and, where the model has segment embeddings (BERT),
token_type_ids: the names the folder's tokenizer gives (AutoTokenizer's model_input_names), else
those of the model's forward, in the forward's order. Vision models (ViT, ConvNeXt, ResNet, Swin,
...) take pixel_values, 1 x channels x image size from the config, read from image files with the
folder's image processor (preprocessor_config.json). Audio models take Wav2Vec2's input_values (1 x
one second at the feature extractor's sampling rate) or Whisper's input_features (1 x mel bins x
2 * max_source_positions); of an encoder-decoder with such inputs (WhisperModel) the encoder alone
is loaded, and `meta["hf_part"]` says so. Example inputs without --input-shape are random:
token ids with a mask of ones and segment 0, normal floats for images and audio.

A causal language model (GPT-2, Llama, Qwen2, Mistral, Phi, ... : an architecture named *ForCausalLM or
*LMHeadModel) is marked `meta["causal_lm"]` so that generation can reach the inner model and its KV cache.
A folder whose weights would not fit in the memory available is refused before anything is loaded.
"""

from __future__ import annotations

import json
import contextlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effkit.data_images import ImagePreprocess
from effkit.limits import memory_budget
from effkit.errors import InputError, ModelLoadError, first_line, unreadable
from effkit.inputs import DEFAULT_DYNAMIC_DIM, SEED, random_inputs
from effkit.model import Model
from effkit.specs import InputShape
from effkit.util import fmt_bytes, quiet_torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# besides the weights, what a folder's model is made from: configs (model, tokenizer, processor), vocabularies
FOLDER_SUFFIXES = (".json", ".txt", ".model", ".tiktoken")
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_IMAGE_SIZE = 224
DEFAULT_SAMPLING_RATE = 16000
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


def weight_files(path: Path) -> list[Path]:
    """The weight files transformers loads from a folder: its .safetensors when it has any (a folder
    often also holds the same weights as pytorch_model.bin), else its .bin/.pt/... files."""
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
    safetensors = [f for f in files if f.suffix == ".safetensors"]
    return safetensors or files


def folder_files(path: Path) -> list[Path]:
    """The files a folder's model is: its weights, configs and tokenizer or processor files (not
    READMEs, licences or other copies of the weights): its size on disk."""
    others = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in FOLDER_SUFFIXES
                    and not f.name.lower().startswith(("readme", "license", "licence")))
    return weight_files(path) + others


def weights_bytes(path: Path) -> int:
    """Bytes of the weight files in a folder, as stored."""
    return sum(f.stat().st_size for f in weight_files(path))


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


@dataclass(frozen=True)
class FolderInputs:
    """What a folder's model takes: its kind ("text", "image", "audio", else the main input's name),
    input names in the order they are passed, a default shape for each (none when unknown), and
    where that shape comes from."""

    kind: str
    names: list[str]
    shapes: list[tuple[int, ...]]
    dtype: str
    shape_from: str = "from its config"

    def hint(self, what: str) -> str:
        """What to pass: the config's real shapes, as --input-shape flags."""
        if not self.shapes:
            return f"{what} takes {self.names[0]}, of a shape effkit does not know: pass --input-shape"
        dims = "x".join(map(str, self.shapes[0]))
        if self.kind == "text":
            return (f"{what} takes {', '.join(self.names)} ({self.dtype}, 1 x tokens): pass --text, or "
                    f"--input-shape {self.dtype}:{dims} once per input")
        also = ", or --image FILE" if self.kind == "image" else ""
        return (f"{what} takes {self.names[0]} {dims} ({self.dtype}, {self.shape_from}): "
                f"pass --input-shape {dims}{also}")


def load_hf(path: Path, spec: str, trust: bool, input_shapes) -> Model:
    """Load the folder at `path` (`hf:PATH`) as a torch Model with example inputs of its kind."""
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
    with _quiet_transformers():
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
        module.eval()
        inner, part = _runnable_part(module)
        processor = _image_processor(path, trust) if _main_input(inner) == "pixel_values" else None
        inputs = folder_inputs(inner, config, path, trust, processor)
    what = f"the {part} of {arch}" if part else arch
    vocab = config.get("vocab_size")
    vocab = vocab if isinstance(vocab, int) and vocab > 1 else 2
    example, origin = _examples(inputs, input_shapes, vocab, what)
    limit = context_length(config)
    if input_shapes and limit and inputs.kind == "text" and example[0].ndim == 2 and example[0].shape[1] > limit:
        raise InputError(f"--input-shape: sequences of {example[0].shape[1]} tokens are longer than the model's "
                         f"{limit} positions", f"give at most {limit}, e.g. --input-shape int64:1x{limit}")
    if part:
        origin += f"; {what} alone"
    names = inputs.names[:len(example)]
    wrapper = _hf_wrapper(inner, names, causal_lm=is_causal_lm(config))
    model = Model(kind="torch", module=wrapper, example_inputs=tuple(example), input_names=names,
                  source=spec, format="hf", path=path, save_suffix=".pt2")
    model.meta["hf_architecture"] = arch
    model.meta["hf_kind"] = inputs.kind
    if part:  # the rest of the folder's model is not what effkit measures, saves or sizes
        model.meta["hf_part"] = part
    model.meta["causal_lm"] = is_causal_lm(config)
    if inputs.kind == "text":
        model.meta["context_length"] = context_length(config)  # how many positions a --text may fill
    if inputs.kind == "image":  # how --image files and folders of images become pixel_values
        model.meta["image_preprocess"] = _image_preprocess(inputs.shapes[0], processor)
    model.meta["inputs_from"] = origin
    model.meta["input_hint"] = inputs.hint(what)  # what a wrong shape's error says to pass
    return model


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' progress bars, load reports and fallback notices are noise to effkit's users."""
    import transformers

    hf_logging = transformers.utils.logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _main_input(module: Any) -> str:
    return str(getattr(module, "main_input_name", "input_ids"))


def _runnable_part(module: Any) -> tuple[Any, str | None]:
    """The module effkit runs, and which part of the folder's model it is: an encoder-decoder whose
    encoder takes audio or images (WhisperModel) needs decoder tokens as well to run whole, so its
    encoder alone is taken; every other model whole (None)."""
    if (getattr(module.config, "is_encoder_decoder", False) and _main_input(module) != "input_ids"
            and hasattr(module, "get_encoder")):
        return module.get_encoder(), "encoder"
    return module, None


def folder_inputs(module: Any, config: dict, path: Path, trust: bool, processor: Any = None) -> FolderInputs:
    """What the folder's (loaded) model takes, shaped from its config."""
    main = _main_input(module)
    cfg = module.config
    if main == "input_ids":
        length = min(DEFAULT_DYNAMIC_DIM, context_length(config) or DEFAULT_DYNAMIC_DIM)
        names = text_input_names(module, path, trust)
        return FolderInputs("text", names, [(1, length)] * len(names), "int64")
    if main == "pixel_values":
        height, width = _image_size(cfg, processor)
        return FolderInputs("image", [main], [(1, int(getattr(cfg, "num_channels", 3) or 3), height, width)],
                            "float32")
    if main == "input_values":  # raw waveform: one second at the feature extractor's rate
        rate = _preprocessor_config(path).get("sampling_rate")
        rate = rate if isinstance(rate, int) and rate > 0 else DEFAULT_SAMPLING_RATE
        return FolderInputs("audio", [main], [(1, rate)], "float32", f"1 s at {rate} Hz")
    mels, positions = getattr(cfg, "num_mel_bins", None), getattr(cfg, "max_source_positions", None)
    if main == "input_features" and isinstance(mels, int) and isinstance(positions, int):
        # Whisper's encoder takes exactly 2 * max_source_positions frames (two convolutions, the second of stride 2)
        return FolderInputs("audio", [main], [(1, mels, 2 * positions)], "float32")
    return FolderInputs(main, [main], [], "float32")


def text_input_names(module: Any, path: Path, trust: bool) -> list[str]:
    """The text inputs a model takes, in its forward's order: those its tokenizer gives
    (model_input_names), else input_ids, attention_mask and, when the config has segment embeddings
    (type_vocab_size: BERT; GPT-2's forward takes token_type_ids but reads them as tokens), token_type_ids."""
    wanted = _tokenizer_input_names(path, trust)
    if wanted is None:
        segments = getattr(module.config, "type_vocab_size", None)
        wanted = ["input_ids", "attention_mask"] + (["token_type_ids"] if segments else [])
    try:
        params = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        params = list(TEXT_INPUTS)
    names = [p for p in params if p in TEXT_INPUTS and p in wanted]
    return names if "input_ids" in names else ["input_ids"]


def _tokenizer_input_names(path: Path, trust: bool) -> list[str] | None:
    """The folder's tokenizer's model_input_names; None when it has no tokenizer transformers reads."""
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust)
    except Exception:  # no tokenizer class transformers knows: the forward's inputs decide
        return None
    return list(getattr(tokenizer, "model_input_names", None) or []) or None


def _preprocessor_config(path: Path) -> dict:
    """preprocessor_config.json (image processor or feature extractor) as a dict; {} when absent."""
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return {}
    try:
        values = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise unreadable(file, "preprocessor_config.json", e) from e
    return values if isinstance(values, dict) else {}


def _image_processor(path: Path, trust: bool) -> Any:
    """The folder's image processor (AutoImageProcessor of preprocessor_config.json); None without one."""
    if not _preprocessor_config(path):
        return None
    from transformers import AutoImageProcessor

    file = path / "preprocessor_config.json"
    try:
        return AutoImageProcessor.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust)
    except Exception as e:
        raise unreadable(file, "image processor configuration", e) from e


def _image_size(cfg: Any, processor: Any) -> tuple[int, int]:
    """(height, width) of the images a vision model takes: its config's image_size, else what its
    image processor makes, else 224."""
    size = getattr(cfg, "image_size", None)
    if processor is not None and not size:
        crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
        given = dict(crop or getattr(processor, "size", None) or {})
        size = ([given["height"], given["width"]] if "height" in given and "width" in given
                else given.get("shortest_edge"))
    if isinstance(size, int) and size > 0:
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        return int(size[0]), int(size[1])
    return DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE


def _image_preprocess(shape: tuple[int, ...], processor: Any) -> ImagePreprocess:
    """How images become this model's pixel_values by default: through its image processor when the
    folder has one, else cropped to the config's size (no normalization). Its mean and std also
    serve when the user sets the size (see effkit.data_images.with_defaults)."""
    size = (shape[2], shape[3])
    if processor is None:
        return ImagePreprocess(image_size=size)
    normalize = getattr(processor, "do_normalize", False)
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)

    def process(pixels: list[np.ndarray]) -> np.ndarray:
        with _quiet_transformers():
            batch = processor(images=pixels, return_tensors="np")["pixel_values"]
        return np.ascontiguousarray(batch, dtype=np.float32)

    return ImagePreprocess(image_size=size, mean=tuple(mean) if normalize and mean else None,
                           std=tuple(std) if normalize and std else None, processor=process)


def _examples(inputs: FolderInputs, input_shapes, vocab: int, what: str) -> tuple[tuple[np.ndarray, ...], str]:
    """Example inputs of --input-shape (token ids random, attention masks 1, segments 0, floats
    normal), else of the config's shapes; and where they came from."""
    if len(input_shapes) > len(inputs.names):
        raise InputError(f"{what} takes {', '.join(inputs.names)} here; --input-shape was given "
                         f"{len(input_shapes)} times", inputs.hint(what))
    if input_shapes:
        return tuple(_example(name, shape, vocab) for name, shape in zip(inputs.names, input_shapes)), "--input-shape"
    if not inputs.shapes:
        raise InputError(f"effkit does not know which shape of {inputs.names[0]} {what} takes", inputs.hint(what))
    if inputs.kind == "text":  # the default length, unless the model's position embeddings are shorter
        length = inputs.shapes[0][1]
        ids = np.random.default_rng(SEED).integers(0, vocab, (1, length)).astype(np.int64)
        fill = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        return tuple(fill[name] for name in inputs.names), f"random token ids, length {length}"
    shape = "x".join(map(str, inputs.shapes[0]))
    return (random_inputs([InputShape("float32", inputs.shapes[0])]),
            f"random normal {inputs.names[0]}, {shape} ({inputs.shape_from.replace('its', 'the')})")


def _example(name: str, shape: InputShape, vocab: int) -> np.ndarray:
    if name == "attention_mask":
        return np.ones(shape.shape, shape.dtype)
    if name == "token_type_ids":
        return np.zeros(shape.shape, shape.dtype)
    return random_inputs([shape], vocab=vocab)[0]


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
