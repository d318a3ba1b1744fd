"""ONNX files on disk: external-data checks, atomic writes with content-named sidecars, copies."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from effkit.errors import ModelLoadError, OutputExistsError
from effkit.files import atomic_path, forget_temporary, track_temporary


def check_external_data(path: Path, proto: Any) -> None:
    """Refuse external-data locations that point outside the model's folder (path traversal)."""
    from onnx.external_data_helper import _get_all_tensors

    base = path.parent.resolve()
    for tensor in _get_all_tensors(proto):
        if tensor.data_location != 1:  # EXTERNAL
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(base):
            raise ModelLoadError(f"{path} stores tensor {tensor.name!r} at {location!r}, outside the model's folder",
                                 "refusing it: external data must sit beside the model")
        if not target.is_file():
            raise ModelLoadError(f"{path} needs its external data file {location!r}, which is missing",
                                 "copy it beside the model")


def save_onnx_file(src: Path, dst: Path, force: bool) -> list[Path]:
    """Copy an ONNX model with its external data, atomically: data first, then the graph that points to it."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

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

    dst = Path(dst)
    if not external_data:
        with atomic_path(dst, force) as tmp:
            onnx.save_model(proto, str(tmp))
        return [dst]
    stage = track_temporary(tempfile.mkdtemp(prefix=".effkit-", dir=dst.parent))
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
        old = external_files(dst) if dst.exists() else set()
        if dst.exists() and not force:
            raise OutputExistsError(f"{dst} already exists", "pass --force to overwrite it")
        (stage / "m.data").replace(dst.parent / data_name)
        with atomic_path(dst, force=True) as tmp:
            onnx.save_model(proto2, str(tmp))
        for stale in old - {data_name}:
            (dst.parent / stale).unlink(missing_ok=True)
        return [dst, dst.parent / data_name]
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        forget_temporary(stage)


def external_files(path: Path) -> set[str]:
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return set()
    return {e.value for t in _get_all_tensors(proto) if t.data_location == 1 for e in t.external_data if e.key == "location"}
