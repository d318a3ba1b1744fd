"""Tiny models for the quantize tests (factory specs tests/models_quantize.py:NAME)."""

import torch
from torch import nn


def wide_mlp():
    """A 64-256-256-10 MLP: weights dominate the file, so int8 shows in the size."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    return model.eval(), torch.randn(4, 64)


class Recurrent(nn.Module):
    """Linear -> LSTM -> Linear: the layers torch's dynamic int8 handles."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        out, _ = self.lstm(torch.relu(self.proj(x)))
        return self.head(out[:, -1])


def recurrent():
    torch.manual_seed(0)
    return Recurrent().eval(), torch.randn(2, 5, 8)


class OneSensitive(nn.Module):
    """fc1 writes one activation channel 1000x larger than the rest, so fc2's input, quantized per
    tensor at run time, loses every other channel: fc2 is the one layer int8 breaks."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 4)
        with torch.no_grad():
            self.fc1.weight[0] *= 1000.0
            self.fc1.bias[0] = 1000.0
            self.fc2.weight[:, 0] /= 1000.0

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def one_sensitive():
    torch.manual_seed(0)
    return OneSensitive().eval(), torch.randn(2, 16)
