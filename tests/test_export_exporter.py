"""`effkit export` says which exporter and opset it really used, in its output and its JSON."""

import json

import torch

from conftest import spec


def test_torch_export_and_the_opset_asked_for(cli):
    code, out, err = cli("export", spec("mlp"), "-o", "m.onnx", "--json", "r.json")
    assert code == 0, err
    assert "wrote m.onnx (opset 18, torch.export exporter, dynamic batch)" in out.replace("\n", " ")
    report = json.load(open("r.json"))
    assert (report["exporter"], report["opset"], report["opset_requested"]) == ("torch.export", 18, 18)
    assert "fallback_reason" not in report


def test_a_torchscript_model_says_it_went_through_the_older_exporter_at_opset_17(cli):
    from models import mlp

    module, x = mlp()
    torch.jit.save(torch.jit.trace(module, (x,)), "m.ts")
    code, out, err = cli("export", "m.ts", "--input-shape", "2x16", "-o", "m.onnx", "--json", "r.json")
    assert code == 0, err
    flat = " ".join(out.split())
    assert "wrote m.onnx (opset 17, TorchScript exporter, dynamic batch)" in flat
    assert "note: the TorchScript exporter was used because a TorchScript module only goes through the " \
           "TorchScript exporter" in flat
    report = json.load(open("r.json"))
    assert (report["exporter"], report["opset"], report["opset_requested"]) == ("TorchScript", 17, 18)
    import onnx

    assert [o.version for o in onnx.load("m.onnx").opset_import if o.domain in ("", "ai.onnx")] == [17]
