"""effkit's modules form layers (written in effkit/__init__.py): an import points down or sideways, never up,
and there is no cycle. Every effkit import counts, at module level or inside a function; imports between
effkit modules are module-level (only heavy third-party packages are imported inside functions)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import effkit

PACKAGE = Path(effkit.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layers() -> list[list[str]]:
    """The layer table of effkit/__init__.py's docstring, lowest first: one line per layer."""
    doc = effkit.__doc__
    table = doc[doc.index("Layers"):].split("\n\n", 1)[1].split("\n\n", 1)[0]
    layers = []
    for line in table.strip().splitlines():
        names = line.split(":", 1)[1] if ":" in line else line
        layers.append([n.strip() for n in names.split(",") if n.strip()])
    return layers[::-1]  # the docstring lists the top first


def _layer_of(module: str, layers: list[list[str]]) -> int:
    """A module's layer: the entry naming it, or its package (`effkit.cli.bench_cmd` is in `cli`)."""
    short = module.removeprefix("effkit.") if module != "effkit" else "effkit"
    for i, names in enumerate(layers):
        for name in names:
            if short == name or short.startswith(name.rstrip("/") + "."):
                return i
    raise AssertionError(f"{module} is in no layer of effkit/__init__.py's docstring")


def _imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported effkit module, line, at module level) for every effkit import in the file."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    found = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base != "effkit" and not base.startswith("effkit."):
                continue
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append((target if target in _modules() else base, node.lineno, id(node) in top))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "effkit" or alias.name.startswith("effkit."):
                    found.append((alias.name, node.lineno, id(node) in top))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {t for t, _, _ in _imports(p, m) if t != m} for m, p in modules.items()}


def test_every_module_is_in_a_layer_and_imports_point_down():
    layers = _layers()
    problems = []
    for module, path in _modules().items():
        own = _layer_of(module, layers)
        for target, line, _ in _imports(path, module):
            if target == "effkit":  # the package root holds the version and a lazy map, nothing else
                continue
            if _layer_of(target, layers) > own:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {target}, a higher layer")
    assert not problems, "\n".join(problems)


def test_imports_between_effkit_modules_are_module_level():
    late = [f"{p.relative_to(PACKAGE.parent)}:{line}: {target}"
            for m, p in _modules().items() for target, line, top in _imports(p, m) if not top]
    assert not late, "\n".join(late)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_layer_checker_sees_an_upward_import(tmp_path):
    """The walk above would catch a lower module importing a higher one (here: errors importing cli)."""
    layers = _layers()
    assert _layer_of("effkit.errors", layers) < _layer_of("effkit.cli.bench_cmd", layers)
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from effkit.cli.common import app\n")
    assert _imports(fake, "effkit.errors") == [("effkit.cli.common", 2, False)]


def test_modules_are_short_or_say_why():
    long = []
    for module, path in _modules().items():
        text = path.read_text()
        if text.count("\n") > 450 and not re.search(r"^Long because ", ast.get_docstring(ast.parse(text)) or "", re.M):
            long.append(f"{module}: {text.count(chr(10))} lines")
    assert not long, "over 450 lines without a 'Long because ...' line in the docstring:\n" + "\n".join(long)
