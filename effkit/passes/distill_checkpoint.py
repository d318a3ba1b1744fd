"""Distillation checkpoints: written atomically on SIGINT / SIGTERM, read back to resume training."""

from __future__ import annotations

import signal
import threading
from dataclasses import asdict
from pathlib import Path

from effkit.errors import EffkitError, InputError, UsageError, first_line
from effkit.files import atomic_path


CHECKPOINT_FORMAT = "effkit.distill-checkpoint/1"


class Interrupted(EffkitError):
    """Training stopped on SIGINT / SIGTERM after writing a checkpoint. Exit code 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str, hint: str | None = None, signum: int = signal.SIGINT):
        super().__init__(message, hint)
        self.exit_code = 128 + int(signum)


def config_identity(config) -> dict:
    return {k: list(map(list, v)) if k == "feature_pairs" else v for k, v in asdict(config).items()}


def save_checkpoint(path: Path, state: dict) -> None:
    import torch

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


class StopSignal:
    """SIGINT / SIGTERM set a flag that the training loop checks after each step.
    A second SIGINT interrupts at once, for a user who does not want to wait."""

    def __init__(self, enabled: bool):
        self.requested = False
        self.signum = signal.SIGINT  # the last signal received: its exit code is the run's
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous: dict = {}

    def __enter__(self) -> StopSignal:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
