"""Calibration, evaluation and training data from specs, shared by every command.

A DATA spec is:
- `file.npz`: arrays by name. Labels under `labels`, `label`, `y` or `targets`; the inputs are the
  arrays named like the model's inputs, else every other array in file order. Members saved with
  `np.savez` are read in place as batches need them; `np.savez_compressed` members are read whole, one at a time.
- `file.npy`: one array of inputs, read as batches need them (no labels).
- `file.pt` / `file.pth`: a tensor, a tuple/list `(inputs, labels)`, or a dict as for .npz
  (read with weights-only loading: no code runs; memory-mapped where the file allows).
- a folder of `.npy` files: one sample per file, sorted by name; `labels.npy` holds the labels.
- a folder of images (JPEG, PNG, ...): labelled by sub-folder name, or unlabelled; decoded with
  Pillow as batches need them and preprocessed as `ImagePreprocess` says (effkit.data_images).
- `file.txt` (one example per line) or `file.jsonl` (a `text` and an optional integer `label` per
  line): tokenized with the model's tokenizer.json as batches need them (effkit.data_text).
- `path/to/file.py:factory` or `package.module:factory`: returns a map-style Dataset (items read
  when a batch needs them), or an IterableDataset, DataLoader or any iterable of inputs or
  `(inputs, labels)` pairs, streamed once, batch by batch, into a cache file in effkit's work folder.

Inputs are `Samples` (effkit.samples) or numpy arrays: rows are read when a batch needs them, so
memory holds a batch, not the data set; labels (one integer per sample) are held in memory.
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
from effkit.limits import check_fits_in_memory, npz_bytes, zip_declared_bytes
from effkit.inputs import sequence_inputs
from effkit.data_images import ImagePreprocess, image_samples, is_image_folder, with_defaults
from effkit.data_text import is_text_file, text_preprocess, text_samples, token_dtypes, token_windows
from effkit.runners import native_runner
from effkit.samples import Samples, npy_file, npz_members, spill, subset

LABEL_KEYS = ("labels", "label", "y", "targets", "target")


@dataclass(frozen=True)
class Reading:
    """How a command reads every DATA spec it is given: at most `limit` samples of each; folders of
    images preprocessed as `images` says; text tokenized to `max_length` tokens (default: the model's
    sequence length), its JSONL text and label under `text_field` and `label_field`."""

    limit: int | None = None
    images: ImagePreprocess = ImagePreprocess()
    max_length: int | None = None
    text_field: str = "text"
    label_field: str = "label"


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
        return Data(tuple(subset(a, np.arange(n)) for a in self.inputs), None if self.labels is None else self.labels[:n],
                    self.source)

    def split(self, fraction: float, seed: int = 0) -> tuple[Data, Data]:
        """A seeded random split into (train, validation)."""
        order = np.random.default_rng(seed).permutation(len(self))
        n_val = max(1, int(round(len(self) * fraction)))
        if n_val >= len(self):
            raise InputError(f"{self.source} has too few samples ({len(self)}) to split off validation data")
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
        pick = lambda idx: Data(tuple(subset(a, idx) for a in self.inputs),  # noqa: E731
                                None if self.labels is None else self.labels[idx], self.source)
        return pick(train), pick(val)

    def batches(self, batch_size: int):
        """Consecutive batches of (inputs tuple, labels or None), each read when it is reached."""
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
        limit, seq = model.meta.get("context_length"), sequence_inputs(model.example_inputs)
        length = self.inputs[seq[0]].shape[1] if seq and len(self.inputs[seq[0]].shape) == 2 else None
        if limit and length and length > limit:
            raise InputError(f"{self.source}: sequences of {length} tokens are longer than the model's {limit} positions",
                             f"cut them to at most {limit} tokens")
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


def _as_input(a):
    """float64 becomes float32 (lazily for Samples, which stay on disk)."""
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
    """A map-style Dataset (len and indexing) is read lazily, item by item; anything else (an
    IterableDataset, a DataLoader, a generator) is streamed once into a cache file."""
    import torch

    if isinstance(items, torch.utils.data.Dataset) and not isinstance(items, torch.utils.data.IterableDataset) \
            and hasattr(items, "__len__"):
        return _from_dataset(items, source, limit)
    inputs, labels = spill(items, source, limit)
    return Data(tuple(inputs), _as_labels(labels, source), source)


def _from_dataset(dataset: Any, source: str, limit: int | None) -> Data:
    """Samples that call `dataset[i]` for the rows a batch needs; labels are read up front only when
    the items carry them (one integer each)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise InputError(f"{source} yielded no samples")
    first = dataset[0]
    paired = isinstance(first, (tuple, list)) and len(first) == 2
    x0 = first[0] if paired else first
    several = isinstance(x0, (tuple, list))
    firsts = [_to_numpy(a) for a in (x0 if several else (x0,))]

    def read(i: int, k: np.ndarray) -> np.ndarray:
        rows = []
        for j in k:
            item = dataset[int(j)]
            x = item[0] if paired else item
            rows.append(_to_numpy(x[i] if several else x))
        return np.stack(rows)

    inputs = tuple(_as_input(Samples(n, a.shape, a.dtype, lambda k, i=i: read(i, k))) for i, a in enumerate(firsts))
    labels = None
    if paired:  # labels are small: one pass over the items (the inputs are dropped as read)
        labels = np.array([np.asarray(_to_numpy(dataset[i][1])).reshape(()) for i in range(n)])
    return Data(inputs, _as_labels(labels, source), source)


def _check_fits(path: Path, nbytes: int) -> None:
    check_fits_in_memory(nbytes, f"reading {path}", "use fewer or smaller samples")


def _npy_folder(path: Path, spec: str, limit: int | None) -> Data:
    """One sample per .npy file, read when a batch needs it; the first file sets the shape."""
    files = sorted(p for p in path.glob("*.npy") if p.name != "labels.npy")
    if not files:
        raise InputError(f"{path} holds no images or .npy files",
                         "put images in it (one sub-folder per class), or one sample per .npy file with labels.npy")
    files = files[:limit] if limit is not None else files
    first = np.load(files[0], allow_pickle=False, mmap_mode="r")
    for f in files[1:]:  # headers only: a sample of another shape is found before any work starts
        shape = np.load(f, allow_pickle=False, mmap_mode="r").shape
        if shape != first.shape:
            raise InputError(f"{path}: the .npy files do not stack into one array: {f.name} holds shape "
                             f"{list(shape)}, {files[0].name} {list(first.shape)}", "give every sample the same shape")

    def read(k: np.ndarray) -> np.ndarray:
        rows = []
        for j in k:
            a = np.load(files[int(j)], allow_pickle=False)
            if a.shape != first.shape:
                raise InputError(f"{files[int(j)]} holds shape {list(a.shape)}, {files[0].name} {list(first.shape)}",
                                 "give every sample the same shape")
            rows.append(a)
        return np.stack(rows)

    labels = np.load(path / "labels.npy", allow_pickle=False)[: len(files)] if (path / "labels.npy").exists() else None
    return Data((_as_input(Samples(len(files), first.shape, first.dtype, read)),), _as_labels(labels, spec), spec)


def load_text_stream(spec: str, model, reading: Reading = Reading()) -> Data:
    """A .txt/.jsonl file as windows of the model's sequence length over its token stream (unlabelled),
    at most `reading.limit` windows: the text a language model's perplexity is measured on."""
    path = Path(spec)
    if not path.is_file() or not is_text_file(path):
        raise UsageError(f"{spec} is not a .txt or .jsonl file", "give a text file for the perplexity")
    mark_read(path)
    text = text_preprocess(model, reading.max_length, reading.text_field, reading.label_field)
    dtypes = token_dtypes(model, model.input_names)
    return Data(token_windows(path, text, model.input_names, dtypes, reading.limit), None, spec)


def load_data(spec: str, input_names: list[str] | None = None, limit: int | None = None, *, model=None,
              reading: Reading = Reading()) -> Data:
    """Load a DATA spec (see the module docstring), read lazily, for `model` (the Model it feeds: its
    input names, dtypes and tokenizer) or for `input_names`; at most `limit` samples (and at most
    `reading.limit`). `reading` says how images and text become inputs (default: images through a
    Hugging Face folder's image processor, else at their own size scaled to [0, 1]; text to the
    model's sequence length)."""
    for n in (limit, reading.limit):
        if n is not None and n < 1:
            raise UsageError(f"--limit must be at least 1, not {n}")
    limit = min((n for n in (limit, reading.limit) if n is not None), default=None)
    if model is not None:
        input_names = input_names or model.input_names
    path = Path(spec)
    if path.is_dir() or path.is_file():
        mark_read(path)
    if path.is_dir():
        if is_image_folder(path):
            own = None if model is None else model.meta.get("image_preprocess")
            samples, labels = image_samples(path, with_defaults(reading.images, own), limit)
            return Data((samples,), labels, spec)
        return _npy_folder(path, spec, limit)
    if path.is_file():
        suffix = path.suffix.lower()
        if is_text_file(path):
            text = None if model is None else text_preprocess(model, reading.max_length, reading.text_field,
                                                              reading.label_field)
            names = input_names or ["input_ids"]
            inputs, labels = text_samples(path, text, names, token_dtypes(model, names), limit)
            return Data(inputs, labels, spec)
        if suffix == ".npz":
            try:
                # compressed members are read whole (stored ones row by row, as batches need them)
                _check_fits(path, npz_bytes(path, compressed_only=True))
                arrays = npz_members(path)
            except InputError:
                raise
            except Exception as e:
                raise InputError(f"{path} is not a readable .npz file: {first_line(e, 200)}") from e
            return _split_arrays(arrays, input_names, spec).take(limit)
        if suffix == ".npy":
            try:
                array = npy_file(path)
            except InputError:
                raise
            except Exception as e:
                raise InputError(f"{path} is not a readable .npy file: {first_line(e, 200)}") from e
            return Data((_as_input(array),), None, spec).take(limit)
        if suffix in (".pt", ".pth"):
            import torch

            if zipfile.is_zipfile(path):  # torch's format; the legacy one holds no more than the file's size
                try:
                    declared = zip_declared_bytes(path)
                except (zipfile.BadZipFile, OSError, ValueError) as e:
                    raise InputError(f"{path} is not a readable tensor file: {first_line(e, 200)}") from e
                _check_fits(path, declared)
            try:
                try:  # memory-mapped: tensors stay on disk until read (files torch.save wrote since 1.6)
                    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # the legacy format cannot be mapped
                    obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise InputError(f"{path} is not a readable tensor file (weights-only loading): {first_line(e, 200)}") from e
            if isinstance(obj, dict):
                return _split_arrays({k: _to_numpy(v) for k, v in obj.items()}, input_names, spec).take(limit)
            if isinstance(obj, (tuple, list)) and len(obj) == 2:
                return Data((_as_input(_to_numpy(obj[0])),), _as_labels(_to_numpy(obj[1]), spec), spec).take(limit)
            return Data((_as_input(_to_numpy(obj)),), None, spec).take(limit)
        raise UsageError(f"unknown data format: {path.name}",
                         "use .npz, .npy, .pt, .txt, .jsonl, a folder of .npy files or images, or module:factory")
    if is_factory_spec(spec):
        func = resolve_factory(spec)
        try:
            items = func()
        except Exception as e:
            raise InputError(f"data factory {spec} raised {type(e).__name__}: {e}") from e
        return _from_iterable(items, spec, limit)
    raise InputError(f"no such data: {spec}", "pass an .npz/.pt file, a folder of .npy files, or module:factory")
