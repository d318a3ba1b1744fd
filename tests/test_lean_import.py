"""`import effkit`, `effkit --help` and `effkit --version` must not import torch or onnxruntime."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "onnxruntime", "onnx", "transformers", "torch_pruning")

CHECK = """
import sys
{body}
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


def run(body: str) -> str:
    out = subprocess.run([sys.executable, "-c", CHECK.format(body=body, heavy=HEAVY)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_effkit_is_lean():
    assert run("import effkit; effkit.__version__").strip().endswith("HEAVY:")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["bench", "--help"], ["export", "--help"]])
def test_cli_help_and_version_are_lean(args):
    body = (f"sys.argv = ['effkit', *{args!r}]\n"
            "from effkit.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n")
    out = run(body)
    assert out.strip().splitlines()[-1] == "HEAVY:"
    assert ("effkit" in out) and (args != ["--version"] or "effkit 0.1.0" in out)
