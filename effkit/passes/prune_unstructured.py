"""Unstructured pruning: zero single weights (magnitude, layer-wise or global, or an N:M pattern) and make
the zeros permanent (no masks, no `*_orig` tensors). Dense size and latency do not drop; the notes say so.
"""

from __future__ import annotations

from typing import Any

from effkit.errors import UsageError
from effkit.size import size_info


def _weight_layers(module, ignored) -> list[tuple[str, Any]]:
    from torch import nn

    skip = set(ignored)
    return [(n, m) for n, m in module.named_modules()
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and n not in skip]


def prune_unstructured(module, config, ignored, details) -> None:
    """Zero weights by magnitude (or N:M) and make it permanent: no masks, no *_orig tensors."""
    import torch
    from torch.nn.utils import prune as tprune

    layers = _weight_layers(module, ignored)
    if not layers:
        raise UsageError("the model has no Linear or convolution weights left to prune",
                         f"ignored: {', '.join(ignored) or 'none'}")
    skipped = []
    if config.pattern is not None:
        n, m = config.nm()
        with torch.no_grad():
            for name, layer in layers:
                if layer.weight.shape[1] % m:
                    skipped.append(name)
                    continue
                layer.weight.mul_(nm_mask(layer.weight, n, m))
        details["pattern"] = config.pattern
        if skipped:
            details["skipped_layers"] = skipped
        if len(skipped) == len(layers):
            raise UsageError(f"no layer's input width is a multiple of {m}, so --pattern {config.pattern} fits none",
                             f"layers: {', '.join(skipped[:8])}")
    elif config.scope == "global":
        tprune.global_unstructured([(layer, "weight") for _, layer in layers], pruning_method=tprune.L1Unstructured,
                                   amount=config.sparsity)
        for _, layer in layers:
            tprune.remove(layer, "weight")
    else:
        for _, layer in layers:
            tprune.l1_unstructured(layer, "weight", amount=config.sparsity)
            tprune.remove(layer, "weight")
    details["sparsity"] = {name: float((layer.weight == 0).float().mean()) for name, layer in layers
                           if name not in skipped}
    total = sum(layer.weight.numel() for _, layer in layers)
    details["overall_sparsity"] = float(sum(int((layer.weight == 0).sum()) for _, layer in layers) / total)


def nm_mask(weight, n: int, m: int):
    """Keep the `n` largest-magnitude weights of every `m` consecutive ones along the input dimension (dim 1)."""
    import torch

    moved = weight.detach().abs().movedim(1, -1)  # input dimension last
    blocks = moved.reshape(-1, m)
    keep = torch.zeros_like(blocks, dtype=torch.bool)
    keep.scatter_(1, blocks.topk(n, dim=1).indices, True)
    return keep.reshape(moved.shape).movedim(-1, 1).to(weight.dtype)


def unstructured_notes(model, module, details, notes) -> None:
    before = size_info(model.replace(path=None, format="derived", save_suffix=".pt2"))["gzip_bytes"]
    after = size_info(model.replace(module=module, path=None, format="derived", save_suffix=".pt2"))["gzip_bytes"]
    details["gzip_bytes"] = {"before": before, "after": after}
    notes.append(f"unstructured: {100 * details['overall_sparsity']:.0f}% of the pruned layers' weights are zero, but "
                 f"dense size and latency do not drop (kernels still multiply the zeros); only the compressed size "
                 f"does (gzip {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB)")
    notes.append("sparsity per layer: " + ", ".join(f"{n} {100 * v:.0f}%" for n, v in details["sparsity"].items()))
    if details.get("skipped_layers"):
        notes.append(f"left dense (input width not divisible into {details['pattern']} groups): "
                     + ", ".join(details["skipped_layers"]))
