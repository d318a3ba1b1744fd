"""Small helpers every layer uses: quiet torch chatter, a private work folder, JSON-safe values, byte sizes."""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def quiet_torch():
    """Silence the exporter's and torch.ao's chatter (warnings, logging, prints) for users."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch._export",
                                              "onnxscript", "torch.fx.experimental.symbolic_shapes",
                                              "torch.utils._pytree", "torchao")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


_WORKDIR: tempfile.TemporaryDirectory | None = None


def workdir() -> Path:
    """A private temporary folder for intermediate artifacts, removed at exit."""
    global _WORKDIR
    if _WORKDIR is None:
        _WORKDIR = tempfile.TemporaryDirectory(prefix="effkit-")
        atexit.register(_WORKDIR.cleanup)
    return Path(_WORKDIR.name)


def jsonable(value: Any) -> Any:
    """JSON has no Infinity/NaN: write them as strings so every parser reads the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "nan"
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def fmt_bytes(n: float | None, digits: int = 2) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.{digits}f} {unit}"
    return f"{int(n)} B"
