"""The verified ONNX export: large models with external data, and what a failed verification leaves."""

import numpy as np
import pytest

from conftest import spec
from effkit.errors import StepFailed
from effkit.load import load_model
from effkit import export as export_mod
from effkit import onnx_files
from effkit.export import make_runner


def test_large_model_path_writes_external_data_that_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_THRESHOLD", 0)  # treat the tiny model as a 2 GB one
    model = load_model(spec("mlp"))
    export_mod.export_onnx(model, tmp_path / "m.onnx")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "m.onnx" and names[1].startswith("m.onnx.") and names[1].endswith(".data") and len(names) == 2
    got = make_runner(load_model(str(tmp_path / "m.onnx")), "onnxruntime", 1).run(model.example_inputs)[0]
    want = make_runner(model, "torch", 1).run(model.example_inputs)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("large", [False, True])
def test_failed_verification_leaves_the_old_output(tmp_path, monkeypatch, large):
    if large:
        monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_THRESHOLD", 0)
    (tmp_path / "m.onnx").write_bytes(b"the old export")

    def mismatch(*args, **kwargs):
        raise export_mod.ExportMismatch("the ONNX export differs from torch: output 0")

    monkeypatch.setattr(export_mod, "verify_onnx", mismatch)
    with pytest.raises(StepFailed):
        export_mod.export_onnx(load_model(spec("mlp")), tmp_path / "m.onnx", force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    assert (tmp_path / "m.onnx").read_bytes() == b"the old export"
