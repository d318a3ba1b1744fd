import json

from conftest import FAST, spec


def test_bench_json_to_stdout_is_json_alone(cli):
    code, stdout, stderr = cli("bench", spec("mlp"), *FAST, "--json", "-")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["schema"] == "effkit.bench/1"
    run = result["runs"][0]
    assert run["runtime"] == "torch" and run["batch_size"] == 2 and len(run["samples_ms"]) == 3
    assert "effkit bench" in stderr  # the table went to stderr


def test_missing_inputs_names_the_fix(cli):
    code, _, stderr = cli("bench", spec("mlp_no_inputs"), *FAST)
    assert code == 2
    assert stderr.strip().splitlines() == [
        f"Error: {spec('mlp_no_inputs')} comes without example inputs (the first layer '0' is "
        "Linear(in_features=16), so e.g. --input-shape 1x16; pass --input-shape (e.g. 1x3x224x224) or --inputs file.npz)"
    ]


def test_an_int8_torchscript_loads_without_torch_s_cpp_deprecation_noise(tmp_path):
    """torch prints a C++ warning (Quantizer.cpp) when it loads quantized tensors, past Python's warning
    filters; the effkit command keeps it away unless --debug."""
    import os
    import subprocess
    import sys

    from conftest import MODELS

    script = (f"import sys, torch, warnings; warnings.simplefilter('ignore'); sys.path.insert(0, {str(MODELS.parent)!r}); "
              "import models; m = torch.ao.quantization.quantize_dynamic(models.mlp()[0].eval(), {torch.nn.Linear}, "
              f"dtype=torch.qint8); torch.jit.save(torch.jit.trace(m, torch.randn(2, 16)), {str(tmp_path / 'q.ts')!r})")
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CPP_LOG_LEVEL"}
    run = [sys.executable, "-m", "effkit", "bench", str(tmp_path / "q.ts"), "--input-shape", "2x16", *FAST]
    quiet = subprocess.run(run, capture_output=True, text=True, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "Quantizer.cpp" not in quiet.stderr
    debug = subprocess.run([*run, "--debug"], capture_output=True, text=True, env=env)
    assert "Quantizer.cpp" in debug.stderr  # the warning is real: only hidden, and shown with --debug
