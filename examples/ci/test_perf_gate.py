"""A performance gate as a pytest test, with effkit's Python API.

Compares the candidate model with the reference interleaved in one process (`effkit.compare`),
then gates the result (`effkit.gate`): the test fails only when the 95% interval says the
candidate is slower than allowed; an inconclusive measurement is skipped with its reason, not
guessed. Point REFERENCE_MODEL and CANDIDATE_MODEL at your own specs or files:

    REFERENCE_MODEL=main/model.pt2 CANDIDATE_MODEL=model.pt2 pytest examples/ci/test_perf_gate.py
"""

import os
from pathlib import Path

import pytest

import effkit

HERE = Path(__file__).resolve().parent
# By default: the example digits MLP against itself, which must not be called slower.
REFERENCE = os.environ.get("REFERENCE_MODEL", str(HERE.parent / "digits.py:mlp"))
CANDIDATE = os.environ.get("CANDIDATE_MODEL", REFERENCE)


@pytest.fixture(scope="module")
def comparison():
    return effkit.compare(REFERENCE, CANDIDATE, pairs=20, rerun_inconclusive=1)


def test_candidate_is_not_slower(comparison):
    report = effkit.gate(comparison, ["latency.p50:+5%", "latency.p90:+10%"])
    for warning in comparison.warnings + report.warnings:
        print("warning:", warning)
    assert report.passed, "\n".join(v.line() for v in report.failed)
    if report.inconclusive:
        pytest.skip("inconclusive: " + "; ".join(v.line() for v in report.inconclusive))


def test_candidate_is_not_bigger(comparison):
    report = effkit.gate(comparison, ["size:+0%", "parameters:+0%"])
    assert report.passed, "\n".join(v.line() for v in report.failed)
