"""The Python API: every public name resolves, and no submodule shadows a function of the same name."""

import subprocess
import sys

CHECK = """
import importlib, inspect
import effkit
for module in sorted(set(effkit._API.values())):  # submodules first: importing one sets effkit.<name>
    importlib.import_module(module)
for name, module in effkit._API.items():
    value = getattr(effkit, name)
    assert value is getattr(importlib.import_module(module), name), name
    assert (inspect.isclass(value) or inspect.isfunction(value)) and value.__doc__, name
print("ok")
"""


def test_public_names_survive_their_modules_being_imported_first():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
