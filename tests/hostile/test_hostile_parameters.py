"""Bad parameters: shapes, dtypes and data that cannot work are refused with one line and exit 2."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import spec
from hostile_helpers import EXTRA_ARGS, error_line, model_commands

import hostile_files as hf

COMMANDS = model_commands()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("shape, expected", [
    ("0x16", "Error: input shape '0x16' has a zero or negative dimension (every dimension must be at least 1)"),
    ("-1x16", "Error: input shape '-1x16' has a zero or negative dimension (every dimension must be at least 1)"),
    ("cfloat:1x16", "Error: unknown dtype 'cfloat' in input shape 'cfloat:1x16' (use one of float32, float16, "
                    "bfloat16, float64, int64, int32, int16, int8, uint8, bool)"),
    ("1x16x", "Error: cannot parse input shape '1x16x' (write dimensions separated by 'x', e.g. 1x3x224x224 or "
              "int64:1x128)"),
])
def test_bad_input_shape(cli, command, shape, expected):
    code, _, stderr = cli(command, spec("mlp_no_inputs"), "--input-shape", shape, *EXTRA_ARGS[command])
    assert (code, error_line(stderr)) == (2, expected)


@pytest.mark.parametrize("command", COMMANDS)
def test_shape_too_big_for_memory_is_refused_before_allocating(cli, command, monkeypatch):
    import effkit.limits

    monkeypatch.setattr(effkit.limits, "available_memory", lambda: 8 * 2**30)  # the message names the amount
    code, _, stderr = cli(command, spec("mlp_no_inputs"), "--input-shape", "100000x100000x100", *EXTRA_ARGS[command])
    assert (code, error_line(stderr)) == (
        2, "Error: an input of shape 100000x100000x100 float32 needs 3725.3 GiB, more than half the free memory "
           "(8.0 GiB) (use a smaller shape)")


def test_shape_too_big_for_memory_with_the_real_free_memory(cli):
    code, _, stderr = cli("inspect", spec("mlp_no_inputs"), "--input-shape", "int64:100000x100000x100")
    line = error_line(stderr)
    assert code == 2 and line.startswith("Error: an input of shape 100000x100000x100 int64 needs 7450.6 GiB, "), line


def test_onnx_input_shape_that_contradicts_the_graph(cli, tmp_path):
    hf.onnx_model(tmp_path / "m.onnx")
    code, _, stderr = cli("inspect", "m.onnx", "--input-shape", "2x4")
    assert (code, error_line(stderr)) == (
        2, "Error: input 'x' expects shape [1, 4] float32; got 2x4 (pass --input-shape 1x4)")
    code, _, stderr = cli("inspect", "m.onnx", "--input-shape", "1x4", "--input-shape", "1x4")
    assert (code, error_line(stderr)) == (
        2, "Error: m.onnx takes 1 inputs (x); --input-shape was given 2 times")


def test_bfloat16_example_inputs_are_refused(cli):
    code, _, stderr = cli("inspect", spec("mlp_no_inputs"), "--input-shape", "bfloat16:1x16")
    assert (code, error_line(stderr)) == (
        2, "Error: bfloat16 inputs cannot be generated as numpy arrays (use float32 or float16)")


def test_inputs_file_that_is_not_npz(cli, tmp_path):
    (tmp_path / "inputs.npz").write_bytes(b"PK\x03\x04 broken")
    code, _, stderr = cli("inspect", spec("mlp"), "--inputs", "inputs.npz")
    line = error_line(stderr)
    assert code == 2 and line.startswith("Error: inputs.npz is not a readable .npz file: "), line


# ---------------------------------------------------------------- data files (Python API: load_data)

def _load_error(spec_text: str) -> str:
    from effkit.data import load_data
    from effkit.errors import InputError

    with pytest.raises(InputError) as info:
        load_data(spec_text)
    assert info.value.exit_code == 2
    return str(info.value)


def test_npz_arrays_that_disagree_in_length(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((10, 4), np.float32), labels=np.zeros(9, np.int64))
    assert _load_error(str(path)) == (f"{path}: arrays disagree in length (10, labels 9) "
                                      "(every array needs one row per sample)")


def test_npz_inputs_that_disagree_in_length(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, ids=np.zeros((5, 8), np.int64), features=np.zeros((6, 4), np.float32))
    assert _load_error(str(path)) == f"{path}: arrays disagree in length (5, 6) (every array needs one row per sample)"


def test_pt_pair_that_disagrees_in_length(tmp_path):
    import torch

    path = tmp_path / "data.pt"
    torch.save((torch.zeros(4, 16), torch.zeros(3, dtype=torch.long)), path)
    assert _load_error(str(path)) == (f"{path}: arrays disagree in length (4, labels 3) "
                                      "(every array needs one row per sample)")


def test_npy_folder_that_does_not_stack(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(4, np.float32))
    np.save(tmp_path / "b.npy", np.zeros(5, np.float32))
    message = _load_error(str(tmp_path))
    assert message.startswith(f"{tmp_path}: the .npy files do not stack into one array: "), message


def test_empty_and_label_only_data(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, labels=np.zeros(3, np.int64))
    assert _load_error(str(path)) == f"{path} holds no input arrays"
    np.savez(path, x=np.zeros((0, 4), np.float32))
    assert _load_error(str(path)) == f"{path} holds no samples"


def test_truncated_npz(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((100, 4), np.float32))
    hf.truncated(path, path)
    assert _load_error(str(path)).startswith(f"{path} is not a readable .npz file: ")


# ---------------------------------------------------------------- threads

def test_absurd_thread_count_proves_live():
    """torch itself segfaults when asked for 100000 threads."""
    import subprocess
    import sys

    code = "import torch; torch.set_num_threads(100000); x = torch.randn(64, 64); print(float((x @ x).sum()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert done.returncode == -11, done  # SIGSEGV


def _thread_commands() -> list[str]:
    import typer

    from effkit.cli.common import app

    group = typer.main.get_command(app)
    return sorted(name for name, command in group.commands.items() if any(p.name == "threads" for p in command.params))


@pytest.mark.parametrize("command", _thread_commands())
def test_absurd_thread_count_is_refused_before_any_work(cli, command):
    from effkit.env import available_cores

    cores = available_cores()
    args = EXTRA_ARGS.get(command, [])
    models = [spec("mlp")] * (2 if command == "compare" else 1)
    extra = ["--student", spec("mlp"), "--data", "missing.npz", "-o", "out.pt2"] if command == "distill" else []
    code, _, stderr = cli(command, *models, *args, *extra, "--threads", "100000")
    assert (code, error_line(stderr)) == (
        2, f"Error: --threads 100000 is more than 4 per core ({cores} cores here) (pass at most --threads {4 * cores})")


def test_threads_up_to_the_cap_run(cli):
    from effkit.env import available_cores

    code, stdout, stderr = cli("bench", spec("mlp"), "--threads", str(4 * available_cores()), "--warmup", "1",
                               "--iterations", "2", "--json", "-")
    assert code == 0, stderr
    assert f'"threads": {4 * available_cores()}' in stdout
