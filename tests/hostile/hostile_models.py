"""Tiny models that misbehave, used as factory specs (tests/hostile/hostile_models.py:NAME)."""

import torch
from torch import nn


class Raises(nn.Module):
    """Builds fine, fails on every forward."""

    def forward(self, x):
        raise ValueError("forward exploded on purpose")


def forward_raises():
    return Raises(), torch.randn(1, 4)


class Scaled(nn.Module):
    """Linear(4, 2) times a constant: NaN or Inf makes every output non-finite."""

    def __init__(self, factor: float):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.factor = factor

    def forward(self, x):
        return self.fc(x) * 0.0 + self.factor


def nan_outputs():
    torch.manual_seed(0)
    return Scaled(float("nan")), torch.randn(1, 4)


def inf_outputs():
    torch.manual_seed(0)
    return Scaled(float("inf")), torch.randn(1, 4)


def no_factory_here():
    """Not a model factory: returns a plain string."""
    return "a string"
