"""Factory specs (`path/to/file.py:function`, `package.module:function`): recognize and import them.

Shared by model loading (MODEL and --arch) and data loading (DATA factories).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from effkit.errors import EffkitError, ModelLoadError
from effkit.files import mark_read


_FACTORY_RE = re.compile(r"(?P<target>.+):(?P<func>[A-Za-z_][A-Za-z0-9_]*)")
_DOTTED_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def is_factory_spec(spec: str) -> bool:
    """True for `path/to/file.py:function` and `package.module:function`."""
    m = _FACTORY_RE.fullmatch(spec)
    return bool(m) and (m["target"].endswith(".py") or bool(_DOTTED_RE.fullmatch(m["target"])))


def resolve_factory(spec: str) -> Any:
    """Import the callable named by a factory spec. This runs the user's own code, by design."""
    m = _FACTORY_RE.fullmatch(spec)
    if not m:
        raise ModelLoadError(f"{spec!r} is not a factory spec", "write path/to/file.py:function or package.module:function")
    target, name = m["target"], m["func"]
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ModelLoadError(f"no such file: {target}", "check the path before the ':'")
            mod_name = f"effkit_user_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_name] = module
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(target)
        if getattr(module, "__file__", None):  # the user's code is an input: no output may replace it
            mark_read(module.__file__)
    except EffkitError:
        raise
    except ModuleNotFoundError as e:
        raise ModelLoadError(f"cannot import {target!r}: {e}", "check the module name, or give a path to a .py file") from e
    except Exception as e:  # the user's module failed while importing
        raise ModelLoadError(f"importing {target!r} raised {type(e).__name__}: {e}") from e
    func = getattr(module, name, None)
    if func is None or not callable(func):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:8]
        raise ModelLoadError(f"{target} has no function {name!r}",
                             f"functions there: {', '.join(found) or 'none'}")
    return func
