"""ONNX Runtime's transformer fusions (`onnxruntime.transformers.optimizer.optimize_model`) on an fp32
graph: attention, LayerNorm, SkipLayerNorm, (Bias)GELU and embedding fusions into ORT's contrib ops.

Applied to transformer-like graphs only (LayerNormalization, MatMul and Softmax all present), with the
Python fusions alone (opt_level 0: ONNX Runtime applies its own graph optimizations when a session
loads the file anyway). The model type ("bert" or "gpt2") and the attention shape come from a Hugging
Face folder's config.json when there is one; otherwise the optimizer reads them from the graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from effkit.errors import first_line
from effkit.onnx_files import is_large, load_graph
from effkit.passes.onnx_preprocess import quiet_ort
from effkit.util import quiet_loggers, workdir

TRANSFORMER_OPS = ("LayerNormalization", "MatMul", "Softmax")


def not_transformer(onnx_path: Path) -> str | None:
    """Why the fusions do not apply to the graph at `onnx_path`, or None when it is transformer-like."""
    ops = {node.op_type for node in load_graph(onnx_path).graph.node}
    missing = [op for op in TRANSFORMER_OPS if op not in ops]
    if missing:
        return f"not a transformer graph (no {', '.join(missing)}): ONNX Runtime's transformer fusions do not apply"
    return None


def fusion_shape(model: Any) -> tuple[str, int, int]:
    """(model_type, num_heads, hidden_size) for the optimizer: from a Hugging Face folder's config.json
    (GPT-2 family: "gpt2"; every other: "bert"), else ("bert", 0, 0): 0 lets the optimizer read the graph."""
    path = Path(model.path) if getattr(model, "format", None) == "hf" and model.path else None
    if path is None or not (path / "config.json").is_file():
        return "bert", 0, 0
    config = json.loads((path / "config.json").read_text())
    kind = "gpt2" if config.get("model_type") == "gpt2" else "bert"
    heads = config.get("num_attention_heads", config.get("n_head", 0))
    hidden = config.get("hidden_size", config.get("n_embd", 0))
    return kind, int(heads or 0), int(hidden or 0)


def fuse(onnx_path: Path, model: Any) -> tuple[Path, dict]:
    """The graph at `onnx_path` with ORT's transformer fusions applied, written to a new work file, and
    the fused operators counted ({op: nodes}, those found only). Raises ValueError when nothing fused or the
    optimizer failed."""
    import tempfile

    from onnxruntime.transformers.optimizer import optimize_model

    model_type, heads, hidden = fusion_shape(model)
    with quiet_ort(), quiet_loggers("onnxruntime.transformers"):
        try:
            optimizer = optimize_model(str(onnx_path), model_type=model_type, num_heads=heads, hidden_size=hidden,
                                       opt_level=0)
        except Exception as e:  # e.g. 1.32 leaves a GPT-2 graph from torch's dynamo exporter cyclic ("not a DAG")
            raise ValueError(f"ONNX Runtime's transformer optimizer failed on this graph: {first_line(e)}") from e
        fused = {op: n for op, n in optimizer.get_fused_operator_statistics().items()
                 if n and op != "LayerNormalization"}  # LayerNormalization was there before
        if not fused:
            raise ValueError("ONNX Runtime's transformer optimizer found nothing to fuse in this graph")
        out = Path(tempfile.mkdtemp(dir=workdir())) / "fused.onnx"
        optimizer.save_model_to_file(str(out), use_external_data_format=is_large(onnx_path))
    return out, {"model_type": model_type, "fused": fused}
