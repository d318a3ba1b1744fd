"""Transformer encoders for the quantize tests and benchmarks/transformers_int8.py (factory specs
tests/models_transformer.py:NAME).

`OutlierEncoder` reproduces how int8 fails on real transformer checkpoints, where random-weight
models do not: a few hidden channels of every LayerNorm output are 20-100x larger than the rest
(the "outlier features" of LLM.int8() and SmoothQuant), set, as in trained checkpoints, through the
LayerNorm weights. The MatMuls that read those LayerNorm outputs (query, key, value, the first
feed-forward layer, the pooler) carry the matching weight columns divided by the same factor, so the
fp32 function stays that of an ordinary encoder while its activations do not: a per-tensor int8
scale spans the outliers and leaves the other channels a handful of levels. Inputs are realistic
token batches: Zipf-distributed ids, varied lengths, padding and an attention mask.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

PAD = 0
# (channel, factor) of the outlier channels, as fractions of the hidden size: a few, 20-100x
OUTLIERS = ((0.05, 100.0), (0.3, 60.0), (0.71, 20.0))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm self-attention and GELU feed-forward block with a padding mask."""

    def __init__(self, hidden: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.query, self.key, self.value = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ffn_in, self.ffn_out = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        d = h // self.heads
        y = self.ln1(x)
        q, k, v = (lin(y).view(b, s, self.heads, d).transpose(1, 2) for lin in (self.query, self.key, self.value))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + bias
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, h)
        x = x + self.out(context)
        return x + self.ffn_out(nn.functional.gelu(self.ffn_in(self.ln2(x))))


class OutlierEncoder(nn.Module):
    """A BERT-like encoder (token and position embeddings, attention mask, mean pooling, a tanh
    pooler) whose LayerNorm outputs carry outlier channels (see the module docstring).
    `outliers=False` gives the same encoder with ordinary random LayerNorm weights."""

    def __init__(self, vocab: int = 1000, hidden: int = 64, layers: int = 2, heads: int = 4, ffn: int | None = None,
                 max_len: int = 128, outliers: bool = True):
        super().__init__()
        self.words, self.positions = nn.Embedding(vocab, hidden), nn.Embedding(max_len, hidden)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn or 4 * hidden) for _ in range(layers))
        self.final_ln = nn.LayerNorm(hidden)
        self.pooler = nn.Linear(hidden, hidden)
        if outliers:
            self._plant_outliers(hidden)

    @torch.no_grad()
    def _plant_outliers(self, hidden: int) -> None:
        channels = [(int(f * hidden), factor) for f, factor in OUTLIERS]
        readers = [(layer.ln1, (layer.query, layer.key, layer.value)) for layer in self.layers]
        readers += [(layer.ln2, (layer.ffn_in,)) for layer in self.layers]
        readers.append((self.final_ln, (self.pooler,)))
        for ln, linears in readers:
            for c, factor in channels:
                ln.weight[c] *= factor
                ln.bias[c] *= factor
                for lin in linears:
                    lin.weight[:, c] /= factor

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.words(input_ids) + self.positions(positions)
        mask = attention_mask.to(x.dtype)
        bias = (1.0 - mask)[:, None, None, :] * -10000.0
        for layer in self.layers:
            x = layer(x, bias)
        pooled = (self.final_ln(x) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return torch.tanh(self.pooler(pooled))


def init_weights(model: nn.Module, seed: int) -> nn.Module:
    """Seeded BERT-style initialisation (normal 0.02 weights; LayerNorm weights near 1 with spread)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02 * math.sqrt(768 / m.weight.shape[-1]))
                if isinstance(m, nn.Linear):
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.02)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
    return model


def token_batch(n: int, seq: int, vocab: int, seed: int, min_len: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """n realistic sequences of up to `seq` tokens: Zipf-distributed ids (a few tokens frequent, most
    rare, as in text), a [CLS]-like first token, lengths spread over [min_len, seq], padded with 0."""
    rng = np.random.default_rng(seed)
    ids = np.full((n, seq), PAD, np.int64)
    mask = np.zeros((n, seq), np.int64)
    lengths = rng.integers(min(min_len, seq), seq + 1, n)
    for i, length in enumerate(lengths):
        ids[i, 0] = 1
        ids[i, 1:length] = 2 + (rng.zipf(1.3, length - 1) - 1) % (vocab - 2)
        mask[i, :length] = 1
    return ids, mask


def build(*, outliers: bool = True, seed: int = 0, batch: int = 2, seq: int = 16, **shape) -> tuple:
    """(model, (input_ids, attention_mask)) with seeded weights, built before the outliers are planted."""
    torch.manual_seed(seed)
    model = OutlierEncoder(outliers=False, **shape)
    init_weights(model, seed)
    if outliers:
        model._plant_outliers(model.pooler.in_features)
    ids, mask = token_batch(batch, seq, model.words.num_embeddings, seed=seed + 1)
    return model.eval(), (torch.from_numpy(ids), torch.from_numpy(mask))


def outlier_encoder():
    """The small outlier encoder of the tests: 2 layers, hidden 64, batch 2, 16 tokens."""
    return build(outliers=True)


def plain_encoder():
    """The same encoder without outlier channels (ordinary random LayerNorm weights)."""
    return build(outliers=False)


def token_data(n: int = 48, seq: int = 16, seed: int = 11) -> dict:
    """Token batches for --calib / --eval files: {'input_ids', 'attention_mask'}."""
    ids, mask = token_batch(n, seq, 1000, seed)
    return {"input_ids": ids, "attention_mask": mask}


class PostNorm(nn.Module):
    """A BERT-style post-LayerNorm block: the LayerNorm output feeds two Linears AND the residual,
    so SmoothQuant cannot fold its scale into the LayerNorm."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.ln = nn.LayerNorm(32)
        self.a, self.b, self.c = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 4)
        with torch.no_grad():
            self.ln.weight[3] *= 80.0
            self.a.weight[:, 3] /= 80.0
            self.b.weight[:, 3] /= 80.0

    def forward(self, x):
        y = self.ln(self.inp(x))
        return self.c(y + torch.relu(self.a(y)) * self.b(y))


def post_norm():
    torch.manual_seed(0)
    return PostNorm().eval(), torch.randn(4, 16)


def small_text_encoder():
    """A plain torch text model for the dynamic sequence tests: 1 layer, hidden 32, 32 positions,
    batch 2 of 16 tokens."""
    return build(outliers=False, hidden=32, layers=1, heads=2, max_len=32)


class FlatText(nn.Module):
    """A text model whose code fixes the sequence length: it flattens 16 token embeddings into one Linear."""

    def __init__(self):
        super().__init__()
        self.words = nn.Embedding(1000, 4)
        self.head = nn.Linear(16 * 4, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.words(input_ids) * attention_mask[..., None].to(torch.float32)
        return self.head(x.reshape(x.shape[0], -1))


def flat_text():
    torch.manual_seed(0)
    ids, mask = token_batch(2, 16, 1000, seed=1)
    return FlatText().eval(), (torch.from_numpy(ids), torch.from_numpy(mask))


class ParityText(nn.Module):
    """A text model that runs at any length but branches on its parity: an export traced at 16 tokens
    is right at even lengths only."""

    def __init__(self):
        super().__init__()
        self.words = nn.Embedding(1000, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.words(input_ids) * attention_mask[..., None].to(torch.float32)
        if input_ids.shape[1] % 2 == 0:
            x = 2 * x
        return self.head(x.mean(1))


def parity_text():
    torch.manual_seed(0)
    ids, mask = token_batch(2, 16, 1000, seed=1)
    return ParityText().eval(), (torch.from_numpy(ids), torch.from_numpy(mask))
