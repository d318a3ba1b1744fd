"""Tiny teachers and students for the distill tests (tests/models_distill.py:NAME)."""

import os
import signal

import torch
from torch import nn


def teacher():
    """A 16-64-64-4 MLP (random weights: the student learns whatever it computes)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    return model, torch.randn(2, 16)


def student_architecture():
    """A 16-16-4 MLP with dropout, so resuming must restore the RNG too."""
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 4))


def student():
    torch.manual_seed(1)
    return student_architecture()


def plain_student():
    """The student without dropout: N processes draw other dropout masks than one process does."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def wrong_student():
    """Five outputs where the teacher has four."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))


class InterruptingStudent(nn.Sequential):
    """The student's layers (same state_dict), sending SIGINT to its own process at its 7th training
    forward call: a deterministic Ctrl-C in the middle of training."""

    def __init__(self):
        super().__init__(*student_architecture())
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == 7:
                os.kill(os.getpid(), signal.SIGINT)
        return super().forward(x)


def interrupting_student():
    torch.manual_seed(1)
    return InterruptingStudent()


def loader():
    """Training data as a DataLoader of (inputs, labels) batches: 64 samples, 4 classes."""
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=generator)
    return DataLoader(TensorDataset(x, torch.randint(0, 4, (64,), generator=generator)), batch_size=16)
