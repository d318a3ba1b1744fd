"""A pass from another package, registered through the `effkit.passes` entry-point group, runs in a compress
recipe like a built-in step. The package is a folder on PYTHONPATH with a *.dist-info holding its
entry_points.txt, which importlib.metadata finds without pip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import spec

ROOT = Path(__file__).parent.parent

TINY_PASS = textwrap.dedent('''
    """Scale the last Linear layer's bias: a pass effkit does not ship."""
    import copy
    from dataclasses import dataclass

    import torch

    from effkit.errors import UsageError
    from effkit.passes import PassResult


    def run(model, config, ctx):
        module = copy.deepcopy(model.module)
        name, last = [(n, m) for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.bias.mul_(config.factor)
        return PassResult(model.replace(module=module, path=None, format="derived"),
                          {"layer": name, "factor": config.factor}, [f"scaled {name}.bias by {config.factor:g}"])


    @dataclass(frozen=True)
    class ScaleBiasConfig:
        factor: float = 2.0

        def __post_init__(self):
            if self.factor <= 0:
                raise UsageError(f"factor must be positive, got {self.factor}")

        run = staticmethod(run)
''')


@pytest.fixture
def site(tmp_path):
    """A folder holding the package `tinypass` and its distribution metadata with the entry point."""
    folder = tmp_path / "site"
    (folder / "tinypass").mkdir(parents=True)
    (folder / "tinypass" / "__init__.py").write_text(TINY_PASS)
    info = folder / "tinypass-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinypass\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[effkit.passes]\nscale-bias = tinypass:ScaleBiasConfig\n")
    return folder


def _compress(tmp_path: Path, recipe: str, *paths: Path) -> subprocess.CompletedProcess:
    (tmp_path / "recipe.toml").write_text(recipe)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *map(str, paths)])}
    return subprocess.run([sys.executable, "-m", "effkit", "compress", spec("mlp"), "--recipe", "recipe.toml",
                           "-o", "out", "--json", "-"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


RECIPE = ("[scale-bias]\nfactor = 3.0\n[bench]\nwarmup = 1\niterations = 3\n"
          "[pipeline]\ntolerance = [\"none\"]\n")  # the pass changes the outputs on purpose: no fidelity bar


def test_a_registered_pass_runs_in_a_recipe(tmp_path, site):
    done = _compress(tmp_path, RECIPE, site)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["steps_run"] == ["scale-bias", "export"]
    step = report["steps"][0]
    assert step["details"] == {"layer": "4", "factor": 3.0} and step["notes"] == ["scaled 4.bias by 3"]
    assert "[scale-bias]\nfactor = 3.0" in (tmp_path / "out" / "recipe.toml").read_text()
    # the exported model is the scaled one: outputs move by exactly (factor - 1) x the bias
    from effkit.export import make_runner
    from effkit.load import load_model

    original = load_model(spec("mlp"))
    exported = load_model(str(tmp_path / "out" / "model.onnx"))
    x = original.example_inputs
    before = make_runner(original, "torch", 1).run(x)[0]
    after = make_runner(exported, "onnxruntime", 1).run(x)[0]
    bias = original.module[4].bias.detach().numpy()
    np.testing.assert_allclose(after - before, np.broadcast_to(2 * bias, before.shape), atol=1e-5)


def test_without_the_package_the_section_is_unknown(tmp_path, site):
    """What makes the recipe work is the entry point: without the folder on the path, [scale-bias] is refused."""
    done = _compress(tmp_path, RECIPE)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(
        "Error: recipe.toml line 1: unknown section [scale-bias] (sections are [prune], [distill], [quantize], ")


def test_a_registered_pass_validates_its_recipe_values(tmp_path, site):
    done = _compress(tmp_path, "[scale-bias]\nfactor = -1.0\n", site)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "Error: recipe.toml line 2: [scale-bias] factor must be positive, got -1.0"
