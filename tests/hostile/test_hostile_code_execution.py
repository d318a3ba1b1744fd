"""Files that would run code when opened: without --trust, nothing runs.

Every payload creates a marker file when unpickled or imported. Each test first proves that its
payload is live (the unguarded library call creates the marker), then that effkit runs nothing.
"""

from __future__ import annotations

import pickle
import sys
import warnings

import numpy as np
import pytest
from conftest import spec
from hostile_helpers import EXTRA_ARGS, error_line, model_commands

import hostile_files as hf

COMMANDS = model_commands()
PICKLE_REFUSED = ("holds pickled Python objects (e.g. a whole model), and unpickling runs code from the file "
                  "(re-run with --trust only if you trust its source, or save model.state_dict() and pass --arch)")
PT2_REFUSED = ("holds pickled Python objects, and unpickling runs code from the file "
               "(re-run with --trust only if you trust its source)")


@pytest.fixture(scope="module")
def pt2_good(tmp_path_factory):
    """An intact torch.export archive of Linear(4, 2) (exporting takes a second: built once)."""
    return hf.pt2_file(tmp_path_factory.mktemp("pt2") / "good.pt2")


def _live(load, marker) -> None:
    """The payload really runs when loaded without effkit's guards."""
    load()
    assert marker.exists(), "the crafted payload did not run: the test would prove nothing"
    marker.unlink()


def test_pickle_payload_proves_live(tmp_path):
    import torch

    marker = tmp_path / "ran"
    for legacy in (False, True):
        path = hf.payload_pt(tmp_path / f"evil{legacy}.pt", marker, legacy=legacy)
        _live(lambda: torch.load(path, weights_only=False), marker)
    path = hf.payload_plain_pickle(tmp_path / "evil.pth", marker)
    _live(lambda: pickle.loads(path.read_bytes()), marker)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickle_payload_runs_nothing_without_trust(cli, tmp_path, command, legacy):
    marker = tmp_path / "ran"
    hf.payload_pt(tmp_path / "evil.pt", marker, legacy=legacy)
    code, _, stderr = cli(command, "evil.pt", *EXTRA_ARGS[command])
    assert (code, error_line(stderr)) == (2, f"Error: evil.pt {PICKLE_REFUSED}")
    assert not marker.exists()


def test_bare_pickle_runs_nothing_and_says_only_that(cli, tmp_path):
    marker = tmp_path / "ran"
    hf.payload_plain_pickle(tmp_path / "evil.pth", marker)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, stderr = cli("inspect", "evil.pth")
    assert (code, error_line(stderr)) == (2, f"Error: evil.pth {PICKLE_REFUSED}")
    # torch warns about the pickle protocol; users would see it above the Error line
    assert [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)] == []
    assert not marker.exists()


def test_whole_pickled_model_needs_trust_and_loads_with_it(cli, tmp_path):
    hf.whole_model_pt(tmp_path / "whole.pt")
    code, _, stderr = cli("inspect", "whole.pt", "--input-shape", "1x4")
    assert (code, error_line(stderr)) == (2, f"Error: whole.pt {PICKLE_REFUSED}")
    code, stdout, stderr = cli("inspect", "whole.pt", "--input-shape", "1x4", "--trust", "--json", "-")
    assert code == 0, stderr
    assert '"parameters": 10' in stdout


@pytest.mark.parametrize("craft", [hf.pt2_payload_in_sample_inputs, hf.pt2_payload_in_opaque_constant],
                         ids=["sample-inputs", "opaque-constant"])
def test_pt2_payload_runs_nothing_without_trust(cli, tmp_path, pt2_good, craft):
    import torch

    from effkit.util import quiet_torch

    marker = tmp_path / "ran"
    evil = craft(pt2_good, tmp_path / "evil.pt2", marker)
    with quiet_torch():
        _live(lambda: torch.export.load(str(evil)), marker)
    for command in COMMANDS:
        code, _, stderr = cli(command, "evil.pt2", *EXTRA_ARGS[command])
        line = error_line(stderr)
        assert code == 2 and line.startswith("Error: evil.pt2 holds pickled Python objects"), line
        assert line.endswith("(re-run with --trust only if you trust its source)"), line
        assert not marker.exists()


def test_pt2_sample_inputs_payload_message(cli, tmp_path, pt2_good):
    hf.pt2_payload_in_sample_inputs(pt2_good, tmp_path / "evil.pt2", tmp_path / "ran")
    code, _, stderr = cli("inspect", "evil.pt2")
    assert (code, error_line(stderr)) == (2, f"Error: evil.pt2 {PT2_REFUSED}")


def test_pt2_opaque_constant_message(cli, tmp_path, pt2_good):
    hf.pt2_payload_in_opaque_constant(pt2_good, tmp_path / "evil.pt2", tmp_path / "ran")
    code, _, stderr = cli("inspect", "evil.pt2")
    assert (code, error_line(stderr)) == (
        2, "Error: evil.pt2 holds pickled Python objects or compiled code (good/data/constants/"
           "model_constants_config.json: evil), which would run when loaded "
           "(re-run with --trust only if you trust its source)")


def test_intact_pt2_loads_without_trust(cli, tmp_path, pt2_good):
    code, stdout, stderr = cli("inspect", str(pt2_good), "--json", "-")
    assert code == 0, stderr
    assert '"parameters": 10' in stdout


# ---------------------------------------------------------------- data files

def test_data_file_payload_runs_nothing(tmp_path):
    import torch

    from effkit.data import load_data
    from effkit.errors import InputError

    marker = tmp_path / "ran"
    path = tmp_path / "calib.pt"
    torch.save((torch.zeros(4, 4), [hf.Touch(marker)]), path)
    with pytest.raises(InputError) as info:
        load_data(str(path))
    assert str(info.value).startswith(f"{path} is not a readable tensor file (weights-only loading): ")
    assert not marker.exists()


def test_npz_with_pickled_objects_is_refused(tmp_path):
    from effkit.data import load_data
    from effkit.errors import InputError

    marker = tmp_path / "ran"
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((3, 4), np.float32), y=np.array([hf.Touch(marker)] * 3, dtype=object))
    with pytest.raises(InputError) as info:
        load_data(str(path))
    assert str(info.value) == (f"{path} is not a readable .npz file: Object arrays cannot be loaded when "
                               "allow_pickle=False")
    assert not marker.exists()


def test_inputs_npz_with_pickled_objects_is_refused(cli, tmp_path):
    marker = tmp_path / "ran"
    np.savez(tmp_path / "inputs.npz", x=np.array([hf.Touch(marker)], dtype=object))
    code, _, stderr = cli("inspect", spec("mlp"), "--inputs", "inputs.npz")
    assert (code, error_line(stderr)) == (
        2, "Error: inputs.npz is not a readable .npz file: Object arrays cannot be loaded when allow_pickle=False "
           "(the file may be truncated or corrupt; save or download it again)")
    assert not marker.exists()


# ---------------------------------------------------------------- Hugging Face folders

@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


def test_hf_remote_code_runs_nothing_without_trust(cli, tmp_path, transformers):
    marker = tmp_path / "ran"
    hf.hf_remote_code_folder(tmp_path / "evil", marker)
    for command in COMMANDS:
        for model in ("hf:evil", "evil"):
            code, _, stderr = cli(command, model, *EXTRA_ARGS[command])
            assert (code, error_line(stderr)) == (
                2, "Error: evil needs custom code from its folder (auto_map in config.json), which would run "
                   "(re-run with --trust only if you trust its source)")
    assert not marker.exists()
    assert not any("modeling_evil" in name for name in sys.modules)


def test_hf_pickled_weights_run_nothing(cli, tmp_path, transformers):
    marker = tmp_path / "ran"
    hf.hf_pickled_weights_folder(tmp_path / "bert", marker)
    code, _, stderr = cli("inspect", "hf:bert")
    assert code == 2, stderr
    assert error_line(stderr).startswith("Error: transformers could not load bert: ")
    assert not marker.exists()


def test_hf_tiny_model_loads_and_benches(cli, tmp_path, transformers):
    hf.hf_folder(tmp_path / "bert")
    code, stdout, stderr = cli("bench", "hf:bert", "--warmup", "1", "--iterations", "2", "--json", "-")
    assert code == 0, stderr
    assert '"schema": "effkit.bench/1"' in stdout


# ---------------------------------------------------------------- what --help says

@pytest.mark.parametrize("command", COMMANDS)
def test_help_says_factories_and_trust_run_code(cli, command):
    code, stdout, _ = cli(command, "--help")
    text = " ".join(stdout.split())  # Rich wraps the help; compare it as one line of words
    text = text.replace("│", " ")
    text = " ".join(text.split())
    assert code == 0
    assert "Factories are your own Python code and run as such." in text
    assert "--trust" in text and "this runs code from the file." in text
