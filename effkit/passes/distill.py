"""Knowledge distillation: train a (smaller) student to reproduce a teacher's outputs.

Loss per sample: KL divergence between the temperature-softened teacher and student outputs,
times T² (Hinton et al., 2015), or MSE for regression outputs; mixed with cross-entropy on the
labels when the data has them (`alpha` weighs the distillation part); plus optional MSE between
named intermediate features (through a learned linear map where the student's channel count
differs, as in FitNets). AdamW, linear warm-up then cosine decay, gradient clipping,
validation every epoch (accuracy with labels, else top-1 agreement with the teacher, else MSE
to the teacher), and the best epoch's weights kept.

Reproducibility is part of the contract:
- the sample order of epoch e is a permutation seeded by (seed, e), so no hidden RNG state
  decides it, and a resumed run sees the very batches a straight run would;
- with `checkpoint`, SIGINT / SIGTERM finish the current step, write a checkpoint atomically
  (weights, optimizer, schedule, RNG, position, history, best weights) and raise `Interrupted`;
  `resume=True` continues from it to the same final weights as an uninterrupted run;
- under torch.distributed (torchrun; the caller initializes the process group), the student
  is wrapped in DistributedDataParallel and every global batch is split across the ranks, with
  the loss scaled so the averaged gradient equals the single-process one: N processes reach
  the weights one process would (up to float summation order). BatchNorm statistics are
  per-rank, as usual with DDP.

The teacher's outputs (and features) are computed once per sample and cached: the teacher is
frozen and in eval mode, so this only saves time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from effkit.env import available_cores
from effkit.errors import EffkitError, InputError, UsageError, first_line
from effkit.export import make_runner
from effkit.files import check_not_read, reading
from effkit.limits import check_threads
from effkit.load import model_files
from effkit.passes import PassContext, PassResult
from effkit.passes.distill_training import (EVAL_BATCH, Features, LanguageModel, Training, TrainStatus, is_classifier,
                                            tensors_of, to_tensors)
from effkit.specs import check_numbers

LOSSES = ("kl", "mse")


@dataclass(frozen=True)
class DistillConfig:
    """How to distill. Validated on construction; every field has a CLI option of the same name."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the distillation loss; 1 - alpha goes to cross-entropy on labels
    loss: str = "kl"  # "kl" (classifier logits) or "mse" (regression outputs)
    feature_pairs: tuple[tuple[str, str], ...] = ()  # (student layer, teacher layer): outputs matched by MSE
    feature_weight: float = 1.0
    lr_warmup: float = 0.05  # fraction of all steps spent warming the learning rate up linearly
    grad_clip: float | None = 1.0  # max gradient norm; None turns clipping off
    seed: int = 0
    val_split: float = 0.1  # held out from `data` when no validation data is given; 0 = no validation

    def __post_init__(self) -> None:
        check_numbers(self)
        # pairs may come as lists or "student:teacher" strings (from a recipe file): keep tuples
        object.__setattr__(self, "feature_pairs", tuple(parse_feature_pair(p) if isinstance(p, str) else tuple(p)
                                                        for p in self.feature_pairs))
        if self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise UsageError(f"--weight-decay must not be negative, got {self.weight_decay}")
        if not self.temperature > 0:
            raise UsageError(f"--temperature must be positive, got {self.temperature}", "4 is a common choice")
        if not 0 <= self.alpha <= 1:
            raise UsageError(f"--alpha must lie in [0, 1], got {self.alpha}",
                             "it weighs the distillation loss; 1 - alpha goes to cross-entropy on the labels")
        if self.loss not in LOSSES:
            raise UsageError(f"unknown --loss {self.loss!r}", "use kl (classifiers) or mse (regression outputs)")
        if self.feature_weight < 0:
            raise UsageError(f"--feature-weight must not be negative, got {self.feature_weight}")
        if not 0 <= self.lr_warmup < 1:
            raise UsageError(f"--lr-warmup must lie in [0, 1), got {self.lr_warmup}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise UsageError(f"--grad-clip must be positive, got {self.grad_clip}")
        if not 0 <= self.val_split < 1:
            raise UsageError(f"--val-split must lie in [0, 1), got {self.val_split}")
        for pair in self.feature_pairs:
            if len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
                raise UsageError(f"bad feature pair {pair!r}", "write student.layer:teacher.layer")


def parse_feature_pair(text: str) -> tuple[str, str]:
    """`student.layer:teacher.layer` as a (student, teacher) pair of module names."""
    parts = text.split(":")
    if len(parts) != 2 or not all(parts):
        raise UsageError(f"bad --feature-pairs {text!r}", "write student.layer:teacher.layer, e.g. 2:2")
    return parts[0], parts[1]


# ---------------------------------------------------------------- checks before any work


def _shapes(outs: list) -> list[list]:
    return [list(o.shape) for o in outs]


def _check_inputs(teacher, student, config: DistillConfig, train, val) -> None:
    """Everything that can be wrong with the inputs, found before training starts."""
    if student.kind != "torch":
        raise UsageError(f"the student {student.source} is an ONNX model, which cannot be trained",
                         "give a torch student: a factory, a checkpoint with --student-arch, .pt2 ...")
    if config.feature_pairs and teacher.kind != "torch":
        raise UsageError("--feature-pairs needs a torch teacher; this one is ONNX")
    for data in (train, val):
        if data is not None:
            data.check_against(teacher)
            data.check_against(student)
    if not any(p.requires_grad for p in student.module.parameters()):
        raise UsageError(f"the student {student.source} has no trainable parameters",
                         "a loaded .pt2 or TorchScript student may be frozen; give a factory or a checkpoint")


def _check_outputs(teacher_outs: list, student_outs: list, config: DistillConfig, datasets) -> None:
    """The student must produce what the teacher produces; labels must name the teacher's classes."""
    ts, ss = _shapes(teacher_outs), _shapes(student_outs)
    if len(ts) != len(ss) or any(a[1:] != b[1:] for a, b in zip(ts, ss)):
        fmt = lambda shapes: ", ".join(_fmt_shape(s) for s in shapes)  # noqa: E731
        raise InputError(f"the student's output shape {fmt(ss)} differs from the teacher's {fmt(ts)}",
                         "the student must have the teacher's outputs (same number of classes)")
    if config.loss == "kl" and any(len(s) < 2 for s in ts):
        raise UsageError(f"--loss kl needs outputs with classes along dim 1; the teacher's are {_fmt_list(ts)}",
                         "use --loss mse for regression outputs")
    for data in datasets:
        if data is None or data.labels is None:
            continue
        if not is_classifier(tuple(ts[0])):
            raise InputError(f"{data.source} has labels, but the teacher's first output {_fmt_list(ts[:1])} is not "
                             "[batch, classes]", "drop the labels, or distill a classifier")
        classes = ts[0][1]
        low, high = int(data.labels.min()), int(data.labels.max())
        if low < 0 or high >= classes:
            raise InputError(f"{data.source}: labels run from {low} to {high}, but the teacher has {classes} classes "
                             f"(0 to {classes - 1})", "fix the labels or give the matching teacher")


def _fmt_list(shapes: list[list]) -> str:
    return ", ".join(str(s) for s in shapes)


def _fmt_shape(shape) -> str:
    """A per-sample shape with the batch dimension shown as N: [N, 10]."""
    return "[" + ", ".join(["N", *map(str, list(shape)[1:])]) + "]"


# ---------------------------------------------------------------- teacher targets

def _teacher_outputs(teacher, data, feature_names: list[str], device) -> tuple[list, list]:
    """The teacher's outputs and recorded features for every sample, as tensors on `device`."""
    import torch

    outs: list[list] = []
    feats: list[list] = []
    if teacher.kind == "torch":
        module = teacher.module
        hooks = Features(module, feature_names, "teacher") if feature_names else None
        try:
            with torch.no_grad():
                for inputs, _ in data.batches(EVAL_BATCH):
                    outs.append([o.detach() for o in tensors_of(module(*to_tensors(inputs, device)))])
                    feats.append([f.detach() for f in hooks.take()] if hooks else [])
        finally:
            if hooks:
                hooks.remove()
    else:
        runner = make_runner(teacher, "onnxruntime")
        for inputs, _ in data.batches(EVAL_BATCH):
            outs.append([torch.from_numpy(o).to(device) for o in runner.run(inputs)])
            feats.append([])
    cat = lambda parts: [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]  # noqa: E731
    return cat(outs), cat(feats) if feature_names else []


def _language_model(teacher, student, config: DistillConfig, train, val) -> LanguageModel | None:
    """For a causal language model (student and teacher): the live teacher and the attention mask's
    position among the inputs; None for other models."""
    if not (student.meta.get("causal_lm") and teacher.meta.get("causal_lm")):
        return None
    if config.feature_pairs:
        raise UsageError("--feature-pairs do not apply to a language model", "drop them: its logits are matched")
    if any(d is not None and d.labels is not None for d in (train, val)):
        raise UsageError(f"{train.source} has labels, but a language model is distilled on its teacher's "
                         "next-token distributions", "give text without a label field")
    names = list(student.input_names)
    module = teacher.module if teacher.kind == "torch" else make_runner(teacher, "onnxruntime")
    return LanguageModel(module, names.index("attention_mask") if "attention_mask" in names else None)


def _device():
    """CUDA (this process's LOCAL_RANK device under torchrun) when available, else the CPU."""
    import os

    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# ---------------------------------------------------------------- the pass

def distill(teacher, student, config: DistillConfig, *, data, val_data=None,
            progress: Callable[[str, float], None] | None = None,
            on_step: Callable[[TrainStatus], None] | None = None,
            checkpoint: str | Path | None = None, resume: bool = False, threads: int | None = None) -> PassResult:
    """Train a copy of `student` to match `teacher` on `data`; return it with the training record.

    teacher: a torch or ONNX Model; student: a torch Model whose outputs have the teacher's shapes.
    data / val_data: `effkit.data.Data` (labels optional); without val_data, `config.val_split`
    of `data` is held out. progress(label, fraction) and on_step(TrainStatus) report progress.
    checkpoint: where SIGINT / SIGTERM write a checkpoint (then `Interrupted` is raised);
    resume=True continues from it (to the very weights of a straight run, on CPU). Neither model
    is modified. Under an initialized torch.distributed group, trains with
    DistributedDataParallel (see the module docstring). threads: torch CPU threads while training
    (default: OMP_NUM_THREADS, else the cores shared among this machine's processes; restored after).
    PassResult.details: per-epoch history, best epoch, samples/s, sizes of the data sets.
    """
    import torch

    check_threads(threads)

    if val_data is None and config.val_split > 0:
        train, val = data.split(config.val_split, seed=config.seed)
    else:
        train, val = data, val_data
    _check_inputs(teacher, student, config, train, val)
    if checkpoint is not None:  # it is written on a signal: never over a file this run reads
        with reading(*model_files(teacher), *model_files(student)):
            check_not_read(checkpoint, "checkpoint")
    device = _device()
    if teacher.kind == "torch":  # a private copy: the caller's teacher is neither moved nor hooked
        teacher = teacher.replace(module=copy.deepcopy(teacher.module).to(device).eval())
    module = copy.deepcopy(student.module).to(device)
    features = Features(module, [s for s, _ in config.feature_pairs], "student") if config.feature_pairs else None
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or _default_threads())
    try:
        language = _language_model(teacher, student, config, train, val)
        if language is not None:  # the teacher runs on each batch: its logits over the text would not fit
            targets = language.targets(to_tensors(train.take(2).inputs, device))
            teacher_val = None
        else:
            targets = _teacher_outputs(teacher, train, [t for _, t in config.feature_pairs], device)
            teacher_val = _teacher_outputs(teacher, val, [], device)[0] if val is not None else None
        channels = _check_student(module, features, targets, config, train, val, device)
        run = Training(module, features, channels, config, train, targets, val, teacher_val, device,
                        Path(checkpoint) if checkpoint is not None else None, language)
        if resume:
            run.resume()
        run.train(progress, on_step)
    finally:
        torch.set_num_threads(previous_threads)
        if features:
            features.remove()

    if run.best["state"] is not None:
        module.load_state_dict(run.best["state"])
    module.eval().cpu()
    trained = student.replace(module=module, path=None, format="derived")
    return PassResult(trained, run.details(data, val_data), run.notes())


def run(student, config: DistillConfig, ctx: PassContext) -> PassResult:
    """The pass interface: train `student` towards `ctx.teacher` on `ctx.data`."""
    if ctx.teacher is None:
        raise UsageError("distill needs a teacher", "give the model to learn from (compress uses the original)")
    if ctx.data is None:
        raise UsageError("distill needs training data", "pass --data FILE")
    return distill(ctx.teacher, student, config, data=ctx.data, progress=ctx.progress, threads=ctx.threads)


def validation_notes(judged, fidelity: dict | None, chose_epoch: bool) -> list[str]:
    """What the before/after record of a distilled student says about the data it was judged on (--eval,
    else the validation data, which also chose the best epoch: `chose_epoch`): how many samples, and how
    often the student agrees with the teacher there (classifiers)."""
    if judged is None:
        return []
    agreement = (fidelity or {}).get("top1_agreement")
    notes = [f"fidelity measured on the {len(judged)} {'validation' if chose_epoch else '--eval'} samples"
             + (f"; the student agrees with the teacher on {100 * agreement:.2f}% of them (top-1)"
                if agreement is not None else "")]
    if chose_epoch:
        notes.append("these samples also chose the best epoch, so the figures lean optimistic; pass --eval DATA to "
                     "judge on samples the run never used")
    return notes


def _default_threads() -> int:
    """OMP_NUM_THREADS when set (torchrun sets it to 1 per process), else this process's cores shared
    among the processes on this machine. Read from the environment because loading and measuring
    models resets torch's own thread count."""
    import os

    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def _check_student(module, features, targets, config: DistillConfig, train, val, device) -> list[tuple[int, int]]:
    """Run the student on two samples: its outputs must fit the teacher's, the labels its classes, and its
    features the teacher's but for the channels (dim 1). Returns (student, teacher) channels per feature pair."""
    import torch

    teacher_outs, teacher_feats = targets
    module.eval()
    with torch.no_grad():
        try:
            student_outs = tensors_of(module(*to_tensors(train.take(2).inputs, device)))
        except EffkitError:
            raise
        except Exception as e:
            raise InputError(f"the student failed on the data: {first_line(e)}") from e
    _check_outputs([o[:2] for o in teacher_outs], student_outs, config, (train, val))
    channels = []
    for (s_name, t_name), s, t in zip(config.feature_pairs, features.take() if features else [], teacher_feats):
        if s.dim() < 2 or s.dim() != t.dim() or s.shape[2:] != t.shape[2:]:
            raise InputError(f"the student's feature {s_name!r} has shape {_fmt_shape(s.shape)}, the teacher's "
                             f"{t_name!r} {_fmt_shape(t.shape)}",
                             "pair layers whose outputs match but for the channels (dim 1)")
        channels.append((s.shape[1], t.shape[1]))
    return channels


