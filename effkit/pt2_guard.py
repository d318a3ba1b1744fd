"""Check a torch.export (.pt2) archive for anything torch would run, import or unpickle.

`torch.export.load` does not only read tensors and a graph. Strings from the archive's JSON go
through `sympy.sympify` (an `eval`), `exec` (guard code), `importlib.import_module` (enum and
defaultdict references in input/output specs), Python source that torch generates and `exec`s
for the module (node names, attribute paths, dict keys, string constants), and operator lookups
by name; some entries are unpickled. effkit calls `check_archive` before torch reads the file and
`check_example_inputs` before it builds the module, when the user did not pass --trust.

Each string is checked for the role torch gives it, in the shape torch's own deserialiser reads
the JSON (`torch._export.serde.schema`): expressions must be integer arithmetic over symbols,
operators must be torch's own, names must be identifiers, other strings plain text. Anything
else raises `UnsafeArchive`. torch is imported inside the functions, never by importing this.

Long because it follows the whole serialized schema in one place: every field torch turns into code
is checked next to the ones beside it, so a schema change shows up as one diff here.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import re
import types
import typing
import zipfile
from pathlib import Path
from typing import Any

RUNS = "and loading it would run code"


class UnsafeArchive(Exception):
    """What an archive holds that loading it would run; the message completes "ARCHIVE holds ..."."""


def uses_torchao(path: Path) -> bool:
    """Whether the archive's graph calls torchao's operators (which torch resolves once torchao is imported)."""
    with zipfile.ZipFile(path) as z:
        return any(b'"torch.ops.torchao.' in z.read(name) for name in z.namelist() if name.endswith(".json"))


def check_archive(path: Path) -> None:
    """Raise UnsafeArchive if torch.export.load(path) could run code from the archive.

    Both ways torch reads a .pt2 are checked: the archive format (through torch's own zip reader,
    so effkit sees the bytes torch will see) and the pre-2.7 layout torch falls back to with
    Python's zipfile. Raises ValueError/zipfile.BadZipFile/OSError for an unreadable file.
    """
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        _refuse_ambiguous_names(names)
        root = names[0].split("/", 1)[0] if names else ""
        if "version" in names and "serialized_exported_program.json" in names:
            check_exported_program(_json(z.read("serialized_exported_program.json")))
    reader = _torch_reader(path)
    if reader is None:  # torch cannot open it either, and goes to the older layout checked above
        return
    records = reader.get_all_records()
    _refuse_ambiguous_names(records)
    risky = []
    for record in records:
        name = record.lower()  # torch's zip reader finds entries regardless of case
        if name.startswith(_CODE_PREFIXES) or name in _PICKLED:
            risky.append(f"{root}/{record}")
        elif name.startswith("models/"):
            check_exported_program(_json(reader.get_record(record)))
        elif name.startswith(("data/weights/", "data/constants/")) and name.endswith("_config.json"):
            config = _json(reader.get_record(record))
            _check_value("PayloadConfig", config, "PayloadConfig")  # (its tensor sizes are not sympified)
            constants = name.startswith("data/constants/")
            risky += [f"{root}/{record}: {key}" for key, entry in config.get("config", {}).items()
                      if entry.get("use_pickle") or (constants and not str(entry.get("path_name")).startswith("tensor_"))]
    if risky:
        raise UnsafeArchive(f"pickled Python objects or compiled code ({risky[0]}), which would run when loaded")


def check_exported_program(doc: Any) -> None:
    """Raise UnsafeArchive unless a models/*.json document is safe to hand to torch's deserialiser."""
    _check_value("ExportedProgram", doc, "ExportedProgram")


def check_example_inputs(example_inputs: Any) -> None:
    """Raise UnsafeArchive if the example inputs' dict keys would break out of torch's guard code.

    torch writes each input's path (e.g. `L['x']['key']`) into the source of the guard function it
    builds with the module; a key with a double quote or backslash can end the string literal.
    """
    from torch.utils._pytree import keystr, tree_flatten_with_path

    for key_path, _ in tree_flatten_with_path(example_inputs)[0]:
        path = keystr(key_path)
        if not _is_plain_text(path.replace("'", "")):
            raise UnsafeArchive(f"example inputs with a key that would become Python source ({_show(path)}), "
                                "and running the model would run code")


# ---------------------------------------------------------------- archive entries

# Entries (below the archive's root folder) that torch unpickles with plain pickle or loads as
# native code, and the legacy pickled weight files.
_CODE_PREFIXES = ("data/aotinductor/", "data/constants/custom_obj_", "data/constants/opaque_obj_")
_PICKLED = ("data/weights/model.pt", "data/constants/model.pt")


def _refuse_ambiguous_names(names: list[str]) -> None:
    # torch's zip reader looks entries up without regard to case (and Python's zipfile keeps the
    # last of two equal names): two such entries let torch read one that effkit did not check.
    seen: dict[str, str] = {}
    for name in names:
        if name.lower() in seen:
            raise UnsafeArchive(f"two entries torch cannot tell apart ({_show(seen[name.lower()])} and {_show(name)}), "
                                "so effkit cannot check what torch would load")
        seen[name.lower()] = name


def _torch_reader(path: Path):
    import torch

    try:
        return torch._C.PyTorchFileReader(str(path))
    except RuntimeError:
        return None


def _json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def _show(text: str, limit: int = 60) -> str:
    """A string for the one-line error: quoted, escaped, cut."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# ---------------------------------------------------------------- the schema walk

# The role of each string field (by "Dataclass.field") and of each dict key; unlisted strings
# must be identifiers (they name graph values and become Python source), unlisted keys too.
_EXPRESSIONS = {"SymExpr.expr_str"}
_OPERATORS = {"Node.target", "Argument.as_operator"}
_TREESPECS = {"ModuleCallSignature.in_spec", "ModuleCallSignature.out_spec"}
_GUARDS = {"ExportedProgram.guards_code"}
_CUSTOM_OBJECTS = {"CustomObjArgument.class_fqn"}
# Stored as data (metadata: stack traces, module paths, JSON annotations) and never evaluated.
_FREE_TEXT = {"Node.metadata", "GraphModule.metadata"}
# Constants, attribute paths and lookup keys: torch puts them into generated source inside
# quotes, so quotes, backslashes and line breaks are what must not be there.
_PLAIN_TEXT = {
    "Argument.as_string", "Argument.as_strings", "ConstantValue.as_string", "ExportedProgram.torch_version",
    "ModuleCallEntry.fqn", "InputToParameterSpec.parameter_name", "InputToBufferSpec.buffer_name",
    "InputToTensorConstantSpec.tensor_constant_name", "InputToCustomObjSpec.custom_obj_name",
    "BufferMutationSpec.buffer_name", "ParameterMutationSpec.parameter_name",
    "GradientToParameterSpec.parameter_name", "GradientToUserInputSpec.user_input_name",
    "UserInputMutationSpec.user_input_name",
}
_PLAIN_TEXT_KEYS = {"Argument.as_string_to_argument", "ExportedProgram.range_constraints",
                    "GraphModule.treespec_namedtuple_fields", "PayloadConfig.config"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@functools.cache
def _schema():
    from torch._export.serde import schema

    return schema


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, globalns=vars(_schema()))


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _check_value(tp: Any, data: Any, field: str) -> None:
    """Walk `data` as torch's `_dict_to_dataclass(tp, data)` reads it, checking every string."""
    schema = _schema()
    if isinstance(tp, str):
        tp = getattr(schema, tp)
    elif isinstance(tp, typing.ForwardRef):
        tp = getattr(schema, tp.__forward_arg__)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _check_value(args[0], data, field)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if data is not None:
            _check_value(next(a for a in args if a is not type(None)), data, field)
        return
    if origin is list:
        _expect(isinstance(data, list), data, field)
        for item in data:
            _check_value(args[0], item, field)
        return
    if origin is dict:
        _expect(isinstance(data, dict), data, field)
        for key, value in data.items():
            if field in _PLAIN_TEXT_KEYS:
                _plain_text(key)
            elif field not in _FREE_TEXT:
                _identifier(key)
            _check_value(args[1], value, field)
        return
    if isinstance(tp, type) and issubclass(tp, schema._Union):
        _expect(isinstance(data, dict) and len(data) == 1, data, field)
        (tag, value), = data.items()
        _expect(tag in _field_names(tp), tag, field)
        return _check_value(_hints(tp)[tag], value, f"{tp.__name__}.{tag}")
    if dataclasses.is_dataclass(tp):
        _expect(isinstance(data, dict), data, field)
        for name in _field_names(tp):
            if name in data:  # torch ignores keys its schema does not know
                _check_value(_hints(tp)[name], data[name], f"{tp.__name__}.{name}")
        return
    if tp is str:
        _expect(isinstance(data, str), data, field)
        return _check_string(field, data)
    if tp is bool:
        return _expect(isinstance(data, bool), data, field)
    if tp is float:
        return _expect(isinstance(data, (int, float)), data, field)
    if tp is int or (isinstance(tp, type) and issubclass(tp, int)):
        return _expect(isinstance(data, int), data, field)
    raise UnsafeArchive(f"a model description effkit does not know how to check ({field}), {RUNS}")


def _expect(ok: bool, data: Any, field: str) -> None:
    if not ok:  # torch would not type-check it: a list where a string belongs reaches sympify as well
        raise UnsafeArchive(f"a model description that does not follow torch's schema ({field}: "
                            f"{_show(json.dumps(data))}), {RUNS}")


def _check_string(field: str, text: str) -> None:
    if field in _EXPRESSIONS:
        check_expression(text)
    elif field in _OPERATORS:
        check_operator(text)
    elif field in _TREESPECS:
        check_treespec(text)
    elif field in _GUARDS:
        check_guard(text)
    elif field in _CUSTOM_OBJECTS:
        raise UnsafeArchive(f"a custom (TorchScript) object of class {_show(text)}, which would run when loaded")
    elif field in _PLAIN_TEXT:
        _plain_text(text)
    elif field not in _FREE_TEXT:
        _identifier(text)


def _identifier(text: str) -> None:
    if not _IDENTIFIER.match(text):
        raise UnsafeArchive(f"a graph name that is not a plain identifier ({_show(text)}), {RUNS}")


def _is_plain_text(text: str) -> bool:
    return text.isprintable() and not any(c in text for c in "'\"\\")


def _plain_text(text: Any) -> None:
    if not isinstance(text, str) or not _is_plain_text(text):
        raise UnsafeArchive(f"a string with quotes, backslashes or control characters ({_show(str(text))}), {RUNS}")


# ---------------------------------------------------------------- shape expressions

# What torch itself writes (sympy's srepr of its shape expressions, or their str() in older
# files): calls of these classes, symbol names, integers and arithmetic operators.
_SYMPY_FUNCTIONS = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Mod", "Abs",
    "Equality", "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not",
    # torch.utils._sympy.functions, as torch's deserialiser names them
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
    "ToFloat", "Identity",
})
_SYMBOL_ASSUMPTIONS = frozenset({"integer", "positive", "nonnegative", "negative", "nonpositive", "real",
                                 "finite", "zero", "nonzero", "even", "odd", "rational", "commutative"})
_SYMBOL_NAME = re.compile(r"[a-z]+[0-9]+\Z")  # s0, u1, zuf0: what torch's ShapeEnv names symbols
_CONSTANT_NAMES = frozenset({"oo", "int_oo", "true", "false"})
_FLOAT_TEXT = re.compile(r"-?[0-9]+(\.[0-9]*)?(e[-+]?[0-9]+)?\Z")
# No quotes but ', no '#', '[' or line breaks: sympy tokenizes the text itself, and with these
# characters alone its reading and Python's ast agree.
_EXPRESSION_CHARS = re.compile(r"[A-Za-z0-9_ +\-*/%(),.'=<>!]*\Z")
_BIGGEST_INT = 2**63
_POWERS = frozenset({"Pow", "PowByNatural", "FloatPow"})
_ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_COMPARISONS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def check_expression(text: str) -> None:
    """Raise UnsafeArchive unless `text` is integer arithmetic over symbols, as torch writes it."""
    refused = UnsafeArchive(f"a shape expression that is not plain integer arithmetic ({_show(text)}), {RUNS}")
    if len(text) > 10_000 or not _EXPRESSION_CHARS.match(text):
        raise refused
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise refused from None
    if not _is_arithmetic(tree.body):
        raise refused


def _is_arithmetic(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return type(node.value) is int and abs(node.value) < _BIGGEST_INT
    if isinstance(node, ast.Name):
        return node.id in _CONSTANT_NAMES or bool(_SYMBOL_NAME.match(node.id))
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, (ast.USub, ast.UAdd)) and _is_arithmetic(node.operand)
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Pow) and not _has_symbol(node):
            return False
        return isinstance(node.op, _ARITHMETIC) and _is_arithmetic(node.left) and _is_arithmetic(node.right)
    if isinstance(node, ast.Compare):
        return (all(isinstance(op, _COMPARISONS) for op in node.ops)
                and all(_is_arithmetic(n) for n in (node.left, *node.comparators)))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SYMPY_FUNCTIONS:
        if node.func.id in _POWERS and not _has_symbol(node):
            return False
        if node.func.id == "Symbol":
            return (len(node.args) == 1 and _is_constant(node.args[0], str, _SYMBOL_NAME)
                    and all(k.arg in _SYMBOL_ASSUMPTIONS and _is_constant(k.value, bool) for k in node.keywords))
        if node.func.id == "Float":
            return (len(node.args) == 1 and _is_constant(node.args[0], str, _FLOAT_TEXT)
                    and all(k.arg == "precision" and _is_constant(k.value, int) for k in node.keywords))
        return not node.keywords and all(_is_arithmetic(a) for a in node.args)
    return False


def _has_symbol(node: ast.AST) -> bool:
    # sympy folds constant powers when it parses them (2**10**10 would take forever); torch never
    # writes one, as its expressions come out of sympy already folded.
    return any(isinstance(n, ast.Name) or (isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Symbol")
               for n in ast.walk(node))


def _is_constant(node: ast.AST, kind: type, pattern: re.Pattern | None = None) -> bool:
    return (isinstance(node, ast.Constant) and type(node.value) is kind
            and (pattern is None or bool(pattern.match(node.value))))


# ---------------------------------------------------------------- guard code

# torch.export records checks on the inputs as Python source, e.g.
# "L['y'].size()[0] == (1 + L['x'].size()[0])", and execs them when it builds the module.
_TENSOR_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_GUARD_FUNCTIONS = frozenset({"max", "min", "abs"})
_GUARD_MATH = frozenset({"floor", "ceil", "trunc", "sqrt"})


def check_guard(text: str) -> None:
    """Raise UnsafeArchive unless `text` only compares and computes with input sizes and numbers."""
    refused = UnsafeArchive(f"guard code that is not a plain check of input sizes ({_show(text)}), {RUNS}")
    if not text.isprintable() or '"' in text or "\\" in text:
        raise refused
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise refused from None
    if not _is_guard(tree.body):
        raise refused


def _is_guard(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float, bool)
    if isinstance(node, ast.Name):
        return node.id == "inf"
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)) and _is_guard(node.operand)
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, _ARITHMETIC) and _is_guard(node.left) and _is_guard(node.right)
    if isinstance(node, ast.BoolOp):
        return all(_is_guard(v) for v in node.values)
    if isinstance(node, ast.Compare):
        return (all(isinstance(op, _COMPARISONS) for op in node.ops)
                and all(_is_guard(n) for n in (node.left, *node.comparators)))
    if isinstance(node, ast.Subscript):
        return _is_input_source(node)
    if isinstance(node, ast.Call) and not node.keywords:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in _TENSOR_METHODS:
            return _is_input_source(node)
        called = ((isinstance(func, ast.Name) and func.id in _GUARD_FUNCTIONS)
                  or (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                      and func.value.id == "math" and func.attr in _GUARD_MATH))
        return called and all(_is_guard(a) for a in node.args)
    return False


def _is_input_source(node: ast.AST) -> bool:
    """L['x'], L['x'][0], L['x'].size()[1]: an input, reached by constant keys and size methods."""
    if isinstance(node, ast.Name):
        return node.id == "L"
    if isinstance(node, ast.Subscript):
        key = node.slice
        return (isinstance(key, ast.Constant) and (type(key.value) is int or
                                                   (type(key.value) is str and _is_plain_text(key.value)))
                and _is_input_source(node.value))
    if isinstance(node, ast.Call):
        func = node.func
        return (not node.args and not node.keywords and isinstance(func, ast.Attribute)
                and func.attr in _TENSOR_METHODS and _is_input_source(func.value))
    return False


# ---------------------------------------------------------------- operators

# torch resolves a node's target by walking attributes from `torch`, `operator` or `math`: any
# callable it reaches (torch.ops.import_module, torch.os.system) would be called by the module.
# torchao's operators (its int8/int4 models as effkit saves them) are fixed tensor functions too;
# torch finds them only once torchao is imported (`effkit.load` imports it for such an archive).
_OP_NAMESPACES = ("aten", "prims", "quantized", "quantized_decomposed", "torchao")
_OPERATOR = re.compile(
    r"torch\.ops\.(%s)\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z][A-Za-z0-9_]*)\Z" % "|".join(_OP_NAMESPACES))
_DUNDER_ATEN_OPS = frozenset({"__and__", "__or__", "__xor__", "__lshift__", "__rshift__",
                              "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__"})
_HIGHER_ORDER_OPS = frozenset({
    "cond", "while_loop", "map_impl", "scan", "associative_scan", "invoke_subgraph",
    "wrap_with_set_grad_enabled", "wrap_with_autocast", "auto_functionalized", "auto_functionalized_v2",
    "with_effects", "out_dtype", "flex_attention",
})
# The builtins and torch functions torch's export verifier allows in a graph
_PYTHON_OPERATORS = frozenset(
    {f"_operator.{name}" for name in (
        "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs",
        "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_", "lshift", "rshift")}
    | {f"math.{name}" for name in ("ceil", "floor", "trunc")}
    | {f"torch.{name}" for name in (
        "sym_int", "sym_float", "sym_ite", "sym_max", "sym_min", "sym_not", "sym_sqrt", "_sym_sqrt", "sym_sum")}
    | {"torch._C._set_grad_enabled", "torch.amp.autocast_mode._enter_autocast",
       "torch.amp.autocast_mode._exit_autocast"})


def check_operator(target: str) -> None:
    """Raise UnsafeArchive unless `target` names one of torch's own operators."""
    match = _OPERATOR.match(target)
    if match:
        op = match.group(2)
        if not op.startswith("__") or op in _DUNDER_ATEN_OPS:
            return
    if target.startswith("torch.ops.higher_order.") and target.split(".", 3)[3] in _HIGHER_ORDER_OPS:
        return
    if target in _PYTHON_OPERATORS:
        return
    raise UnsafeArchive(f"a call to {_show(target)}, which is not one of torch's own operators, {RUNS}")


# ---------------------------------------------------------------- input/output specs (pytree)

# Container types torch serialises in a module's input/output spec. Any other name is a type
# torch looks up by name (a registered class), and enums and defaultdict factories are imported.
_TREE_TYPES = frozenset({
    "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict", "collections.deque",
    "collections.namedtuple", "collections.defaultdict", "torch.Size",
    "torch.fx.immutable_collections.immutable_dict", "torch.fx.immutable_collections.immutable_list",
})
_DEFAULTDICT_FACTORIES = frozenset({"list", "dict", "set", "int", "float", "str", "tuple", "bool"})
# Enum types an input dict may be keyed by: only torch's own (an enum reference imports its module).
TORCH_ENUMS = frozenset({
    "torch.export.graph_signature:InputKind",
    "torch.export.graph_signature:OutputKind",
    "torch._export.serde.schema:ScalarType",
    "torch._export.serde.schema:Layout",
    "torch._export.serde.schema:MemoryFormat",
})


def check_treespec(text: str) -> None:
    """Raise UnsafeArchive unless an in_spec/out_spec names only plain containers and plain keys."""
    try:
        protocol, node = json.loads(text)
    except (ValueError, TypeError):
        raise UnsafeArchive(f"an input/output spec that is not valid JSON ({_show(text)}), {RUNS}") from None
    if protocol != 1:
        raise UnsafeArchive(f"an input/output spec of unknown protocol {_show(str(protocol))}, {RUNS}")
    _check_tree_node(node)


def _check_tree_node(node: Any) -> None:
    if not (isinstance(node, dict) and isinstance(node.get("children_spec"), list)):
        raise UnsafeArchive(f"an input/output spec torch would misread ({_show(json.dumps(node))}), {RUNS}")
    kind, context = node.get("type"), node.get("context")
    if kind is None:
        if context is not None or node["children_spec"]:
            raise UnsafeArchive(f"an input/output spec torch would misread ({_show(json.dumps(node))}), {RUNS}")
        return
    if kind not in _TREE_TYPES:
        raise UnsafeArchive(f"a reference to Python code torch would import or look up ({_show(str(kind))}), {RUNS}")
    if kind == "collections.defaultdict":
        if not (isinstance(context, dict) and context.get("default_factory_module") == "builtins"
                and context.get("default_factory_name") in _DEFAULTDICT_FACTORIES):
            factory = f"{context.get('default_factory_module')}.{context.get('default_factory_name')}" \
                if isinstance(context, dict) else json.dumps(context)
            raise UnsafeArchive(f"a reference to Python code torch would import ({_show(factory)}), {RUNS}")
        _check_context(context.get("dict_context"))
    elif kind == "collections.namedtuple":
        _plain_text(context)  # a registered type's name: looked up, not imported
    else:
        if not isinstance(context, str):
            raise UnsafeArchive(f"an input/output spec torch would misread ({_show(json.dumps(node))}), {RUNS}")
        try:
            _check_context(json.loads(context))
        except ValueError:
            raise UnsafeArchive(f"an input/output spec that is not valid JSON ({_show(context)}), {RUNS}") from None
    for child in node["children_spec"]:
        _check_tree_node(child)


def _check_context(data: Any) -> None:
    # torch parses contexts with a hook that imports any {"__enum__": ..., "fqn": "module:Class"}
    # at any depth; dict keys in contexts end up in generated source inside quotes.
    if isinstance(data, dict):
        if "__enum__" in data:
            fqn, name = data.get("fqn"), data.get("name")
            if fqn not in TORCH_ENUMS or not isinstance(name, str) or not _IDENTIFIER.match(name):
                raise UnsafeArchive(f"a reference to Python code torch would import ({_show(str(fqn))}), {RUNS}")
        for key, value in data.items():
            _plain_text(key)
            _check_context(value)
    elif isinstance(data, list):
        for item in data:
            _check_context(item)
    elif isinstance(data, str):
        _plain_text(data)
