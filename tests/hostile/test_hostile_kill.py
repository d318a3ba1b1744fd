"""Runs killed at any moment leave the old output or the new one, never a mix.

Each test starts effkit as a subprocess over an existing output, waits for a kill point (a fixed
delay while it starts, or the moment its temporary file appears, i.e. mid-write), sends SIGINT,
SIGTERM or SIGKILL, and checks the target. After SIGINT or SIGTERM nothing may be left behind; after
SIGKILL a stray temporary (`.NAME.*.tmp.SUFFIX`, `.effkit-*`) may remain, since no code runs, but the
target is intact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import spec

import hostile_files as hf

ROOT = Path(__file__).parents[2]
TIMEOUT = 120


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, appeared) -> bool:
    """Poll (every millisecond) until `appeared()` or the process ends; True when it appeared first."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if appeared():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    proc.kill()
    pytest.fail("the kill point never came")


def _temps(folder: Path, name: str) -> list[str]:
    """effkit's temporaries for NAME: `.NAME.XXXX.tmp.SUFFIX` (the suffix kept for tools that need it)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.") and ".tmp" in p.name)


def _onnx_ok(path: Path) -> bool:
    """A complete model: it loads and passes the ONNX checker."""
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path)))
    except Exception:
        return False
    return True


@pytest.fixture
def old_export(tmp_path):
    """An existing out.onnx (a different, valid model) that the run will try to replace."""
    hf.onnx_model(tmp_path / "out.onnx")
    return (tmp_path / "out.onnx").read_bytes()


# what effkit says and returns when a signal stops it; SIGKILL leaves no chance to say anything
STOPPED = {signal.SIGINT: (130, "Error: interrupted; no output was left half-written"),
           signal.SIGTERM: (143, "Error: terminated; no output was left half-written")}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_export_killed_mid_write_keeps_the_old_file(tmp_path, old_export, sig):
    proc = _start([sys.executable, "-m", "effkit", "export", spec("mlp"), "-o", "out.onnx", "--force"], tmp_path)
    reached = _wait_for(proc, lambda: _temps(tmp_path, "out.onnx"))
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert reached, f"export finished before its temporary file was seen: {stderr}"
    # the old file, or (when the signal came late, just after the rename) the complete new one
    assert (tmp_path / "out.onnx").read_bytes() == old_export or _onnx_ok(tmp_path / "out.onnx")
    if sig in STOPPED:  # the same cleanup for Ctrl-C and for SIGTERM (what `kill`, CI and containers send)
        code, line = STOPPED[sig]
        assert (proc.returncode, stderr.strip().splitlines()[-1:]) == (code, [line]), stderr
        assert _temps(tmp_path, "out.onnx") == []


def test_export_killed_while_starting_keeps_the_old_file(tmp_path, old_export):
    proc = _start([sys.executable, "-m", "effkit", "export", spec("mlp"), "-o", "out.onnx", "--force"], tmp_path)
    time.sleep(0.5)  # importing: nothing written yet
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    assert (tmp_path / "out.onnx").read_bytes() == old_export
    assert _temps(tmp_path, "out.onnx") == []


def test_bench_json_interrupted_keeps_the_old_report(tmp_path):
    (tmp_path / "r.json").write_text('{"old": true}\n')
    proc = _start([sys.executable, "-m", "effkit", "bench", spec("mlp"), "--warmup", "1", "--min-time", "20",
                   "--json", "r.json", "--force"], tmp_path)
    time.sleep(4.0)  # loaded and measuring for 20 s: the report is not written yet
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, stderr
    assert (tmp_path / "r.json").read_text() == '{"old": true}\n'
    assert _temps(tmp_path, "r.json") == []


# ---------------------------------------------------------------- ONNX with external data

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from effkit.model import write_onnx

    proto = onnx.load(sys.argv[1])
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.full((4, 2), 2.0, np.float32), "W"))
    # a big second weight so that writing takes long enough to be caught in the middle
    proto.graph.initializer.append(numpy_helper.from_array(np.ones(2**23, np.float32), "unused"))
    write_onnx(proto, sys.argv[2], force=True, external_data=True)
""")


def _weights(dst: Path) -> float:
    import onnx
    from onnx import numpy_helper

    from effkit.model import check_external_data

    check_external_data(dst, onnx.load(str(dst), load_external_data=False))
    values = numpy_helper.to_array(onnx.load(str(dst)).graph.initializer[0])
    assert np.all(values == values.flat[0])
    return float(values.flat[0])


@pytest.mark.parametrize("point", ["staging", "data-in-place"])
def test_onnx_external_data_killed_mid_write_is_old_or_new(tmp_path, point):
    import onnx

    from effkit.model import write_onnx

    hf.onnx_model(tmp_path / "src.onnx")
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "model.onnx"
    write_onnx(onnx.load(str(tmp_path / "src.onnx")), dst, force=False, external_data=True)
    old_data = {p.name for p in out.iterdir() if p.suffix == ".data"}
    assert _weights(dst) == 1.0

    def reached():
        names = {p.name for p in out.iterdir()}
        if point == "staging":
            return any(n.startswith(".effkit-") for n in names)
        return any(n.endswith(".data") for n in names - old_data)

    proc = _start([sys.executable, "-c", WRITER, str(tmp_path / "src.onnx"), str(dst)], tmp_path)
    assert _wait_for(proc, reached), "the write finished before the kill point was seen"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    assert _weights(dst) in (1.0, 2.0)  # whole: the graph and the data it names belong together
