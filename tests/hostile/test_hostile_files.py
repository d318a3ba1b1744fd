"""Your files are never damaged: not through an old output crafted to name other files, not through a
special file or a symlink at the output path, not by an output that is one of the command's inputs,
not by a full disk.

Each attack is first shown to be live (the path really leads to the victim, a rename really replaces
a special file), then shown to be stopped.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, TESTS, spec
from hostile_helpers import error_line

import hostile_files as hf

IS_INPUT = "is also an input of this command (write the result to another path)"


def _temp_leftovers(folder: Path) -> list[str]:
    """effkit's temporaries: `.NAME.XXXX.tmp.SUFFIX` files and `.effkit-XXXX` staging folders."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (".tmp" in p.name
                                                                                  or ".effkit-" in p.name))


def _last_line(stderr: str) -> str:
    """The Error line that ends a command which logs its progress (compress) before failing."""
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


def _locations(path: Path) -> list[str]:
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    proto = onnx.load(str(path), load_external_data=False)
    return [e.value for t in _get_all_tensors(proto) for e in t.external_data if e.key == "location"]


def _live_rename_replaces(path: Path) -> None:
    """Renaming a file over `path` (what an atomic write does) turns it into a regular file."""
    kind = stat.S_IFMT(os.lstat(path).st_mode)
    (path.parent / "tmp").write_text("x")
    os.replace(path.parent / "tmp", path)
    assert stat.S_IFMT(os.lstat(path).st_mode) != kind, "a rename did not replace it: the test would prove nothing"


# ---------------------------------------------------------------- data files an old ONNX output names

@pytest.fixture
def secret(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "secret.txt").write_text("the user's own file")
    return tmp_path / "precious" / "secret.txt"


def test_compress_export_keeps_files_an_old_output_names(cli, tmp_path, secret, monkeypatch):
    """The issue's command, over an old victim.onnx whose data locations are ../../precious/secret.txt
    and a data file named the way effkit names its own, which is the input model's data."""
    work = tmp_path / "work"
    (work / "exports").mkdir(parents=True)
    inputs_data = "victim.onnx.cccccccccccc.data"
    hf.onnx_conv_with_data(work / "src.onnx", f"exports/{inputs_data}")
    hf.onnx_naming(work / "exports" / "victim.onnx", ["../../precious/secret.txt", inputs_data])
    # live: cleaning up what the old graph names deletes the secret and the input's weights
    assert [(work / "exports" / n).resolve() for n in _locations(work / "exports" / "victim.onnx")] == [
        secret, (work / "exports" / inputs_data).resolve()]
    weights = (work / "exports" / inputs_data).read_bytes()
    monkeypatch.chdir(work)
    code, _, stderr = cli("compress", "src.onnx", "--quantize", "dynamic", "-o", "out", "--export-onnx",
                          "exports/victim.onnx", "--force", *FAST)
    assert code == 0, stderr
    assert secret.read_text() == "the user's own file"
    assert (work / "exports" / inputs_data).read_bytes() == weights
    # the premise: the float model (int8 convolutions are slower) was written with its own data file,
    # the writing path that cleans up the data files of the graph it replaces
    new_data = [n for n in os.listdir(work / "exports") if n.startswith("victim.onnx.") and n != inputs_data]
    assert _locations(work / "exports" / "victim.onnx") == new_data


def test_replacing_an_onnx_removes_only_effkits_own_unused_data_files(tmp_path, secret):
    """Of the files an old graph names, only effkit's own `NAME.onnx.<12 hex>.data` beside it that no
    other model in the folder names is removed."""
    from effkit.onnx_files import save_onnx_file

    work = tmp_path / "work"
    work.mkdir()
    hf.onnx_with_data(work / "src.onnx", "src.data")
    stale, shared = (f"victim.onnx.{c * 12}.data" for c in "ab")
    names = ["../precious/secret.txt", str(secret), "notes.txt", stale, shared]
    for name in ["notes.txt", stale, shared]:
        (work / name).write_text(name)
    hf.onnx_naming(work / "victim.onnx", names)
    hf.onnx_naming(work / "other.onnx", [shared])  # another model still uses this one
    assert (work / names[0]).resolve() == secret  # live: deleting what the old graph names hits the secret
    written = save_onnx_file(work / "src.onnx", work / "victim.onnx", force=True)
    assert secret.read_text() == "the user's own file"
    assert sorted(os.listdir(work)) == sorted(["src.onnx", "src.data", "victim.onnx", written[1].name, "notes.txt",
                                               shared, "other.onnx"])
    assert _locations(work / "victim.onnx") == [written[1].name]


def test_an_unchanged_output_keeps_its_data_file(tmp_path):
    """Writing the same model again names the same content-named data file: it is kept, not deleted."""
    from effkit.onnx_files import save_onnx_file

    hf.onnx_with_data(tmp_path / "src.onnx", "src.data")
    first = save_onnx_file(tmp_path / "src.onnx", tmp_path / "out.onnx", force=False)
    second = save_onnx_file(tmp_path / "src.onnx", tmp_path / "out.onnx", force=True)
    assert first == second and second[1].is_file()
    assert _locations(tmp_path / "out.onnx") == [second[1].name]


# ---------------------------------------------------------------- special files and symlinks

@pytest.fixture
def model(tmp_path):
    return hf.onnx_model(tmp_path / "m.onnx").name


def test_output_onto_a_fifo_is_written_into_it(cli, tmp_path, model):
    os.mkfifo(tmp_path / "spare")
    _live_rename_replaces(tmp_path / "spare")
    os.mkfifo(tmp_path / "pipe")
    reader = os.open(tmp_path / "pipe", os.O_RDONLY | os.O_NONBLOCK)  # a reader, so that writing does not wait
    try:
        code, _, stderr = cli("inspect", model, "--json", "pipe", "--force")
        assert code == 0, stderr
        os.set_blocking(reader, True)
        received = b"".join(iter(lambda: os.read(reader, 65536), b""))
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe").st_mode)
    assert json.loads(received)["schema"] == "effkit.inspect/1"
    assert _temp_leftovers(tmp_path) == []


def _device(path: Path, kind: int, major: int, minor: int) -> Path:
    """A device node made here (like /dev/null: 1, 3), or a skip where that is not permitted."""
    try:
        os.mknod(path, kind | 0o666, os.makedev(major, minor))
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot make a device node here: {e.strerror}")
    return path


def test_output_onto_a_character_device_stays_one(cli, tmp_path, model):
    null = _device(tmp_path / "null", stat.S_IFCHR, 1, 3)
    try:
        os.close(os.open(null, os.O_WRONLY))
    except OSError as e:  # a file system mounted nodev
        pytest.skip(f"device nodes cannot be opened here: {e.strerror}")
    before = os.lstat(null)
    code, _, stderr = cli("inspect", model, "--json", "null", "--force")
    assert code == 0, stderr
    after = os.lstat(null)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    _live_rename_replaces(null)  # what would have happened to it


def test_output_onto_a_block_device_is_refused(cli, tmp_path, model):
    _device(tmp_path / "disk", stat.S_IFBLK, 7, 0)
    code, _, stderr = cli("inspect", model, "--json", "disk", "--force")
    assert (code, error_line(stderr)) == (2, "Error: output disk is a block device (write to a regular file)")
    assert stat.S_ISBLK(os.lstat(tmp_path / "disk").st_mode)


def test_output_through_a_symlink_writes_its_target_and_keeps_the_link(cli, tmp_path, model):
    (tmp_path / "spare").symlink_to("nowhere")
    _live_rename_replaces(tmp_path / "spare")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "r.json").write_text("old")
    (tmp_path / "link.json").symlink_to("reports/r.json")
    code, _, stderr = cli("inspect", model, "--json", "link.json")
    assert (code, error_line(stderr)) == (2, "Error: link.json already exists (pass --force to overwrite it)")
    code, _, stderr = cli("inspect", model, "--json", "link.json", "--force")
    assert code == 0, stderr
    assert os.readlink(tmp_path / "link.json") == "reports/r.json"
    assert json.loads((tmp_path / "reports" / "r.json").read_text())["schema"] == "effkit.inspect/1"
    assert _temp_leftovers(tmp_path) == [] and _temp_leftovers(tmp_path / "reports") == []


def test_a_dangling_symlink_is_an_existing_output(cli, tmp_path, model):
    """Writing through it would create a file wherever it points: that needs --force like any output."""
    (tmp_path / "link.json").symlink_to("elsewhere.json")
    code, _, stderr = cli("inspect", model, "--json", "link.json")
    assert (code, error_line(stderr)) == (2, "Error: link.json already exists (pass --force to overwrite it)")
    assert not (tmp_path / "elsewhere.json").exists()


# ---------------------------------------------------------------- an output is never an input

@pytest.mark.parametrize("output", ["m.data", "sub/../m.data", "alias.data", "hardlink.json"])
def test_inspect_never_writes_over_the_models_files(cli, tmp_path, output):
    """m.data is the external data of m.onnx; the other names reach it (or m.onnx) another way."""
    hf.onnx_with_data(tmp_path / "m.onnx", "m.data")
    assert _locations(tmp_path / "m.onnx") == ["m.data"]  # live: the model reads m.data
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias.data").symlink_to("m.data")
    os.link(tmp_path / "m.onnx", tmp_path / "hardlink.json")
    before = {name: (tmp_path / name).read_bytes() for name in ("m.onnx", "m.data")}
    code, _, stderr = cli("inspect", "m.onnx", "--json", output, "--force")
    assert (code, error_line(stderr)) == (2, f"Error: output {output} {IS_INPUT}")
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def _fake_outdir(path: Path) -> Path:
    """What an earlier `effkit compress -o PATH` left (as far as --force checks): its reports and model."""
    path.mkdir()
    (path / "report.json").write_text(json.dumps({"schema": "effkit.compress/1"}))
    (path / "recipe.toml").write_text("[quantize]\nmethod = \"dynamic\"\n")
    hf.onnx_model(path / "model.onnx")
    return path


@pytest.mark.parametrize("read", ["model.onnx", "recipe.toml"])
def test_compress_never_replaces_an_outdir_that_holds_its_input(cli, tmp_path, read):
    from effkit.outdir import check_outdir

    out = _fake_outdir(tmp_path / "out")
    assert check_outdir(out, force=True) == out.resolve()  # live: --force would replace it whole
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    args = ["compress", "out/model.onnx", "--quantize", "dynamic"] if read == "model.onnx" else \
        ["compress", str(hf.onnx_model(tmp_path / "m.onnx")), "--recipe", "out/recipe.toml"]
    code, _, stderr = cli(*args, "-o", "out", "--force", *FAST)
    assert (code, error_line(stderr)) == (
        2, f"Error: output folder out holds {read}, an input of this command (write the result to another path)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_prune_never_writes_into_its_data_folder(cli, tmp_path):
    """A data folder is read whole: a report onto one of its files is refused (named once, so only
    the record of what was read catches it)."""
    (tmp_path / "data").mkdir()
    for i in range(4):
        np.save(tmp_path / "data" / f"{i}.npy", np.full(16, i, np.float32))
    before = (tmp_path / "data" / "0.npy").read_bytes()
    code, _, stderr = cli("prune", spec("mlp"), "--data", "data", "-o", "out.pt2", "--json", "data/0.npy", "--force",
                          *FAST)
    assert (code, error_line(stderr)) == (2, f"Error: output data/0.npy {IS_INPUT}")
    assert (tmp_path / "data" / "0.npy").read_bytes() == before
    assert not (tmp_path / "out.pt2").exists()


def test_distill_never_deletes_a_teacher_named_like_its_checkpoint(cli, tmp_path):
    import torch

    import models_distill
    from effkit.cli.distill_cmd import checkpoint_path

    torch.save(models_distill.teacher()[0].state_dict(), tmp_path / "out.pt2.ckpt")
    assert checkpoint_path(Path("out.pt2")) == Path("out.pt2.ckpt")  # live: a finished run deletes that path
    np.savez(tmp_path / "train.npz", x=np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    before = (tmp_path / "out.pt2.ckpt").read_bytes()
    models = TESTS / "models_distill.py"
    code, _, stderr = cli("distill", "out.pt2.ckpt", "--arch", f"{models}:teacher", "--student", f"{models}:student",
                          "--data", "train.npz", "--epochs", "1", "-o", "out.pt2", "--force", *FAST)
    assert (code, error_line(stderr)) == (2, f"Error: checkpoint out.pt2.ckpt {IS_INPUT}")
    assert (tmp_path / "out.pt2.ckpt").read_bytes() == before
    assert not (tmp_path / "out.pt2").exists()


# ---------------------------------------------------------------- a full disk

def _disk_fills(monkeypatch, on) -> None:
    """onnx.save_model writes half of the file, then the disk is full, for the paths `on(path)` picks."""
    import onnx

    real = onnx.save_model

    def save_model(proto, f, *args, **kwargs):
        if not on(Path(f)):
            return real(proto, f, *args, **kwargs)
        data = proto.SerializeToString()
        Path(f).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(onnx, "save_model", save_model)


def test_disk_full_gives_one_line_and_keeps_the_old_output(cli, tmp_path, monkeypatch):
    hf.onnx_model(tmp_path / "out.onnx")
    before = (tmp_path / "out.onnx").read_bytes()
    _disk_fills(monkeypatch, lambda path: True)
    code, _, stderr = cli("export", spec("mlp"), "-o", "out.onnx", "--force")
    assert (code, error_line(stderr)) == (
        2, "Error: no space left on the device to write out.onnx (free some space or write elsewhere)")
    assert (tmp_path / "out.onnx").read_bytes() == before
    assert _temp_leftovers(tmp_path) == []


def test_disk_full_leaves_no_orphan_data_file(cli, tmp_path, monkeypatch):
    """The data file goes in first; when the graph that names it cannot be written, it goes too."""
    hf.onnx_conv_with_data(tmp_path / "src.onnx", "src.data")
    hf.onnx_with_data(tmp_path / "old.onnx", "old.data")
    shutil.copy(tmp_path / "old.onnx", tmp_path / "model.onnx")
    before = sorted(os.listdir(tmp_path))
    # only the graph written beside the old model.onnx fails (not those compress stages for OUTDIR)
    _disk_fills(monkeypatch, lambda path: path.parent == tmp_path and path.name.startswith(".model.onnx."))
    code, _, stderr = cli("compress", "src.onnx", "--quantize", "dynamic", "-o", "out", "--export-onnx", "model.onnx",
                          "--force", *FAST)
    assert (code, _last_line(stderr)) == (
        2, "Error: no space left on the device to write model.onnx (free some space or write elsewhere)")
    assert sorted(os.listdir(tmp_path)) == sorted(before + ["out"])
    assert (tmp_path / "model.onnx").read_bytes() == (tmp_path / "old.onnx").read_bytes()
