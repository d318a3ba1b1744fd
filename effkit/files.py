"""Atomic outputs: write to a temporary name beside the target, then rename into place.

A failed or killed run leaves either the old file or the new one, never a half-written mix,
and an existing output is only replaced when the user said --force.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from effkit.errors import OutputExistsError, UsageError


# Temporary files and folders that exist right now. A run ended without unwinding (effkit/interrupts.py:
# Ctrl-C or --timeout while a model never returns to Python) runs no `finally` block, so it removes
# them from here.
_TEMPORARIES: set[Path] = set()


def track_temporary(path: str | Path) -> Path:
    """Register a temporary file or folder for `remove_temporaries`; returns it as a Path."""
    path = Path(path)
    _TEMPORARIES.add(path)
    return path


def forget_temporary(path: str | Path) -> None:
    """Unregister a temporary that was renamed into place or removed."""
    _TEMPORARIES.discard(Path(path))


def remove_temporaries() -> None:
    """Delete every registered temporary (for a run that ends without unwinding).

    The main thread may still be writing into them: a folder is renamed first, so that nothing new
    can be created in it by its path while it is deleted.
    """
    for path in list(_TEMPORARIES):
        if path.is_dir():
            doomed = path.with_name(f"{path.name}.removing")
            try:
                os.rename(path, doomed)
            except OSError:
                doomed = path
            shutil.rmtree(doomed, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


def check_output(path: str | Path, force: bool, inputs: tuple[str | Path | None, ...] = ()) -> Path:
    """Refuse an output that exists (without force) or that is one of the inputs."""
    path = Path(path)
    for src in inputs:
        if src is not None and Path(src).exists() and path.exists() and path.resolve() == Path(src).resolve():
            raise UsageError(f"output {path} is the input model", "write the result to another path")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists", "pass --force to overwrite it")
    if not path.parent.exists():
        raise UsageError(f"output folder {path.parent} does not exist", "create it first")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` when the block succeeds."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists", "pass --force to overwrite it")
    # keep the real suffix last: some writers (torch.export.save, numpy) look at it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    tmp_path = track_temporary(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        forget_temporary(tmp_path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes, force: bool = False) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path, force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, force: bool = False) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"), force)


def loads_toml(text: str, source: str) -> dict:
    """Parse TOML text (tomllib, or tomli on Python 3.10); a syntax error names `source` and the line."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{source} is not valid TOML: {e}", "fix the file's syntax (see toml.io)") from None
