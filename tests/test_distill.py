"""effkit distill: the student learns the teacher; resume, seeds and DDP reproduce a straight run;
bad input fails before anything is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST, NO_BAR, TESTS

from effkit.data import Data
from effkit.errors import InputError, UsageError
from effkit.load import load_model
from effkit.specs import parse_input_shape
from effkit.passes.distill import DistillConfig, distill
from effkit.passes.distill_checkpoint import Interrupted

MODELS = TESTS / "models_distill.py"
ROOT = TESTS.parent
VENV = ROOT / ".venv" / "bin"


def spec(name: str) -> str:
    return f"{MODELS}:{name}"


def _inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def teacher():
    return load_model(spec("teacher"))


@pytest.fixture(scope="module")
def data(teacher):
    """Training and validation data labelled by the teacher itself (so labels are learnable)."""
    def labelled(n, seed):
        x = _inputs(n, seed)
        with torch.no_grad():
            y = teacher.module(torch.from_numpy(x)).argmax(1).numpy()
        return Data((x,), y, f"data{seed}")
    return labelled(192, 1), labelled(96, 2)


@pytest.fixture
def files(tmp_path, data):
    train, val = data
    np.savez(tmp_path / "train.npz", x=train.inputs[0], labels=train.labels)
    np.savez(tmp_path / "val.npz", x=val.inputs[0], labels=val.labels)
    np.savez(tmp_path / "unlabelled.npz", x=train.inputs[0])
    return tmp_path


def student_model(teacher):
    """The untrained student, with the teacher's example inputs (`teacher` None: the bare module)."""
    from models_distill import student as build

    return build() if teacher is None else teacher.replace(module=build(), path=None, source="student")


def _agreement(a, b, x: np.ndarray) -> float:
    with torch.no_grad():
        xa = torch.from_numpy(x)
        return float((a.module.eval()(xa).argmax(1) == b.module.eval()(xa).argmax(1)).float().mean())


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


CONFIG = DistillConfig(epochs=6, batch_size=32, lr=2e-2, seed=3)


# ---------------------------------------------------------------- the engine


def test_student_agreement_with_teacher_rises(teacher, data):
    train, val = data
    student = student_model(teacher)
    before = _agreement(teacher, student, val.inputs[0])
    result = distill(teacher, student, CONFIG, data=Data(train.inputs, None, "t"), val_data=Data(val.inputs, None, "v"))
    after = _agreement(teacher, result.model, val.inputs[0])
    assert after >= 0.65 and after > before + 0.5, (before, after)
    history = result.details["history"]
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result.details["best_metric"] == "agreement"  # no labels: agreement with the teacher picks the epoch
    assert result.details["best_epoch"] == 1 + int(np.argmax([h["val_agreement"] for h in history]))
    assert result.details["samples_per_s"] > 0
    # the pass never changes its inputs
    assert _same_weights(student.module, student_model(teacher).module)


def test_labels_mix_in_cross_entropy_and_pick_by_accuracy(teacher, data):
    train, val = data
    result = distill(teacher, student_model(teacher), CONFIG, data=train, val_data=val)
    assert result.details["best_metric"] == "accuracy"
    assert max(h["val_accuracy"] for h in result.details["history"]) >= 0.65


def test_same_seed_same_weights_other_seed_other_weights(teacher, data):
    train, val = data
    one = distill(teacher, student_model(teacher), CONFIG, data=train, val_data=val).model
    two = distill(teacher, student_model(teacher), CONFIG, data=train, val_data=val).model
    other = distill(teacher, student_model(teacher), DistillConfig(**{**CONFIG.__dict__, "seed": 4}),
                    data=train, val_data=val).model
    assert _same_weights(one.module, two.module)
    assert not _same_weights(one.module, other.module)


@pytest.mark.parametrize("stop_at", [5, 12])  # mid-epoch, and right at the end of epoch 2 (6 steps per epoch)
def test_resume_after_interruption_gives_the_straight_run_weights(teacher, data, tmp_path, stop_at):
    train, val = data
    straight = distill(teacher, student_model(teacher), CONFIG, data=train, val_data=val)
    ckpt = tmp_path / "out.pt.ckpt"

    def interrupt(status):  # a real SIGINT, delivered at a known step
        if status.global_step == stop_at:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(Interrupted) as info:
        distill(teacher, student_model(teacher), CONFIG, data=train, val_data=val, on_step=interrupt, checkpoint=ckpt)
    assert info.value.exit_code == 130
    assert f"checkpoint written to {ckpt}" in str(info.value)
    assert ckpt.is_file() and [p.name for p in tmp_path.iterdir()] == ["out.pt.ckpt"]  # written atomically
    resumed = distill(teacher, student_model(teacher), CONFIG, data=train, val_data=val, checkpoint=ckpt, resume=True)
    assert _same_weights(straight.model.module, resumed.model.module)
    assert resumed.details["history"] == straight.details["history"]
    assert resumed.details["resumed_from"] == {"epoch": stop_at // 6 + 1, "step": stop_at % 6}


def test_resume_refuses_a_checkpoint_of_other_settings(teacher, data, tmp_path):
    train, val = data
    ckpt = tmp_path / "c.ckpt"
    with pytest.raises(Interrupted) as info:
        distill(teacher, student_model(teacher), CONFIG, data=train, val_data=val, checkpoint=ckpt,
                on_step=lambda s: signal.raise_signal(signal.SIGTERM))
    assert info.value.exit_code == 143  # SIGTERM's, as the CLI gives for it outside training
    with pytest.raises(UsageError, match="written by a run with other settings or data"):
        distill(teacher, student_model(teacher), DistillConfig(**{**CONFIG.__dict__, "lr": 0.5}), data=train,
                val_data=val, checkpoint=ckpt, resume=True)


def test_signal_handlers_are_restored(teacher, data, tmp_path):
    train, val = data
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    distill(teacher, student_model(teacher), DistillConfig(epochs=1), data=train, val_data=val,
            checkpoint=tmp_path / "c.ckpt")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert not (tmp_path / "c.ckpt").exists()  # nothing interrupted, nothing written


def test_feature_matching_and_mse_loss(teacher, data):
    from torch import nn

    train, val = data
    wide = teacher.replace(module=nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)))
    config = DistillConfig(epochs=2, loss="mse", feature_pairs=(("1", "1"),))  # both ReLUs give [N, 64]
    result = distill(teacher, wide, config, data=Data(train.inputs, None, "t"), val_data=Data(val.inputs, None, "v"))
    assert result.details["best_metric"] == "agreement"
    with pytest.raises(UsageError, match=r"the student has no layer 'nope' \(--feature-pairs\)"):
        distill(teacher, wide, DistillConfig(feature_pairs=(("nope", "1"),)), data=train, val_data=val)
    odd = teacher.replace(module=nn.Sequential(nn.Unflatten(1, (4, 4)), nn.Flatten(), nn.Linear(16, 4)))
    with pytest.raises(InputError, match=r"the student's feature '0' has shape \[N, 4, 4\], the teacher's '1' "
                                         r"\[N, 64\] \(pair layers whose outputs match but for the channels"):
        distill(teacher, odd, DistillConfig(feature_pairs=(("0", "1"),)), data=train, val_data=val)


def test_features_of_a_narrower_student_are_matched_through_a_learned_map(teacher, data):
    """Student ReLU [N, 16] against teacher ReLU [N, 64]: a 16->64 map trains along, then is dropped."""
    train, val = data
    student = student_model(teacher)
    config = DistillConfig(epochs=6, batch_size=32, lr=2e-2, seed=3, feature_pairs=(("1", "1"),), feature_weight=0.5)
    result = distill(teacher, student, config, data=train, val_data=val)
    trained = result.model.module
    assert trained.state_dict().keys() == student.module.state_dict().keys()  # the map is gone
    assert not any(m._forward_hooks for m in trained.modules())  # and so are the hooks
    plain = distill(teacher, student, CONFIG, data=train, val_data=val).model.module
    assert not _same_weights(trained, plain)  # the feature loss took part
    assert max(h["val_accuracy"] for h in result.details["history"]) >= 0.6


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 1.5}, "--alpha must lie in [0, 1], got 1.5"),
    ({"loss": "l1"}, "unknown --loss 'l1'"),
    ({"epochs": 0}, "--epochs must be at least 1, got 0"),
    ({"temperature": 0.0}, "--temperature must be positive, got 0.0"),
])
def test_config_is_validated(kwargs, message):
    with pytest.raises(UsageError) as info:
        DistillConfig(**kwargs)
    assert str(info.value).startswith(message)


# ---------------------------------------------------------------- the command


def test_cli_distills_saves_and_reports(cli, files):
    code, stdout, stderr = cli("distill", spec("teacher"), *NO_BAR, "--student", spec("student"), "--data", files / "train.npz",
                               "--val-data", files / "val.npz", "--epochs", "4", "--lr", "0.01", "-o", "s.pt2",
                               "--export-onnx", "s.onnx", *FAST, "--json", "-", "--markdown", "r.md")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["step"] == "distill" and result["outputs"] == ["s.pt2", "s.onnx"]
    assert Path("r.md").read_text().startswith(f"### effkit distill: `{spec('teacher')}`")
    assert result["accuracy"]["before"] == 1.0  # the labels are the teacher's own
    details = result["details"]
    assert result["accuracy"]["after"] == details["history"][details["best_epoch"] - 1]["val_accuracy"]
    # measured on all 96 validation samples, in batches of the model's example batch (2), as quantize judges
    assert (result["fidelity"]["rows"], result["fidelity"]["samples"]) == (96, 48)
    assert result["fidelity"]["inputs"] == str(files / "val.npz")
    assert "effkit distill" in stderr and "agrees with the teacher on" in " ".join(stderr.split())
    saved = load_model("s.pt2")  # loads back without code, any batch size
    x = torch.from_numpy(_inputs(5, 9))
    assert saved.module(x).shape == (5, 4)
    assert sorted(p.name for p in Path().iterdir() if p.suffix != ".npz") == ["r.md", "s.onnx", "s.pt2"]


def test_cli_val_split_and_state_dict_output(cli, files):
    code, stdout, stderr = cli("distill", spec("teacher"), *NO_BAR, "--student", spec("student"), "--data",
                               files / "unlabelled.npz", "--val-split", "0.25", "--epochs", "1", "-o", "s.pt",
                               *FAST, "--json", "r.json")
    assert code == 0, stderr
    result = json.loads(Path("r.json").read_text())
    assert result["details"]["train_samples"] == 144 and result["details"]["val_samples"] == 48
    assert result["accuracy"] is None  # no labels: agreement instead
    saved = load_model("s.pt", arch=spec("student_architecture"), input_shapes=[parse_input_shape("2x16")])
    assert saved.module(torch.zeros(2, 16)).shape == (2, 4)


def test_data_from_a_dataloader_factory(cli):
    code, stdout, stderr = cli("distill", spec("teacher"), *NO_BAR, "--student", spec("student"), "--data", spec("loader"),
                               "--val-split", "0.25", "--epochs", "1", "-o", "s.pt2", *FAST, "--json", "-")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert (result["details"]["train_samples"], result["details"]["val_samples"]) == (48, 16)
    assert result["accuracy"] is not None  # the labels came through


def test_onnx_teacher_is_measured_on_onnxruntime(cli, files, teacher):
    from effkit.export import export_onnx

    export_onnx(teacher, files / "teacher.onnx")
    code, stdout, stderr = cli("distill", files / "teacher.onnx", *NO_BAR, "--student", spec("student"), "--data",
                               files / "train.npz", "--val-data", files / "val.npz", "--epochs", "6", "--lr", "0.02",
                               "-o", "s.pt2", *FAST, "--json", "-")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert [r["runtime"] for r in result["after"]["runs"]] == ["onnxruntime"]
    assert result["fidelity"]["top1_agreement"] > 0.6  # it learned from the ONNX teacher's outputs


def test_student_from_prune_shrinks_the_teacher_then_distills(cli, files):
    code, stdout, stderr = cli("distill", spec("teacher"), *NO_BAR, "--student-from-prune", "0.5", "--data", files / "train.npz",
                               "--val-data", files / "val.npz", "--epochs", "2", "-o", "s.pt2", *FAST, "--json", "-")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["after"]["size"]["parameters"] < 0.5 * result["before"]["size"]["parameters"]
    assert result["details"]["prune"]["method"] == "structured"
    assert "student: the teacher with 50% of its channels pruned" in result["notes"]
    assert result["fidelity"]["top1_agreement"] > 0.5


@pytest.mark.parametrize("student", [[], ["--student", spec("student"), "--student-from-prune", "0.5"]])
def test_exactly_one_student_source(cli, files, student):
    code, _, stderr = cli("distill", spec("teacher"), *NO_BAR, *student, "--data", files / "train.npz", "-o", "s.pt2")
    assert code == 2
    assert stderr.strip() == ("Error: give exactly one of --student and --student-from-prune (--student SPEC trains "
                              "your model; --student-from-prune 0.5 prunes the teacher first)")


@pytest.mark.parametrize("case, message", [
    ("wrong_student", "Error: the student's output shape [N, 5] differs from the teacher's [N, 4] (the student "
                      "must have the teacher's outputs (same number of classes))"),
    ("wrong_input", "Error: {dir}/wide.npz: samples of input 'input' have shape [20], the model expects [16] "
                    "(reshape the data or give the model matching --input-shape)"),
    ("empty", "Error: {dir}/empty.npz holds no samples"),
    ("labels", "Error: {dir}/bad_labels.npz: labels run from 0 to 7, but the teacher has 4 classes (0 to 3) "
               "(fix the labels or give the matching teacher)"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(cli, files, case, message):
    np.savez(files / "wide.npz", x=np.zeros((8, 20), np.float32))
    np.savez(files / "empty.npz", x=np.zeros((0, 16), np.float32))
    np.savez(files / "bad_labels.npz", x=_inputs(8, 0), labels=np.arange(8))
    data = {"wrong_input": "wide.npz", "empty": "empty.npz", "labels": "bad_labels.npz"}.get(case, "train.npz")
    student = "wrong_student" if case == "wrong_student" else "student"
    before = sorted(files.iterdir())
    code, stdout, stderr = cli("distill", spec("teacher"), *NO_BAR, "--student", spec(student), "--data", files / data,
                               "--val-split", "0", "--epochs", "1", "-o", files / "out.pt2", *FAST)
    assert code == 2
    assert stderr.strip().splitlines() == [message.format(dir=files)]
    assert sorted(files.iterdir()) == before


def test_state_dict_student_needs_student_arch(cli, files):
    import models_distill

    torch.save(models_distill.student().state_dict(), files / "student.pt")
    args = ["distill", spec("teacher"), *NO_BAR, "--student", files / "student.pt", "--data", files / "train.npz",
            "--epochs", "1", "-o", files / "out.pt2", *FAST]
    code, _, stderr = cli(*args)
    assert code == 2
    assert stderr.strip() == (f"Error: student: {files}/student.pt holds weights only (a state_dict), not the model's "
                              "architecture (pass --student-arch path/to/file.py:factory (or package.module:factory) "
                              "that builds the model)")
    code, _, stderr = cli(*args, "--student-arch", spec("student_architecture"))
    assert code == 0, stderr


def test_leftover_checkpoint_needs_resume_or_force(cli, files):
    (files / "out.pt2.ckpt").write_bytes(b"not a checkpoint")
    code, _, stderr = cli("distill", spec("teacher"), *NO_BAR, "--student", spec("student"), "--data", files / "train.npz",
                          "-o", files / "out.pt2", *FAST)
    assert code == 2
    assert stderr.strip() == (f"Error: {files}/out.pt2.ckpt holds the checkpoint of an interrupted run (pass "
                              "--resume to continue it, or --force to start over)")
    code, _, stderr = cli("distill", spec("teacher"), *NO_BAR, "--student", spec("student"), "--data", files / "train.npz",
                          "-o", files / "out.pt2", "--resume", *FAST)
    assert code == 2
    assert stderr.strip().startswith(f"Error: {files}/out.pt2.ckpt is not a readable checkpoint")


def test_sigint_during_the_command_checkpoints_and_resume_matches_a_straight_run(cli, files):
    """A student that sends SIGINT to its own process at its 7th training step: the command writes OUT.ckpt
    and exits 130; the same command with --resume finishes with the weights of an uninterrupted run."""
    common = ["--data", files / "train.npz", "--val-data", files / "val.npz", "--epochs", "3", "--batch-size", "32",
              *FAST]
    code, _, stderr = cli("distill", spec("teacher"), *NO_BAR, "--student", spec("interrupting_student"), *common,
                          "-o", files / "cut.pt")
    assert code == 130, stderr
    assert stderr.strip() == (f"Error: interrupted at epoch 2, step 1 of 6; checkpoint written to {files}/cut.pt.ckpt "
                              "(run the same command with --resume to continue)")
    assert not (files / "cut.pt").exists()
    code, _, stderr = cli("distill", spec("teacher"), *NO_BAR, "--student", spec("student"), *common, "-o", files / "cut.pt",
                          "--resume")
    assert code == 0, stderr
    assert not (files / "cut.pt.ckpt").exists()
    code, _, stderr = cli("distill", spec("teacher"), *NO_BAR, "--student", spec("student"), *common,
                          "-o", files / "straight.pt")
    assert code == 0, stderr
    a, b = torch.load(files / "cut.pt"), torch.load(files / "straight.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- more than one process


def test_ddp_two_gloo_processes_match_one_process(tmp_path, files, teacher, data):
    """torchrun with 2 CPU processes (gloo) reaches the weights of one process with the same global batch."""
    from models_distill import plain_student

    two = subprocess.run([str(VENV / "torchrun"), "--nproc-per-node", "2", "--master-port", str(_free_port()),
                          "-m", "effkit", "distill", spec("teacher"), *NO_BAR, "--student", spec("plain_student"),
                          "--data", str(files / "train.npz"), "--val-data", str(files / "val.npz"), "--epochs", "2",
                          "--batch-size", "32", "--seed", "5", *FAST, "-o", str(tmp_path / "two.pt")],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("effkit distill") == 1  # only rank 0 prints
    train, val = data
    one = distill(teacher, teacher.replace(module=plain_student()), DistillConfig(epochs=2, batch_size=32, seed=5),
                  data=train, val_data=val).model.module.state_dict()
    ddp = torch.load(tmp_path / "two.pt")
    assert one.keys() == ddp.keys()
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], rtol=0, atol=1e-5)
    assert not torch.equal(ddp["0.weight"], plain_student()[0].weight)  # it did train


def test_two_nodes_on_one_machine_match_one_process(tmp_path, files, teacher, data):
    """A two-node torchrun job (one process per node, the nodes meeting at 127.0.0.1, as on a cluster)
    reaches the weights of one process: each rank reads its own share of every global batch."""
    from models_distill import plain_student

    port = str(_free_port())
    nodes = [subprocess.Popen([str(VENV / "torchrun"), "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node",
                               "1", "--master-addr", "127.0.0.1", "--master-port", port, "-m", "effkit", "distill",
                               spec("teacher"), *NO_BAR, "--student", spec("plain_student"),
                               "--data", str(files / "train.npz"), "--val-data", str(files / "val.npz"), "--epochs",
                               "2", "--batch-size", "32", "--seed", "5", *FAST, "-o", str(tmp_path / "nodes.pt")],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    results = [node.communicate(timeout=180) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], results
    assert results[0][0].count("effkit distill") == 1 and "effkit distill" not in results[1][0]  # global rank 0 only
    train, val = data
    one = distill(teacher, teacher.replace(module=plain_student()), DistillConfig(epochs=2, batch_size=32, seed=5),
                  data=train, val_data=val).model.module.state_dict()
    two = torch.load(tmp_path / "nodes.pt")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
