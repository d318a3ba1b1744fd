"""How big a model is: parameters, non-zero parameters, bytes in memory, on disk (with sidecars), gzip.

On disk, a Hugging Face folder is its files (weights, configs, tokenizer); a model used in part (Whisper's
encoder) or changed by a pass is measured as effkit saves it."""

from __future__ import annotations

import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from effkit.load_hf import folder_files
from effkit.model import Model
from effkit.onnx_files import external_files, load_graph, tensor_chunks
from effkit.save import save_model
from effkit.util import workdir


def artifact_files(model: Model) -> list[Path]:
    """The files that make up the model on disk, sidecars included (serialized to a temp folder if needed)."""
    if model.kind == "onnx":
        src = model.onnx_path
        return [src] + [src.parent / f for f in sorted(external_files(src))]
    if model.path is not None and model.path.is_file():
        return [model.path]
    if model.format == "hf" and model.path is not None and not model.meta.get("hf_part"):
        return folder_files(model.path)  # the folder as it is, not a copy re-serialized in another format
    target = Path(tempfile.mkdtemp(dir=workdir())) / f"model{model.save_suffix}"
    return save_model(model, target)


def size_info(model: Model) -> dict:
    """Parameters, non-zero parameters, bytes in memory, bytes on disk (with sidecars) and gzip bytes."""
    info: dict[str, Any] = {}
    if model.kind == "torch":
        # parameters are the learned weights, as `effkit inspect` counts them; buffers (BatchNorm
        # statistics, ...) take memory but are not parameters
        weights = list(_torch_tensors(model.module, buffers=False))
        info["parameters"] = int(sum(t.numel() for t in weights))
        info["nonzero_parameters"] = int(sum(int((t != 0).sum()) for t in weights))
        info["bytes_in_memory"] = int(sum(t.numel() * t.element_size() for t in _torch_tensors(model.module)))
    else:
        info["parameters"] = info["nonzero_parameters"] = info["bytes_in_memory"] = 0
        for chunk in _onnx_weight_chunks(model.onnx_path):
            info["parameters"] += int(chunk.size)
            info["nonzero_parameters"] += int(np.count_nonzero(chunk))
            info["bytes_in_memory"] += int(chunk.nbytes)
    files = artifact_files(model)
    info["bytes_on_disk"] = int(sum(f.stat().st_size for f in files))
    info["gzip_bytes"] = int(sum(_gzip_bytes(f) for f in files))
    info["format"] = model.save_suffix.lstrip(".") if model.path is None else model.format
    info["files"] = [f.name for f in files] if model.path is not None or model.kind == "onnx" else []
    return info


def _torch_tensors(module: Any, buffers: bool = True):
    """Parameters (and buffers), including those of quantized layers (packed weights)."""
    import torch

    seen = set()
    for t in list(module.parameters()) + (list(module.buffers()) if buffers else []):
        if id(t) not in seen:
            seen.add(id(t))
            yield t
    for m in module.modules():
        weight = getattr(m, "weight", None)
        # quantized layers pack their weight (a method); a parametrized layer's `parametrizations` dict
        # holds a module named weight too, whose tensors are among the parameters already
        if callable(weight) and not isinstance(weight, (torch.Tensor, torch.nn.Module)):
            try:
                w = weight()
            except Exception:
                continue
            if isinstance(w, torch.Tensor) and id(w) not in seen:
                seen.add(id(w))
                yield w.int_repr() if w.is_quantized else w


def disk_bytes(model: Model) -> int:
    """Bytes on disk of the model's files, sidecars included (without the gzip size_info also measures)."""
    return int(sum(f.stat().st_size for f in artifact_files(model)))


def _gzip_bytes(path: Path) -> int:
    """The size of `path` gzipped (level 6), compressed in chunks: a model of several GB is never read whole."""
    stream = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_GZIP_CHUNK):
            size += len(stream.compress(chunk))
    return size + len(stream.flush())


_GZIP_CHUNK = 16 * 2**20


def _onnx_weight_chunks(path: Path):
    """The values of an ONNX model's initializers and Constant-node tensors (weights stored as Constant nodes
    count too), piece by piece: external data is read in chunks, never the whole model at once."""
    graph = load_graph(path)
    for tensor in graph.graph.initializer:
        yield from tensor_chunks(tensor, path.parent)
    for node in graph.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    yield from tensor_chunks(attr.t, path.parent)
