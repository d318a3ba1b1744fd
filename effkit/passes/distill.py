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
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effkit.errors import EffkitError, InputError, StepFailed, UsageError, first_line
from effkit.passes import PassResult
from effkit.specs import check_numbers

CHECKPOINT_FORMAT = "effkit.distill-checkpoint/1"
LOSSES = ("kl", "mse")
EVAL_BATCH = 256


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


class Interrupted(EffkitError):
    """Training stopped on SIGINT / SIGTERM after writing a checkpoint. Exit code 130."""

    exit_code = 130


@dataclass
class TrainStatus:
    """Where training stands, given to `on_step` after every optimizer step."""

    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based, within the epoch
    steps_per_epoch: int
    global_step: int
    total_steps: int
    loss: float  # mean per-sample loss of the epoch so far (this rank)
    samples_per_s: float  # training samples per second, all ranks together


# ---------------------------------------------------------------- distributed helpers

def _dist():
    """(rank, world size) of an initialized torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(values: list[float], world: int, device) -> list[float]:
    if world == 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------- outputs, features, losses

def _tensors(out: Any) -> list:
    """A model's output (tensor, tuple, list, dict) as a flat list of tensors, gradients kept."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _tensors(v)]
    raise InputError(f"the model returned a {type(out).__name__}", "return tensors, or a tuple/dict of tensors")


class _Features:
    """Forward hooks that record the outputs of named layers during one forward call."""

    def __init__(self, module: Any, names: list[str], who: str):
        layers = dict(module.named_modules())
        missing = [n for n in names if n not in layers]
        if missing:
            known = [n for n in layers if n][:12]
            raise UsageError(f"the {who} has no layer {missing[0]!r} (--feature-pairs)",
                             f"its layers: {', '.join(known)}{', ...' if len(layers) > 13 else ''}")
        self.values: dict[str, Any] = {}
        self.handles = [layers[n].register_forward_hook(self._hook(n)) for n in names]
        self.names = names

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.values[name] = _tensors(output)[0]
        return hook

    def take(self) -> list:
        values = [self.values.pop(n) for n in self.names]
        return values

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _per_sample_loss(student_outs: list, teacher_outs: list, labels, student_feats: list, teacher_feats: list,
                     config: DistillConfig):
    """The loss of every sample in the batch (a 1-D tensor), so that batches can be split across ranks."""
    import torch.nn.functional as F

    n = student_outs[0].shape[0]
    kd = 0.0
    for s, t in zip(student_outs, teacher_outs):
        if config.loss == "kl":  # classes along dim 1; averaged over any further positions (e.g. pixels)
            T = config.temperature
            log_s, log_t = F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1)
            kd = kd + (log_t.exp() * (log_t - log_s)).sum(1).reshape(n, -1).mean(1) * (T * T)
        else:
            kd = kd + ((s - t) ** 2).reshape(n, -1).mean(1)
    loss = kd
    if labels is not None:
        loss = config.alpha * kd + (1 - config.alpha) * F.cross_entropy(student_outs[0], labels, reduction="none")
    for s, t in zip(student_feats, teacher_feats):
        loss = loss + config.feature_weight * ((s - t) ** 2).reshape(n, -1).mean(1)
    return loss


# ---------------------------------------------------------------- checks before any work

def _is_classifier(shape: tuple) -> bool:
    return len(shape) == 2 and shape[1] > 1


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
        if not _is_classifier(tuple(ts[0])):
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
        hooks = _Features(module, feature_names, "teacher") if feature_names else None
        try:
            with torch.no_grad():
                for inputs, _ in data.batches(EVAL_BATCH):
                    outs.append([o.detach() for o in _tensors(module(*_to_tensors(inputs, device)))])
                    feats.append([f.detach() for f in hooks.take()] if hooks else [])
        finally:
            if hooks:
                hooks.remove()
    else:
        from effkit.runtime import make_runner

        runner = make_runner(teacher, "onnxruntime")
        for inputs, _ in data.batches(EVAL_BATCH):
            outs.append([torch.from_numpy(o).to(device) for o in runner.run(inputs)])
            feats.append([])
    cat = lambda parts: [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]  # noqa: E731
    return cat(outs), cat(feats) if feature_names else []


def _to_tensors(arrays, device) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays)


# ---------------------------------------------------------------- validation

def _validate(module, val, teacher_val: list, device) -> dict:
    """accuracy (with labels) and top-1 agreement with the teacher (classifiers), else MSE to the teacher."""
    import torch

    was_training = module.training
    module.eval()
    outs = []
    with torch.no_grad():
        for inputs, _ in val.batches(EVAL_BATCH):
            outs.append(_tensors(module(*_to_tensors(inputs, device)))[0])
    module.train(was_training)
    student = torch.cat(outs)
    teacher = teacher_val[0]
    metrics = {}
    if _is_classifier(tuple(teacher.shape)):
        pred = student.argmax(1)
        metrics["agreement"] = float((pred == teacher.argmax(1)).double().mean())
        if val.labels is not None:
            metrics["accuracy"] = float((pred.cpu().numpy() == val.labels).mean())
    else:
        metrics["mse"] = float(((student - teacher) ** 2).double().mean())
    return metrics


def _primary(metrics: dict) -> tuple[str, float]:
    """The metric that picks the best epoch, as (name, score to maximize)."""
    for name in ("accuracy", "agreement"):
        if name in metrics:
            return name, metrics[name]
    return "mse", -metrics["mse"]


# ---------------------------------------------------------------- schedule and checkpoints

def _schedule(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _batches_of_epoch(n: int, batch_size: int, seed: int, epoch: int, world: int) -> list[np.ndarray]:
    """The global batches of one epoch (a permutation seeded by (seed, epoch)). A final batch
    smaller than the number of processes is dropped, since every rank needs a sample."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(batches[-1]) < world:
        batches.pop()
    return batches


def _config_identity(config: DistillConfig) -> dict:
    return {k: list(map(list, v)) if k == "feature_pairs" else v for k, v in asdict(config).items()}


def _save_checkpoint(path: Path, state: dict) -> None:
    import torch

    from effkit.files import atomic_path

    with atomic_path(path, force=True) as tmp:
        torch.save(state, str(tmp))


def load_checkpoint(path: str | Path) -> dict:
    """Read a distillation checkpoint (weights-only loading: no code runs)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint to resume from at {path}", "run without --resume to start afresh")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path} is not a readable checkpoint: {first_line(e, 200)}",
                         "delete it and run without --resume") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not an effkit distill checkpoint")
    return state


class _StopSignal:
    """SIGINT / SIGTERM set a flag that the training loop checks after each step.
    A second SIGINT interrupts at once, for a user who does not want to wait."""

    def __init__(self, enabled: bool):
        self.requested = False
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous: dict = {}

    def __enter__(self) -> _StopSignal:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


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

    if val_data is None and config.val_split > 0:
        train, val = data.split(config.val_split, seed=config.seed)
    else:
        train, val = data, val_data
    _check_inputs(teacher, student, config, train, val)
    device = _device()
    if teacher.kind == "torch":  # a private copy: the caller's teacher is neither moved nor hooked
        teacher = teacher.replace(module=copy.deepcopy(teacher.module).to(device).eval())
    module = copy.deepcopy(student.module).to(device)
    features = _Features(module, [s for s, _ in config.feature_pairs], "student") if config.feature_pairs else None
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or _default_threads())
    try:
        targets = _teacher_outputs(teacher, train, [t for _, t in config.feature_pairs], device)
        channels = _check_student(module, features, targets, config, train, val, device)
        teacher_val = _teacher_outputs(teacher, val, [], device)[0] if val is not None else None
        run = _Training(module, features, channels, config, train, targets, val, teacher_val, device,
                        Path(checkpoint) if checkpoint is not None else None)
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


def _default_threads() -> int:
    """OMP_NUM_THREADS when set (torchrun sets it to 1 per process), else this process's cores shared
    among the processes on this machine. Read from the environment because loading and measuring
    models resets torch's own thread count."""
    import os

    from effkit.runtime import available_cores

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
            student_outs = _tensors(module(*_to_tensors(train.take(2).inputs, device)))
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


def _with_feature_maps(module, features: _Features, channels: list[tuple[int, int]]):
    """The student plus, per feature pair whose channels differ, a learned linear map from the student's
    channels to the teacher's (the FitNets regressor: a 1x1 convolution on feature maps), trained along
    with the student and dropped afterwards. forward returns (outputs, mapped features). One module,
    so that DistributedDataParallel keeps the maps in sync too."""
    import torch
    from torch import nn

    class FeatureStudent(nn.Module):
        def __init__(self):
            super().__init__()
            self.student = module
            self.maps = nn.ModuleList(nn.Identity() if cs == ct else nn.Linear(cs, ct, bias=False)
                                      for cs, ct in channels)

        def forward(self, *inputs):
            out = self.student(*inputs)
            mapped = [f if isinstance(m, nn.Identity) else torch.einsum("tc,nc...->nt...", m.weight, f)
                      for m, f in zip(self.maps, features.take())]
            return out, mapped

    return FeatureStudent()


class _Training:
    """The training loop and everything a checkpoint must carry to continue it exactly."""

    def __init__(self, module, features, channels, config: DistillConfig, train, targets, val, teacher_val, device,
                 checkpoint: Path | None):
        import random

        import torch

        self.rank, self.world = _dist()
        self.module, self.features, self.config, self.device = module, features, config, device
        self.train_data, (self.teacher_outs, self.teacher_feats) = train, targets
        self.val, self.teacher_val, self.checkpoint = val, teacher_val, checkpoint
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.steps_per_epoch = len(self.batches(0))
        if self.steps_per_epoch == 0:
            raise InputError(f"{train.source} holds {len(train)} training samples, fewer than the "
                             f"{self.world} processes")
        self.total_steps = self.steps_per_epoch * config.epochs
        warmup = int(round(config.lr_warmup * self.total_steps))
        # what trains: the student, with the maps of its features to the teacher's when matching features
        self.net = _with_feature_maps(module, features, channels).to(device) if features else module
        self.net.train()
        self.model = self.net
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.net, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda s: _schedule(s, self.total_steps, warmup))
        # where training stands: the next (epoch, step), this rank's [loss sum, samples] of the epoch so far
        self.epoch, self.step, self.sums = 0, 0, [0.0, 0.0]
        self.history: list[dict] = []
        self.best = {"epoch": None, "score": -math.inf, "state": None, "metric": None}
        self.trained_samples, self.train_seconds = 0, 0.0
        self.resumed_from = None

    def batches(self, epoch: int) -> list[np.ndarray]:
        return _batches_of_epoch(len(self.train_data), self.config.batch_size, self.config.seed, epoch, self.world)

    # ------------------------------------------------------------ checkpoints

    def save(self) -> None:
        """Write the checkpoint (rank 0), with every rank's RNG state."""
        import torch

        mine = (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None)
        rng_states = [mine]
        if self.world > 1:
            import torch.distributed as dist

            rng_states = [None] * self.world
            dist.all_gather_object(rng_states, mine)
        sums = _all_sum(self.sums, self.world, self.device)  # one record of the epoch so far, kept by rank 0
        if self.rank == 0:
            _save_checkpoint(self.checkpoint, {
                "format": CHECKPOINT_FORMAT, "config": _config_identity(self.config),
                "samples": len(self.train_data), "world": self.world, "student": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rng_states, "epoch": self.epoch, "step": self.step, "sums": sums, "history": self.history,
                "best": self.best, "trained_samples": self.trained_samples, "train_seconds": self.train_seconds})

    def resume(self) -> None:
        """Continue from the checkpoint, refusing one written with other settings, data or process count."""
        import torch

        if self.checkpoint is None:
            raise UsageError("resuming needs the checkpoint path")
        state = load_checkpoint(self.checkpoint)
        if (state["config"] != _config_identity(self.config) or state["samples"] != len(self.train_data)
                or state["world"] != self.world):
            raise UsageError(f"{self.checkpoint} was written by a run with other settings or data",
                             "resume with the same command, or delete the checkpoint to start over")
        self.net.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        cpu_rng, cuda_rng = state["rng"][self.rank]
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, self.device)
        self.epoch, self.step, self.history, self.best = state["epoch"], state["step"], state["history"], state["best"]
        self.sums = state["sums"] if self.rank == 0 else [0.0, 0.0]
        self.trained_samples, self.train_seconds = state["trained_samples"], state["train_seconds"]
        self.resumed_from = {"epoch": self.epoch + 1, "step": self.step}

    # ------------------------------------------------------------ the loop

    def train(self, progress, on_step) -> None:
        """Train to the last epoch, or until SIGINT / SIGTERM (with a checkpoint path): then save and raise."""
        with _StopSignal(enabled=self.checkpoint is not None) as stop:
            while self.epoch < self.config.epochs:
                batches = self.batches(self.epoch)
                while self.step < self.steps_per_epoch:
                    finite = self.train_step(batches[self.step])
                    self.step += 1
                    done = self.epoch * self.steps_per_epoch + self.step
                    if progress:
                        progress("distilling", done / self.total_steps)
                    if on_step:
                        on_step(TrainStatus(self.epoch + 1, self.config.epochs, self.step, self.steps_per_epoch, done,
                                            self.total_steps, self.sums[0] / max(1.0, self.sums[1]),
                                            self.trained_samples / max(self.train_seconds, 1e-9)))
                    # every rank learns of a signal or a blow-up anywhere, so all stop at the same step
                    stopping, broken = _all_sum([float(stop.requested), float(not finite)], self.world, self.device)
                    if broken:
                        raise StepFailed(f"the training loss became NaN or Inf at epoch {self.epoch + 1}, step "
                                         f"{self.step}", "lower --lr or --temperature")
                    if stopping:
                        self.interrupt()
                self.end_epoch()

    def train_step(self, global_idx: np.ndarray) -> bool:
        """One optimizer step on this rank's share of a global batch; False when the loss is not finite."""
        import torch

        began = time.perf_counter()
        idx = global_idx[self.rank::self.world]
        data = self.train_data
        inputs = _to_tensors(tuple(a[idx] for a in data.inputs), self.device)
        labels = torch.from_numpy(data.labels[idx]).to(self.device) if data.labels is not None else None
        t_idx = torch.from_numpy(idx).to(self.device)
        out, feats = self.model(*inputs) if self.features else (self.model(*inputs), [])
        per_sample = _per_sample_loss(_tensors(out), [t[t_idx] for t in self.teacher_outs], labels, feats,
                                      [f[t_idx] for f in self.teacher_feats], self.config)
        # DDP averages gradients over ranks: scaling by world / global batch makes that average
        # the gradient of the mean loss over the whole global batch, as one process computes it.
        loss = per_sample.sum() * (self.world / len(global_idx))
        finite = bool(torch.isfinite(loss))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.sums = [self.sums[0] + float(per_sample.detach().sum()), self.sums[1] + len(idx)]
        self.trained_samples += len(global_idx)
        self.train_seconds += time.perf_counter() - began
        return finite

    def interrupt(self) -> None:
        """Save where training stands (the epoch's bookkeeping first when it just ended), then stop."""
        epoch, step = self.epoch + 1, self.step
        if self.step == self.steps_per_epoch:
            self.end_epoch()
        self.save()
        raise Interrupted(f"interrupted at epoch {epoch}, step {step} of {self.steps_per_epoch}; checkpoint written "
                          f"to {self.checkpoint}", "run the same command with --resume to continue")

    def end_epoch(self) -> None:
        """Record the epoch's mean training loss (over all ranks) and validation; keep the best weights."""
        loss_sum, samples = _all_sum(self.sums, self.world, self.device)
        record = {"epoch": self.epoch + 1, "train_loss": loss_sum / max(1.0, samples)}
        if self.val is not None:
            metrics = _validate(self.module, self.val, self.teacher_val, self.device)
            record.update({f"val_{k}": v for k, v in metrics.items()})
            name, score = _primary(metrics)
            if score > self.best["score"]:
                self.best.update(epoch=self.epoch + 1, score=score, metric=name,
                                 state={k: v.detach().clone().cpu() for k, v in self.module.state_dict().items()})
        self.history.append(record)
        self.epoch, self.step, self.sums = self.epoch + 1, 0, [0.0, 0.0]

    # ------------------------------------------------------------ the record

    def details(self, data, val_data) -> dict:
        val = self.val
        return {
            "epochs": self.config.epochs, "steps": self.total_steps, "train_samples": len(self.train_data),
            "val_samples": len(val) if val is not None else 0,
            "val_source": None if val is None else val.source if val_data is not None
            else f"{self.config.val_split:g} of {data.source}",
            "processes": self.world,
            "samples_per_s": self.trained_samples / self.train_seconds if self.train_seconds else None,
            "best_epoch": self.best["epoch"], "best_metric": self.best["metric"], "history": self.history,
            "resumed_from": self.resumed_from, "config": _config_identity(self.config),
        }

    def notes(self) -> list[str]:
        best = self.best
        if best["epoch"] is None:
            return [f"distilled {self.config.epochs} epochs without validation data; the last epoch kept"]
        name = best["metric"]
        value = self.history[best["epoch"] - 1][f"val_{name}"]
        shown = f"{100 * value:.2f}%" if name != "mse" else f"{value:.4g}"
        return [f"distilled {self.config.epochs} epochs; best epoch {best['epoch']} (validation {name} {shown}) kept"]
