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
