"""ONNX files on disk: external-data checks, atomic writes with content-named sidecars, copies."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from effkit.errors import ModelLoadError, OutputError
from effkit.files import (atomic_path, check_not_read, check_output, disk_full_names, forget_temporary, is_special,
                          read_conflict, reading, set_usual_permissions, track_temporary)


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


def save_onnx_file(src: Path, dst: Path, force: bool) -> list[Path]:
    """Copy an ONNX model with its external data, atomically: data first, then the graph that points to it.

    `src` and its data files count as read by the command meanwhile: neither is written nor deleted."""
    import onnx

    src, dst = Path(src), Path(dst)
    locations = _external_locations(onnx.load(str(src), load_external_data=False))
    with reading(src, *(src.parent / location for location in locations)):
        if not locations:
            return _write_graph(dst, force, lambda tmp: shutil.copyfile(src, tmp))
        return write_onnx(onnx.load(str(src)), dst, force, external_data=True)


def write_onnx(proto: Any, dst: Path, force: bool, external_data: bool = False) -> list[Path]:
    """Write an ONNX proto atomically; return the files written.

    External data goes to a content-named sidecar, `NAME.onnx.<12 hex digits>.data`, written first,
    so a kill at any moment leaves the old graph with its old data or the new graph with its new data.
    A symlink at `dst` is written through (the data goes beside the file it points to). Replacing an
    older graph removes the sidecars effkit wrote for it (see `_remove_stale_sidecars`)."""
    import hashlib

    import onnx
    from onnx.external_data_helper import _get_all_tensors

    dst = Path(dst)
    if not external_data:
        return _write_graph(dst, force, lambda tmp: onnx.save_model(proto, str(tmp)))
    check_output(dst, force)
    if is_special(dst):
        raise OutputError(f"output {dst} is not a regular file", "an ONNX model with external data needs one")
    real = Path(os.path.realpath(dst))
    old = _own_sidecars(real)
    stage = track_temporary(tempfile.mkdtemp(prefix=".effkit-", dir=real.parent))
    try:
        with disk_full_names(dst):
            onnx.save_model(proto, str(stage / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                            location="m.data", size_threshold=0)
        digest = hashlib.sha256((stage / "m.data").read_bytes()).hexdigest()[:12]
        data = real.parent / f"{real.name}.{digest}.data"
        proto2 = onnx.load(str(stage / "m.onnx"), load_external_data=False)
        for t in _get_all_tensors(proto2):
            for e in t.external_data:
                if e.key == "location":
                    e.value = data.name
        placed = _place_data(stage / "m.data", data)
        try:
            with atomic_path(dst, force=True) as tmp:  # through a symlink, onto `real`
                onnx.save_model(proto2, str(tmp))
        except BaseException:
            if placed and data.name not in old:  # no graph names it: do not leave it behind
                data.unlink(missing_ok=True)
            raise
        _remove_stale_sidecars(real, old - {data.name})
        return [dst, data if dst.is_symlink() else dst.parent / data.name]  # as the user named the folder
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        forget_temporary(stage)


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
