"""`--help` of every command reads at 80 columns: no cut-off words, metavars instead of Typer's types."""

from __future__ import annotations

import pytest

COMMANDS = ["bench", "inspect", "export", "quantize", "prune", "distill", "compress", "compare", "gate", "report"]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_fits_80_columns_with_plain_metavars(cli, monkeypatch, name):
    monkeypatch.setenv("COLUMNS", "80")
    code, stdout, _ = cli(name, "--help")
    assert code == 0
    assert max(len(line) for line in stdout.splitlines()) <= 80
    assert "…" not in stdout  # nothing cut off
    for typer_style in ("<str>", "<bool>", "<int>", "<path>", "{model}", "<list"):
        assert typer_style not in stdout, f"effkit {name} --help shows {typer_style}"
    assert "PATH" in stdout and ("--html" in stdout or name == "report")
