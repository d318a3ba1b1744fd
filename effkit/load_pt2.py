"""Load a torch.export (.pt2) archive safely: `pt2_guard` checks its payload first, and without --trust
every torch.load inside it is forced to weights-only, so nothing in the file can run code."""

from __future__ import annotations

import contextlib
import json
import zipfile
from pathlib import Path
from typing import Any

from effkit import pt2_guard
from effkit.errors import ModelLoadError, unreadable
from effkit.util import import_torchao, quiet_torch

# effkit's own note inside .pt2 archives it writes: the example inputs' real batch size
PT2_META = "effkit.json"


def _pt2_example_batch(text: str) -> int | None:
    try:
        return int(json.loads(text)["example_batch"]) or None
    except (ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _refusing_unsafe_pt2(path: Path):
    """Turn what pt2_guard finds into one error line; an unreadable archive is a corrupt file."""
    try:
        yield
    except pt2_guard.UnsafeArchive as e:
        raise ModelLoadError(f"{path} holds {e}", "re-run with --trust only if you trust its source") from e
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise unreadable(path, "torch.export (.pt2) archive", e) from e


def load_pt2(path: Path, trust: bool) -> tuple[Any, Any]:
    """A torch.export archive's module and example inputs (the real batch of effkit's own archives), read
    without unpickling anything unless `trust`, and with its payload checked by `pt2_guard`."""
    import os

    import torch

    if not trust:
        with _refusing_unsafe_pt2(path):
            pt2_guard.check_archive(path)
    # torch.export.load falls back to unpickling anything (weights_only=False) when a payload is not
    # plain tensors; without --trust, force every torch.load inside it to weights-only.
    with _refusing_unsafe_pt2(path):
        if pt2_guard.uses_torchao(path) and import_torchao() is None:
            raise ModelLoadError(f"{path} is a torchao int8/int4 model, which needs torchao to run",
                                 "pip install torchao")
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    if not trust:
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    extra = {PT2_META: ""}
    try:
        with quiet_torch():
            program = torch.export.load(str(path), extra_files=extra)
    except Exception as e:
        if "Weights only load failed" in str(e):
            raise ModelLoadError(f"{path} holds pickled Python objects, and unpickling runs code from the file",
                                 "re-run with --trust only if you trust its source") from e
        raise unreadable(path, "torch.export (.pt2) archive", e) from e
    finally:
        os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    if not trust:  # their dict keys go into the guard code torch builds with the module
        with _refusing_unsafe_pt2(path):
            pt2_guard.check_example_inputs(program.example_inputs)
    example = None
    if program.example_inputs is not None:
        example = program.example_inputs[0]
        batch = _pt2_example_batch(extra[PT2_META])
        if batch:  # effkit exported from a doubled batch-1 example: give back the real one
            example = tuple(a[:batch] if a.dim() > 0 else a for a in example)
    return program.module(), example
