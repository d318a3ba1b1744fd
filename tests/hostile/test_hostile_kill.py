"""Runs killed at any moment leave the old output or the new one, never a mix.

Each test starts effkit as a subprocess over an existing output, waits for a kill point (a `debug:`
line on stderr saying what it is doing, or the moment its temporary file appears, i.e. mid-write),
never a fixed delay, which depends on the machine's speed, sends SIGINT, SIGTERM or SIGKILL, and
checks the target. After SIGINT or SIGTERM nothing may be left behind; after SIGKILL a stray
temporary (`.NAME.*.tmp.SUFFIX`, `.effkit-*`) may remain, since no code runs, but the target is intact.
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
from hostile_helpers import EXTRA_ARGS, bounds_spec, error_line, model_commands

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


def _wait_for_line(proc: subprocess.Popen, start: str) -> None:
    """Read stderr until a line that starts with `start`."""
    for line in proc.stderr:
        if line.startswith(start):
            return
    pytest.fail(f"the process ended before {start!r}")


def test_export_killed_while_starting_keeps_the_old_file(tmp_path, old_export):
    proc = _start([sys.executable, "-m", "effkit", "export", spec("mlp"), "-o", "out.onnx", "--force", "--debug"],
                  tmp_path)
    _wait_for_line(proc, "debug: loading")  # started, nothing written yet
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    assert (tmp_path / "out.onnx").read_bytes() == old_export
    assert _temps(tmp_path, "out.onnx") == []


def test_bench_json_interrupted_keeps_the_old_report(tmp_path):
    (tmp_path / "r.json").write_text('{"old": true}\n')
    proc = _start([sys.executable, "-m", "effkit", "bench", spec("mlp"), "--warmup", "1", "--min-time", "20",
                   "--json", "r.json", "--force", "--debug"], tmp_path)
    _wait_for_line(proc, "debug: measuring")  # measuring for 20 s: the report is not written yet
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
    from effkit.onnx_files import write_onnx

    proto = onnx.load(sys.argv[1])
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.full((4, 2), 2.0, np.float32), "W"))
    # a big second weight so that writing takes long enough to be caught in the middle
    proto.graph.initializer.append(numpy_helper.from_array(np.ones(2**23, np.float32), "unused"))
    write_onnx(proto, sys.argv[2], force=True, external_data=True)
""")


def _weights(dst: Path) -> float:
    import onnx
    from onnx import numpy_helper

    from effkit.onnx_files import check_external_data

    check_external_data(dst, onnx.load(str(dst), load_external_data=False))
    values = numpy_helper.to_array(onnx.load(str(dst)).graph.initializer[0])
    assert np.all(values == values.flat[0])
    return float(values.flat[0])


@pytest.mark.parametrize("point", ["staging", "data-in-place"])
def test_onnx_external_data_killed_mid_write_is_old_or_new(tmp_path, point):
    import onnx

    from effkit.onnx_files import write_onnx

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


# ---------------------------------------------------------------- models that never return

INTERRUPTED = "Error: interrupted; no output was left half-written"
STOP_WITHIN_S = 5.0  # Ctrl-C must end effkit this fast, whatever the model is doing


def _endless_model(kind: str, folder: Path) -> list[str]:
    """MODEL and the arguments it needs, for an ONNX Loop of 2**62 iterations or a TorchScript `while`."""
    if kind == "onnx":
        return [str(hf.onnx_endless_loop(folder / "endless.onnx"))]
    return [str(hf.torchscript_endless(folder / "endless.ts")), "--input-shape", "1x4"]


def _cpu_seconds(pid: int) -> float:
    """CPU time the process has used so far (user + system, from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_inside_the_model(proc: subprocess.Popen, started: str) -> None:
    """Read stderr until the line that comes right before the model runs, then until the process has
    spent another half second of CPU: it is then busy inside the model's native loop."""
    for line in proc.stderr:
        if line.startswith(started):
            break
    else:
        pytest.fail(f"the process ended before {started!r}")
    cpu = _cpu_seconds(proc.pid)
    assert _wait_for(proc, lambda: _cpu_seconds(proc.pid) > cpu + 0.5), "the process ended inside the model"


def _interrupt(proc: subprocess.Popen) -> tuple[float, str]:
    """SIGINT; return how long the process took to end after it, and the rest of its stderr."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("SIGINT did not end the process")
    return time.monotonic() - sent, stderr


LIVE_RUNNERS = {
    "onnx": "import numpy as np, onnxruntime as ort, sys; s = ort.InferenceSession(sys.argv[1]); "
            "print('running', file=sys.stderr, flush=True); s.run(None, {'x': np.zeros((1, 4), np.float32)})",
    "torchscript": "import torch, sys; m = torch.jit.load(sys.argv[1]); "
                   "print('running', file=sys.stderr, flush=True); m(torch.zeros(1, 4))",
}


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_endless_model_ignores_ctrl_c_without_effkit(tmp_path, kind):
    """The payload is live: ONNX Runtime and TorchScript never look at Python's signal flag."""
    model = _endless_model(kind, tmp_path)[0]
    proc = _start([sys.executable, "-c", LIVE_RUNNERS[kind], model], tmp_path)
    _wait_inside_the_model(proc, "running")
    proc.send_signal(signal.SIGINT)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_WITHIN_S)
    proc.kill()
    proc.communicate()


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_ctrl_c_ends_an_endless_model_and_keeps_the_old_report(tmp_path, kind):
    (tmp_path / "r.json").write_text('{"old": true}\n')
    proc = _start([sys.executable, "-m", "effkit", "bench", *_endless_model(kind, tmp_path), "--json", "r.json",
                   "--force", "--debug"], tmp_path)
    _wait_inside_the_model(proc, "debug: running the model once")
    took, stderr = _interrupt(proc)
    assert (proc.returncode, stderr.strip().splitlines()[-1]) == (130, INTERRUPTED), stderr
    assert took < STOP_WITHIN_S
    assert (tmp_path / "r.json").read_text() == '{"old": true}\n'
    assert _temps(tmp_path, "r.json") == [] and not list(tmp_path.glob(".effkit-*"))


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_timeout_ends_an_endless_model(tmp_path, kind):
    (tmp_path / "r.json").write_text('{"old": true}\n')
    proc = _start([sys.executable, "-m", "effkit", "bench", *_endless_model(kind, tmp_path), "--json", "r.json",
                   "--force", "--timeout", "2"], tmp_path)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, stderr.strip().splitlines()) == (124, [
        "Error: bench ran past --timeout 2 s; no output was left half-written "
        "(raise --timeout if the model needs longer)"])
    assert (tmp_path / "r.json").read_text() == '{"old": true}\n'


def test_ctrl_c_inside_a_native_loop_while_writing_removes_the_temporary(tmp_path, old_export):
    """export verifies out.onnx while it is still a temporary; the model never returns from that
    verification (a TorchScript loop), so Ctrl-C ends the process without unwinding: the registry
    of temporaries removes it, and the old file stays."""
    proc = _start([sys.executable, "-m", "effkit", "export", bounds_spec("endless_after_first_call"),
                   "-o", "out.onnx", "--force"], tmp_path)
    assert _wait_for(proc, lambda: _temps(tmp_path, "out.onnx")), "export ended before writing"
    cpu = _cpu_seconds(proc.pid)
    assert _wait_for(proc, lambda: _cpu_seconds(proc.pid) > cpu + 0.5), "export ended inside the model"
    took, stderr = _interrupt(proc)
    assert (proc.returncode, stderr.strip().splitlines()[-1]) == (130, INTERRUPTED), stderr
    assert took < STOP_WITHIN_S
    assert (tmp_path / "out.onnx").read_bytes() == old_export
    assert _temps(tmp_path, "out.onnx") == []


TIMEOUT_ARGS = {**EXTRA_ARGS, "compare": [spec("mlp")],
                "distill": ["--student", spec("mlp"), "--data", "data.npz", "-o", "student.pt2"]}


def test_every_command_that_runs_a_model_takes_timeout():
    import typer

    from effkit.cli.common import app

    group = typer.main.get_command(app)
    with_timeout = {name for name, command in group.commands.items() if any(p.name == "timeout" for p in command.params)}
    assert with_timeout == set(TIMEOUT_ARGS) == set(model_commands()) | {"compare", "distill"}


@pytest.mark.parametrize("command", sorted(TIMEOUT_ARGS))
def test_timeout_stops_every_command(cli, tmp_path, monkeypatch, command):
    """In-process, on a model that loops in Python: the alarm's exception unwinds the command."""
    import effkit.interrupts

    monkeypatch.setattr(effkit.interrupts, "GRACE_S", 60.0)  # the main thread unwinds; never end pytest itself
    np.savez(tmp_path / "data.npz", x=np.zeros((8, 4), np.float32))
    code, _, stderr = cli(command, bounds_spec("endless_python"), *TIMEOUT_ARGS[command], "--timeout", "0.5")
    assert (code, error_line(stderr)) == (
        124, f"Error: {command} ran past --timeout 0.5 s; no output was left half-written "
             "(raise --timeout if the model needs longer)")


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_timeout_must_be_positive_and_finite(cli, value):
    code, _, stderr = cli("inspect", spec("mlp"), "--timeout", value)
    assert code == 2 and error_line(stderr).startswith("Error: --timeout must be a positive number of seconds"), stderr


def test_temporaries_are_removed_while_still_being_written(tmp_path, monkeypatch):
    """The watchdog removes temporaries while the main thread may go on writing into them: a staging
    folder that keeps receiving files must still disappear, with nothing left beside it."""
    import threading

    from effkit import files
    from effkit.files import forget_temporary, remove_temporaries, track_temporary

    # only this test's folder: the registry also holds this pytest process's effkit work folder,
    # which in-process CLI tests that ran earlier created and later ones still use
    monkeypatch.setattr(files, "_TEMPORARIES", set())
    stage = track_temporary(tmp_path / ".out.effkit-stage")
    stage.mkdir()
    started, stop = threading.Event(), threading.Event()

    def keep_writing() -> None:
        for i in range(10**6):
            if stop.is_set():
                return
            try:
                (stage / f"{i}.part").write_bytes(b"x")
            except FileNotFoundError:  # the folder is gone: nothing can be created in it any more
                return
            if i == 2000:  # enough files that deleting them takes a while, with the writer still going
                started.set()

    writer = threading.Thread(target=keep_writing)
    writer.start()
    started.wait()
    try:
        remove_temporaries()
    finally:
        stop.set()
        writer.join()
        forget_temporary(stage)
    assert list(tmp_path.iterdir()) == []
