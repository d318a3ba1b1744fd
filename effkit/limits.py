"""Bounds on what one run may take: memory for the arrays it makes or reads, and threads.

Memory: every allocation whose size comes from outside effkit (an `--input-shape`, a `--batch-size`,
the sizes and shapes an archive declares) is checked against one budget before it is made: half
the memory free at that moment, or `EFFKIT_MAX_MEMORY` when that is lower. Archives are judged by
what they declare, before anything is decompressed. Threads: at most THREADS_PER_CORE per core.
Time is bounded by `--timeout` (effkit/interrupts.py).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from effkit.env import available_cores
from effkit.errors import InputError, UsageError
from effkit.specs import parse_size

MAX_MEMORY_ENV = "EFFKIT_MAX_MEMORY"
THREADS_PER_CORE = 4  # beyond this nothing gets faster; torch segfaults on --threads 100000
FALLBACK_FREE_MEMORY = 8 * 2**30  # when /proc/meminfo cannot tell


# ---------------------------------------------------------------- memory

def available_memory() -> int:
    """Bytes of memory free for new allocations now (Linux MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return FALLBACK_FREE_MEMORY


def format_bytes(n: int | float) -> str:
    """`3725.3 GiB`, `512.0 MiB`: the unit of the budget messages."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def memory_budget() -> tuple[int, str]:
    """The most bytes one check may allow, and how a message names that bound."""
    free = available_memory()
    text = os.environ.get(MAX_MEMORY_ENV, "").strip()
    if text:
        try:
            cap = parse_size(text)
        except UsageError:
            raise UsageError(f"cannot parse {MAX_MEMORY_ENV}={text!r}", "write a size, e.g. 2GB or 500MiB") from None
        if cap < free // 2:
            return cap, f"{MAX_MEMORY_ENV} ({format_bytes(cap)})"
    return free // 2, f"half the free memory ({format_bytes(free)})"


def check_fits_in_memory(nbytes: int, what: str, hint: str) -> None:
    """Refuse, before allocating, `nbytes` for `what` when they exceed the memory budget."""
    limit, bound = memory_budget()
    if nbytes > limit:
        raise InputError(f"{what} needs {format_bytes(nbytes)}, more than {bound}", hint)


def array_bytes(shape: Sequence[int], dtype: str | np.dtype) -> int:
    """Bytes of an array of `shape` and `dtype`, in exact integers (no overflow on absurd shapes)."""
    itemsize = 2 if str(dtype) == "bfloat16" else np.dtype(dtype).itemsize
    count = 1
    for d in shape:
        count *= int(d)
    return itemsize * count


def npy_header_bytes(fp) -> int:
    """Bytes that the array of an open .npy stream declares in its header (the stream is left after it)."""
    version = np.lib.format.read_magic(fp)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(fp)
    return array_bytes(shape, dtype)


def npz_bytes(path: str | Path, compressed_only: bool = False) -> int:
    """Bytes `np.load` would allocate for every array of an .npz file, read from what it declares
    (with `compressed_only`, for its compressed members only: stored ones can be read in place).

    Each member counts with the larger of its declared uncompressed size and the size its .npy
    header declares: nothing is decompressed beyond the headers. A member whose declared size lies
    (smaller than its real data) cannot be read past that size anyway: zipfile stops there.
    """
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if compressed_only and info.compress_type == zipfile.ZIP_STORED:
                continue
            declared = info.file_size
            if info.filename.endswith(".npy"):
                with archive.open(info) as member:
                    declared = max(declared, npy_header_bytes(member))
            total += declared
    return total


def zip_declared_bytes(path: str | Path) -> int:
    """The sum of the uncompressed sizes a zip archive declares for its members (torch's .pt is a zip).

    torch's reader allocates each record at its declared size and refuses data that does not fit,
    so the declared sizes bound what loading takes.
    """
    with zipfile.ZipFile(path) as archive:
        return sum(info.file_size for info in archive.infolist())


# ---------------------------------------------------------------- threads

def check_threads(threads: int | None) -> None:
    """Refuse a thread count below 1 or above THREADS_PER_CORE per core (None means the default: fine)."""
    if threads is None:
        return
    if threads < 1:
        raise UsageError("--threads must be at least 1")
    cores = available_cores()
    if threads > THREADS_PER_CORE * cores:
        raise UsageError(f"--threads {threads} is more than {THREADS_PER_CORE} per core ({cores} cores here)",
                         f"pass at most --threads {THREADS_PER_CORE * cores}")
