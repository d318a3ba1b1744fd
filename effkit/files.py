"""Atomic outputs: write to a temporary name beside the target, then rename into place.

A failed or killed run leaves either the old file or the new one, never a half-written mix,
and an existing output is only replaced when the user said --force.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from effkit.errors import OutputExistsError, UsageError


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
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


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
    except ValueError:  # int() refuses numbers of more than 4300 digits
        raise UsageError(f"{source} holds a number with thousands of digits", "write an ordinary number") from None
    except RecursionError:
        raise UsageError(f"{source} nests arrays or tables too deeply to read", "flatten the file") from None
