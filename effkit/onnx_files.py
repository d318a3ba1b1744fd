"""ONNX files on disk: external-data checks, atomic writes with content-named sidecars, copies, and models
over 2 GB (protobuf cannot serialize one whole): graphs loaded without their weights, tensors read lazily,
work files written with external data copied in chunks.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from effkit.errors import ModelLoadError, OutputError
from effkit.files import (atomic_path, check_not_read, check_output, disk_full_names, forget_temporary, is_special,
                          read_conflict, reading, set_usual_permissions, track_temporary)

# Above this many bytes of tensor data, effkit keeps an ONNX model's weights in external data and never
# serializes it whole (protobuf refuses messages over 2 GB): work files, exports and outputs alike. Tests
# lower it to take that path with tiny models.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# Initializers up to this size stay in the graph when the rest goes to external data (shapes, scales, biases).
INLINE_TENSOR_BYTES = 1024
_CHUNK = 64 * 2**20  # bytes copied or read at a time
_EXTERNAL = 1  # TensorProto.EXTERNAL
_SUB_BYTE = ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")  # packed types: dims say nothing simple about bytes


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
        needed = declared_bytes(tensor)
        if length is not None and needed is not None and length < needed:
            raise ModelLoadError(f"{where}: {length} bytes, fewer than its shape {list(tensor.dims)} needs ({needed})",
                                 corrupt)
        length = length if length is not None else needed
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


def save_onnx_file(src: Path, dst: Path, force: bool) -> list[Path]:
    """Copy an ONNX model with its external data, atomically: data first, then the graph that points to it.
    The data is copied in chunks, never loaded: a model of any size takes little memory.

    `src` and its data files count as read by the command meanwhile: neither is written nor deleted."""
    src, dst = Path(src), Path(dst)
    graph = load_graph(src)
    locations = _external_locations(graph)
    with reading(src, *(src.parent / location for location in locations)):
        if not locations:
            return _write_graph(dst, force, lambda tmp: shutil.copyfile(src, tmp))
        return _write_external(graph, src.parent, dst, force)


def write_onnx(proto: Any, dst: Path, force: bool, external_data: bool = False) -> list[Path]:
    """Write an ONNX proto atomically; return the files written.

    External data goes to a content-named sidecar, `NAME.onnx.<12 hex digits>.data`, written first,
    so a kill at any moment leaves the old graph with its old data or the new graph with its new data.
    A symlink at `dst` is written through (the data goes beside the file it points to). Replacing an
    older graph removes the sidecars effkit wrote for it (see `_remove_stale_sidecars`). With external
    data, the proto's tensors are written out and lose their in-memory data."""
    import onnx

    dst = Path(dst)
    if not external_data:
        return _write_graph(dst, force, lambda tmp: onnx.save_model(proto, str(tmp)))
    return _write_external(proto, None, dst, force)


def _write_external(proto: Any, source_dir: Path | None, dst: Path, force: bool) -> list[Path]:
    """`write_onnx` with external data; tensors still external are copied from `source_dir`."""
    import hashlib

    import onnx
    from onnx.external_data_helper import _get_all_tensors

    check_output(dst, force)
    if is_special(dst):
        raise OutputError(f"output {dst} is not a regular file", "an ONNX model with external data needs one")
    real = Path(os.path.realpath(dst))
    old = _own_sidecars(real)
    stage = track_temporary(tempfile.mkdtemp(prefix=".effkit-", dir=real.parent))
    try:
        with disk_full_names(dst):
            staged = write_model(proto, stage / "m.onnx", source_dir, external=True, inline_bytes=0)
        if len(staged) == 1:  # no tensor holds data
            return _write_graph(dst, force, lambda tmp: shutil.copyfile(staged[0], tmp))
        with open(staged[1], "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()[:12]
        data = real.parent / f"{real.name}.{digest}.data"
        graph = load_graph(stage / "m.onnx")
        for t in _get_all_tensors(graph):
            for e in t.external_data:
                if e.key == "location":
                    e.value = data.name
        placed = _place_data(staged[1], data)
        try:
            with atomic_path(dst, force=True) as tmp:  # through a symlink, onto `real`
                onnx.save_model(graph, str(tmp))
        except BaseException:
            if placed and data.name not in old:  # no graph names it: do not leave it behind
                data.unlink(missing_ok=True)
            raise
        _remove_stale_sidecars(real, old - {data.name})
        return [dst, data if dst.is_symlink() else dst.parent / data.name]  # as the user named the folder
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        forget_temporary(stage)


# ---------------------------------------------------------------- models of any size


def load_graph(path: Path) -> Any:
    """The ONNX model at `path` without its external data: the graph, and small tensors stored in it."""
    import onnx

    return onnx.load(str(path), load_external_data=False)


def declared_bytes(tensor: Any) -> int | None:
    """The bytes a tensor's shape and type need (None for strings and packed sub-byte types)."""
    import onnx
    from onnx import helper

    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED) or \
            tensor.data_type in [getattr(onnx.TensorProto, n, -1) for n in _SUB_BYTE]:
        return None
    count = 1
    for d in tensor.dims:
        count *= int(d)
    return count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _span(tensor: Any, base_dir: Path) -> tuple[Path, int, int]:
    """Where an external tensor's bytes are: (file, offset, length)."""
    info = {e.key: e.value for e in tensor.external_data}
    path = Path(base_dir) / info["location"]
    offset = int(info.get("offset") or 0)
    length = info.get("length")
    length = int(length) if length else declared_bytes(tensor)
    if length is None:
        length = path.stat().st_size - offset
    return path, offset, length


def tensor_data_bytes(proto: Any) -> int:
    """Bytes of tensor data a model holds, in its graph and in external data (lengths as declared)."""
    from onnx.external_data_helper import _get_all_tensors

    total = 0
    for t in _get_all_tensors(proto):
        if t.data_location == _EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            total += int(info["length"]) if info.get("length") else (declared_bytes(t) or 0)
        else:
            total += len(t.raw_data) if t.raw_data else (declared_bytes(t) or 0)
    return total


def is_large(path: Path) -> bool:
    """Whether the ONNX model at `path` is over EXTERNAL_DATA_THRESHOLD: handled without ever holding it as
    one serialized message (external data, paths passed to ONNX Runtime, graphs loaded without weights)."""
    return tensor_data_bytes(load_graph(path)) > EXTERNAL_DATA_THRESHOLD


def read_tensor(tensor: Any, base_dir: Path) -> np.ndarray:
    """A tensor's values, read from its external data file (relative to `base_dir`) when it has one."""
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor

    if tensor.data_location == _EXTERNAL:
        loaded = onnx.TensorProto()
        loaded.CopyFrom(tensor)
        load_external_data_for_tensor(loaded, str(base_dir))
        tensor = loaded
    return numpy_helper.to_array(tensor)


def tensor_chunks(tensor: Any, base_dir: Path) -> Iterator[np.ndarray]:
    """A tensor's values as flat arrays of at most about 64 MB each: an external tensor is read piece by
    piece, so counting the values of a large model never holds one of its tensors whole."""
    from onnx import helper

    if tensor.data_location != _EXTERNAL or declared_bytes(tensor) is None:
        yield read_tensor(tensor, base_dir).ravel()
        return
    path, offset, length = _span(tensor, base_dir)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    count, step = length // dtype.itemsize, max(1, _CHUNK // dtype.itemsize)
    with open(path, "rb") as f:
        f.seek(offset)
        for done in range(0, count, step):
            chunk = np.fromfile(f, dtype=dtype, count=min(step, count - done))
            if len(chunk) < min(step, count - done):
                raise ModelLoadError(f"{path} ends inside tensor {_shown(tensor.name)}",
                                     "the data file is truncated; copy the right one")
            yield chunk


def write_model(proto: Any, dst: Path, source_dir: Path | None = None, external: bool | None = None,
                inline_bytes: int = INLINE_TENSOR_BYTES) -> list[Path]:
    """Write `proto` to `dst`, a work file (not atomically), and return the files written.

    With external data (`external`; by default when some tensors are external already, read from
    `source_dir`, or when the tensors hold more than EXTERNAL_DATA_THRESHOLD bytes), every tensor over
    `inline_bytes` goes to one data file beside `dst`, `NAME.onnx.data`: external ones are copied in
    chunks, loaded ones written out and cleared from the proto, so the serialized graph stays small."""
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import _get_attribute_tensors, _get_initializer_tensors

    dst = Path(dst)
    # (tensor, whether it may move out): tensors in node attributes stay where they are
    tensors = [(t, True) for t in _get_initializer_tensors(proto)] + [(t, False) for t in _get_attribute_tensors(proto)]
    if external is None:
        external = any(t.data_location == _EXTERNAL for t, _ in tensors) or \
            tensor_data_bytes(proto) > EXTERNAL_DATA_THRESHOLD
    if not external:
        onnx.save_model(proto, str(dst))
        return [dst]
    data = dst.with_name(dst.name + ".data")
    with open(data, "wb") as out:
        for t, movable in tensors:
            start = out.tell()
            if t.data_location == _EXTERNAL:
                if source_dir is None:
                    raise ValueError(f"tensor {t.name} is external, and no folder to read it from was given")
                _copy_span(*_span(t, source_dir), out, t.name)
            elif movable and t.data_type != onnx.TensorProto.STRING and \
                    (len(t.raw_data) if t.raw_data else declared_bytes(t) or 0) > inline_bytes:
                # values in a typed field are stored as raw data would hold them
                out.write(t.raw_data or numpy_helper.from_array(numpy_helper.to_array(t)).raw_data)
                for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    t.ClearField(field)
                t.data_location = _EXTERNAL
            else:
                continue
            del t.external_data[:]
            for key, value in (("location", data.name), ("offset", str(start)), ("length", str(out.tell() - start))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
    onnx.save_model(proto, str(dst))
    if data.stat().st_size == 0 and not _external_locations(proto):
        data.unlink()
        return [dst]
    return [dst, data]


def _copy_span(src: Path, offset: int, length: int, out: Any, name: str) -> None:
    """Copy `length` bytes of `src` from `offset` to the open file `out`, in chunks."""
    with open(src, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise ModelLoadError(f"{src} ends inside tensor {_shown(name)} ({length} bytes from offset {offset})",
                                     "the data file is truncated; copy the right one")
            out.write(chunk)
            left -= len(chunk)


def _write_graph(dst: Path, force: bool, write: Callable[[Path], None]) -> list[Path]:
    """Write an ONNX graph without external data through `write(tmp)`, atomically; then remove the
    sidecars effkit wrote for the graph it replaced."""
    old = set() if is_special(dst) else _own_sidecars(Path(os.path.realpath(dst)))
    with atomic_path(dst, force) as tmp:
        write(tmp)
    if old:
        _remove_stale_sidecars(Path(os.path.realpath(dst)), old)
    return [dst]


def _place_data(staged: Path, data: Path) -> bool:
    """Move a staged data file to `data`; False when an identical file is there already (content-named)."""
    import filecmp

    if data.is_file() and not data.is_symlink() and filecmp.cmp(staged, data, shallow=False):
        return False
    check_not_read(data)
    set_usual_permissions(staged)  # written in a private staging folder
    staged.replace(data)
    return True


def is_sidecar_name(name: str, onnx_name: str) -> bool:
    """Whether `name` is how effkit names an external data file of the ONNX file `onnx_name`."""
    return re.fullmatch(re.escape(onnx_name) + r"\.[0-9a-f]{12}\.data", name) is not None


def _own_sidecars(real: Path) -> set[str]:
    """The data files that the ONNX file `real` names and that effkit wrote for it (named its way)."""
    import onnx

    if not real.is_file() or not _mentions(real, f"{real.name}.".encode()):  # cheap: no need to parse it
        return set()
    try:
        proto = onnx.load(str(real), load_external_data=False)
    except Exception:  # not an ONNX file: it names nothing of ours
        return set()
    return {name for name in _external_locations(proto) if is_sidecar_name(name, real.name)}


def _remove_stale_sidecars(real: Path, names: set[str]) -> None:
    """Delete the sidecars an old graph at `real` named, unless a file this command reads or another
    ONNX file in the folder still needs them. Only effkit's own names reach here, so a location of a
    hostile old file (`../precious/file`) is never deleted."""
    for name in sorted(names):
        data = real.parent / name
        if data.is_symlink() or not data.is_file() or read_conflict(data) is not None:
            continue
        if any(_mentions(other, name.encode()) for other in real.parent.glob("*.onnx") if other.name != real.name):
            continue
        data.unlink()


def _mentions(path: Path, needle: bytes) -> bool:
    """Whether the file holds `needle` (a location is stored as plain bytes); unreadable counts as yes."""
    import mmap

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(needle) != -1
    except ValueError:  # an empty file
        return False
    except OSError:
        return True


def _external_locations(proto: Any) -> set[str]:
    """The external-data locations an ONNX proto names, as written in it."""
    from onnx.external_data_helper import _get_all_tensors

    return {e.value for t in _get_all_tensors(proto) if t.data_location == 1 for e in t.external_data
            if e.key == "location"}


def external_files(path: Path) -> set[str]:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return set()
    return _external_locations(proto)
