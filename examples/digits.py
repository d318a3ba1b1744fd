"""A real small classifier for effkit's examples: handwritten digits (8x8 pixels, 10 classes).

Data: examples/data/digits_{train,test}.npz, 1437 / 360 images split with a fixed seed from the
UCI "Optical Recognition of Handwritten Digits" test set (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0),
as shipped in scikit-learn (sklearn/datasets/data/digits.csv.gz). Pixels are scaled to [0, 1].

The factories train their model in a few seconds, deterministically, so that effkit has a real
trained network to compress without downloading anything:

    effkit bench examples/digits.py:mlp
    effkit compress examples/digits.py:mlp_wide --recipe examples/recipes/digits.toml \
        --data examples/data/digits_train.npz --eval examples/data/digits_test.npz -o out/digits
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

DATA = Path(__file__).parent / "data"


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 64) float32 in [0, 1] and labels (N,) of the 'train' or 'test' split."""
    with np.load(DATA / f"digits_{split}.npz") as d:
        return torch.from_numpy(d["x"]), torch.from_numpy(d["labels"])


def train(model: nn.Module, epochs: int, lr: float = 2e-3, seed: int = 0) -> nn.Module:
    """Plain supervised training on the train split (Adam, cross-entropy, batch 64)."""
    torch.manual_seed(seed)
    x, y = load("train")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module) -> float:
    """Top-1 accuracy on the test split."""
    x, y = load("test")
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def mlp_architecture(width: int = 256) -> nn.Module:
    """64-W-W-10 MLP (untrained)."""
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def mlp():
    """A trained 64-256-256-10 MLP (about 97% test accuracy) and a one-image example input."""
    torch.manual_seed(0)
    model = train(mlp_architecture(), epochs=30)
    return model, load("test")[0][:1]


def mlp_wide():
    """A trained 64-1024-1024-10 MLP (about 98% test accuracy) and a one-image example input.

    Wide enough that pruning and int8 pay off on a CPU: at 256 wide a call takes tens of
    microseconds, mostly overhead that no compression removes. The README's main job uses it.
    """
    torch.manual_seed(0)
    model = train(mlp_architecture(1024), epochs=15)
    return model, load("test")[0][:1]


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU stem, a residual block, global pooling, a classifier; input (N, 64) as 1x8x8."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x.view(-1, 1, 8, 8))
        x = self.relu(x + self.block(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def cnn():
    """A trained residual CNN on the same digits and a one-image example input."""
    torch.manual_seed(0)
    model = train(DigitsCNN(), epochs=8)
    return model, load("test")[0][:1]


if __name__ == "__main__":
    import time

    for name, factory in (("mlp", mlp), ("mlp_wide", mlp_wide), ("cnn", cnn)):
        start = time.perf_counter()
        m, _ = factory()
        print(f"{name}: test accuracy {accuracy(m):.4f}, trained in {time.perf_counter() - start:.1f}s")
