"""Which layers of a torch model can be pruned: Torch-Pruning's dependency graph, the output layers
(kept whole so output shapes cannot change), --ignore globs, attention head counts, widths, MACs,
importance criteria.

`effkit.passes.prune` prunes with these; `effkit.structure` (`effkit inspect`) shows the same layers.
"""

from __future__ import annotations

import fnmatch
import re

import numpy as np

from effkit.errors import ModelLoadError, UsageError, first_line
from effkit.util import quiet_torch


# Attribute names under which hand-written attention modules keep their head count, and the names of
# their query/key/value projections: these are pruned head by head so every head keeps the same size.
HEAD_COUNT_ATTRS = ("num_heads", "n_heads", "n_head", "num_attention_heads", "heads")


QKV_NAME = re.compile(r"(to_)?(q|k|v|qk|kv|qkv|query|key|value|c_attn)(_proj|_lin|_linear)?")


def dependency_graph(module, example):
    """Trace the module into Torch-Pruning's dependency graph; a model that cannot be traced says why.

    The graph is read from autograd, so every layer that runs must be reachable from the outputs
    through autograd: a forward under torch.no_grad(), detach() or numpy round trips breaks that.
    """
    import torch
    import torch_pruning as tp

    hint = ("pruning traces forward() with autograd on the example inputs to find coupled layers; keep forward "
            "differentiable (no torch.no_grad(), detach() or numpy inside it)")
    ran = []
    hooks = [m.register_forward_hook(lambda m, i, o: ran.append(m))
             for m in module.modules() if isinstance(m, prunable_types())]
    try:
        with quiet_torch(), torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(module, example_inputs=list(example))
    except Exception as e:
        first = first_line(e)
        raise ModelLoadError(f"cannot trace the model to find which layers are coupled: {type(e).__name__}: {first}",
                             hint) from e
    finally:
        for h in hooks:
            h.remove()
    names = {m: n for n, m in module.named_modules()}
    lost = sorted({names[m] for m in ran if m not in graph.module2node})
    if lost:
        raise ModelLoadError(f"cannot trace the model: layers {', '.join(lost[:8])} ran but are not connected to "
                             "the outputs through autograd", hint)
    return graph


def prunable_types() -> tuple:
    from torch import nn

    return (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
            nn.LSTM, nn.GRU, nn.Embedding, nn.MultiheadAttention)


def output_layers(graph, names: dict) -> list[str]:
    """The layers whose outputs reach the model's outputs through shape-keeping ops (activations,
    norms, adds, reshapes): pruning their output channels would change the output shapes."""
    prunable = prunable_types()
    terminals = [n for n in graph.module2node.values() if not n.outputs]
    found, seen, stack = set(), set(), list(terminals)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, prunable):
            if node.module in names:
                found.add(names[node.module])
            continue
        stack.extend(node.inputs)
    return sorted(found)


def match_ignore(module, patterns: tuple[str, ...]) -> set[str]:
    """Layer names matched by --ignore globs (a name also matches every layer inside it)."""
    names = [n for n, _ in module.named_modules() if n]
    matched: set[str] = set()
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern) or n.startswith(pattern + ".")]
        if not hits:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise UsageError(f"--ignore {pattern!r} matches no layer", f"layer names: {shown}")
        matched.update(hits)
    return matched


def modules_named(module, wanted) -> list:
    wanted = set(wanted)
    return [m for n, m in module.named_modules() if n in wanted]


def head_counts(module) -> dict:
    """Query/key/value projections of hand-written attention modules, mapped to their head count, so
    that heads shrink alike. (nn.MultiheadAttention is handled by Torch-Pruning itself.)"""
    from torch import nn

    heads = {}
    for parent in module.modules():
        if isinstance(parent, nn.MultiheadAttention):
            continue
        count = next((getattr(parent, a) for a in HEAD_COUNT_ATTRS if isinstance(getattr(parent, a, None), int)), None)
        if not count or count < 2:
            continue
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear) and QKV_NAME.fullmatch(name):
                heads[child] = count
    return heads


def _head_attr(parent) -> str | None:
    return next((a for a in HEAD_COUNT_ATTRS if isinstance(getattr(parent, a, None), int)), None)


def attention_heads(module) -> dict[str, int]:
    """The head count of every attention module, by name (nn.MultiheadAttention and hand-written ones)."""
    from torch import nn

    counts = {}
    for name, parent in module.named_modules():
        attr = _head_attr(parent)
        if isinstance(parent, nn.MultiheadAttention):
            counts[name] = parent.num_heads
        elif attr and any(isinstance(c, nn.Linear) and QKV_NAME.fullmatch(n) for n, c in parent.named_children()):
            counts[name] = getattr(parent, attr)
    return counts


def set_head_counts(module, counts: dict) -> None:
    """Give hand-written attention modules the head counts Torch-Pruning left their q/k/v projections."""
    from torch import nn

    for parent in module.modules():
        attr = None if isinstance(parent, nn.MultiheadAttention) else _head_attr(parent)
        new = {counts[c] for c in parent.children() if c in counts} if attr else set()
        if len(new) == 1:
            setattr(parent, attr, new.pop())


def widths(module) -> dict[str, list[int]]:
    """[input, output] width of every Linear and convolution."""
    from torch import nn

    widths = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            widths[name] = [m.in_features, m.out_features]
        elif isinstance(m, nn.modules.conv._ConvNd):
            widths[name] = [m.in_channels, m.out_channels]
    return widths


def count_macs_params(module, example) -> tuple[int, int]:
    """(MACs, parameters) on the example inputs, GPT-2's Conv1D layers included (Torch-Pruning's counter
    does not know them)."""
    import sys

    import torch_pruning as tp

    pytorch_utils = sys.modules.get("transformers.pytorch_utils")  # loaded when a model uses Conv1D
    conv1d = getattr(pytorch_utils, "Conv1D", None)
    extra = [0]

    def count(layer, inputs, output):
        extra[0] += output.numel() * layer.weight.shape[0]  # positions x outputs x inputs

    hooks = [m.register_forward_hook(count) for m in module.modules() if conv1d and isinstance(m, conv1d)]
    try:
        with quiet_torch():
            macs, params = tp.utils.count_ops_and_params(module, list(example))
    finally:
        for hook in hooks:
            hook.remove()
    return int(macs) + extra[0], int(params)


def importance(name: str):
    """Torch-Pruning's importance criterion: taylor, or the l1 / l2 magnitude."""
    import torch_pruning as tp

    if name == "taylor":
        return tp.importance.TaylorImportance()
    return tp.importance.MagnitudeImportance(p=1 if name == "l1" else 2)


def taylor_gradients(module, data, batch_size: int) -> None:
    """Accumulate gradients of cross-entropy on up to 4 batches of `data`: against its labels, or,
    without labels, against the model's own top-1 predictions."""
    import torch

    module.zero_grad(set_to_none=True)
    for batch, (inputs, labels) in enumerate(data.batches(batch_size)):
        if batch == 4:
            break
        out = module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs))
        logits = out.reshape(out.shape[0], -1)
        target = torch.from_numpy(labels) if labels is not None else logits.detach().argmax(1)
        torch.nn.functional.cross_entropy(logits, target).backward()
