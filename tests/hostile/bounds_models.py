"""Models that test effkit's bounds: any input size, and forwards that never return.

Kept apart from hostile_models.py, whose list of functions an error message shows.
"""

import torch
from torch import nn


class FirstValues(nn.Module):
    """Returns the first four values of its input, whatever its dtype and size: runs on any input cheaply."""

    def forward(self, x):
        return x.reshape(-1)[:4].float()


def first_values():
    return FirstValues()


class EndlessPython(nn.Module):
    """A forward that never returns, looping in Python (so a Python signal handler does run)."""

    def forward(self, x):
        while bool(x.abs().sum() < 1e30):
            x = x * 1.0
        return x


def endless_python():
    return EndlessPython(), torch.randn(1, 4)


@torch.jit.script
def _spin(x: torch.Tensor) -> torch.Tensor:
    """Loops inside the TorchScript interpreter until x sums to 1e30, which never happens."""
    while bool(x.abs().sum() < 1e30):
        x = x * 1.0
    return x


class EndlessAfterFirstCall(nn.Module):
    """Linear(4, 2) whose eager forward never returns after its first call (tracing is left alone)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            self.calls += 1
            if self.calls > 1:
                x = _spin(x)
        return self.fc(x)


def endless_after_first_call():
    return EndlessAfterFirstCall(), torch.randn(1, 4)
