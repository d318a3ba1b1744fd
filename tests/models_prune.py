"""Tiny models for the prune tests, one per coupled-layer pattern (used as factory specs)."""

import torch
from torch import nn


class ConcatNet(nn.Module):
    """Two conv branches concatenated along channels, then a conv and a classifier."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.merge = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.merge(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(x.mean((2, 3)))


def concat():
    torch.manual_seed(0)
    return ConcatNet().eval(), torch.randn(1, 3, 12, 12)


class GroupedNet(nn.Module):
    """A grouped convolution (4 groups) and a depthwise-separable block (depthwise + pointwise)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU())
        self.pointwise = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.pointwise(self.depthwise(self.grouped(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def grouped():
    torch.manual_seed(0)
    return GroupedNet().eval(), torch.randn(1, 3, 12, 12)


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections; head size follows the weights."""

    def __init__(self, dim: int = 32, num_heads: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).reshape(b, t, self.num_heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, -1))


class TinyTransformer(nn.Module):
    """Embedding projection, one pre-norm attention + MLP block with residuals, a classifier head."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


def attention():
    torch.manual_seed(0)
    return TinyTransformer().eval(), torch.randn(2, 6, 8)


class TorchMHA(nn.Module):
    """nn.MultiheadAttention between two linear layers."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.mha = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        y, _ = self.mha(x, x, x, need_weights=False)
        return self.head((x + y).mean(1))


def mha():
    torch.manual_seed(0)
    return TorchMHA().eval(), torch.randn(2, 6, 8)


class Untraceable(nn.Module):
    """Computes its output outside autograd, so no dependency graph can be traced through it."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x):
        with torch.no_grad():
            return self.fc2(torch.relu(self.fc1(x)))


def untraceable():
    torch.manual_seed(0)
    return Untraceable(), torch.randn(2, 8)


def wide_mlp():
    """A 256-1024-1024-10 MLP at batch 32: big enough that pruning shows in its latency."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    return model.eval(), torch.randn(32, 256)
