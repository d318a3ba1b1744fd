"""Load and save every supported model format into one `Model` value.

A `Model` carries what every step needs to run it: the torch module or the ONNX file, the
example inputs (numpy arrays, so torch and ONNX Runtime get the very same values), input and
output names, and where it came from. torch, onnx and onnxruntime are imported inside the
functions that use them, so `import effkit` stays cheap.
"""

from __future__ import annotations

import atexit
import dataclasses
import gzip
import importlib
import importlib.util
import inspect
import json
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from effkit.errors import EffkitError, InputError, ModelLoadError, UsageError, first_line
from effkit.specs import InputShape

MODEL_SPEC_HELP = (
    "a MODEL is a file (.pt/.pth state_dict with --arch, .safetensors with --arch, .pt2, "
    "TorchScript, .onnx), a Hugging Face folder (hf:PATH), or a factory: path/to/file.py:function "
    "or package.module:function"
)
# Dynamic ONNX dimensions without a value from --input-shape: the first is the batch, the rest
# (sequence lengths, image sizes) get a common default.
DEFAULT_BATCH = 1
DEFAULT_DYNAMIC_DIM = 128
SEED = 0


@dataclass
class Model:
    """A loaded model and what is needed to run it."""

    kind: str  # "torch" or "onnx"
    example_inputs: tuple[np.ndarray, ...]
    input_names: list[str]
    source: str
    format: str  # factory, state_dict, safetensors, pickle, pt2, torchscript, onnx, hf, derived
    module: Any = None  # torch.nn.Module when kind == "torch"
    onnx_path: Path | None = None  # when kind == "onnx"
    output_names: list[str] | None = None
    path: Path | None = None  # the file it was loaded from; None once a pass has changed it
    save_suffix: str = ".pt"  # how save_model() serializes it when no suffix is asked for
    meta: dict = field(default_factory=dict)

    def replace(self, **changes: Any) -> Model:
        """A copy with some fields changed (passes return new models; the original survives)."""
        return dataclasses.replace(self, **changes)

    @property
    def input_specs(self) -> list[dict]:
        return [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype)}
                for n, a in zip(self.input_names, self.example_inputs)]

    def describe_inputs(self) -> str:
        return ", ".join(f"{n}: {'x'.join(map(str, a.shape))} {a.dtype}"
                         for n, a in zip(self.input_names, self.example_inputs))


# ---------------------------------------------------------------- working directory

_WORKDIR: tempfile.TemporaryDirectory | None = None


def workdir() -> Path:
    """A private temporary folder for intermediate artifacts, removed at exit."""
    global _WORKDIR
    if _WORKDIR is None:
        _WORKDIR = tempfile.TemporaryDirectory(prefix="effkit-")
        atexit.register(_WORKDIR.cleanup)
    return Path(_WORKDIR.name)


# ---------------------------------------------------------------- spec resolution

_FACTORY_RE = re.compile(r"(?P<target>.+):(?P<func>[A-Za-z_][A-Za-z0-9_]*)")
_DOTTED_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def is_factory_spec(spec: str) -> bool:
    """True for `path/to/file.py:function` and `package.module:function`."""
    m = _FACTORY_RE.fullmatch(spec)
    return bool(m) and (m["target"].endswith(".py") or bool(_DOTTED_RE.fullmatch(m["target"])))


def resolve_factory(spec: str) -> Any:
    """Import the callable named by a factory spec. This runs the user's own code, by design."""
    m = _FACTORY_RE.fullmatch(spec)
    if not m:
        raise ModelLoadError(f"{spec!r} is not a factory spec", "write path/to/file.py:function or package.module:function")
    target, name = m["target"], m["func"]
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ModelLoadError(f"no such file: {target}", "check the path before the ':'")
            mod_name = f"effkit_user_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_name] = module
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(target)
    except EffkitError:
        raise
    except ModuleNotFoundError as e:
        raise ModelLoadError(f"cannot import {target!r}: {e}", "check the module name, or give a path to a .py file") from e
    except Exception as e:  # the user's module failed while importing
        raise ModelLoadError(f"importing {target!r} raised {type(e).__name__}: {e}") from e
    func = getattr(module, name, None)
    if func is None or not callable(func):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:8]
        raise ModelLoadError(f"{target} has no function {name!r}",
                             f"functions there: {', '.join(found) or 'none'}")
    return func


def _call_factory(spec: str) -> tuple[Any, Any]:
    """Call a factory; return (module, example_inputs or None)."""
    import torch

    func = resolve_factory(spec)
    try:
        result = func()
    except Exception as e:
        raise ModelLoadError(f"factory {spec} raised {type(e).__name__}: {e}", "run it with --debug for the traceback") from e
    example = None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module):
        result, example = result
    if not isinstance(result, torch.nn.Module):
        raise ModelLoadError(f"factory {spec} returned {type(result).__name__}, not a torch.nn.Module",
                             "return a module, or (module, example_inputs)")
    return result, example


# ---------------------------------------------------------------- public loading API

def load_model(
    spec: str,
    *,
    arch: str | None = None,
    trust: bool = False,
    input_shapes: list[InputShape] | tuple[InputShape, ...] = (),
    inputs: str | Path | None = None,
    check: bool = True,
) -> Model:
    """Load MODEL from a spec (see MODEL_SPEC_HELP) with its example inputs.

    Example inputs come from, in order: `inputs` (an .npz file), `input_shapes` (random values,
    seeded), the factory or the file itself. With `check`, the model runs once on them so a wrong
    shape fails here, with a message naming what the model expects.
    """
    spec = str(spec)
    path = Path(spec[3:] if spec.startswith("hf:") else spec)
    try:
        exists = path.exists()
    except OSError as e:  # a name longer than the file system allows, say
        raise ModelLoadError(f"cannot use {spec[:60]!r}... as a path: {e.strerror}", MODEL_SPEC_HELP) from e
    if spec.startswith("hf:") or (exists and path.is_dir() and (path / "config.json").is_file()):
        model = _load_hf(path, spec, trust, input_shapes)
    elif exists:
        if path.is_dir():
            raise ModelLoadError(f"{path} is a folder without config.json", MODEL_SPEC_HELP)
        model = _load_file(path, spec, arch, trust, input_shapes)
    elif is_factory_spec(spec):
        module, example = _call_factory(spec)
        model = _torch_model(module, example, spec, "factory", None, input_shapes)
    else:
        raise ModelLoadError(f"no such file: {spec}", MODEL_SPEC_HELP)
    if arch and model.format not in ("state_dict", "safetensors"):
        raise UsageError(f"--arch applies to state_dict and .safetensors files, not to a {model.format} model",
                         "drop --arch")
    if inputs is not None:
        model = with_inputs_file(model, inputs)
    if check:
        check_runs(model)
    return model


def _load_file(path: Path, spec: str, arch: str | None, trust: bool, input_shapes) -> Model:
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path} is empty", "the file is truncated; save or download it again")
    if suffix == ".onnx":
        return _load_onnx(path, spec, input_shapes)
    if suffix == ".safetensors":
        state = _read_safetensors(path)
        return _from_state_dict(state, path, spec, arch, input_shapes, "safetensors")
    if suffix == ".pt2":
        return _load_pt2(path, spec, trust, input_shapes)
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        return _load_torchscript(path, spec, input_shapes)
    if suffix in (".pt", ".pth", ".bin", ".ckpt", ".tar") or zipfile.is_zipfile(path):
        return _load_checkpoint(path, spec, arch, trust, input_shapes)
    raise ModelLoadError(f"unknown model format: {path.name}", MODEL_SPEC_HELP)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _corrupt(path: Path, what: str, e: Exception) -> ModelLoadError:
    first = first_line(e)
    return ModelLoadError(f"{path} is not a readable {what}: {first[:300]}",
                          "the file may be truncated or corrupt; save or download it again")


def _load_checkpoint(path: Path, spec: str, arch: str | None, trust: bool, input_shapes) -> Model:
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise before our own message
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Unsupported global" not in str(e):
            raise _corrupt(path, "PyTorch checkpoint", e) from e
        if not trust:
            raise ModelLoadError(
                f"{path} holds pickled Python objects (e.g. a whole model), and unpickling runs code from the file",
                "re-run with --trust only if you trust its source, or save model.state_dict() and pass --arch",
            ) from e
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:
            raise _corrupt(path, "PyTorch checkpoint", e2) from e2
    except Exception as e:
        raise _corrupt(path, "PyTorch checkpoint", e) from e
    if isinstance(obj, torch.nn.Module):
        return _torch_model(obj, None, spec, "pickle", path, input_shapes)
    state = _find_state_dict(obj)
    if state is None:
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a state_dict or a model",
                             "save model.state_dict() (with --arch) or the whole module (with --trust)")
    return _from_state_dict(state, path, spec, arch, input_shapes, "state_dict")


def _find_state_dict(obj: Any) -> dict | None:
    import torch

    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):  # training checkpoints often nest it
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj:
                return _find_state_dict(obj[key])
    return None


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:
        raise _corrupt(path, "safetensors file", e) from e


def _from_state_dict(state: dict, path: Path, spec: str, arch: str | None, input_shapes, fmt: str) -> Model:
    if not arch:
        raise ModelLoadError(f"{path} holds weights only (a state_dict), not the model's architecture",
                             "pass --arch path/to/file.py:factory (or package.module:factory) that builds the model")
    module, example = _call_factory(arch)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that differ raise even with strict=False
        details = [line.strip().rstrip(".") for line in str(e).splitlines()[1:] if line.strip()]
        raise ModelLoadError(f"the weights in {path} do not fit --arch {arch}: {'; '.join(details[:3])[:400]}",
                             "pass the factory that built the saved model") from e
    problems = []
    if result.missing_keys:
        problems.append(f"missing {', '.join(result.missing_keys[:5])}")
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:5])}")
    if problems:
        raise ModelLoadError(f"the weights in {path} do not fit --arch {arch}: {'; '.join(problems)}",
                             "pass the factory that built the saved model")
    model = _torch_model(module, example, spec, fmt, path, input_shapes)
    model.meta["arch"] = arch
    return model


# Entries of a .pt2 archive (below its root folder) that torch.export.load unpickles with plain
# pickle or loads as native code. Everything else is JSON or raw tensor bytes.
_PT2_CODE_PREFIXES = ("data/aotinductor/", "data/constants/custom_obj_", "data/constants/opaque_obj_")
_PT2_PICKLED = ("data/weights/model.pt", "data/constants/model.pt")  # the legacy layout: pickled dicts


def _pt2_code_entries(path: Path) -> list[str]:
    """What in a .pt2 archive would run code when torch.export.load opens it."""
    risky = []
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                inner = name.split("/", 1)[1] if "/" in name else name
                if inner.startswith(_PT2_CODE_PREFIXES) or inner in _PT2_PICKLED:
                    risky.append(name)
                elif inner.startswith(("data/weights/", "data/constants/")) and inner.endswith("_config.json"):
                    config = json.loads(z.read(name)).get("config", {})
                    risky += [f"{name}: {key}" for key, entry in config.items() if entry.get("use_pickle")]
    except (zipfile.BadZipFile, OSError, ValueError, AttributeError) as e:
        raise _corrupt(path, "torch.export (.pt2) archive", e) from e
    return risky


# effkit's own note inside .pt2 archives it writes: the example inputs' real batch size
_PT2_META = "effkit.json"


def _pt2_example_batch(text: str) -> int | None:
    try:
        return int(json.loads(text)["example_batch"]) or None
    except (ValueError, KeyError, TypeError):
        return None


def _load_pt2(path: Path, spec: str, trust: bool, input_shapes) -> Model:
    import os

    import torch

    from effkit.passes.export import quiet_torch

    if not trust and (risky := _pt2_code_entries(path)):
        raise ModelLoadError(f"{path} holds pickled Python objects or compiled code ({risky[0]}), "
                             "which would run when loaded",
                             "re-run with --trust only if you trust its source")
    # torch.export.load falls back to unpickling anything (weights_only=False) when a payload is not
    # plain tensors; without --trust, force every torch.load inside it to weights-only.
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    if not trust:
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    extra = {_PT2_META: ""}
    try:
        with quiet_torch():
            program = torch.export.load(str(path), extra_files=extra)
    except Exception as e:
        if "Weights only load failed" in str(e):
            raise ModelLoadError(f"{path} holds pickled Python objects, and unpickling runs code from the file",
                                 "re-run with --trust only if you trust its source") from e
        raise _corrupt(path, "torch.export (.pt2) archive", e) from e
    finally:
        os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    example = None
    if program.example_inputs is not None:
        example = program.example_inputs[0]
        batch = _pt2_example_batch(extra[_PT2_META])
        if batch:  # effkit exported from a doubled batch-1 example: give back the real one
            example = tuple(a[:batch] if a.dim() > 0 else a for a in example)
    model = _torch_model(program.module(), example, spec, "pt2", path, input_shapes)
    model.save_suffix = ".pt2"
    return model


def _load_torchscript(path: Path, spec: str, input_shapes) -> Model:
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise _corrupt(path, "TorchScript archive", e) from e
    model = _torch_model(module, None, spec, "torchscript", path, input_shapes)
    model.save_suffix = ".ts"
    return model


def _load_hf(path: Path, spec: str, trust: bool, input_shapes) -> Model:
    from effkit.passes.export import quiet_torch

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
        raise _corrupt(config_path, "config.json", e) from e
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
        example = tuple(_random_array(s, vocab=vocab) for s in input_shapes)
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


# ---------------------------------------------------------------- torch models

def _forward_param_names(module: Any) -> list[str]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def to_numpy_inputs(example: Any) -> tuple[np.ndarray, ...]:
    """Example inputs given as tensors, arrays or tuples of them, as a tuple of numpy arrays."""
    import torch

    if isinstance(example, (torch.Tensor, np.ndarray)):
        example = (example,)
    if isinstance(example, dict):
        example = tuple(example.values())
    arrays = []
    for item in example:
        if isinstance(item, torch.Tensor):
            arrays.append(item.detach().cpu().numpy())
        elif isinstance(item, np.ndarray):
            arrays.append(item)
        else:
            raise InputError(f"example inputs must be tensors, got {type(item).__name__}")
    return tuple(arrays)


def _torch_model(module: Any, example: Any, spec: str, fmt: str, path: Path | None, input_shapes) -> Model:
    try:
        module.eval()
    except NotImplementedError:  # torch.export's unflattened modules are always in eval mode
        pass
    if input_shapes:
        arrays = tuple(_random_array(s) for s in input_shapes)
    elif example is not None:
        arrays = to_numpy_inputs(example)
    else:
        hint = expected_input_hint(module)
        raise InputError(f"{spec} comes without example inputs",
                         f"{hint + '; ' if hint else ''}pass --input-shape (e.g. 1x3x224x224) or --inputs file.npz")
    names = _forward_param_names(module)
    if len(names) < len(arrays) or any(n in ("args", "input") for n in names[: len(arrays)]):
        names = [f"input_{i}" for i in range(len(arrays))] if len(arrays) > 1 else ["input"]
    return Model(kind="torch", module=module, example_inputs=arrays, input_names=names[: len(arrays)],
                 source=spec, format=fmt, path=path)


def expected_input_hint(module: Any) -> str | None:
    """Say what the first layer expects, e.g. "the first layer 'fc1' is Linear(in_features=784)"."""
    import torch

    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear):
            return f"the first layer '{name}' is Linear(in_features={layer.in_features}), so e.g. --input-shape 1x{layer.in_features}"
        if isinstance(layer, torch.nn.Conv2d):
            return f"the first layer '{name}' is Conv2d(in_channels={layer.in_channels}), so e.g. --input-shape 1x{layer.in_channels}x224x224"
        if isinstance(layer, torch.nn.Conv1d):
            return f"the first layer '{name}' is Conv1d(in_channels={layer.in_channels}), so e.g. --input-shape 1x{layer.in_channels}x128"
        if isinstance(layer, torch.nn.Embedding):
            return f"the first layer '{name}' is Embedding({layer.num_embeddings}), so e.g. --input-shape int64:1x128"
    return None


def _available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def check_fits_in_memory(shape: tuple[int, ...], dtype: str, what: str) -> None:
    """Refuse, before allocating, inputs that would take more than half the free memory."""
    itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
    nbytes = itemsize * int(np.prod(np.array(shape, dtype=object)))
    limit = _available_memory() // 2
    if nbytes > limit:
        raise InputError(f"{what} of shape {'x'.join(map(str, shape))} {dtype} needs {nbytes / 2**30:.1f} GiB, "
                         f"more than half the free memory ({limit * 2 / 2**30:.1f} GiB)", "use a smaller shape")


def _random_array(shape: InputShape, vocab: int = 10) -> np.ndarray:
    """Seeded random values of the given shape: normal floats, small non-negative ints."""
    check_fits_in_memory(shape.shape, shape.dtype, "an input")
    rng = np.random.default_rng(SEED)
    if shape.dtype == "bool":
        return rng.integers(0, 2, shape.shape).astype(bool)
    if shape.dtype.startswith(("int", "uint")):
        return rng.integers(0, max(2, min(vocab, 10)), shape.shape).astype(shape.dtype)
    if shape.dtype == "bfloat16":
        raise InputError("bfloat16 inputs cannot be generated as numpy arrays", "use float32 or float16")
    return rng.standard_normal(shape.shape).astype(shape.dtype)


def with_inputs_file(model: Model, inputs: str | Path) -> Model:
    """Replace the example inputs by the arrays of an .npz file (by input name, else in file order)."""
    path = Path(inputs)
    if not path.is_file():
        raise InputError(f"no such inputs file: {path}", "pass an .npz file holding one array per model input")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as e:
        raise _corrupt(path, ".npz file", e) from e
    if all(n in arrays for n in model.input_names):
        chosen = tuple(arrays[n] for n in model.input_names)
    else:
        chosen = tuple(arrays.values())[: len(model.input_names)] if model.kind == "onnx" else tuple(arrays.values())
    if model.kind == "onnx" and len(chosen) != len(model.input_names):
        raise InputError(f"{path} holds {len(chosen)} arrays; the model takes {len(model.input_names)} inputs "
                         f"({', '.join(model.input_names)})")
    return model.replace(example_inputs=chosen, input_names=model.input_names
                         if len(chosen) == len(model.input_names) else [f"input_{i}" for i in range(len(chosen))])


# ---------------------------------------------------------------- ONNX models

_ONNX_TO_NUMPY = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
                  10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


def check_external_data(path: Path, proto: Any) -> None:
    """Refuse external data that is not what it claims before ONNX Runtime reads it: a location that is
    no file name, points outside the model's folder (path traversal) or is missing, and an offset or
    length that is not a whole number, is negative or runs past the end of the file."""
    from onnx.external_data_helper import _get_all_tensors

    base = path.parent.resolve()
    corrupt = "the model file is corrupt; export it again"
    for tensor in _get_all_tensors(proto):
        if tensor.data_location != 1:  # EXTERNAL
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        where = f"{path} stores tensor {_shown(tensor.name)} at {_shown(location)}"
        if "\x00" in location:
            raise ModelLoadError(f"{where}, a location with a NUL byte, which no file name has", corrupt)
        try:
            target = (base / location).resolve()
            inside = not Path(location).is_absolute() and target.is_relative_to(base)
            size = target.stat().st_size if inside and target.is_file() else None
        except OSError as e:  # a name longer than the file system allows
            raise ModelLoadError(f"{where}, which is not a usable file name: {e.strerror}", corrupt) from None
        if not inside:
            raise ModelLoadError(f"{where}, outside the model's folder",
                                 "refusing it: external data must sit beside the model")
        if size is None:
            raise ModelLoadError(f"{path} needs its external data file {_shown(location)}, which is missing",
                                 "copy it beside the model")
        offset, length = (_external_int(info, key, where, corrupt) for key in ("offset", "length"))
        if length is not None and (offset or 0) + length > size:
            raise ModelLoadError(f"{where}: {length} bytes from offset {offset or 0}, past the end of that file "
                                 f"({size} bytes)",
                                 "the data file is truncated or belongs to another model; copy the right one")


def _shown(text: str, limit: int = 200) -> str:
    """`text` quoted for a message, cut to `limit` characters."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}..."


def _external_int(info: dict, key: str, where: str, corrupt: str) -> int | None:
    """The offset or length of an external tensor: absent (None), or a whole number >= 0."""
    text = info.get(key)
    if text is None:
        return None
    if not re.fullmatch(r"\s*-?\d{1,19}\s*", text):  # int() would take 4300 digits; no file is that large
        raise ModelLoadError(f"{where} with {key} {_shown(text)}, which is not a whole number", corrupt)
    value = int(text)
    if value < 0:
        raise ModelLoadError(f"{where} with a negative {key} ({value})", corrupt)
    return value


def _load_onnx(path: Path, spec: str, input_shapes) -> Model:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise _corrupt(path, "ONNX model", e) from e
    check_external_data(path, proto)
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path} fails the ONNX checker: {first_line(e)}",
                             "re-export the model; the file is invalid") from e
    initializers = {i.name for i in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in initializers]
    names = [i.name for i in graph_inputs]
    if input_shapes and len(input_shapes) != len(graph_inputs):
        raise InputError(f"{path.name} takes {len(graph_inputs)} inputs ({', '.join(names)}); "
                         f"--input-shape was given {len(input_shapes)} times")
    arrays = []
    for i, inp in enumerate(graph_inputs):
        ttype = inp.type.tensor_type
        dtype = _ONNX_TO_NUMPY.get(ttype.elem_type, "float32")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        if input_shapes:
            given = input_shapes[i]
            if len(given.shape) != len(dims) or any(d is not None and d != g for d, g in zip(dims, given.shape)):
                raise InputError(f"input {inp.name!r} expects shape {_fmt_dims(dims)} {dtype}; got {'x'.join(map(str, given.shape))}",
                                 f"pass --input-shape {_fmt_dims(dims, fill=True)}")
            shape = InputShape(dtype, given.shape)
        else:
            filled = [d if d is not None else (DEFAULT_BATCH if j == 0 else DEFAULT_DYNAMIC_DIM) for j, d in enumerate(dims)]
            shape = InputShape(dtype, tuple(filled))
        arrays.append(_random_array(shape))
    model = Model(kind="onnx", onnx_path=path, example_inputs=tuple(arrays), input_names=names,
                  output_names=[o.name for o in proto.graph.output], source=spec, format="onnx", path=path,
                  save_suffix=".onnx")
    model.meta["input_dims"] = {inp.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                                           for d in inp.type.tensor_type.shape.dim] for inp in graph_inputs}
    return model


def _fmt_dims(dims: list, fill: bool = False) -> str:
    if fill:
        return "x".join(str(d) if d is not None else ("1" if i == 0 else str(DEFAULT_DYNAMIC_DIM)) for i, d in enumerate(dims))
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


# ---------------------------------------------------------------- running once

def flatten_outputs(out: Any) -> list[np.ndarray]:
    """Any torch output (tensor, tuple, list, dict, ModelOutput) as a flat list of float arrays."""
    import torch

    if isinstance(out, torch.Tensor):
        t = out.detach()
        if t.is_quantized:
            t = t.dequantize()
        return [t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()]
    if isinstance(out, dict):
        return [a for v in out.values() for a in flatten_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [a for v in out for a in flatten_outputs(v)]
    if out is None:
        return []
    raise InputError(f"the model returned a {type(out).__name__}, which effkit cannot compare",
                     "return tensors, or a tuple/dict of tensors")


def check_runs(model: Model) -> list[np.ndarray]:
    """Run the model once on its example inputs; a failure names the inputs and what the model expects."""
    from effkit.runtime import native_runner

    runner = native_runner(model)
    try:
        return runner.run(model.example_inputs)
    except EffkitError:
        raise
    except Exception as e:
        first = first_line(e)
        hint = expected_input_hint(model.module) if model.kind == "torch" else None
        raise InputError(f"the model failed on inputs {model.describe_inputs()}: {first}",
                         hint or "check --input-shape / --inputs against what the model expects") from e


# ---------------------------------------------------------------- saving and size

def _torch_example(model: Model) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs)


def save_model(model: Model, path: str | Path, force: bool = False) -> list[Path]:
    """Save `model` atomically in the format its suffix names; return the files written.

    torch models: `.pt2` (torch.export; loads back without the model's code), `.pt`/`.pth`
    (state_dict, needs --arch to load), `.safetensors` (likewise), `.onnx` (verified export).
    ONNX models: `.onnx` only.
    """
    from effkit.files import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    if model.kind == "onnx":
        if suffix != ".onnx":
            raise UsageError(f"an ONNX model can only be saved as .onnx, not {suffix or 'no suffix'}")
        return save_onnx_file(model.onnx_path, path, force)
    if suffix == ".onnx":
        from effkit.passes.export import export_onnx

        export_onnx(model, path, force=force)
        return [path]
    import torch

    with atomic_path(path, force) as tmp:
        if suffix == ".pt2":
            program = export_program(model)
            batch = int(model.example_inputs[0].shape[0]) if model.example_inputs[0].ndim else 0
            torch.export.save(program, str(tmp), extra_files={_PT2_META: json.dumps({"example_batch": batch})})
        elif suffix in (".pt", ".pth"):
            torch.save(model.module.state_dict(), str(tmp))
        elif suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in model.module.state_dict().items()}, str(tmp))
        elif suffix == ".ts":
            scripted = model.module
            if not isinstance(scripted, torch.jit.ScriptModule):
                scripted = torch.jit.trace(model.module, _torch_example(model), check_trace=False)
            torch.jit.save(scripted, str(tmp))
        else:
            raise UsageError(f"cannot save a torch model as {suffix or 'a file without suffix'}",
                             "use .pt2 (loads without code), .pt/.safetensors (weights), .ts (TorchScript) or .onnx")
    return [path]


def export_program(model: Model) -> Any:
    """torch.export the model with a dynamic batch dimension where the model allows it.

    torch.export specializes a dimension of size 1 ("0/1 specialization"), so a batch-1 example
    is exported from a batch-2 copy; `save_model` records the real example batch beside it.
    """
    import torch

    args = _torch_example(model)
    traced = tuple(torch.cat([a, a]) if a.dim() > 0 and a.shape[0] == 1 else a for a in args)
    dynamic = tuple({0: torch.export.Dim.AUTO} if a.dim() > 0 else None for a in traced)
    from effkit.passes.export import quiet_torch

    with quiet_torch():
        try:
            return torch.export.export(model.module, traced, dynamic_shapes=dynamic)
        except Exception:
            try:
                return torch.export.export(model.module, args)
            except Exception as e:
                raise ModelLoadError(f"torch.export cannot capture this model: {first_line(e)}",
                                     "save it as .onnx or .pt (state_dict) instead") from e


def save_onnx_file(src: Path, dst: Path, force: bool) -> list[Path]:
    """Copy an ONNX model with its external data, atomically: data first, then the graph that points to it."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    from effkit.files import atomic_path

    proto = onnx.load(str(src), load_external_data=False)
    external = [t for t in _get_all_tensors(proto) if t.data_location == 1]
    if not external:
        with atomic_path(dst, force) as tmp:
            shutil.copyfile(src, tmp)
        return [dst]
    proto = onnx.load(str(src))
    return write_onnx(proto, dst, force, external_data=True)


def write_onnx(proto: Any, dst: Path, force: bool, external_data: bool = False) -> list[Path]:
    """Write an ONNX proto atomically. External data goes to a content-named sidecar written first,
    so a kill at any moment leaves the old graph with its old data or the new graph with its new data."""
    import hashlib

    import onnx
    from onnx.external_data_helper import _get_all_tensors

    from effkit.files import atomic_path

    dst = Path(dst)
    if not external_data:
        with atomic_path(dst, force) as tmp:
            onnx.save_model(proto, str(tmp))
        return [dst]
    stage = Path(tempfile.mkdtemp(prefix=".effkit-", dir=dst.parent))
    try:
        onnx.save_model(proto, str(stage / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="m.data", size_threshold=0)
        digest = hashlib.sha256((stage / "m.data").read_bytes()).hexdigest()[:12]
        data_name = f"{dst.name}.{digest}.data"
        proto2 = onnx.load(str(stage / "m.onnx"), load_external_data=False)
        for t in _get_all_tensors(proto2):
            for e in t.external_data:
                if e.key == "location":
                    e.value = data_name
        old = _external_files(dst) if dst.exists() else set()
        if dst.exists() and not force:
            from effkit.errors import OutputExistsError

            raise OutputExistsError(f"{dst} already exists", "pass --force to overwrite it")
        (stage / "m.data").replace(dst.parent / data_name)
        with atomic_path(dst, force=True) as tmp:
            onnx.save_model(proto2, str(tmp))
        for stale in old - {data_name}:
            (dst.parent / stale).unlink(missing_ok=True)
        return [dst, dst.parent / data_name]
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _external_files(path: Path) -> set[str]:
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return set()
    return {e.value for t in _get_all_tensors(proto) if t.data_location == 1 for e in t.external_data if e.key == "location"}


def artifact_files(model: Model) -> list[Path]:
    """The files that make up the model on disk, sidecars included (serialized to a temp folder if needed)."""
    if model.kind == "onnx":
        src = model.onnx_path
        return [src] + [src.parent / f for f in sorted(_external_files(src))]
    if model.path is not None and model.path.is_file():
        return [model.path]
    target = Path(tempfile.mkdtemp(dir=workdir())) / f"model{model.save_suffix}"
    return save_model(model, target)


def size_info(model: Model) -> dict:
    """Parameters, non-zero parameters, bytes in memory, bytes on disk (with sidecars) and gzip bytes."""
    info: dict[str, Any] = {}
    if model.kind == "torch":
        tensors = list(_torch_tensors(model.module))
        info["parameters"] = int(sum(t.numel() for t in tensors))
        info["nonzero_parameters"] = int(sum(int((t != 0).sum()) for t in tensors))
        info["bytes_in_memory"] = int(sum(t.numel() * t.element_size() for t in tensors))
    else:
        arrays = _onnx_initializers(model.onnx_path)
        info["parameters"] = int(sum(a.size for a in arrays))
        info["nonzero_parameters"] = int(sum(np.count_nonzero(a) for a in arrays))
        info["bytes_in_memory"] = int(sum(a.nbytes for a in arrays))
    files = artifact_files(model)
    info["bytes_on_disk"] = int(sum(f.stat().st_size for f in files))
    info["gzip_bytes"] = int(sum(len(gzip.compress(f.read_bytes(), compresslevel=6)) for f in files))
    info["format"] = model.save_suffix.lstrip(".") if model.path is None else model.format
    info["files"] = [f.name for f in files] if model.path is not None or model.kind == "onnx" else []
    return info


def _torch_tensors(module: Any):
    """Parameters and buffers, including those of quantized layers (packed weights)."""
    import torch

    seen = set()
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            yield t
    for m in module.modules():
        weight = getattr(m, "weight", None)
        if callable(weight) and not isinstance(weight, torch.Tensor):  # quantized layers pack their weight
            try:
                w = weight()
            except Exception:
                continue
            if isinstance(w, torch.Tensor) and id(w) not in seen:
                seen.add(id(w))
                yield w.int_repr() if w.is_quantized else w


def _onnx_initializers(path: Path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    arrays = [numpy_helper.to_array(t) for t in proto.graph.initializer]
    for node in proto.graph.node:  # weights stored as Constant nodes count too
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    arrays.append(numpy_helper.to_array(attr.t))
    return arrays
