"""How closely a changed model agrees with the original: cosine, SQNR, max diff, top-1; and accuracy.

NaN or Inf in outputs is a failure of the step that produced them, never averaged into a figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from effkit.errors import StepFailed, UsageError

FIDELITY_SAMPLES = 16


def check_finite(outputs: Sequence[np.ndarray], what: str) -> None:
    """Raise StepFailed when any output holds NaN or Inf."""
    for i, out in enumerate(outputs):
        if np.issubdtype(out.dtype, np.floating) and not np.all(np.isfinite(out)):
            bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
            raise StepFailed(f"{what}: output {i} holds {bad} NaN/Inf values",
                             "the model's numbers overflowed; this result cannot be trusted")


def held_out_inputs(example: Sequence[np.ndarray], samples: int = FIDELITY_SAMPLES, seed: int = 99) -> list[tuple]:
    """Batches of fresh inputs shaped like the example: new random floats, integer inputs kept."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(samples):
        batch = []
        for a in example:
            if np.issubdtype(a.dtype, np.floating):
                batch.append(rng.standard_normal(a.shape).astype(a.dtype))
            elif np.issubdtype(a.dtype, np.integer) and a.size and a.max() > 1:
                batch.append(rng.integers(0, int(a.max()) + 1, a.shape).astype(a.dtype))
            else:
                batch.append(a)
        batches.append(tuple(batch))
    return batches


def _sqnr_db(signal_power: float, noise_power: float) -> float:
    if noise_power == 0.0:
        return math.inf
    if signal_power == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


def compare_outputs(reference: Sequence[Sequence[np.ndarray]], candidate: Sequence[Sequence[np.ndarray]]) -> dict:
    """Agreement of `candidate` with `reference`, over samples (each a list of output arrays).

    cosine_min / cosine_mean: cosine similarity of each sample's flattened outputs;
    sqnr_db: 10*log10(signal power / error power) over everything;
    max_abs_diff; top1_agreement for classifier-shaped first outputs ([batch, classes]); for language-model
    logits ([batch, sequence, vocabulary]) token_agreement, the fraction of positions whose next-token
    choice (argmax) is the original's, and kl_mean, the mean KL divergence of the original's next-token
    distribution from the candidate's (nats per position).
    """
    cosines, signal, noise, max_diff = [], 0.0, 0.0, 0.0
    top1_same, top1_total = 0, 0
    tokens_same, tokens_total, kl_sum = 0, 0, 0.0
    for i, (ref, cand) in enumerate(zip(reference, candidate)):
        check_finite(ref, "the original model")
        check_finite(cand, "the changed model")
        if len(ref) != len(cand) or any(r.shape != c.shape for r, c in zip(ref, cand)):
            raise StepFailed(f"the changed model's outputs have shapes {[list(c.shape) for c in cand]}, "
                             f"the original's {[list(r.shape) for r in ref]}")
        r = np.concatenate([np.asarray(x, np.float64).ravel() for x in ref])
        c = np.concatenate([np.asarray(x, np.float64).ravel() for x in cand])
        denom = np.linalg.norm(r) * np.linalg.norm(c)
        cosines.append(float(np.dot(r, c) / denom) if denom > 0 else float(np.array_equal(r, c)))
        signal += float(np.sum(r * r))
        noise += float(np.sum((r - c) ** 2))
        if r.size:
            max_diff = max(max_diff, float(np.max(np.abs(r - c))))
        first_ref, first_cand = ref[0], cand[0]
        if first_ref.ndim == 2 and first_ref.shape[1] > 1:
            top1_same += int(np.sum(first_ref.argmax(1) == first_cand.argmax(1)))
            top1_total += first_ref.shape[0]
        if first_ref.ndim == 3 and first_ref.shape[2] > 1:
            tokens_same += int(np.sum(first_ref.argmax(-1) == first_cand.argmax(-1)))
            tokens_total += first_ref.shape[0] * first_ref.shape[1]
            kl_sum += float(np.sum(_kl(first_ref, first_cand)))
    result = {
        "samples": len(cosines),
        "cosine_min": min(cosines) if cosines else None,
        "cosine_mean": float(np.mean(cosines)) if cosines else None,
        "sqnr_db": _sqnr_db(signal, noise),
        "max_abs_diff": max_diff,
    }
    if top1_total:
        result["top1_agreement"] = top1_same / top1_total
    if tokens_total:
        result["token_agreement"] = tokens_same / tokens_total
        result["kl_mean"] = kl_sum / tokens_total
    return result


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _kl(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """KL(reference || candidate) of the softmax distributions along the last axis, per position."""
    p_log, q_log = _log_softmax(reference), _log_softmax(candidate)
    return np.maximum(0.0, (np.exp(p_log) * (p_log - q_log)).sum(-1))


def perplexity(runner, inputs: Sequence[np.ndarray], batch_size: int = 8) -> tuple[float, int]:
    """A language model's perplexity on windows of token ids (`inputs[0]`, one window per row; an
    attention mask in `inputs[1]` leaves padding out): exp of the mean negative log-likelihood of each
    next token under the logits at the position before it. Returns (perplexity, tokens predicted)."""
    nll, tokens = 0.0, 0
    for start in range(0, len(inputs[0]), batch_size):
        batch = tuple(np.asarray(a[start:start + batch_size]) for a in inputs)
        ids = batch[0]
        logits = np.asarray(runner.run(batch)[0])
        if logits.ndim != 3 or logits.shape[:2] != ids.shape:
            raise UsageError(f"perplexity needs a language model's logits [batch, sequence, vocabulary]; this model "
                             f"gives {list(logits.shape)}", "measure a causal language model, or leave out --eval-text")
        check_finite([logits], "the model")
        mask = batch[1] if len(batch) > 1 and batch[1].shape == ids.shape else np.ones_like(ids)
        log_probs = _log_softmax(logits[:, :-1])
        picked = np.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
        counted = (mask[:, 1:] * mask[:, :-1]).astype(bool)
        nll -= float(picked[counted].sum())
        tokens += int(counted.sum())
    return (math.exp(nll / tokens) if tokens else float("nan")), tokens


def accuracy(runner, inputs: Sequence[np.ndarray], labels: np.ndarray, batch_size: int = 64) -> float:
    """Top-1 accuracy (fraction) of a classifier on labelled data."""
    correct = 0
    n = len(labels)
    for start in range(0, n, batch_size):
        batch = tuple(a[start:start + batch_size] for a in inputs)
        out = runner.run(batch)[0]
        check_finite([out], "the model")
        correct += int(np.sum(out.reshape(out.shape[0], -1).argmax(1) == labels[start:start + batch_size]))
    return correct / n if n else float("nan")
