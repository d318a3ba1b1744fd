"""Files and options that would exhaust memory are refused before the allocation, by one budget.

The peak-memory tests run effkit in a subprocess of a small wrapper that reports its children's
peak RSS (`resource.getrusage(RUSAGE_CHILDREN)`: the wrapper's only child is effkit). Each first
proves that the payload, opened without effkit's checks, really takes the memory.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import spec
from hostile_helpers import bounds_spec, error_line

import hostile_files as hf

ROOT = Path(__file__).parents[2]
BOMB_BYTES = 4 * hf.BOMB_ELEMENTS  # what each bomb holds once decompressed: 800 MiB
# effkit with torch imported peaks at about 250 MB on these tiny models: far below this bound,
# and each payload alone takes more than it.
PEAK_BOUND_MB = 600
BUDGET = "400MiB"  # EFFKIT_MAX_MEMORY in the subprocess: the bombs exceed it, effkit's own needs do not

PEAK_WRAPPER = textwrap.dedent("""
    import resource, subprocess, sys
    done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    sys.stderr.write(done.stderr)
    print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
""")


def _peak(args: list[str], cwd: Path, **env: str) -> tuple[int, str, int]:
    """Run `args` in a subprocess; return (exit code, its stderr, its peak RSS in MB)."""
    done = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}, timeout=600)
    code, peak_mb = map(int, done.stdout.split())
    return code, done.stderr, peak_mb


def _effkit_peak(args: list[str], cwd: Path) -> tuple[int, str, int]:
    return _peak([sys.executable, "-m", "effkit", *args], cwd, EFFKIT_MAX_MEMORY=BUDGET)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> Path:
    """bomb.npz and bomb.pt: 800 MiB of zeros each once decompressed, under 4 MB on disk."""
    folder = tmp_path_factory.mktemp("bombs")
    hf.npz_bomb(folder / "bomb.npz")
    hf.pt_bomb(folder / "bomb.pt")
    return folder


def _copy(bombs: Path, name: str, tmp_path: Path) -> str:
    shutil.copy(bombs / name, tmp_path / name)
    return name


def _refused(name: str, nbytes: int = BOMB_BYTES, hint: str = "give smaller example arrays") -> str:
    return f"Error: reading {name} needs {nbytes / 2**20:.1f} MiB, more than EFFKIT_MAX_MEMORY (400.0 MiB) ({hint})"


# ---------------------------------------------------------------- decompression bombs

def test_bombs_prove_live(bombs, tmp_path):
    """Opened without effkit's checks, each bomb takes more memory than the bound."""
    _, _, npz_peak = _peak([sys.executable, "-c", "import numpy, sys; numpy.load(sys.argv[1])['x']",
                            str(bombs / "bomb.npz")], tmp_path)
    (tmp_path / "raw.npz").write_bytes((bombs / "bomb.npz").read_bytes().replace(b"x.npy", b"x.raw"))
    _, _, raw_peak = _peak([sys.executable, "-c", "import numpy, sys; numpy.load(sys.argv[1])['x.raw']",
                            str(tmp_path / "raw.npz")], tmp_path)
    _, _, pt_peak = _peak([sys.executable, "-c", "import torch, sys; torch.load(sys.argv[1], weights_only=True)",
                           str(bombs / "bomb.pt")], tmp_path)
    assert min(npz_peak, raw_peak, pt_peak) > BOMB_BYTES / 2**20 > PEAK_BOUND_MB, (npz_peak, raw_peak, pt_peak)


def test_npz_bomb_as_inputs_is_refused_before_decompressing(bombs, tmp_path):
    name = _copy(bombs, "bomb.npz", tmp_path)
    code, stderr, peak_mb = _effkit_peak(["bench", spec("mlp"), "--inputs", name, "--warmup", "1"], tmp_path)
    assert (code, error_line(stderr)) == (2, _refused(name))
    assert peak_mb < PEAK_BOUND_MB


def test_pt_bomb_as_data_is_refused_before_decompressing(bombs, tmp_path):
    name = _copy(bombs, "bomb.pt", tmp_path)
    code, stderr, peak_mb = _effkit_peak(["quantize", spec("mlp"), "-o", "out.onnx", "--method", "static",
                                          "--calib", name], tmp_path)
    assert (code, error_line(stderr)) == (2, _refused(name, hint="use fewer or smaller samples"))
    assert peak_mb < PEAK_BOUND_MB
    assert not (tmp_path / "out.onnx").exists()


def test_pt_bomb_as_model_is_refused_before_decompressing(bombs, tmp_path):
    name = _copy(bombs, "bomb.pt", tmp_path)
    code, stderr, peak_mb = _effkit_peak(["inspect", name, "--arch", spec("mlp")], tmp_path)
    # the archive also holds torch's small records (data.pkl, version, ...)
    assert code == 2 and error_line(stderr).startswith(f"Error: reading {name} needs 800.0 MiB, more than "
                                                       "EFFKIT_MAX_MEMORY (400.0 MiB)"), stderr
    assert peak_mb < PEAK_BOUND_MB


def _lie_about_size(path: Path, declared: int) -> None:
    """Patch the only member's uncompressed size, in its local header and in the central directory."""
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[0]
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, info.header_offset + 22, declared)
    central = data.rindex(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, declared)
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as archive:
        assert archive.infolist()[0].file_size == declared


@pytest.mark.parametrize("declared, expected", [
    (1000, "Error: bomb.npz is not a readable .npz file: Bad CRC-32 for file 'x.npy' (the file may be truncated or "
           "corrupt; save or download it again)"),
    (100_000_000, _refused("bomb.npz")),
])
def test_a_declared_size_that_lies_does_not_help(bombs, tmp_path, declared, expected):
    """A member declaring less than the 800 MiB it inflates to: zipfile stops reading at the declared size
    (and fails its checksum there), and the .npy header still says how big the array is."""
    name = _copy(bombs, "bomb.npz", tmp_path)
    _lie_about_size(tmp_path / name, declared)
    code, stderr, peak_mb = _effkit_peak(["bench", spec("mlp"), "--inputs", name], tmp_path)
    assert (code, error_line(stderr)) == (2, expected)
    assert peak_mb < PEAK_BOUND_MB


def test_npz_member_that_is_not_npy_is_judged_by_its_declared_size(bombs, tmp_path):
    """np.load reads a member without the .npy suffix whole, as bytes: only its declared size bounds it."""
    name = "raw.npz"
    (tmp_path / name).write_bytes((bombs / "bomb.npz").read_bytes().replace(b"x.npy", b"x.raw"))
    code, stderr, peak_mb = _effkit_peak(["bench", spec("mlp"), "--inputs", name], tmp_path)
    assert (code, error_line(stderr)) == (2, _refused(name))
    assert peak_mb < PEAK_BOUND_MB


def test_the_budget_is_half_the_free_memory_by_default(cli, tmp_path, monkeypatch):
    import effkit.limits

    monkeypatch.setattr(effkit.limits, "available_memory", lambda: 3 * 2**20)
    np.savez(tmp_path / "big.npz", x=np.zeros((2, 2**18), np.float32))  # 2 MiB: less than free, more than half
    code, _, stderr = cli("inspect", spec("mlp"), "--inputs", "big.npz")
    assert (code, error_line(stderr)) == (
        2, "Error: reading big.npz needs 2.0 MiB, more than half the free memory (3.0 MiB) (give smaller example arrays)")


def test_max_memory_that_is_not_a_size(cli, monkeypatch):
    monkeypatch.setenv("EFFKIT_MAX_MEMORY", "lots")
    code, _, stderr = cli("inspect", spec("mlp_no_inputs"), "--input-shape", "1x16")
    assert (code, error_line(stderr)) == (2, "Error: cannot parse EFFKIT_MAX_MEMORY='lots' (write a size, e.g. 2GB or 500MiB)")


def test_npy_folder_is_read_per_batch_not_stacked(tmp_path, monkeypatch):
    """A folder of .npy samples is read as batches need them: no stacked copy of all of it, so a folder
    larger than the memory budget still loads (the budget only bounds what is read at once)."""
    from effkit.data import load_data

    for i in range(4):
        np.save(tmp_path / f"{i}.npy", np.full(2**20, i, np.float32))  # 4 MiB each, 16 MiB in all
    monkeypatch.setenv("EFFKIT_MAX_MEMORY", "12MiB")
    data = load_data(str(tmp_path))
    assert len(data) == 4
    assert [float(data.inputs[0][k].mean()) for k in range(4)] == [0.0, 1.0, 2.0, 3.0]
