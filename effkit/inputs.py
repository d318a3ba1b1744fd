"""Example inputs: random ones of a given shape (seeded), from an .npz file, tensors as numpy, batches.

Arrays, not tensors, so torch and ONNX Runtime get the very same values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from effkit.errors import InputError, unreadable
from effkit.files import mark_read
from effkit.limits import array_bytes, check_fits_in_memory, npz_bytes
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


# Elements generated at a time where the target dtype is not one numpy's generator makes (float16):
# the values come in float32 chunks of this size and are converted chunk by chunk.
GENERATION_CHUNK = 2**22


def _generation_bytes(shape: InputShape) -> int:
    """Memory that generating one random input takes: the array itself, and a float32 chunk for float16."""
    nbytes = array_bytes(shape.shape, shape.dtype)
    if shape.dtype == "float16":
        nbytes += 4 * min(GENERATION_CHUNK, nbytes // 2)
    return nbytes


def random_inputs(shapes: list[InputShape] | tuple[InputShape, ...], vocab: int = 10) -> tuple[np.ndarray, ...]:
    """Seeded random arrays of `shapes`, refused before anything is allocated when they do not fit in memory."""
    if not shapes:
        return ()
    dims = [f"{'x'.join(map(str, s.shape))} {s.dtype}" for s in shapes]
    what = f"an input of shape {dims[0]}" if len(dims) == 1 else f"generating inputs {', '.join(dims)}"
    check_fits_in_memory(sum(_generation_bytes(s) for s in shapes), what, "use a smaller shape")
    return tuple(_random_array(s, vocab) for s in shapes)


def _random_array(shape: InputShape, vocab: int = 10) -> np.ndarray:
    """Seeded random values made in the input's own dtype: normal floats, small non-negative ints."""
    rng = np.random.default_rng(SEED)
    if shape.dtype == "bfloat16":
        raise InputError("bfloat16 inputs cannot be generated as numpy arrays", "use float32 or float16")
    if shape.dtype == "bool":
        return rng.integers(0, 2, shape.shape, dtype=bool)
    if shape.dtype.startswith(("int", "uint")):
        return rng.integers(0, max(2, min(vocab, 10)), shape.shape, dtype=shape.dtype)
    out = np.empty(shape.shape, shape.dtype)
    if shape.dtype in ("float32", "float64"):
        rng.standard_normal(dtype=shape.dtype, out=out)
        return out
    flat = out.reshape(-1)
    for start in range(0, flat.size, GENERATION_CHUNK):
        stop = min(start + GENERATION_CHUNK, flat.size)
        flat[start:stop] = rng.standard_normal(stop - start, dtype=np.float32)
    return out


def forward_signature(module: Any) -> tuple[list[str], int, bool]:
    """A torch module's positional inputs: (names, how many are required, whether it takes *args).

    TorchScript methods have no Python signature but a schema; a module whose signature cannot be
    read counts as taking anything (*args).
    """
    import inspect

    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:
        args = list(schema.arguments)[1:]  # the first is self
        return [a.name for a in args], sum(1 for a in args if not a.has_default_value()), False
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):
        return [], 0, True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(1 for p in positional if p.default is p.empty)
    return [p.name for p in positional], required, any(p.kind == p.VAR_POSITIONAL for p in params)


def input_names_for(module: Any, count: int) -> list[str]:
    """Names for `count` positional inputs of a torch module: its forward's, else input / input_0, input_1..."""
    names, _, _ = forward_signature(module)
    if len(names) < count or any(n in ("args", "input") for n in names[:count]):
        return [f"input_{i}" for i in range(count)] if count > 1 else ["input"]
    return names[:count]


def read_inputs_file(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file by key, in file order, refused when they do not fit in memory."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such inputs file: {path}", "pass an .npz file holding one array per model input")
    mark_read(path)
    try:
        declared = npz_bytes(path)
    except Exception as e:
        raise unreadable(path, ".npz file", e) from e
    check_fits_in_memory(declared, f"reading {path}", "give smaller example arrays")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as e:
        raise unreadable(path, ".npz file", e) from e


def _accepted_inputs(model: Model) -> tuple[list[str], int, int | None]:
    """(input names, fewest inputs, most inputs or None for any number) the model accepts."""
    if model.kind == "onnx":
        return list(model.input_names), len(model.input_names), len(model.input_names)
    names, required, variadic = forward_signature(model.module)
    if variadic and not names and model.example_inputs:  # e.g. a traced wrapper: trust its own example
        return list(model.input_names), len(model.example_inputs), len(model.example_inputs)
    return names, required, None if variadic else len(names)


def match_inputs(model: Model, arrays: dict[str, np.ndarray], source: str) -> Model:
    """The model with `arrays` as its example inputs: by name when the keys are the model's input
    names, else by position; an array too many or too few is an error naming both lists."""
    names, fewest, most = _accepted_inputs(model)
    keys = list(arrays)
    by_name = bool(keys) and set(keys) == set(names[: len(keys)])
    if by_name:
        chosen_names = names[: len(keys)]
        chosen = tuple(arrays[n] for n in chosen_names)
    else:
        chosen = tuple(arrays.values())
        chosen_names = (list(names[: len(chosen)]) if model.kind == "onnx"
                        else input_names_for(model.module, len(chosen)))
    if len(chosen) < fewest or (most is not None and len(chosen) > most):
        wanted = ", ".join(names) if names else "none"
        count = str(fewest) if most == fewest else f"{fewest} to {most}" if most is not None else f"at least {fewest}"
        raise InputError(f"{source} holds {len(keys)} array{'s' * (len(keys) != 1)} ({', '.join(keys) or 'none'}); "
                         f"the model takes {count} input{'s' * (count != '1')} ({wanted})",
                         "give one array per model input, named like the inputs or in their order")
    meta = {k: v for k, v in model.meta.items() if k != "inputs_random"}
    return model.replace(example_inputs=chosen, input_names=chosen_names, meta={**meta, "inputs_from": source})


def with_inputs_file(model: Model, inputs: str | Path) -> Model:
    """Replace the example inputs by the arrays of an .npz file (see `match_inputs`)."""
    return match_inputs(model, read_inputs_file(inputs), str(inputs))


def torch_inputs(model: Model) -> tuple:
    """The model's example inputs as torch tensors (sharing memory with the arrays)."""
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs)


def batched(example: Sequence[np.ndarray], batch_size: int) -> tuple[np.ndarray, ...]:
    """The example inputs repeated (or cut) along the first dimension to `batch_size` rows.

    A repeated input is allocated once at its final size (`batch_bytes` is what that takes).
    """
    out = []
    for a in example:
        if a.ndim == 0 or batch_size <= a.shape[0]:
            out.append(a if a.ndim == 0 else a[:batch_size])
            continue
        reps, rest = divmod(batch_size, a.shape[0])
        repeated = np.empty((batch_size, *a.shape[1:]), a.dtype)
        repeated[:reps * a.shape[0]].reshape(reps, *a.shape)[...] = a
        repeated[reps * a.shape[0]:] = a[:rest]
        out.append(repeated)
    return tuple(out)


def sequence_inputs(example_inputs: tuple[np.ndarray, ...]) -> list[int]:
    """Which inputs carry a text model's sequence axis (axis 1): every 2-dim input shaped like the first
    2-dim integer one (token ids; attention masks and token type ids have their shape)."""
    ids = next((a for a in example_inputs if a.ndim == 2 and np.issubdtype(a.dtype, np.integer)), None)
    return [] if ids is None else [i for i, a in enumerate(example_inputs) if a.shape == ids.shape]


def batch_bytes(example: Sequence[np.ndarray], batch_size: int) -> int:
    """Memory that `batched(example, batch_size)` allocates: the inputs it has to repeat, at the new size."""
    return sum(array_bytes((batch_size, *a.shape[1:]), a.dtype) for a in example
               if a.ndim > 0 and batch_size > a.shape[0])
