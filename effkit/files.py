"""The files a command reads and the files it writes: outputs are atomic, and never an input.

Outputs are written to a temporary name beside the target, then renamed into place: a failed or
killed run leaves either the old file or the new one, never a half-written mix, and an existing
output is only replaced when the user said --force.

Inputs are protected: while a command runs (`reading_scope`: the CLI opens one per command),
every loader records the files it reads (`mark_read`: the model, an ONNX model's external data,
factory and --arch files, data, inputs, recipes, result files), and every write, replacement or
deletion asks `check_not_read` first. Files are compared by resolved path and by identity
(st_dev, st_ino), so a symlink, a `..` detour or a hard link to an input is caught too. In Python,
outside a scope, nothing is recorded: each library call that reads and writes files in one go
(compress, distill with a checkpoint, save_onnx_file) protects its own inputs with `reading`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from effkit.errors import OutputError, OutputExistsError, UsageError

# The resolved paths of the files (and folders) read by the running command: the innermost scope
# is the last. Empty: no command is running.
_SCOPES: list[set[Path]] = []

# Errors of a full disk or an exhausted quota: they mean the output could not be written.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


# ---------------------------------------------------------------- what a command reads

def mark_read(path: str | Path) -> None:
    """Record that the running command reads `path`: a file, or a folder with everything in it."""
    if _SCOPES:
        with contextlib.suppress(OSError, ValueError):  # not a path at all: nothing to protect
            _SCOPES[-1].add(Path(os.path.realpath(path)))


@contextlib.contextmanager
def reading_scope() -> Iterator[None]:
    """Record the files read within the block, as those of one command: none may be written or deleted."""
    _SCOPES.append(set())
    try:
        yield
    finally:
        _SCOPES.pop()


@contextlib.contextmanager
def reading(*paths: str | Path) -> Iterator[None]:
    """Within the block, `paths` count as read too (a scope is opened when none is)."""
    with contextlib.ExitStack() as stack:
        if not _SCOPES:
            stack.enter_context(reading_scope())
        added = {Path(os.path.realpath(p)) for p in paths} - _SCOPES[-1]
        _SCOPES[-1].update(added)
        try:
            yield
        finally:
            _SCOPES[-1].difference_update(added)


def read_conflict(path: str | Path) -> Path | None:
    """The file read by this command that writing or deleting `path` would damage, or None.

    That is: `path` itself (through symlinks and `..`), a hard link to it, any read file inside the
    folder `path`, or an existing entry inside a folder that is read.
    """
    target = Path(os.path.realpath(path))
    identity = _identity(path)
    for read in sorted(_SCOPES[-1] if _SCOPES else ()):
        if read == target or read.is_relative_to(target):
            return read
        if target.is_relative_to(read) and read.is_dir() and os.path.lexists(target):
            return target
        if identity is not None and identity == _identity(read):
            return read
    return None


def check_not_read(path: str | Path, what: str = "output") -> None:
    """Refuse to write or delete `path` when that would touch a file this command reads."""
    conflict = read_conflict(path)
    if conflict is None:
        return
    target = Path(os.path.realpath(path))
    if conflict != target and conflict.is_relative_to(target):  # a folder to be replaced holds an input
        raise UsageError(f"{what} {path} holds {conflict.relative_to(target)}, an input of this command",
                         "write the result to another path")
    raise UsageError(f"{what} {path} is also an input of this command", "write the result to another path")


def remove(path: str | Path, what: str = "file") -> None:
    """Delete the file `path` if it exists, unless this command reads it."""
    check_not_read(path, what)
    Path(path).unlink(missing_ok=True)


def _identity(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


# ---------------------------------------------------------------- outputs

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
    """Refuse an output that exists (without force), that is an input, or that cannot be written.

    `inputs` are compared besides the files recorded by `mark_read`.
    """
    path = Path(path)
    for src in inputs:
        if src is not None and Path(src).exists() and path.exists() and os.path.samefile(path, src):
            raise UsageError(f"output {path} is the input model", "write the result to another path")
    target, _ = _writable_target(path, force)
    if not target.parent.exists():
        raise UsageError(f"output folder {path.parent} does not exist", "create it first")
    return path


def _writable_target(path: Path, force: bool) -> tuple[Path, bool]:
    """Where writing `path` puts the bytes, and whether they are written in place (FIFO, character device).

    A symlink is written through: the file it points to is replaced and the link stays.
    """
    if os.path.lexists(path) and not force:  # a dangling symlink too: writing would create its target
        raise OutputExistsError(f"{path} already exists", "pass --force to overwrite it")
    check_not_read(path)
    kind = _special_kind(path)
    if kind in ("FIFO", "character device"):  # /dev/null, a terminal, a pipe: renaming over it would replace it
        return path, True
    if kind is not None:
        raise OutputError(f"output {path} is a {kind}", "write to a regular file")
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise UsageError(f"output {path} is a folder", "give a file name")
    return target, False


def is_special(path: str | Path) -> bool:
    """Whether `path` (followed through symlinks) exists and is neither a regular file nor a folder."""
    return _special_kind(Path(path)) is not None


def _special_kind(path: Path) -> str | None:
    """What `path` (followed through symlinks) is when it is neither a regular file nor a folder."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    for test, kind in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return None


@contextlib.contextmanager
def disk_full_names(path: str | Path) -> Iterator[None]:
    """A full disk (or quota) within the block ends in one OutputError naming the output `path`."""
    try:
        yield
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise OutputError(f"no space left on the device to write {path}",
                              "free some space or write elsewhere") from e
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; put it at `path` when the block succeeds.

    A regular file (or nothing) at `path` is replaced by a rename from beside it, so a reader sees the
    old file or the new one. A symlink is written through: its target is replaced, the link stays.
    A FIFO or character device (/dev/null, a terminal) gets the complete bytes written into it in place;
    a block device, socket or folder is refused. A file this command reads is never the target.
    The temporary is removed when the block fails (an exception, Ctrl-C, SIGTERM); a full disk ends in
    one OutputError naming `path`.
    """
    path = Path(path)
    target, in_place = _writable_target(path, force)
    tmp_path = None
    try:
        with disk_full_names(path):
            # keep the real suffix last: some writers (torch.export.save, numpy) look at it. Written in
            # place, the bytes are staged in the system's temporary folder: /dev is no place for them.
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}",
                                       dir=None if in_place else target.parent)
            os.close(fd)
            tmp_path = track_temporary(tmp)
            set_usual_permissions(tmp_path)
            yield tmp_path
            if in_place:
                _write_into(tmp_path, path)
            else:
                os.replace(tmp_path, target)
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
            forget_temporary(tmp_path)


def _write_into(src: Path, special: Path) -> None:
    """Copy `src` into a FIFO or character device without creating, truncating or renaming anything.

    Like a shell redirection, opening a FIFO waits until a process opens it for reading."""
    fd = os.open(special, os.O_WRONLY)
    with open(fd, "wb") as out, open(src, "rb") as data:
        shutil.copyfileobj(data, out)


def set_usual_permissions(path: str | Path) -> None:
    """Give a file written privately (mkstemp, a private staging folder) the permissions of a new file."""
    os.chmod(path, 0o666 & ~_umask())


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
