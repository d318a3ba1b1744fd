"""Example inputs: random ones of a given shape (seeded), from an .npz file, tensors as numpy, batches.

Arrays, not tensors, so torch and ONNX Runtime get the very same values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from effkit.errors import InputError, unreadable
from effkit.model import Model
from effkit.specs import InputShape


# Dynamic ONNX dimensions without a value from --input-shape: the first is the batch, the rest
# (sequence lengths, image sizes) get a common default.
DEFAULT_BATCH = 1
DEFAULT_DYNAMIC_DIM = 128
SEED = 0  # random example inputs are the same every run


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


def random_array(shape: InputShape, vocab: int = 10) -> np.ndarray:
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
        raise unreadable(path, ".npz file", e) from e
    if all(n in arrays for n in model.input_names):
        chosen = tuple(arrays[n] for n in model.input_names)
    else:
        chosen = tuple(arrays.values())[: len(model.input_names)] if model.kind == "onnx" else tuple(arrays.values())
    if model.kind == "onnx" and len(chosen) != len(model.input_names):
        raise InputError(f"{path} holds {len(chosen)} arrays; the model takes {len(model.input_names)} inputs "
                         f"({', '.join(model.input_names)})")
    return model.replace(example_inputs=chosen, input_names=model.input_names
                         if len(chosen) == len(model.input_names) else [f"input_{i}" for i in range(len(chosen))])


def batched(example: Sequence[np.ndarray], batch_size: int) -> tuple[np.ndarray, ...]:
    """The example inputs repeated (or cut) along the first dimension to `batch_size` rows."""
    out = []
    for a in example:
        if a.ndim == 0:
            out.append(a)
            continue
        reps = -(-batch_size // a.shape[0])
        out.append(np.ascontiguousarray(np.concatenate([a] * reps)[:batch_size]) if reps > 1 else a[:batch_size])
    return tuple(out)


def torch_inputs(model: Model) -> tuple:
    """The model's example inputs as torch tensors (sharing memory with the arrays)."""
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs)
