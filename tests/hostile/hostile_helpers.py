"""What the hostile tests share: the commands that take a MODEL, and the one-line error check."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
HOSTILE_MODELS = HERE / "hostile_models.py"
BOUNDS_MODELS = HERE / "bounds_models.py"

# What each command that takes a MODEL needs besides it to reach loading (its required options, and
# any option without which it refuses to start). A command missing here is reported by a skipped
# test: add its arguments here to hold it to the same tests.
EXTRA_ARGS = {
    "bench": ["--warmup", "1", "--iterations", "2"],
    "inspect": [],
    "export": ["-o", "out.onnx"],
    "quantize": ["-o", "out.onnx", "--allow-slower", "--warmup", "1", "--iterations", "2"],
    "prune": ["-o", "out.pt2", "--warmup", "1", "--iterations", "2"],
    "compress": ["--prune", "0.5", "--tolerance", "none", "-o", "out", "--warmup", "1", "--iterations", "2"],
}


def hostile_spec(name: str) -> str:
    return f"{HOSTILE_MODELS}:{name}"


def bounds_spec(name: str) -> str:
    return f"{BOUNDS_MODELS}:{name}"


def _model_command_names() -> list[str]:
    import typer

    from effkit.cli import app

    group = typer.main.get_command(app)
    return sorted(name for name, command in group.commands.items()
                  if command.params and command.params[0].name == "model")


def model_commands() -> list[str]:
    """The registered commands whose first argument is MODEL and that EXTRA_ARGS covers."""
    return [name for name in _model_command_names() if name in EXTRA_ARGS]


def uncovered_model_commands() -> list[str]:
    """Commands that take a MODEL but are not in EXTRA_ARGS yet."""
    return [name for name in _model_command_names() if name not in EXTRA_ARGS]


def error_line(stderr: str) -> str:
    """The one line a user error prints: no traceback, no log noise, nothing else."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), stderr
    return lines[0]
