"""torch.export (.pt2) archives whose strings torch turns into code: without --trust, nothing runs.

torch.export.load evaluates shape expressions with sympy.sympify, execs guard code, imports the
modules that enum and defaultdict references name, writes graph names and dict keys into Python
source that it execs, and finds zip entries regardless of case. Each test first shows its payload
running when torch opens the archive without effkit, then that effkit refuses the archive and
nothing runs. Every payload creates `ran` in the folder it runs in (hostile_files.TOUCH).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hostile_helpers import EXTRA_ARGS, error_line

import hostile_files as hf

ROOT = Path(__file__).resolve().parents[2]
HINT = "(re-run with --trust only if you trust its source)"
RUNS = "and loading it would run code"
SHOWN_TOUCH = "\"__import__('pathlib').Path('ran').touch()"


@pytest.fixture(scope="module")
def pt2_good(tmp_path_factory):
    """An intact torch.export archive of Linear(4, 2) (exporting takes a second: built once)."""
    return hf.pt2_file(tmp_path_factory.mktemp("pt2") / "good.pt2")


def _torch_opens(path: Path, inputs: tuple | None = None) -> None:
    """What a torch user does with an archive: load it, build the module, run it (on its examples)."""
    import torch

    from effkit.util import quiet_torch

    with quiet_torch():
        try:
            program = torch.export.load(str(path))
            args, kwargs = program.example_inputs if inputs is None else (inputs, {})
            program.module()(*args, **kwargs)
        except Exception:  # a crafted file may break once its payload ran: the marker tells
            pass


def _assert_ran(folder: Path) -> None:
    marker = folder / "ran"
    assert marker.exists(), "the crafted payload did not run: the test would prove nothing"
    marker.unlink()


# Each case: how to craft evil.pt2 from the intact archive, and what effkit says it holds.
CASES = {
    "shape-expression": (
        hf.pt2_payload_in_shape_expression,
        f"a shape expression that is not plain integer arithmetic ({SHOWN_TOUCH} or 1\"), {RUNS}"),
    "guards-code": (
        hf.pt2_payload_in_guards_code,
        f"guard code that is not a plain check of input sizes ({SHOWN_TOUCH} is None\"), {RUNS}"),
    "graph-name": (
        hf.pt2_payload_in_graph_name,
        f"a graph name that is not a plain identifier (\"input={SHOWN_TOUCH[1:]}\"), {RUNS}"),
    "case-twin": (
        hf.pt2_payload_behind_case_twin,
        "two entries torch cannot tell apart ('good/DATA/CONSTANTS/model_constants_config.json' and "
        "'good/data/constants/model_constants_config.json'), so effkit cannot check what torch would load"),
    "legacy-layout": (
        lambda good, dst: hf.pt2_legacy_payload_in_shape_expression(dst),
        f"a shape expression that is not plain integer arithmetic ({SHOWN_TOUCH} or 1\"), {RUNS}"),
    "example-input-key": (
        lambda good, dst: hf.pt2_payload_in_example_input_key(dst),
        "example inputs with a key that would become Python source "
        "('[0][0][\\'\"+str(__import__(\"pathlib\").Path(\"ran\").touch())+\"\\']'), "
        "and running the model would run code"),
}


@pytest.mark.parametrize("case", CASES)
def test_pt2_payload_runs_in_torch_and_nothing_runs_in_effkit(cli, tmp_path, pt2_good, case):
    craft, holds = CASES[case]
    evil = craft(pt2_good, tmp_path / "evil.pt2")  # `cli` works in tmp_path: payloads write ran there
    # the example-input case runs when the model is called with real inputs (its examples no longer fit)
    _torch_opens(evil, hf.dict_input_model()[1] if case == "example-input-key" else None)
    _assert_ran(tmp_path)
    for command in ("inspect", "bench"):
        code, _, stderr = cli(command, "evil.pt2", *EXTRA_ARGS[command])
        assert (code, error_line(stderr)) == (2, f"Error: evil.pt2 holds {holds} {HINT}")
        assert not (tmp_path / "ran").exists()


def _python(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("craft, named", [(hf.pt2_payload_in_enum_reference, "evil_keys:Key"),
                                          (hf.pt2_payload_in_defaultdict_factory, "evil_factory.make")],
                         ids=["enum", "defaultdict"])
def test_pt2_import_of_a_module_beside_it_runs_nothing(tmp_path, pt2_good, craft, named):
    craft(pt2_good, tmp_path / "evil.pt2")  # and the attacker's module beside it
    _python(["-c", "import torch; torch.export.load('evil.pt2')"], tmp_path)
    _assert_ran(tmp_path)
    # python -m puts the current folder first on sys.path: the module beside the model is importable
    result = _python(["-m", "effkit", "inspect", "evil.pt2"], tmp_path)
    assert (result.returncode, error_line(result.stderr)) == (
        2, f"Error: evil.pt2 holds a reference to Python code torch would import ('{named}'), {RUNS} {HINT}")
    assert not (tmp_path / "ran").exists()


# ---------------------------------------------------------------- legitimate archives still load

def test_dynamic_shape_archive_loads_and_runs_without_trust(cli, tmp_path):
    hf.pt2_dynamic(tmp_path / "dynamic.pt2")
    doc = hf.pt2_model_json(tmp_path / "dynamic.pt2")
    expressions = json.dumps(doc)
    # what the guard has to let through: guards, symbols, derived sizes, floor division
    assert doc["guards_code"] and "Symbol('s" in expressions and "FloorDiv(" in expressions
    assert any("+" in name for name in doc["range_constraints"])
    code, stdout, stderr = cli("bench", "dynamic.pt2", *EXTRA_ARGS["bench"], "--json", "-")
    assert code == 0, stderr
    assert '"schema": "effkit.bench/1"' in stdout


def test_archive_in_the_layout_before_torch_2_7_loads_without_trust(cli, tmp_path):
    hf.pt2_legacy(tmp_path / "old.pt2")
    code, stdout, stderr = cli("inspect", "old.pt2", "--json", "-")
    assert code == 0, stderr
    assert '"parameters": 10' in stdout


def test_example_inputs_with_plain_keys_pass():
    import torch

    from effkit.pt2_guard import check_example_inputs

    check_example_inputs(((torch.ones(1), {"x": torch.ones(1), 3: [torch.ones(1)]}), {"mask": torch.ones(1)}))


def test_trust_loads_an_archive_the_guard_refuses(cli, tmp_path, pt2_good):
    # a harmless expression the guard cannot vouch for (an attribute): with --trust, torch evaluates it
    def edit(doc):
        doc["graph_module"]["graph"]["tensor_values"]["input"]["sizes"][0] = {
            "as_expr": {"expr_str": "S.One", "hint": {"as_int": 1}}}
    hf._edit_pt2_model(pt2_good, tmp_path / "odd.pt2", edit)
    code, _, stderr = cli("inspect", "odd.pt2")
    assert code == 2 and "not plain integer arithmetic" in error_line(stderr)
    code, stdout, stderr = cli("inspect", "odd.pt2", "--trust", "--json", "-")
    assert code == 0, stderr


# ---------------------------------------------------------------- the checks, string by string

def _srepr_of_torch_expressions() -> list[str]:
    import sympy
    from sympy.printing.repr import srepr
    from torch.utils._sympy.functions import CeilToInt, FloorDiv, PythonMod
    from torch.utils._sympy.numbers import int_oo

    s, u = sympy.Symbol("s0", integer=True, positive=True), sympy.Symbol("u1", integer=True)
    return [srepr(e) for e in (2 * s + 1, FloorDiv(s, 2), PythonMod(s, 3), sympy.Max(s, u), sympy.Eq(s, 2),
                               s < 5, sympy.And(s > 2, u < 3), sympy.Ne(s, 1), s**2, sympy.Rational(1, 2) * s,
                               sympy.Float(1.5) * s, int_oo, -int_oo, CeilToInt(s / 3))]


def test_expressions_torch_writes_pass():
    from effkit.pt2_guard import check_expression

    for text in [*_srepr_of_torch_expressions(), "s0", "2*s0", "s0 + 1", "-s0 // 2", "s0 % 3 == 0", "true"]:
        check_expression(text)


@pytest.mark.parametrize("text", [
    "__import__('os').system('x')", "s0.__class__", "s0[0]", "(lambda: 1)()", "open('x')", "'s0'",
    "Symbol('__import__')", "Symbol('s0', evil=True)", "Float('1e5; import os')", "s0 # comment",
    "s0\n+1", "Integer(10)**Integer(10**10)", "sympify('s0')", "Max(s0, x)", "S.One", "[s0]", "s0 if s0 else 1",
    "1.5", "s0 and s1", "Function('f')(s0)",
])
def test_expressions_that_are_not_arithmetic_are_refused(text):
    from effkit.pt2_guard import UnsafeArchive, check_expression

    with pytest.raises(UnsafeArchive, match="not plain integer arithmetic"):
        check_expression(text)


def test_guard_code_torch_writes_passes(tmp_path):
    from effkit.pt2_guard import check_guard

    hf.pt2_dynamic(tmp_path / "dynamic.pt2")
    for text in [*hf.pt2_model_json(tmp_path / "dynamic.pt2")["guards_code"], "L['x'].size()[0] <= 64",
                 "2 <= L['x'].size()[0]", "L['flat_args'][0].stride()[1] == 3", "max(L['x'].size()[0], 2) == 4",
                 "math.floor(L['x'].size()[0] / 2) == 1 and not L['y'].size()[0] == 3"]:
        check_guard(text)


@pytest.mark.parametrize("text", [
    "__import__('os').system('x') is None", "L['x'].__class__", "L['x'].size.__self__", "getattr(L, 'x')",
    'L["x"].size()[0] == 1', "L['x'].item() == 1", "math.exp(1) > 2", "L['x'].size()[0] == eval('1')",
    "L['x\\n'].size()[0] == 1", "L[L['x']] == 1", "L", "(lambda: 1)() == 1",
])
def test_guard_code_that_is_not_a_size_check_is_refused(text):
    from effkit.pt2_guard import UnsafeArchive, check_guard

    with pytest.raises(UnsafeArchive, match="guard code that is not a plain check of input sizes"):
        check_guard(text)


@pytest.mark.parametrize("target", [
    "torch.ops.aten.linear.default", "torch.ops.aten.__and__.Tensor", "torch.ops.prims.convert_element_type.default",
    "torch.ops.higher_order.cond", "_operator.getitem", "math.trunc", "torch.sym_max", "torch._sym_sqrt",
])
def test_operators_torch_writes_pass(target):
    from effkit.pt2_guard import check_operator

    check_operator(target)


@pytest.mark.parametrize("target", [
    # callables torch would reach by walking attributes from `torch`, `operator` or `math`
    "torch.ops.import_module", "torch.ops.load_library", "torch.os.system", "torch.builtins.exec",
    "torchX.os.system", "torch.ops.aten.__class__.mro", "torch.ops.aten.add.__call__", "_operator.call",
    "torch.ops.higher_order.aoti_call_delegate", "torch.ops.custom_ns.op.default", "#custom:op", "math.exp",
    "torch.ops.aten.linear.default.overloads",
])
def test_other_operators_are_refused(target):
    from effkit.pt2_guard import UnsafeArchive, check_operator

    with pytest.raises(UnsafeArchive, match="which is not one of torch's own operators"):
        check_operator(target)


def _spec(node: dict) -> str:
    return json.dumps([1, node])


LEAF = {"type": None, "context": None, "children_spec": []}


def test_specs_of_plain_containers_pass():
    from effkit.pt2_guard import check_treespec

    check_treespec(_spec({"type": "builtins.dict", "context": json.dumps(["x", 3]), "children_spec": [LEAF, LEAF]}))
    check_treespec(_spec({"type": "collections.defaultdict", "children_spec": [LEAF], "context": {
        "default_factory_module": "builtins", "default_factory_name": "list", "dict_context": ["x"]}}))
    check_treespec(_spec({"type": "builtins.dict", "children_spec": [LEAF], "context": json.dumps(
        [{"__enum__": True, "fqn": "torch.export.graph_signature:InputKind", "name": "USER_INPUT"}])}))


@pytest.mark.parametrize("node", [
    {"type": "evil.Type", "context": "null", "children_spec": []},
    {"type": "builtins.dict", "context": json.dumps([{"__enum__": True, "fqn": "os:environ", "name": "A"}]),
     "children_spec": [LEAF]},
    {"type": "builtins.list", "context": json.dumps({"nested": {"__enum__": 1, "fqn": "evil:X"}}), "children_spec": []},
    {"type": "collections.defaultdict", "children_spec": [], "context": {
        "default_factory_module": "os", "default_factory_name": "system", "dict_context": []}},
    {"type": "builtins.dict", "context": json.dumps(["a'b"]), "children_spec": [LEAF]},
])
def test_specs_naming_code_or_quoting_keys_are_refused(node):
    from effkit.pt2_guard import UnsafeArchive, check_treespec

    with pytest.raises(UnsafeArchive):
        check_treespec(_spec(node))


def test_torch_enums_allowed_in_specs_are_torch_enums():
    import enum
    import importlib

    from effkit.pt2_guard import TORCH_ENUMS

    for fqn in TORCH_ENUMS:
        module, _, name = fqn.partition(":")
        assert module.startswith("torch.") and issubclass(getattr(importlib.import_module(module), name), enum.Enum)


@pytest.mark.parametrize("edit, holds", [
    (lambda doc: doc["graph_module"]["graph"]["nodes"][0].update(target="torch.ops.import_module"),
     "a call to 'torch.ops.import_module'"),
    (lambda doc: doc["graph_module"]["graph"]["nodes"][0].update(target=["torch.ops.aten.linear.default"]),
     "a model description that does not follow torch's schema (Node.target: "),
    (lambda doc: doc["graph_module"]["graph"]["tensor_values"]["input"]["sizes"].__setitem__(
        0, {"as_expr": {"expr_str": ["__import__('os')"]}}),
     "a model description that does not follow torch's schema (SymExpr.expr_str: "),
    (lambda doc: doc["graph_module"]["signature"]["input_specs"][0]["parameter"].update(parameter_name='0".weight'),
     "a string with quotes, backslashes or control characters"),
    (lambda doc: doc["graph_module"]["module_call_graph"][0]["signature"].update(forward_arg_names=["x=1"]),
     "a graph name that is not a plain identifier ('x=1')"),
])
def test_every_string_of_the_model_description_is_checked(pt2_good, edit, holds):
    from effkit.pt2_guard import UnsafeArchive, check_exported_program

    doc = hf.pt2_model_json(pt2_good)
    check_exported_program(doc)
    edit(doc)
    with pytest.raises(UnsafeArchive) as info:
        check_exported_program(doc)
    assert str(info.value).startswith(holds)
