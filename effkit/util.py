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

from effkit.files import track_temporary


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR):
    """Within the block the named loggers ("" is the root) pass errors only (records of `level` and up),
    warnings are ignored and stdout is swallowed: libraries' chatter kept away from users."""
    loggers = [logging.getLogger(n or None) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def quiet_torch():
    """Silence the exporter's and torch.ao's chatter (warnings, logging, prints) for users."""
    with quiet_loggers("torch.onnx", "torch.export", "torch._dynamo", "torch._export", "onnxscript",
                       "torch.fx.experimental.symbolic_shapes", "torch.utils._pytree", "torchao"), \
            quiet_loggers("torch._guards", level=logging.CRITICAL):  # a failed guard's traceback: it is raised too
        yield


def import_torchao() -> Any:
    """`torchao.quantization`, imported quietly (torchao logs "Failed to load ..." for its CUDA
    libraries and torch warns about its pytree registrations), or None when torchao is not installed."""
    try:
        with quiet_torch():
            import torchao.quantization
    except ImportError:
        return None
    return torchao.quantization


_WORKDIR: tempfile.TemporaryDirectory | None = None


def workdir() -> Path:
    """A private temporary folder for intermediate artifacts, removed at exit (and by
    `effkit.files.remove_temporaries`; a folder removed that way is made again when asked for)."""
    global _WORKDIR
    if _WORKDIR is None or not Path(_WORKDIR.name).is_dir():
        _WORKDIR = tempfile.TemporaryDirectory(prefix="effkit-", ignore_cleanup_errors=True)
        atexit.register(_WORKDIR.cleanup)
        track_temporary(_WORKDIR.name)
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


def fmt_bytes(n: float | None) -> str:
    """A size with three significant digits, everywhere the same: 4.51 MB, 309 KB, 10.2 KB, 512 B."""
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.{2 if abs(value) < 10 else 1 if abs(value) < 100 else 0}f} {unit}"
    return f"{int(n)} B"


def fmt_speedup(speedup: dict | None, sep: str = " ") -> str:
    """A paired speedup (before/after) as every report shows it: "2.07x faster [1.95, 2.20]",
    "1.32x slower [1.20, 1.45]" (the slowdown and its interval), "1.01x same [0.98, 1.04]" or
    "1.01x inconclusive [0.70, 1.40]" (the reason goes beside the table). `sep` goes before the
    interval (a newline keeps a terminal column narrow)."""
    if not speedup:
        return "-"
    est, ci, verdict = speedup.get("estimate"), speedup.get("ci95"), speedup.get("verdict")
    if est is None or ci is None:
        return "inconclusive"
    if verdict == "slower":
        return f"{1 / est:.2f}x slower{sep}[{1 / ci[1]:.2f}, {1 / ci[0]:.2f}]"
    return f"{est:.2f}x {verdict}{sep}[{ci[0]:.2f}, {ci[1]:.2f}]"


def plural(count: int | str, word: str) -> str:
    """`1 thread`, `2 threads`."""
    return f"{count} {word}{'' if str(count) == '1' else 's'}"
