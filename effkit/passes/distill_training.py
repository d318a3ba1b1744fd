"""The distillation training loop: losses, validation, schedule, checkpoints, signals, DDP.

`Training` runs the epochs that `effkit.passes.distill.distill` sets up; the configuration it reads is a
`DistillConfig` (see that module for the contract: seeded sample order, resumable checkpoints, DDP).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effkit.errors import InputError, StepFailed, UsageError
from effkit.passes.distill_checkpoint import (CHECKPOINT_FORMAT, Interrupted, StopSignal, config_identity,
                                              load_checkpoint, save_checkpoint)


EVAL_BATCH = 256


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


def tensors_of(out: Any) -> list:
    """A model's output (tensor, tuple, list, dict) as a flat list of tensors, gradients kept."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in tensors_of(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in tensors_of(v)]
    raise InputError(f"the model returned a {type(out).__name__}", "return tensors, or a tuple/dict of tensors")


class Features:
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
            self.values[name] = tensors_of(output)[0]
        return hook

    def take(self) -> list:
        values = [self.values.pop(n) for n in self.names]
        return values

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _per_sample_loss(student_outs: list, teacher_outs: list, labels, student_feats: list, teacher_feats: list,
                     config, positions=None):
    """The loss of every sample in the batch (a 1-D tensor), so that batches can be split across ranks.
    `positions` ([batch, sequence] weights, 1 where a token is real): a language model's logits, whose
    vocabulary is the last dimension, compared at every real position (padding left out)."""
    import torch.nn.functional as F

    n = student_outs[0].shape[0]
    dim = -1 if positions is not None else 1  # classes along dim 1, or a language model's vocabulary last
    kd = 0.0
    for s, t in zip(student_outs, teacher_outs):
        if config.loss == "kl":  # averaged over any further positions (pixels, or tokens)
            T = config.temperature
            log_s, log_t = F.log_softmax(s / T, dim=dim), F.log_softmax(t / T, dim=dim)
            per_position = (log_t.exp() * (log_t - log_s)).sum(dim) * (T * T)
        else:
            per_position = (s - t) ** 2 if positions is None else ((s - t) ** 2).mean(-1)
        kd = kd + (per_position.reshape(n, -1).mean(1) if positions is None
                   else (per_position * positions).sum(1) / positions.sum(1).clamp(min=1))
    loss = kd
    if labels is not None:
        loss = config.alpha * kd + (1 - config.alpha) * F.cross_entropy(student_outs[0], labels, reduction="none")
    for s, t in zip(student_feats, teacher_feats):
        loss = loss + config.feature_weight * ((s - t) ** 2).reshape(n, -1).mean(1)
    return loss


def is_classifier(shape: tuple) -> bool:
    return len(shape) == 2 and shape[1] > 1


def to_tensors(arrays, device) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays)


def _validate(module, val, teacher_val, device, language=None) -> dict:
    """accuracy (with labels) and top-1 agreement with the teacher (classifiers), else MSE to the teacher.
    `teacher_val`: the teacher's outputs on `val`, or a function of a batch's inputs that gives them.
    `language` (`LanguageModel`): next-token agreement at the real positions of a language model."""
    import torch

    was_training = module.training
    module.eval()
    agree = correct = seen = 0
    squared = 0.0
    start = 0
    with torch.no_grad():
        for inputs, _ in val.batches(EVAL_BATCH):
            tensors = to_tensors(inputs, device)
            student = tensors_of(module(*tensors))[0]
            teacher = teacher_val(tensors)[0][0] if callable(teacher_val) else teacher_val[0][start:start + len(student)]
            if language is not None:
                real = language.positions(tensors).bool()
                agree += int((student.argmax(-1) == teacher.argmax(-1))[real].sum())
                seen += int(real.sum())
            elif is_classifier(tuple(teacher.shape)):
                pred = student.argmax(1)
                agree += int((pred == teacher.argmax(1)).sum())
                if val.labels is not None:
                    correct += int((pred.cpu().numpy() == val.labels[start:start + len(student)]).sum())
                seen += len(student)
            else:
                squared += float(((student - teacher) ** 2).double().sum())
                seen += student.numel()
            start += len(student)
    module.train(was_training)
    if language is None and not is_classifier(tuple(teacher.shape)):
        return {"mse": squared / max(1, seen)}
    metrics = {"agreement": agree / max(1, seen)}
    if language is None and val.labels is not None:
        metrics["accuracy"] = correct / max(1, seen)
    return metrics


@dataclass
class LanguageModel:
    """What distilling a causal language model needs: the teacher run live on each batch (its logits over a
    whole text would not fit in memory) and the input that marks real tokens (None: every position is)."""

    teacher: Any  # a torch module, or a runner with `run(arrays)`
    mask_input: int | None

    def positions(self, inputs: tuple) -> Any:
        """[batch, sequence] weights: 1 at real tokens, 0 at padding."""
        import torch

        ids = inputs[0]
        return (inputs[self.mask_input].to(torch.float32) if self.mask_input is not None
                else torch.ones(ids.shape[:2], dtype=torch.float32, device=ids.device))

    def targets(self, inputs: tuple) -> tuple[list, list]:
        """The teacher's logits on a batch (no features: feature pairs do not apply here)."""
        import torch

        with torch.no_grad():
            if isinstance(self.teacher, torch.nn.Module):
                return [o.detach() for o in tensors_of(self.teacher(*inputs))], []
            out = self.teacher.run(tuple(t.cpu().numpy() for t in inputs))
            return [torch.from_numpy(o).to(inputs[0].device) for o in out], []


def _primary(metrics: dict) -> tuple[str, float]:
    """The metric that picks the best epoch, as (name, score to maximize)."""
    for name in ("accuracy", "agreement"):
        if name in metrics:
            return name, metrics[name]
    return "mse", -metrics["mse"]


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


def _with_feature_maps(module, features: Features, channels: list[tuple[int, int]]):
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


class Training:
    """The training loop and everything a checkpoint must carry to continue it exactly."""

    def __init__(self, module, features, channels, config, train, targets, val, teacher_val, device,
                 checkpoint: Path | None, language: LanguageModel | None = None):
        import random

        import torch

        self.rank, self.world = _dist()
        self.module, self.features, self.config, self.device = module, features, config, device
        # a language model's teacher runs live (`language`); other teachers' outputs are computed once
        self.train_data, self.language = train, language
        self.teacher_outs, self.teacher_feats = targets if language is None else ([], [])
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
            save_checkpoint(self.checkpoint, {
                "format": CHECKPOINT_FORMAT, "config": config_identity(self.config),
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
        if (state["config"] != config_identity(self.config) or state["samples"] != len(self.train_data)
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
        with StopSignal(enabled=self.checkpoint is not None) as stop:
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
                        self.interrupt(stop.signum)
                self.end_epoch()

    def train_step(self, global_idx: np.ndarray) -> bool:
        """One optimizer step on this rank's share of a global batch; False when the loss is not finite."""
        import torch

        began = time.perf_counter()
        idx = global_idx[self.rank::self.world]
        data = self.train_data
        inputs = to_tensors(tuple(a[idx] for a in data.inputs), self.device)
        labels = torch.from_numpy(data.labels[idx]).to(self.device) if data.labels is not None else None
        t_idx = torch.from_numpy(idx).to(self.device)
        if self.language is not None:
            (teacher_outs, teacher_feats), positions = self.language.targets(inputs), self.language.positions(inputs)
        else:
            teacher_outs, teacher_feats = [t[t_idx] for t in self.teacher_outs], [f[t_idx] for f in self.teacher_feats]
            positions = None
        out, feats = self.model(*inputs) if self.features else (self.model(*inputs), [])
        per_sample = _per_sample_loss(tensors_of(out), teacher_outs, labels, feats, teacher_feats, self.config,
                                      positions)
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

    def interrupt(self, signum: int) -> None:
        """Save where training stands (the epoch's bookkeeping first when it just ended), then stop."""
        epoch, step = self.epoch + 1, self.step
        if self.step == self.steps_per_epoch:
            self.end_epoch()
        self.save()
        raise Interrupted(f"interrupted at epoch {epoch}, step {step} of {self.steps_per_epoch}; checkpoint written "
                          f"to {self.checkpoint}", "run the same command with --resume to continue", signum)

    def end_epoch(self) -> None:
        """Record the epoch's mean training loss (over all ranks) and validation; keep the best weights."""
        loss_sum, samples = _all_sum(self.sums, self.world, self.device)
        record = {"epoch": self.epoch + 1, "train_loss": loss_sum / max(1.0, samples)}
        if self.val is not None:
            teacher_val = self.teacher_val if self.language is None else self.language.targets
            metrics = _validate(self.module, self.val, teacher_val, self.device, self.language)
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
            "resumed_from": self.resumed_from, "config": config_identity(self.config),
        }

    def notes(self) -> list[str]:
        best = self.best
        if best["epoch"] is None:
            return [f"distilled {self.config.epochs} epochs without validation data; the last epoch kept"]
        name = best["metric"]
        value = self.history[best["epoch"] - 1][f"val_{name}"]
        shown = f"{100 * value:.2f}%" if name != "mse" else f"{value:.4g}"
        return [f"distilled {self.config.epochs} epochs; best epoch {best['epoch']} (validation {name} {shown}) kept"]
