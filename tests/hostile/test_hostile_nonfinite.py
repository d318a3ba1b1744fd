"""Numbers that lie: NaN or Inf in a model's outputs fails the step; it is never averaged into a figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hostile_helpers import hostile_spec

FAST = ["--warmup", "1", "--iterations", "2"]
NONFINITE_HINT = "(the model's numbers overflowed; this result cannot be trusted)"
WARNING = ("warning: the model on its example inputs: output 0 holds 2 NaN/Inf values; any step that compares its "
           "outputs will fail")


@pytest.mark.parametrize("name", ["nan_outputs", "inf_outputs"])
def test_export_of_a_nonfinite_model_fails_the_step(cli, tmp_path, name):
    code, _, stderr = cli("export", hostile_spec(name), "-o", "out.onnx")
    # Inf == Inf would pass an allclose comparison: the check must come before it
    assert code == 1
    assert stderr.splitlines() == [WARNING, f"Error: the model before export: output 0 holds 2 NaN/Inf values "
                                            f"{NONFINITE_HINT}"]
    assert not (tmp_path / "out.onnx").exists()


def test_bench_of_a_nan_model_warns_and_still_measures(cli):
    code, stdout, stderr = cli("bench", hostile_spec("nan_outputs"), *FAST, "--json", "-")
    assert code == 0, stderr
    assert json.loads(stdout)["schema"] == "effkit.bench/1"
    assert WARNING in stderr.splitlines()  # after the inputs and threads lines (stdout is the JSON)


def test_finite_models_get_no_warning(cli):
    from conftest import spec

    code, _, stderr = cli("inspect", spec("mlp"))
    assert code == 0 and "warning" not in stderr


@pytest.mark.parametrize("side, what", [("reference", "the original model"), ("candidate", "the changed model")])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_compare_outputs_refuses_nonfinite(side, what, bad):
    from effkit.errors import StepFailed
    from effkit.fidelity import compare_outputs

    good = [[np.ones((2, 3), np.float32)] for _ in range(4)]
    broken = [[a.copy() for a in sample] for sample in good]
    broken[2][0][1, 1] = bad  # one value in one sample: it must not vanish in a mean
    reference, candidate = (broken, good) if side == "reference" else (good, broken)
    with pytest.raises(StepFailed) as info:
        compare_outputs(reference, candidate)
    assert info.value.exit_code == 1
    assert str(info.value) == f"{what}: output 0 holds 1 NaN/Inf values {NONFINITE_HINT}"


def test_compare_outputs_of_agreeing_models_is_a_number():
    """The control: the same data without the bad value gives finite figures."""
    from effkit.fidelity import compare_outputs

    good = [[np.ones((2, 3), np.float32)] for _ in range(4)]
    result = compare_outputs(good, good)
    assert result["cosine_min"] == pytest.approx(1.0) and result["max_abs_diff"] == 0.0
