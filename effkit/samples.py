"""Arrays of samples that are read when indexed, so that data larger than memory streams through.

`Samples` looks like a read-only numpy array along dim 0 (`len`, `shape`, `dtype`, indexing by int,
slice or index array, `astype`), but holds only a function that reads the rows asked for: rows of
an `.npy` file or an uncompressed `.npz` member (positioned reads), files of a folder, items of a
map-style Dataset, or the disk cache an iterable was streamed into. Indexing returns an ordinary numpy array of those rows.
"""

from __future__ import annotations

import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from effkit.errors import InputError
from effkit.util import workdir


class Samples:
    """`n` samples of `sample_shape` and `dtype`; `read(indices)` returns those rows as one array."""

    def __init__(self, n: int, sample_shape: tuple[int, ...], dtype: Any, read: Callable[[np.ndarray], np.ndarray]):
        self.n, self.sample_shape, self.dtype, self._read = n, tuple(sample_shape), np.dtype(dtype), read

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *self.sample_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.rows(np.array([key]))[0]
        if isinstance(key, slice):
            return self.rows(np.arange(self.n)[key])
        return self.rows(np.asarray(key))

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """The samples at `indices` (an int array) as one array."""
        if len(indices) == 0:
            return np.empty((0, *self.sample_shape), self.dtype)
        return np.asarray(self._read(indices), dtype=self.dtype)

    def subset(self, indices: np.ndarray) -> Samples:
        """A lazy view of the samples at `indices`."""
        indices = np.asarray(indices)
        return Samples(len(indices), self.sample_shape, self.dtype, lambda k: self._read(indices[k]))

    def astype(self, dtype, copy: bool = True) -> Samples:
        """Cast as rows are read (a lazy copy)."""
        if np.dtype(dtype) == self.dtype:
            return self
        return Samples(self.n, self.sample_shape, dtype, lambda k: self._read(k).astype(dtype))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Every sample in memory: for small takes (`data.take(8)`), not for the whole data set."""
        out = self.rows(np.arange(self.n))
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"Samples(shape={self.shape}, dtype={self.dtype})"


def subset(array, indices: np.ndarray):
    """`array[indices]`, lazily when `array` is Samples."""
    if isinstance(array, Samples):
        return array.subset(indices)
    return array[indices]


def file_samples(path: Path, offset: int, shape: tuple[int, ...], dtype: Any) -> Samples:
    """Rows of a C-ordered array stored raw in `path` from byte `offset`, read with positioned reads
    (not a memory map: mapped pages stay in the process's resident memory once touched, so reading a
    large file through a map would grow it with the file; these reads go through the page cache)."""
    import os

    dtype = np.dtype(dtype)
    row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def read(k: np.ndarray) -> np.ndarray:
        order = np.argsort(k, kind="stable")
        ks = k[order]
        out = np.empty((len(k), *shape[1:]), dtype)
        fd = os.open(path, os.O_RDONLY)
        try:
            start = 0
            while start < len(ks):  # one read per run of consecutive rows
                end = start + 1
                while end < len(ks) and ks[end] == ks[end - 1] + 1:
                    end += 1
                data = os.pread(fd, row * (end - start), offset + int(ks[start]) * row)
                if len(data) != row * (end - start):
                    raise InputError(f"{path} is shorter than its header says (truncated file?)")
                out[order[start:end]] = np.frombuffer(data, dtype).reshape(end - start, *shape[1:])
                start = end
        finally:
            os.close(fd)
        return out

    return Samples(shape[0], shape[1:], dtype, read)


def npy_file(path: Path):
    """A .npy file as Samples read from disk (numpy's own reader for Fortran order and 0-d arrays)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version in readers:
            shape, fortran, dtype = readers[version](f, max_header_size=100_000)
            if dtype.hasobject:
                raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
            if not fortran and len(shape) >= 1:
                needed = f.tell() + int(np.prod(shape)) * dtype.itemsize
                if needed > path.stat().st_size:
                    raise InputError(f"{path} is shorter than its header says (truncated file?)")
                return file_samples(path, f.tell(), tuple(shape), dtype)
    return np.load(path, allow_pickle=False)


# ---------------------------------------------------------------- .npy files and .npz members, read in place

def npz_members(path: Path) -> dict[str, Any]:
    """The arrays of an .npz file by name: members stored uncompressed (`np.savez`) are read in place as
    rows are needed (the zip holds a plain .npy there); compressed ones (`np.savez_compressed`) cannot
    be, and are read whole, one member at a time."""
    arrays: dict[str, Any] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            header = _stored_npy_header(path, raw, info)
            if header is None:  # compressed, or a header version numpy reads only whole
                with archive.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            shape, fortran, dtype = header
            if dtype.hasobject:  # numpy's own words, as np.load would refuse it
                raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
            needed = int(np.prod(shape)) * dtype.itemsize
            if raw.tell() + needed > path.stat().st_size:
                raise InputError(f"{path}: member {name} is shorter than its header says (truncated file?)")
            if needed == 0 or fortran or len(shape) == 0:  # numpy's reader: nothing to stream
                with archive.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            arrays[name] = file_samples(path, raw.tell(), tuple(shape), dtype)
    return arrays


def _stored_npy_header(path: Path, raw, info: zipfile.ZipInfo):
    """(shape, fortran order, dtype) of an uncompressed .npy member, with `raw` left at its data; None
    when the member is compressed or its header is not version 1 or 2."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    raw.seek(info.header_offset)
    header = raw.read(30)
    if header[:4] != b"PK\x03\x04":
        raise InputError(f"{path}: member {info.filename} has a broken zip header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    raw.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(raw)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        return None
    return readers[version](raw, max_header_size=100_000)


# ---------------------------------------------------------------- iterables, streamed to a disk cache

def spill(items: Iterable, source: str, limit: int | None) -> tuple[list[Samples], np.ndarray | None]:
    """Stream an iterable of samples or batches to raw files in effkit's work folder, batch by
    batch: memory holds one batch however long the iterable. `items` yields (xs, y) pairs or xs, where
    xs is one array or a tuple of arrays per model input, and (from a DataLoader) already batched.
    Returns the inputs as Samples and the labels (None when there were none)."""
    import torch

    batched = isinstance(items, torch.utils.data.DataLoader)
    folder = Path(tempfile.mkdtemp(dir=workdir(), prefix="data-"))
    files: list[Any] = []
    shapes: list[tuple] = []
    dtypes: list[np.dtype] = []
    labels: list[np.ndarray] = []
    count, labelled = 0, None
    for item in items:
        x, y = (item[0], item[1]) if isinstance(item, (tuple, list)) and len(item) == 2 else (item, None)
        if labelled is None:
            labelled = y is not None
        xs = [_numpy(a) for a in (x if isinstance(x, (tuple, list)) else (x,))]
        if not batched:
            xs = [a[None] for a in xs]
        if not files:
            shapes, dtypes = [a.shape[1:] for a in xs], [_input_dtype(a.dtype) for a in xs]
            files = [open(folder / f"input{i}.bin", "wb") for i in range(len(xs))]
        take = len(xs[0]) if limit is None else min(len(xs[0]), limit - count)
        for i, a in enumerate(xs):
            if a.shape[1:] != shapes[i]:
                raise InputError(f"{source}: sample {count} of input {i} has shape {list(a.shape[1:])}, "
                                 f"earlier ones {list(shapes[i])}", "give every sample the same shape")
            files[i].write(np.ascontiguousarray(a[:take], dtype=dtypes[i]).tobytes())
        if labelled and y is not None:
            labels.append(np.atleast_1d(_numpy(y)).reshape(-1)[:take])
        count += take
        if limit is not None and count >= limit:
            break
    for f in files:
        f.close()
    if count == 0:
        raise InputError(f"{source} yielded no samples")
    inputs = [file_samples(folder / f"input{i}.bin", 0, (count, *shapes[i]), dtypes[i]) for i in range(len(files))]
    return inputs, (np.concatenate(labels) if labelled and labels else None)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _input_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype == np.float64 else dtype
