"""Calibration, evaluation and training data from specs, shared by every command.

A DATA spec is:
- `file.npz`: arrays by name. Labels under `labels`, `label`, `y` or `targets`; the inputs are the
  arrays named like the model's inputs, else every other array in file order.
- `file.pt` / `file.pth`: a tensor, a tuple/list `(inputs, labels)`, or a dict as for .npz
  (read with weights-only loading: no code runs).
- a folder of `.npy` files: one sample per file, sorted by name; `labels.npy` holds the labels.
- `path/to/file.py:factory` or `package.module:factory`: returns a Dataset, DataLoader or any
  iterable of inputs or `(inputs, labels)` pairs.

Data is loaded into memory as numpy arrays: fine for calibration and for the small data sets
effkit distills on; stream-friendly loading is future work.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effkit.errors import InputError, UsageError, first_line
from effkit.factory import is_factory_spec, resolve_factory
from effkit.files import mark_read
from effkit.limits import check_fits_in_memory, npy_header_bytes, npz_bytes, zip_declared_bytes
from effkit.runners import native_runner

LABEL_KEYS = ("labels", "label", "y", "targets", "target")


@dataclass
class Data:
    """Inputs (one array per model input, samples along dim 0) and optional integer labels."""

    inputs: tuple[np.ndarray, ...]
    labels: np.ndarray | None
    source: str

    def __post_init__(self) -> None:
        lengths = {len(a) for a in self.inputs} | ({len(self.labels)} if self.labels is not None else set())
        if not self.inputs:
            raise InputError(f"{self.source} holds no input arrays")
        if len(lengths) > 1:
            raise InputError(f"{self.source}: arrays disagree in length ({', '.join(str(len(a)) for a in self.inputs)}"
                             f"{'' if self.labels is None else f', labels {len(self.labels)}'})",
                             "every array needs one row per sample")
        if len(self) == 0:
            raise InputError(f"{self.source} holds no samples")

    def __len__(self) -> int:
        return len(self.inputs[0])

    def take(self, n: int | None) -> Data:
        """The first `n` samples (all when n is None)."""
        if n is None or n >= len(self):
            return self
        return Data(tuple(a[:n] for a in self.inputs), None if self.labels is None else self.labels[:n], self.source)

    def split(self, fraction: float, seed: int = 0) -> tuple[Data, Data]:
        """A seeded random split into (train, validation)."""
        order = np.random.default_rng(seed).permutation(len(self))
        n_val = max(1, int(round(len(self) * fraction)))
        if n_val >= len(self):
            raise InputError(f"{self.source} has too few samples ({len(self)}) to split off validation data")
        val, train = order[:n_val], order[n_val:]
        pick = lambda idx: Data(tuple(a[idx] for a in self.inputs),  # noqa: E731
                                None if self.labels is None else self.labels[idx], self.source)
        return pick(train), pick(val)

    def batches(self, batch_size: int):
        """Consecutive batches of (inputs tuple, labels or None)."""
        for start in range(0, len(self), batch_size):
            yield (tuple(a[start:start + batch_size] for a in self.inputs),
                   None if self.labels is None else self.labels[start:start + batch_size])

    def check_against(self, model) -> None:
        """Raise InputError when the samples do not fit the model's inputs.

        Per-sample shapes that differ from the example's (another sequence length, say) are
        accepted when the model runs on them; the error names both shapes when it does not.
        """
        if len(self.inputs) != len(model.example_inputs):
            raise InputError(f"{self.source} holds {len(self.inputs)} input arrays; the model takes "
                             f"{len(model.example_inputs)} ({model.describe_inputs()})")
        mismatched = [(name, have, want) for name, have, want in zip(model.input_names, self.inputs, model.example_inputs)
                      if have.shape[1:] != want.shape[1:]]
        if not mismatched:
            return

        try:
            native_runner(model).run(tuple(a[:1] for a in self.inputs))
        except Exception as e:
            name, have, want = mismatched[0]
            raise InputError(f"{self.source}: samples of input {name!r} have shape {list(have.shape[1:])}, "
                             f"the model expects {list(want.shape[1:])}",
                             "reshape the data or give the model matching --input-shape") from e


def _split_arrays(arrays: dict[str, np.ndarray], input_names: list[str] | None, source: str) -> Data:
    label_key = next((k for k in LABEL_KEYS if k in arrays), None)
    labels = arrays.pop(label_key) if label_key else None
    if input_names and all(n in arrays for n in input_names):
        inputs = tuple(arrays[n] for n in input_names)
    else:
        inputs = tuple(arrays.values())
    return Data(tuple(_as_input(a) for a in inputs), _as_labels(labels, source), source)


def _as_input(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) if a.dtype == np.float64 else a


def _as_labels(labels: Any, source: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        if labels.ndim == 1 and np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
            return labels.astype(np.int64)
        raise InputError(f"{source}: labels must be a 1-D array of class indices, got {labels.dtype} {list(labels.shape)}")
    return labels.astype(np.int64)


def _to_numpy(x: Any) -> np.ndarray:
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _from_iterable(items: Any, source: str, limit: int | None) -> Data:
    """Materialize a Dataset, DataLoader or iterable of inputs / (inputs, labels)."""
    import torch

    inputs: list[list[np.ndarray]] = []
    labels: list[np.ndarray] = []
    batched = isinstance(items, torch.utils.data.DataLoader)
    count = 0
    iterator = (items[i] for i in range(len(items))) if isinstance(items, torch.utils.data.Dataset) and hasattr(items, "__len__") else iter(items)
    for item in iterator:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            x, y = item
            labels.append(np.atleast_1d(_to_numpy(y)) if batched else np.asarray([_to_numpy(y)]).reshape(1))
        else:
            x = item
        xs = x if isinstance(x, (tuple, list)) else (x,)
        arrays = [_to_numpy(a) if batched else _to_numpy(a)[None] for a in xs]
        inputs.append(arrays)
        count += len(arrays[0])
        if limit is not None and count >= limit:
            break
    if not inputs:
        raise InputError(f"{source} yielded no samples")
    stacked = tuple(np.concatenate([s[i] for s in inputs]) for i in range(len(inputs[0])))
    label_array = np.concatenate(labels) if labels and len(labels) == len(inputs) else None
    return Data(tuple(_as_input(a) for a in stacked), _as_labels(label_array, source), source).take(limit)


def _check_fits(path: Path, nbytes: int) -> None:
    check_fits_in_memory(nbytes, f"reading {path}", "use fewer or smaller samples")


def _npy_file_bytes(path: Path) -> int:
    """What a .npy file's header declares (np.load allocates that much before reading)."""
    try:
        with open(path, "rb") as fp:
            return npy_header_bytes(fp)
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is not a readable .npy file: {first_line(e, 200)}") from e


def load_data(spec: str, input_names: list[str] | None = None, limit: int | None = None) -> Data:
    """Load a DATA spec (see the module docstring) as in-memory arrays; at most `limit` samples."""
    path = Path(spec)
    if path.is_dir() or path.is_file():
        mark_read(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.npy") if p.name != "labels.npy")
        if not files:
            raise InputError(f"{path} holds no .npy files", "put one sample per .npy file, labels in labels.npy")
        if limit is not None:
            files = files[:limit]
        _check_fits(path, 2 * sum(_npy_file_bytes(f) for f in files))  # the files, then np.stack's copy
        try:
            x = np.stack([np.load(f, allow_pickle=False) for f in files])
            labels = np.load(path / "labels.npy", allow_pickle=False)[: len(files)] if (path / "labels.npy").exists() else None
        except ValueError as e:
            raise InputError(f"{path}: the .npy files do not stack into one array: {e}") from e
        return Data((_as_input(x),), _as_labels(labels, spec), spec)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            try:
                declared = npz_bytes(path)
            except Exception as e:
                raise InputError(f"{path} is not a readable .npz file: {e}") from e
            _check_fits(path, declared)
            try:
                with np.load(path, allow_pickle=False) as npz:
                    arrays = {k: npz[k] for k in npz.files}
            except Exception as e:
                raise InputError(f"{path} is not a readable .npz file: {e}") from e
            return _split_arrays(arrays, input_names, spec).take(limit)
        if suffix in (".pt", ".pth"):
            import torch

            if zipfile.is_zipfile(path):  # torch's format; the legacy one holds no more than the file's size
                try:
                    declared = zip_declared_bytes(path)
                except (zipfile.BadZipFile, OSError, ValueError) as e:
                    raise InputError(f"{path} is not a readable tensor file: {first_line(e, 200)}") from e
                _check_fits(path, declared)
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise InputError(f"{path} is not a readable tensor file (weights-only loading): {first_line(e, 200)}") from e
            if isinstance(obj, dict):
                return _split_arrays({k: _to_numpy(v) for k, v in obj.items()}, input_names, spec).take(limit)
            if isinstance(obj, (tuple, list)) and len(obj) == 2:
                return Data((_as_input(_to_numpy(obj[0])),), _as_labels(_to_numpy(obj[1]), spec), spec).take(limit)
            return Data((_as_input(_to_numpy(obj)),), None, spec).take(limit)
        raise UsageError(f"unknown data format: {path.name}", "use .npz, .pt, a folder of .npy files, or module:factory")
    if is_factory_spec(spec):
        func = resolve_factory(spec)
        try:
            items = func()
        except Exception as e:
            raise InputError(f"data factory {spec} raised {type(e).__name__}: {e}") from e
        return _from_iterable(items, spec, limit)
    raise InputError(f"no such data: {spec}", "pass an .npz/.pt file, a folder of .npy files, or module:factory")
