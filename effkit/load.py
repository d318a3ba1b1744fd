"""Load every supported model format into one `Model` value, with example inputs, checked to run.

torch, onnx and onnxruntime are imported inside the functions that use them, so `import effkit`
stays cheap.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np

from effkit.errors import EffkitError, InputError, ModelLoadError, UsageError, first_line, unreadable
from effkit.factory import is_factory_spec, resolve_factory
from effkit.data import Reading, load_data
from effkit.data_images import image_batch, with_defaults
from effkit.data_text import text_examples, token_dtypes, tokenizer_file
from effkit.files import mark_read
from effkit.inputs import (DEFAULT_BATCH, DEFAULT_DYNAMIC_DIM, expected_input_hint, forward_signature, input_names_for,
                           match_inputs, random_inputs, to_numpy_inputs, with_inputs_file)
from effkit.limits import check_fits_in_memory, zip_declared_bytes
from effkit.load_hf import load_hf
from effkit.load_pt2 import load_pt2
from effkit.model import Model
from effkit.onnx_files import check_external_data, external_files
from effkit.runners import native_runner, plain_input_names
from effkit.specs import InputShape

log = logging.getLogger(__name__)
MODEL_SPEC_HELP = (
    "a MODEL is a file (.pt/.pth state_dict with --arch, .safetensors with --arch, .pt2, "
    "TorchScript, .onnx), a Hugging Face folder (hf:PATH), or a factory: path/to/file.py:function "
    "or package.module:function"
)


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
    data: str | None = None,
    reading: Reading = Reading(),
    texts: Sequence[str] = (),
    images: Sequence[str | Path] = (),
    check: bool = True,
) -> Model:
    """Load MODEL from a spec (see MODEL_SPEC_HELP) with its example inputs.

    Example inputs come from, in order: `inputs` (an .npz file, for every format), `texts` (tokenized
    with the model's tokenizer.json as one batch, padded to the longest or to `reading.max_length`),
    `images` (image files as one batch, through a Hugging Face folder's image processor, else as
    `reading.images` says; explicit sizes and normalization in it win), `input_shapes`
    (random values, seeded), the factory or the file itself (a .pt2 archive's example, an ONNX
    file's fixed shapes), the first sample of `data` (a DATA spec, see effkit.data, read as `reading`
says, so that its first sample has the shape the command's data will have), and last
    random values of an ONNX file's shapes with dynamic dimensions filled in. Where they came from
    is `model.meta["inputs_from"]`. With `check`, the model runs once on them so a wrong shape
    fails here, with a message naming what the model expects.
    """
    spec = str(spec)
    log.debug("loading %s", spec)
    path = Path(spec[3:] if spec.startswith("hf:") else spec)
    try:
        exists = path.exists()
    except OSError as e:  # a name longer than the file system allows, say
        raise ModelLoadError(f"cannot use {spec[:60]!r}... as a path: {e.strerror}", MODEL_SPEC_HELP) from e
    if spec.startswith("hf:") or (exists and path.is_dir() and (path / "config.json").is_file()):
        model = load_hf(path, spec, trust, input_shapes)
    elif exists:
        if path.is_dir():
            raise ModelLoadError(f"{path} is a folder without config.json", MODEL_SPEC_HELP)
        model = _load_file(path, spec, arch, trust, input_shapes)
    elif is_factory_spec(spec):
        module, example = _call_factory(spec)
        model = _torch_model(module, example, spec, "factory", None, input_shapes)
    else:
        raise ModelLoadError(f"no such file: {spec}", MODEL_SPEC_HELP)
    if exists:  # the file or folder, and an ONNX model's external data, are inputs of this command
        for file in [path, *model_files(model)]:
            mark_read(file)
    if arch and model.format not in ("state_dict", "safetensors"):
        raise UsageError(f"--arch applies to state_dict and .safetensors files, not to a {model.format} model",
                         "drop --arch")
    if sum(bool(way) for way in (texts, images, inputs is not None or input_shapes)) > 1:
        raise UsageError("give the example inputs one way: --text, --image, --inputs or --input-shape")
    model = _with_example_inputs(model, spec, inputs, data, reading, texts, images)
    if check:
        check_runs(model)
    return model


def _with_example_inputs(model: Model, spec: str, inputs: str | Path | None, data: str | None,
                         reading: Reading, texts: Sequence[str], images: Sequence[str | Path]) -> Model:
    """The model with the example inputs it will use (see `load_model` for the order)."""
    if inputs is not None:
        return with_inputs_file(model, inputs)
    if texts:
        names = model.input_names or ["input_ids"]
        arrays = text_examples(list(texts), tokenizer_file(model), names, token_dtypes(model, names),
                               reading.max_length, model.meta.get("context_length"))
        return match_inputs(model, dict(zip(names, arrays)),
                            f"--text: {len(texts)} tokenized, length {arrays[0].shape[-1]}")
    if images:
        files = [Path(f) for f in images]
        for file in files:
            mark_read(file)
        batch = image_batch(files, with_defaults(reading.images, model.meta.get("image_preprocess")))
        name = model.input_names[0] if len(model.input_names) == 1 else "pixel_values"
        return match_inputs(model, {name: batch}, f"--image: {len(files)} image{'s' * (len(files) > 1)}, "
                                                  f"{batch.shape[2]}x{batch.shape[3]}")
    if data is not None and (not model.example_inputs or model.meta.get("inputs_random")):
        first = load_data(data, model.input_names or None, limit=1, model=model, reading=reading)
        names = model.input_names if len(model.input_names) == len(first.inputs) else [
            f"array {i}" for i in range(len(first.inputs))]
        arrays = (np.asarray(a[:1]) for a in first.inputs)  # data may be read lazily: one sample, read now
        return match_inputs(model, dict(zip(names, arrays)), f"the first sample of {data}")
    if not model.example_inputs:
        hint = model.meta.get("input_hint") or expected_input_hint(model.module)
        raise InputError(f"{spec} comes without example inputs",
                         f"{hint + '; ' if hint else ''}pass --input-shape (e.g. 1x3x224x224) or --inputs file.npz")
    return model


def _load_file(path: Path, spec: str, arch: str | None, trust: bool, input_shapes) -> Model:
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path} is empty", "the file is truncated; save or download it again")
    if suffix == ".onnx":
        return load_onnx(path, spec, input_shapes)
    if suffix == ".safetensors":
        state = _read_safetensors(path)
        return _from_state_dict(state, path, spec, arch, input_shapes, "safetensors")
    if zipfile.is_zipfile(path):  # .pt, .pt2 and TorchScript: judged by what they declare, before reading
        _check_archive_fits(path, "torch.export (.pt2) archive" if suffix == ".pt2" else "PyTorch checkpoint")
    if suffix == ".pt2":
        model = _torch_model(*load_pt2(path, trust), spec, "pt2", path, input_shapes)
        model.save_suffix = ".pt2"
        return model
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        return _load_torchscript(path, spec, input_shapes)
    if suffix in (".pt", ".pth", ".bin", ".ckpt", ".tar") or zipfile.is_zipfile(path):
        return _load_checkpoint(path, spec, arch, trust, input_shapes)
    raise ModelLoadError(f"unknown model format: {path.name}", MODEL_SPEC_HELP)


def _check_archive_fits(path: Path, what: str) -> None:
    """Refuse a zip archive whose members declare more than the memory budget (a decompression bomb)."""
    try:
        declared = zip_declared_bytes(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise unreadable(path, what, e) from e
    check_fits_in_memory(declared, f"reading {path}", "free memory or use a smaller file")


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


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
            raise unreadable(path, "PyTorch checkpoint", e) from e
        if not trust:
            raise ModelLoadError(
                f"{path} holds pickled Python objects (e.g. a whole model), and unpickling runs code from the file",
                "re-run with --trust only if you trust its source, or save model.state_dict() and pass --arch",
            ) from e
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:
            raise unreadable(path, "PyTorch checkpoint", e2) from e2
    except Exception as e:
        raise unreadable(path, "PyTorch checkpoint", e) from e
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
        raise unreadable(path, "safetensors file", e) from e


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


def _load_torchscript(path: Path, spec: str, input_shapes) -> Model:
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise unreadable(path, "TorchScript archive", e) from e
    model = _torch_model(module, None, spec, "torchscript", path, input_shapes)
    model.save_suffix = ".ts"
    return model


# ---------------------------------------------------------------- torch models

def _torch_model(module: Any, example: Any, spec: str, fmt: str, path: Path | None, input_shapes) -> Model:
    try:
        module.eval()
    except NotImplementedError:  # torch.export's unflattened modules are always in eval mode
        pass
    if input_shapes:
        arrays, origin = random_inputs(input_shapes), "--input-shape"
    elif example is not None:
        arrays, origin = to_numpy_inputs(example), f"the {fmt}'s own example"
    else:  # none yet: --inputs or data may give them (load_model fails when nothing does)
        required = forward_signature(module)[1]
        return Model(kind="torch", module=module, example_inputs=(), input_names=input_names_for(module, required),
                     source=spec, format=fmt, path=path)
    return Model(kind="torch", module=module, example_inputs=arrays, input_names=input_names_for(module, len(arrays)),
                 source=spec, format=fmt, path=path, meta={"inputs_from": origin})


# ---------------------------------------------------------------- ONNX models

_ONNX_TO_NUMPY = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
                  10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


def load_onnx(path: Path, spec: str, input_shapes) -> Model:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise unreadable(path, "ONNX model", e) from e
    check_external_data(path, proto)
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path} fails the ONNX checker: {first_line(e)}",
                             "re-export the model; the file is invalid") from e
    initializers = {i.name for i in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in initializers]
    plain = plain_input_names([i.name for i in graph_inputs])  # a causal LM with its KV cache runs with none
    kv_cache = len(plain) < len(graph_inputs)
    graph_inputs = [i for i in graph_inputs if i.name in plain]
    names = [i.name for i in graph_inputs]
    if input_shapes and len(input_shapes) != len(graph_inputs):
        raise InputError(f"{path.name} takes {len(graph_inputs)} inputs ({', '.join(names)}); "
                         f"--input-shape was given {len(input_shapes)} times")
    shapes, filled_in = [], False
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
            filled_in = filled_in or None in dims
            shape = InputShape(dtype, tuple(filled))
        shapes.append(shape)
    model = Model(kind="onnx", onnx_path=path, example_inputs=random_inputs(shapes), input_names=names,
                  output_names=[o.name for o in proto.graph.output], source=spec, format="onnx", path=path,
                  save_suffix=".onnx")
    if input_shapes:
        model.meta["inputs_from"] = "--input-shape"
    elif filled_in:  # the first sample of data, when given, has real sizes instead
        model.meta.update(inputs_from=f"random, dynamic dimensions set to batch {DEFAULT_BATCH}, "
                                      f"others {DEFAULT_DYNAMIC_DIM}", inputs_random=True)
    else:
        model.meta["inputs_from"] = "random, of the ONNX file's input shapes"
    model.meta["input_dims"] = {inp.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                                           for d in inp.type.tensor_type.shape.dim] for inp in graph_inputs}
    if kv_cache:  # it generates (bench --generate) and quantizes timed on decode steps
        model.meta["kv_cache"] = True
        model.meta["causal_lm"] = True
    return model


def _fmt_dims(dims: list, fill: bool = False) -> str:
    if fill:
        return "x".join(str(d) if d is not None else ("1" if i == 0 else str(DEFAULT_DYNAMIC_DIM)) for i, d in enumerate(dims))
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


# ---------------------------------------------------------------- running once


def check_runs(model: Model) -> list[np.ndarray]:
    """Run the model once on its example inputs; a failure names the inputs and what the model expects."""
    runner = native_runner(model)
    log.debug("running the model once on its example inputs (%s)", model.describe_inputs())
    try:
        return runner.run(model.example_inputs)
    except EffkitError:
        raise
    except Exception as e:
        first = first_line(e)
        hint = model.meta.get("input_hint") or (expected_input_hint(model.module) if model.kind == "torch" else None)
        raise InputError(f"the model failed on inputs {model.describe_inputs()}: {first}",
                         hint or "check --input-shape / --inputs against what the model expects") from e


def model_files(model: Model) -> list[Path]:
    """The files a model was loaded from, an ONNX model's external data included; none when built in memory."""
    if model.kind == "onnx":
        src = model.onnx_path
        return [src] + [src.parent / f for f in sorted(external_files(src))]
    return [model.path] if model.path is not None else []
