"""The machine a measurement ran on: CPU, ISA flags, versions, commit; how busy it was; how fast it is.

ISA flags come from /proc/cpuinfo: torch's own AMX probe can say no where oneDNN does use AMX.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from effkit import __version__

# The flags that decide int8 (and bf16) speed on x86, and the Arm ones that do on Arm.
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
              "asimddp", "i8mm", "sve")


def cpu_info() -> dict:
    """CPU model name and the int8-relevant ISA flags present."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "features"):
                flags.update(value.split())
    except OSError:
        pass
    return {"model": model, "arch": platform.machine(), "isa": [f for f in INT8_FLAGS if f in flags]}


def int8_outlook(isa: list[str]) -> str | None:
    """A warning when int8 kernels are likely to be slow on this CPU, else None."""
    if any(f in isa for f in ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp", "i8mm")):
        return None
    if "avx2" in isa or "avx512f" in isa:
        return "this CPU has no VNNI/AMX int8 instructions: int8 may be little faster than fp32 here"
    return "this CPU has no AVX2/VNNI/AMX: int8 is likely to be slower than fp32 here"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the git checkout around `path` (default: the working directory), if any."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path or Path.cwd(), capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def calibration_ms(repeats: int = 5) -> float:
    """Time of a short fixed single-threaded workload (ms, best of `repeats`).

    Saved with every result so that a gate comparing with a baseline from another run can
    normalize latency by machine speed and say how much of a difference is the machine.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 64)).astype(np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        acc = a
        for _ in range(300):  # small matrices: stays in one thread and in cache
            acc = np.tanh(acc @ a * 0.01)
        best = min(best, time.perf_counter() - start)
    return best * 1000.0


def environment(threads: int | None = None) -> dict:
    """Everything that explains a measurement: CPU, cores, threads, versions, commit, time."""
    return {
        "cpu": cpu_info(),
        "cores": available_cores(),
        "threads": threads,
        "python": platform.python_version(),
        "versions": {"effkit": __version__, "torch": _version("torch"), "onnxruntime": _version("onnxruntime"),
                     "onnx": _version("onnx"), "numpy": _version("numpy")},
        "git_commit": git_commit(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "calibration_ms": round(calibration_ms(), 4),
    }


def fingerprint(env: dict) -> dict:
    """The parts of an environment that must match for absolute timings to be comparable."""
    cpu, versions = env.get("cpu") or {}, env.get("versions") or {}
    return {"cpu": cpu.get("model"), "cores": env.get("cores"), "threads": env.get("threads"),
            "torch": versions.get("torch"), "onnxruntime": versions.get("onnxruntime")}


# /proc/stat counts in ticks of 10 ms (USER_HZ 100): over a shorter block its figures are noise.
MIN_MONITOR_SECONDS = 0.05


class CpuMonitor:
    """How much CPU other processes used while a block ran, from /proc/stat on our cores.

    On a 2-core machine one busy core elsewhere makes a 2-thread torch run 60x slower: a
    measurement that does not watch for this reports noise as a regression.
    """

    def __init__(self, threads: int):
        self.threads = threads
        try:
            self.cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:
            self.cpus = list(range(os.cpu_count() or 1))
        self.result: dict = {}

    def _busy_seconds(self) -> float | None:
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return None
        wanted = {f"cpu{i}" for i in self.cpus}
        ticks = 0
        for line in lines:
            parts = line.split()
            if parts and parts[0] in wanted:
                values = [int(v) for v in parts[1:]]
                idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
                ticks += sum(values[:8]) - idle
        return ticks / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> CpuMonitor:
        self._busy0 = self._busy_seconds()
        t = os.times()
        self._own0 = t.user + t.system
        self._wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._wall0
        busy = self._busy_seconds()
        t = os.times()
        own = t.user + t.system - self._own0
        if busy is None or self._busy0 is None:
            self.result = {"measured": False, "reason": "/proc/stat is not readable"}
            return
        if wall < MIN_MONITOR_SECONDS:
            self.result = {"measured": False, "reason": f"{1000 * wall:.0f} ms is too short for /proc/stat's ticks"}
            return
        cores = len(self.cpus)
        others = min(float(cores), max(0.0, (busy - self._busy0) - own) / wall)
        free = max(0.0, cores - others)
        self.result = {
            "measured": True,
            "other_cpu_cores": round(others, 3),
            "cores": cores,
            "free_cores": round(free, 3),
            "threads": self.threads,
            # /proc/stat ticks are coarse (10 ms): a quarter core is the smallest load we call real
            "busy": others >= 0.25,
            "oversubscribed": self.threads > free + 0.25,
        }


def default_threads(probe_s: float = 0.3) -> int:
    """effkit's one thread policy, for every command: the cores other processes leave free right now.

    All cores on a busy machine oversubscribe it: threads that wait for each other at every barrier
    made the same int8 model 1000x slower at 2 threads than at 1. At least 1.
    """
    import math

    cores = available_cores()
    with CpuMonitor(cores) as monitor:
        time.sleep(probe_s)
    free = monitor.result.get("free_cores", cores) if monitor.result.get("measured") else cores
    return max(1, min(cores, math.floor(free + 0.25)))


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity and container limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
