"""Nothing lost: outputs never overwrite without --force, never overwrite an input, never half-written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import MODELS, spec
from hostile_helpers import error_line, hostile_spec

import hostile_files as hf

FAST = ["--warmup", "1", "--iterations", "2"]
EXISTS = "(pass --force to overwrite it)"
IS_INPUT = "is also an input of this command (write the result to another path)"


def _temp_leftovers(folder):
    """effkit's temporaries: `.NAME.XXXX.tmp.SUFFIX` files and `.effkit-XXXX` staging folders."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (".tmp" in p.name
                                                                                  or p.name.startswith(".effkit-")))


@pytest.mark.parametrize("args, output", [
    (["bench", spec("mlp"), *FAST, "--json", "out.json"], "out.json"),
    (["bench", spec("mlp"), *FAST, "--markdown", "out.md"], "out.md"),
    (["inspect", spec("mlp"), "--json", "out.json"], "out.json"),
    (["export", spec("mlp"), "-o", "out.onnx"], "out.onnx"),
    (["export", spec("mlp"), "-o", "new.onnx", "--json", "out.json"], "out.json"),
])
def test_existing_output_needs_force(cli, tmp_path, args, output):
    (tmp_path / output).write_text("precious")
    code, _, stderr = cli(*args)
    assert (code, error_line(stderr)) == (2, f"Error: {output} already exists {EXISTS}")
    assert (tmp_path / output).read_text() == "precious"
    assert not (tmp_path / "new.onnx").exists()
    code, _, stderr = cli(*args, "--force")
    assert code == 0, stderr
    assert (tmp_path / output).read_bytes() != b"precious"
    assert _temp_leftovers(tmp_path) == []


def _copy_models(tmp_path):
    shutil.copy(MODELS, tmp_path / "mymodels.py")
    return "mymodels.py"


@pytest.mark.parametrize("case", ["onnx-model", "factory-file", "arch-file", "inputs-file", "hf-prefix"])
def test_output_that_is_an_input_is_refused_even_with_force(cli, tmp_path, case):
    import models
    import torch

    hf.onnx_model(tmp_path / "m.onnx")
    factory = _copy_models(tmp_path)
    torch.save(models.mlp()[0].state_dict(), tmp_path / "weights.pt")
    np.savez(tmp_path / "inputs.npz", x=np.zeros((1, 16), np.float32))
    args, victim = {
        "onnx-model": (["bench", "m.onnx", *FAST, "--json", "m.onnx"], "m.onnx"),
        "factory-file": (["inspect", f"{factory}:mlp", "--json", factory], factory),
        "arch-file": (["export", "weights.pt", "--arch", f"{factory}:mlp", "-o", "out.onnx", "--json", factory],
                      factory),
        "inputs-file": (["bench", spec("mlp_no_inputs"), "--inputs", "inputs.npz", *FAST, "--markdown",
                         "inputs.npz"], "inputs.npz"),
        "hf-prefix": (["inspect", "hf:m.onnx", "--json", "./m.onnx"], "m.onnx"),
    }[case]
    before = (tmp_path / victim).read_bytes()
    code, _, stderr = cli(*args, "--force")
    shown = "m.onnx" if case == "hf-prefix" else victim
    assert (code, error_line(stderr)) == (2, f"Error: output {shown} {IS_INPUT}")
    assert (tmp_path / victim).read_bytes() == before


def test_one_path_for_two_outputs_is_refused(cli, tmp_path):
    code, _, stderr = cli("bench", spec("mlp"), *FAST, "--json", "r.txt", "--markdown", "r.txt")
    assert (code, error_line(stderr)) == (2, "Error: output r.txt is given for two outputs "
                                             "(give each output its own path)")
    assert not (tmp_path / "r.txt").exists()


def test_failed_export_keeps_the_old_file(cli, tmp_path):
    (tmp_path / "out.onnx").write_bytes(b"the previous export")
    code, _, stderr = cli("export", hostile_spec("nan_outputs"), "-o", "out.onnx", "--force")
    assert code == 1, stderr
    assert (tmp_path / "out.onnx").read_bytes() == b"the previous export"
    assert _temp_leftovers(tmp_path) == []


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    from effkit.files import atomic_path

    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target, force=True) as tmp:
        tmp.write_text("half of the ne")
        raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert _temp_leftovers(tmp_path) == []


def test_onnx_with_external_data_is_replaced_whole(tmp_path):
    """Graph and data file: the graph is renamed into place last and stale data files are removed."""
    import onnx
    from onnx import numpy_helper

    from effkit.errors import OutputExistsError
    from effkit.onnx_files import write_onnx

    def proto(value: float):
        hf.onnx_model(tmp_path / "src.onnx")
        p = onnx.load(str(tmp_path / "src.onnx"))
        p.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.full((4, 2), value, np.float32), "W"))
        return p

    dst = tmp_path / "out" / "model.onnx"
    dst.parent.mkdir()
    first = write_onnx(proto(1.0), dst, force=False, external_data=True)
    with pytest.raises(OutputExistsError):
        write_onnx(proto(2.0), dst, force=False, external_data=True)
    second = write_onnx(proto(2.0), dst, force=True, external_data=True)
    assert first[1] != second[1] and not first[1].exists()  # the old data file is gone
    assert sorted(p.name for p in dst.parent.iterdir()) == sorted(p.name for p in second)
    loaded = onnx.load(str(dst))
    assert np.all(numpy_helper.to_array(loaded.graph.initializer[0]) == 2.0)
