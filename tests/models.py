"""Tiny models built in code, used by the tests as factory specs (tests/models.py:NAME)."""

import torch
from torch import nn


def mlp():
    """A 16-32-32-4 MLP with example inputs of batch 2."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    return model, torch.randn(2, 16)


def mlp_no_inputs():
    """The same MLP without example inputs (the user must pass --input-shape)."""
    return mlp()[0]


class TinyCNN(nn.Module):
    """Conv-BN-ReLU, a residual block, global pooling and a classifier: the coupled-layer patterns."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.stem(x)
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        x = self.relu2(x + y)
        return self.fc(torch.flatten(self.pool(x), 1))


def cnn():
    torch.manual_seed(0)
    return TinyCNN().eval(), torch.randn(1, 3, 16, 16)


class TwoInputs(nn.Module):
    """Token ids and a float feature vector: a model with two inputs of different dtypes."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.proj = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids, features):
        return self.head(self.embed(ids).mean(1) + self.proj(features))


def two_inputs():
    torch.manual_seed(0)
    return TwoInputs(), (torch.randint(0, 50, (2, 5)), torch.randn(2, 4))


def raises():
    raise RuntimeError("factory failed on purpose")


def not_a_module():
    return 42
