"""The commands that change a model parse, build a config, make one library call and render: measuring
before/after, the speed verdict and saving live in `effkit.apply`, so no command does them itself (an
AST check, so that the seam cannot leak back)."""

from __future__ import annotations

import ast

import pytest

from test_layers import PACKAGE

# what a command leaves to effkit.apply.apply_step
FORBIDDEN = {"effkit.outcome.measure_before_after", "effkit.outcome.speed_verdict", "effkit.save.save_with_onnx",
             "effkit.save.save_model"}


def _imported(tree: ast.Module) -> set[str]:
    """Every `module.name` a file imports, and every module it imports whole."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


@pytest.mark.parametrize("command", ["quantize_cmd", "prune_cmd", "distill_cmd"])
def test_a_command_neither_measures_before_after_nor_saves(command):
    tree = ast.parse((PACKAGE / "cli" / f"{command}.py").read_text())
    imported = _imported(tree)
    assert not imported & FORBIDDEN, f"{command} imports {sorted(imported & FORBIDDEN)}"
    whole = imported & {"effkit.outcome", "effkit.save", "effkit"}
    assert not whole, f"{command} imports {sorted(whole)}, whose functions it could call by attribute"
    names = {node.id if isinstance(node, ast.Name) else node.attr for node in ast.walk(tree)
             if isinstance(node, (ast.Name, ast.Attribute))}
    used = names & {name.rsplit(".", 1)[1] for name in FORBIDDEN}
    assert not used, f"{command} uses {sorted(used)}"
    assert "effkit.apply.apply_step" in imported  # the one library call that does it all


def test_the_check_sees_a_leak():
    leaky = ast.parse("from effkit.outcome import measure_before_after\nimport effkit.save\n")
    assert _imported(leaky) == {"effkit.outcome.measure_before_after", "effkit.save"}
