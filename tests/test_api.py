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


def test_help_texts_keep_their_brackets():
    """Rich reads "[...]" in Typer help as markup and drops it: help must write "(...)" or escape it."""
    import inspect
    import re
    import typing

    from effkit.cli import app

    unescaped = re.compile(r"(?<!\\)\[[a-z]")
    checked = 0
    for info in app.registered_commands:
        hints = typing.get_type_hints(inspect.unwrap(info.callback), include_extras=True)
        for name, hint in hints.items():
            for meta in typing.get_args(hint)[1:]:
                text = getattr(meta, "help", None) or ""
                checked += bool(text)
                assert not unescaped.search(text), f"{info.callback.__name__} {name}: {text}"
    assert checked > 100  # every command's options were read


def test_compare_takes_a_model_or_a_spec_loaded_with_plain_keywords(tmp_path):
    """effkit.compare loads a spec as the commands load MODEL, with the same options as keywords."""
    import torch

    import effkit
    from conftest import spec

    model = effkit.load_model(spec("mlp"))
    torch.save(model.module.state_dict(), tmp_path / "mlp.pt")
    result = effkit.compare(tmp_path / "mlp.pt", model, arch=spec("mlp_no_inputs"), input_shape="4x16",
                            iterations=2, pairs=2, warmup=0, threads=1)
    assert result.a["format"] != result.b["format"] and result.size["a"]["parameters"] == 1732
    assert [tuple(s["shape"]) for s in result.a["inputs"]] == [(4, 16)]  # A's inputs, which B ran on too
