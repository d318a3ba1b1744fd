"""Width pruning of decoder language models: whole attention heads and FFN channels, by their layout.

Torch-Pruning's dependency graph does not finish on grouped-query attention (VainF/Torch-Pruning#527;
here a 2-layer Llama from transformers 5 ran for minutes in `get_all_groups`), and it does not see
GPT-2's Conv1D layers. The decoders LLMs are made of have two known layouts, so they are pruned by them:

- Llama-style (Llama, Qwen2, Mistral): `self_attn.{q,k,v,o}_proj` and `mlp.{gate,up,down}_proj` Linears.
  Heads are removed a key/value group at a time (a KV head with the query heads that share it), so
  grouped-query attention keeps its grouping; the shared config gets the new head counts and an
  explicit `head_dim`, so the model stays consistent.
- GPT-2: `attn.c_attn` (query, key and value side by side) and `attn.c_proj`, `mlp.c_fc` and
  `mlp.c_proj`, as Conv1D layers whose weights are stored input-major.

Every layer keeps the same number of heads and channels (the ones with the largest weight norms, l1 or
l2 over every weight that reads or writes them), so the config describes every layer; embeddings, norms
and the LM head keep their width, and so do the model's inputs and outputs.
"""

from __future__ import annotations

from typing import Any

from effkit.errors import UsageError

LLAMA, GPT2 = "llama-style", "gpt-2"


def layout(module: Any) -> str | None:
    """The decoder layout of a (wrapped) Hugging Face causal LM that effkit prunes by its layout, else None."""
    blocks = _blocks(module)
    if not blocks:
        return None
    first = blocks[0]
    attn, mlp = getattr(first, "self_attn", None), getattr(first, "mlp", None)
    if attn is not None and mlp is not None and all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")) \
            and all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj")):
        return LLAMA
    attn = getattr(first, "attn", None)
    if attn is not None and mlp is not None and hasattr(attn, "c_attn") and hasattr(mlp, "c_fc"):
        return GPT2
    return None


def prune_decoder(module: Any, head_ratio: float, ffn_ratio: float, importance: str, round_to: int | None) -> dict:
    """Remove `head_ratio` of every block's attention heads (whole key/value groups) and `ffn_ratio` of its
    FFN channels, in place. Returns {"layout", "heads": {before, after}, "kv_heads": ..., "ffn": ...}."""
    import torch

    if importance not in ("l1", "l2"):
        raise UsageError(f"--importance {importance} is not available for decoder language models",
                         "use --importance l1 or l2 (weight magnitude)")
    kind = layout(module)
    config = _hf_config(module)
    with torch.no_grad():
        if kind == LLAMA:
            return _prune_llama(_blocks(module), config, head_ratio, ffn_ratio, importance, round_to or 1)
        return _prune_gpt2(_blocks(module), config, head_ratio, ffn_ratio, importance, round_to or 1)


def _blocks(module: Any) -> list:
    """The decoder blocks: `model.layers` (Llama-style) or `transformer.h` (GPT-2), wherever they sit."""
    for name, sub in module.named_modules():
        if name.endswith(("model.layers", "transformer.h")) or name in ("layers", "h"):
            return list(sub)
    return []


def _hf_config(module: Any) -> Any:
    return next(m.config for m in module.modules() if hasattr(m, "config") and hasattr(m.config, "to_dict"))


def _keep(total: int, ratio: float, round_to: int = 1) -> int:
    """How many of `total` units stay when `ratio` of them go: at least one (a multiple of `round_to`)."""
    kept = total - round(ratio * total)
    if round_to > 1:
        kept = max(round_to, round(kept / round_to) * round_to)
    return min(total, max(1, kept))


def _norm(weights: list, importance: str) -> Any:
    """Per-unit importance: the l1 or l2 norm of each row of every [units, n] weight in `weights`, summed."""
    import torch

    p = 1 if importance == "l1" else 2
    return sum(torch.linalg.vector_norm(w.float(), ord=p, dim=1) for w in weights)


def _top(scores: Any, kept: int) -> Any:
    """The indices of the `kept` largest scores, in their original order."""
    return scores.topk(kept).indices.sort().values


def _linear(layer: Any, rows: Any = None, cols: Any = None) -> Any:
    """A copy of nn.Linear `layer` with only the output `rows` and input `cols` given (None: all)."""
    import torch

    weight = layer.weight
    weight = weight[rows] if rows is not None else weight
    weight = weight[:, cols] if cols is not None else weight
    bias = layer.bias
    out = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    out.weight.copy_(weight)
    if bias is not None:
        out.bias.copy_(bias[rows] if rows is not None else bias)
    return out


def _conv1d(layer: Any, cols: Any = None, rows: Any = None) -> Any:
    """A copy of GPT-2's Conv1D `layer` (weight [in, out]) with only the output `cols` and input `rows`."""
    from transformers.pytorch_utils import Conv1D

    weight = layer.weight
    weight = weight[:, cols] if cols is not None else weight
    weight = weight[rows] if rows is not None else weight
    out = Conv1D(weight.shape[1], weight.shape[0])
    out.weight.data = weight.clone()
    out.bias.data = (layer.bias[cols] if cols is not None else layer.bias).clone()
    return out


def _prune_llama(blocks: list, config: Any, head_ratio: float, ffn_ratio: float, importance: str,
                 round_to: int) -> dict:
    import torch

    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = blocks[0].self_attn.head_dim
    share = heads // kv  # query heads per key/value head
    groups = _keep(kv, head_ratio)
    inner = blocks[0].mlp.gate_proj.out_features
    channels = _keep(inner, ffn_ratio, round_to)
    for block in blocks:
        attn, mlp = block.self_attn, block.mlp
        if groups < kv:
            q = attn.q_proj.weight.reshape(kv, share * head_dim, -1)
            k, v = (p.weight.reshape(kv, head_dim, -1) for p in (attn.k_proj, attn.v_proj))
            o = attn.o_proj.weight.t().reshape(kv, share * head_dim, -1)
            scores = _norm([t.reshape(kv, -1) for t in (q, k, v, o)], importance)
            keep = _top(scores, groups)
            q_rows = (keep[:, None] * share * head_dim + torch.arange(share * head_dim)).reshape(-1)
            kv_rows = (keep[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
            attn.q_proj, attn.o_proj = _linear(attn.q_proj, rows=q_rows), _linear(attn.o_proj, cols=q_rows)
            attn.k_proj, attn.v_proj = _linear(attn.k_proj, rows=kv_rows), _linear(attn.v_proj, rows=kv_rows)
        if channels < inner:
            scores = _norm([mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight.t()], importance)
            keep = _top(scores, channels)
            mlp.gate_proj, mlp.up_proj = _linear(mlp.gate_proj, rows=keep), _linear(mlp.up_proj, rows=keep)
            mlp.down_proj = _linear(mlp.down_proj, cols=keep)
    # the config is shared by every block: new head counts, and head_dim said outright (no longer hidden/heads)
    config.head_dim = head_dim
    config.num_attention_heads, config.num_key_value_heads = groups * share, groups
    config.intermediate_size = channels
    return {"layout": LLAMA, "heads": {"before": heads, "after": groups * share},
            "kv_heads": {"before": kv, "after": groups}, "ffn_channels": {"before": inner, "after": channels},
            "blocks": len(blocks)}


def _prune_gpt2(blocks: list, config: Any, head_ratio: float, ffn_ratio: float, importance: str,
                round_to: int) -> dict:
    import torch

    first = blocks[0].attn
    heads, head_dim, width = first.num_heads, first.head_dim, first.split_size
    kept_heads = _keep(heads, head_ratio)
    inner = blocks[0].mlp.c_fc.weight.shape[1]
    channels = _keep(inner, ffn_ratio, round_to)
    for block in blocks:
        attn, mlp = block.attn, block.mlp
        if kept_heads < heads:
            # c_attn's output columns are [query | key | value], each heads x head_dim
            qkv = attn.c_attn.weight.t().reshape(3, heads, head_dim, -1).transpose(0, 1).reshape(heads, -1)
            o = attn.c_proj.weight.reshape(heads, -1)  # input-major: its rows are the heads' outputs
            keep = _top(_norm([qkv, o], importance), kept_heads)
            rows = (keep[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
            cols = torch.cat([part * width + rows for part in range(3)])
            attn.c_attn, attn.c_proj = _conv1d(attn.c_attn, cols=cols), _conv1d(attn.c_proj, rows=rows)
            attn.num_heads, attn.split_size = kept_heads, kept_heads * head_dim
        if channels < inner:
            keep = _top(_norm([mlp.c_fc.weight.t(), mlp.c_proj.weight], importance), channels)
            mlp.c_fc, mlp.c_proj = _conv1d(mlp.c_fc, cols=keep), _conv1d(mlp.c_proj, rows=keep)
    # GPT-2's config derives head_dim from n_embd / n_head, so it cannot describe fewer heads: the module
    # attributes carry them, and the pruned model is saved as a program (.pt2), not as a config folder
    config.n_inner = channels
    return {"layout": GPT2, "heads": {"before": heads, "after": kept_heads},
            "ffn_channels": {"before": inner, "after": channels}, "blocks": len(blocks)}
