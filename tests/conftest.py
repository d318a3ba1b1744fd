"""Shared fixtures: tiny model specs, a CLI runner that captures stdout and stderr apart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

TESTS = Path(__file__).parent
MODELS = TESTS / "models.py"

# Small, fast measurements everywhere in the tests: timings are never asserted.
FAST = ["--warmup", "1", "--iterations", "3"]
# No quality bar: for tests of what a command does to a model, not of whether the result is good enough
# (a random tiny model pruned or distilled misses the default bar; tests/test_verdicts.py covers the bar).
NO_BAR = ["--max-accuracy-drop", "none", "--tolerance", "none"]


def spec(name: str) -> str:
    """The factory spec of a tiny test model."""
    return f"{MODELS}:{name}"


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Invoke effkit in-process from a scratch folder; returns (exit code, stdout, stderr)."""
    from effkit.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    # 2-core CI: effkit processes that tests start run single-threaded, so they do not oversubscribe
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
