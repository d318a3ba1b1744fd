"""Example inputs: --inputs for every format, else the first sample of the command's data, else
--input-shape; every command prints the inputs it used; arrays matched by name or position."""

import json

import numpy as np
import pytest
import torch

from conftest import FAST, NO_BAR, spec

ARCH = spec("mlp_no_inputs")  # a factory that returns the module alone: no example inputs


def _module():
    from models import mlp_no_inputs

    return mlp_no_inputs()


def _save(fmt: str) -> list[str]:
    """The MLP (16 features in) saved in `fmt`, in the current folder; the MODEL arguments for it."""
    m, x = _module(), torch.randn(2, 16)
    if fmt == "factory":
        return [ARCH]
    if fmt == "state_dict":
        torch.save(m.state_dict(), "m.pt")
        return ["m.pt", "--arch", ARCH]
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(m.state_dict(), "m.safetensors")
        return ["m.safetensors", "--arch", ARCH]
    if fmt == "torchscript":
        torch.jit.save(torch.jit.trace(m, (x,)), "m.ts")
        return ["m.ts"]
    if fmt == "quantize output":  # effkit quantize --backend torch writes int8 TorchScript this way
        from effkit.passes.quantize_torch import to_torchscript

        int8 = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
        torch.jit.save(to_torchscript(int8, (x.numpy(),)), "q.ts")
        return ["q.ts"]
    if fmt == "pt2":
        torch.export.save(torch.export.export(m, (x,)), "m.pt2")
        return ["m.pt2"]
    if fmt == "onnx":
        from effkit.export import export_onnx
        from effkit.load import load_model
        from effkit.specs import parse_input_shape

        export_onnx(load_model(ARCH, input_shapes=[parse_input_shape("2x16")]), "m.onnx")
        return ["m.onnx"]
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["factory", "state_dict", "safetensors", "torchscript", "quantize output", "pt2",
                                 "onnx"])
def test_bench_takes_inputs_from_npz_for_every_format(cli, fmt):
    model = _save(fmt)
    np.savez("x.npz", input=np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32))
    code, out, _ = cli("bench", *model, "--inputs", "x.npz", *FAST, "--json", "r.json")
    assert code == 0, out
    name = "input" if fmt != "onnx" else json.loads(open("r.json").read())["model"]["inputs"][0]["name"]
    assert f"inputs (x.npz): {name}: 2x16 float32" in out
    assert json.loads(open("r.json").read())["runs"][0]["batch_size"] == 2


def test_arrays_match_by_position_when_keys_are_not_input_names(cli):
    np.savez("x.npz", np.ones((3, 16), np.float32))  # saved as arr_0
    code, out, _ = cli("bench", ARCH, "--inputs", "x.npz", *FAST)
    assert code == 0, out
    assert "inputs (x.npz): input: 3x16 float32" in out


def test_arrays_match_by_name_in_the_models_order(cli):
    np.savez("x.npz", features=np.ones((2, 4), np.float32), ids=np.zeros((2, 5), np.int64))
    code, out, _ = cli("bench", spec("two_inputs"), "--inputs", "x.npz", *FAST)
    assert code == 0, out
    assert "inputs (x.npz): ids: 2x5 int64, features: 2x4 float32" in out


def test_an_extra_array_is_an_error_naming_both_lists(cli):
    np.savez("x.npz", a=np.ones((2, 16), np.float32), b=np.ones((2, 16), np.float32))
    code, _, err = cli("bench", ARCH, "--inputs", "x.npz", *FAST)
    assert code == 2
    assert err.strip().splitlines() == [
        "Error: x.npz holds 2 arrays (a, b); the model takes 1 input (input) "
        "(give one array per model input, named like the inputs or in their order)"]


def test_a_missing_array_is_an_error_naming_both_lists(cli):
    np.savez("x.npz", ids=np.zeros((2, 5), np.int64))
    code, _, err = cli("bench", spec("two_inputs"), "--inputs", "x.npz", *FAST)
    assert code == 2
    assert err.strip().splitlines() == [
        "Error: x.npz holds 1 array (ids); the model takes 2 inputs (ids, features) "
        "(give one array per model input, named like the inputs or in their order)"]


def test_the_first_sample_of_eval_data_gives_the_inputs(cli):
    """A 16-feature model without example inputs is not told to pass 1x3x224x224: --eval has them."""
    torch.save(_module().state_dict(), "m.pt")
    rng = np.random.default_rng(0)
    np.savez("eval.npz", x=rng.standard_normal((8, 16)).astype(np.float32), labels=np.arange(8) % 4)
    code, out, _ = cli("prune", "m.pt", "--arch", ARCH, "--eval", "eval.npz", "--ratio", "0.25", "-o", "p.pt2", *FAST, *NO_BAR)
    assert code == 0, out
    assert "inputs (the first sample of eval.npz): input: 1x16 float32" in out


def test_input_shape_still_gives_the_inputs_and_is_printed(cli):
    code, out, _ = cli("bench", ARCH, "--input-shape", "4x16", *FAST)
    assert code == 0, out
    assert "inputs (--input-shape): input: 4x16 float32" in out


def test_the_models_own_example_is_printed(cli):
    code, out, _ = cli("inspect", spec("mlp"))
    assert code == 0, out
    assert "inputs (the factory's own example): input: 2x16 float32" in out
