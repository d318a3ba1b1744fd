"""Pruning that makes models smaller and faster for real, not masked.

Structured pruning (the default) removes whole channels, neurons and attention-head dimensions with
Torch-Pruning's dependency graph (pinned in pyproject.toml), so coupled layers (residual adds,
concatenations, normalization, grouped and depthwise convolutions, attention projections) shrink
together and the result is a smaller dense model with the same input and output shapes.

Unstructured pruning zeroes single weights (magnitude, layer-wise or global, or an N:M pattern) and
makes the zeros permanent: no masks and no `*_orig` tensors remain. Dense kernels do not skip zeros,
so size and latency stay the same; only the compressed size drops, and the report says so.

The layers that give the model's outputs (the classifier, output heads) are never pruned: output shapes cannot change.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from effkit.errors import StepFailed, UsageError
from effkit.fidelity import accuracy, perplexity
from effkit.passes import PassContext, PassResult
from effkit.passes.distill import DistillConfig, distill
from effkit.passes.prune_llm import layout as decoder_layout
from effkit.passes.prune_llm import prune_decoder
from effkit.passes.prune_graph import (attention_heads, count_macs_params, dependency_graph, match_ignore,
                                       modules_named, output_layers, prunable_types, widths)
from effkit.passes.prune_target import DEFAULT_TARGET_TIME, prune_step, pruner, search_target
from effkit.passes.prune_unstructured import prune_unstructured, unstructured_notes
from effkit.runners import TorchRunner, flatten_outputs
from effkit.specs import check_numbers, parse_block_ratios, parse_ratio

SCOPES = ("layer", "global")
IMPORTANCES = ("l1", "l2", "taylor")
RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class PruneConfig:
    """How to prune. Validated on construction; every error names the fix.

    Structured (default): `ratio` of channels removed per layer (`scope="layer"`) or ranked across
    the whole model (`"global"`), by `importance` (l1, l2 or taylor, which needs data); widths kept
    multiples of `round_to`; reached in `iterative_steps`. A decoder language model (Llama-style or GPT-2)
    loses whole attention heads and FFN channels instead (`effkit.passes.prune_llm`), `head_ratio` and
    `ffn_ratio` of them (each defaults to `ratio`). `prune_heads`: attention modules lose
    whole heads (`ratio` of them, through Torch-Pruning's head pruning) instead of head dimensions.
    `target_latency` / `target_macs` (a factor
    of the original, e.g. 0.5) prune in steps until the target is met, instead of a fixed ratio.

    Unstructured: `sparsity` (fraction of weights zeroed) or `pattern` "N:M" (keep N of every M
    weights along the input dimension).

    Recovery: `finetune_epochs` of training after pruning: distillation from the unpruned model
    (`distill=True`), or supervised training on labels.
    """

    unstructured: bool = False
    ratio: float = 0.5
    scope: str = "layer"
    importance: str = "l1"
    ignore: tuple[str, ...] = ()
    round_to: int | None = None
    iterative_steps: int = 1
    prune_heads: bool = False
    head_ratio: float | None = None  # decoder LMs: the fraction of attention heads removed (None: ratio)
    ffn_ratio: float | None = None  # decoder LMs: the fraction of FFN channels removed (None: ratio)
    target_latency: float | None = None
    target_macs: float | None = None
    sparsity: float | None = None
    pattern: str | None = None
    finetune_epochs: int = 0
    distill: bool = True
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    runtime: str = "onnxruntime"

    def __post_init__(self) -> None:
        check_numbers(self)
        object.__setattr__(self, "ignore", tuple(self.ignore))
        if not 0.0 < self.ratio < 1.0:
            raise UsageError(f"--ratio must be between 0 and 1 (exclusive), got {self.ratio}", "e.g. 0.5 removes half")
        for name, value in (("heads", self.head_ratio), ("ffn", self.ffn_ratio)):
            if value is not None and not 0.0 <= value < 1.0:
                raise UsageError(f"--ratio {name}={value} is outside [0, 1)", f"e.g. --ratio {name}=0.25")
        if self.scope not in SCOPES:
            raise UsageError(f"unknown --scope {self.scope!r}", "use layer or global")
        if self.importance not in IMPORTANCES:
            raise UsageError(f"unknown --importance {self.importance!r}", "use l1, l2 or taylor")
        if self.round_to is not None and self.round_to < 1:
            raise UsageError(f"--round-to must be at least 1, got {self.round_to}")
        if self.iterative_steps < 1:
            raise UsageError(f"--iterative-steps must be at least 1, got {self.iterative_steps}")
        for name, value in (("--target-latency", self.target_latency), ("--target-macs", self.target_macs)):
            if value is not None and not 0.0 < value < 1.0:
                raise UsageError(f"{name} must be below 1x and above 0x, got {value}x", "e.g. 0.5x halves it")
        if (self.target_latency is not None or self.target_macs is not None) and self.iterative_steps != 1:
            raise UsageError("--iterative-steps cannot be combined with a target",
                             "a target search prunes in its own steps of 0.05; drop --iterative-steps")
        if self.target_latency is not None and self.target_macs is not None:
            raise UsageError("--target-latency and --target-macs cannot be combined", "pick one target")
        if self.runtime not in RUNTIMES:
            raise UsageError(f"unknown runtime {self.runtime!r} for --target-latency", "use torch or onnxruntime")
        if self.finetune_epochs < 0:
            raise UsageError(f"--finetune-epochs must be >= 0, got {self.finetune_epochs}")
        if self.lr <= 0 or self.batch_size < 1:
            raise UsageError("--lr must be positive and --batch-size at least 1")
        if self.unstructured:
            self._check_unstructured()
        elif self.sparsity is not None or self.pattern is not None:
            raise UsageError("--sparsity and --pattern apply to unstructured pruning", "add --unstructured")

    def _check_unstructured(self) -> None:
        if self.target_latency is not None or self.target_macs is not None:
            raise UsageError("--target-latency / --target-macs need structured pruning",
                             "unstructured zeros do not lower dense latency or MACs; drop --unstructured")
        if self.round_to is not None or self.importance != "l1" or self.iterative_steps != 1 or self.prune_heads:
            raise UsageError("--round-to, --importance, --iterative-steps and --prune-heads apply to structured pruning",
                             "drop them, or drop --unstructured")
        if self.sparsity is None and self.pattern is None:
            raise UsageError("--unstructured needs --sparsity (e.g. 0.9) or --pattern (e.g. 2:4)")
        if self.sparsity is not None and self.pattern is not None:
            raise UsageError("--sparsity and --pattern cannot be combined", "an N:M pattern fixes the sparsity at 1-N/M")
        if self.sparsity is not None and not 0.0 < self.sparsity < 1.0:
            raise UsageError(f"--sparsity must be between 0 and 1 (exclusive), got {self.sparsity}", "e.g. 0.9")
        if self.pattern is not None:
            self.nm()

    def decoder_ratios(self) -> tuple[float, float]:
        """The fractions of attention heads and of FFN channels a decoder LM loses (each defaults to `ratio`)."""
        return (self.ratio if self.head_ratio is None else self.head_ratio,
                self.ratio if self.ffn_ratio is None else self.ffn_ratio)

    def nm(self) -> tuple[int, int]:
        """The N:M pattern as (N, M)."""
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", self.pattern or "")
        if not m or not 0 < int(m[1]) < int(m[2]):
            raise UsageError(f"cannot parse --pattern {self.pattern!r}", "write N:M with 0 < N < M, e.g. 2:4")
        return int(m[1]), int(m[2])


def ratio_fields(text: str, flag: str) -> dict:
    """PruneConfig fields from a ratio option: `0.5` (one ratio) or `heads=0.25,ffn=0.5` (a decoder LM's
    block types; `ratio` is then the larger, what back-off halves from)."""
    blocks = parse_block_ratios(text, ("heads", "ffn"), flag)
    if blocks is None:
        return {"ratio": parse_ratio(text, flag)}
    return {"ratio": max(blocks.values()), "head_ratio": blocks["heads"], "ffn_ratio": blocks["ffn"]}


# ---------------------------------------------------------------- the pass

def prune(model, config: PruneConfig, *, data=None, eval_data=None, text=None,
          progress: Callable[[str, float], None] | None = None, threads: int | None = None,
          min_time: float = DEFAULT_TARGET_TIME, iterations: int | None = None) -> PassResult:
    """Prune a torch Model as `config` says; return a new Model (saved as .pt2) with details and notes.

    `data` (labelled) is needed for taylor importance and for recovery fine-tuning; `eval_data`
    (labelled) gives accuracy before pruning, right after and after recovery; `text` (a language
    model's windows of token ids, `effkit.data.load_text_stream`) its perplexity right after pruning when
    recovery follows (the before and final figures are the step's measurement). A latency target is
    timed side by side with the original, `min_time` seconds per model and step (or `iterations` calls
    per block; `effkit.passes.prune_target`). The input model is never modified.
    """
    import torch

    _check_prunable(model)
    if threads is not None and threads < 1:
        raise UsageError("--threads must be at least 1")
    if config.importance == "taylor" and data is None:
        raise UsageError("--importance taylor needs --data", "pass --data file.npz, or use --importance l1")
    if config.finetune_epochs and data is None:
        raise UsageError("--finetune-epochs needs --data", "pass --data file.npz (with labels for --no-distill)")
    if config.finetune_epochs and not config.distill and data.labels is None:
        raise UsageError(f"--no-distill fine-tunes on labels, and {data.source} has none",
                         "add an array named labels, or distill from the unpruned model (drop --no-distill)")
    for d in (data, eval_data):
        if d is not None:
            d.check_against(model)
    torch.manual_seed(config.seed)
    module = copy.deepcopy(model.module).eval()
    example = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs)
    reference = _run(module, example)

    accuracy: dict[str, float] = {}
    if eval_data is not None and eval_data.labels is not None:
        accuracy["before"] = _accuracy(module, eval_data)
    if decoder_layout(module) is not None and not config.unstructured:
        details, notes = _prune_decoder(module, example, config, progress)
    else:
        details, notes = _prune_by_graph(model, module, example, config, data, progress, threads,
                                         {"min_time": min_time, "iterations": iterations})
    _check_same_outputs(reference, _run(module, example))
    if accuracy:
        accuracy["pruned"] = _accuracy(module, eval_data)
    if config.finetune_epochs and text is not None:
        details["perplexity_right_after_pruning"] = perplexity(TorchRunner(module.eval(), _threads()), text.inputs,
                                                               max(1, len(model.example_inputs[0])))[0]
    if config.finetune_epochs:
        module, how = _recover(model, module, config, data, progress)
        details["recovery"] = how
        if accuracy:
            accuracy["recovered"] = _accuracy(module, eval_data)
    if config.unstructured:
        unstructured_notes(model, module, details, notes)
    if accuracy:
        details["accuracy"] = accuracy
    pruned = model.replace(module=module.eval(), format="derived", path=None, save_suffix=".pt2",
                           meta={**model.meta, "pruned": details["method"]})
    return PassResult(pruned, details, notes)


def _prune_by_graph(model, module, example, config: PruneConfig, data, progress, threads, timing: dict):
    """Prune through Torch-Pruning's dependency graph (structured) or by magnitude (unstructured), in
    place; return (details, notes)."""
    graph = dependency_graph(module, example)
    names = {m: n for n, m in module.named_modules()}
    outputs = output_layers(graph, names)
    ignored = sorted(set(outputs) | match_ignore(module, config.ignore))
    details: dict[str, Any] = {"method": "unstructured" if config.unstructured else "structured",
                               "ignored_layers": ignored, "output_layers": outputs}
    notes: list[str] = []
    if config.head_ratio is not None or config.ffn_ratio is not None:
        raise UsageError("ratios per block type (heads=..., ffn=...) apply to decoder language models "
                         "(Llama-style and GPT-2 Hugging Face folders)", "give one --ratio, e.g. --ratio 0.5")
    if config.unstructured:
        prune_unstructured(module, config, ignored, details)
    else:
        macs_before, params_before = count_macs_params(module, example)
        widths_before, heads_before = widths(module), attention_heads(module)
        _prune_structured(model, module, example, graph, config, ignored, data, details, notes, progress, threads,
                          timing)
        macs_after, params_after = count_macs_params(module, example)
        details["macs"] = {"before": macs_before, "after": macs_after}
        details["parameters"] = {"before": params_before, "after": params_after}
        widths_after = widths(module)
        details["widths"] = {n: {"before": widths_before[n], "after": widths_after.get(n)} for n in widths_before}
        heads_after = attention_heads(module)
        details["attention_heads"] = {n: {"before": heads_before[n], "after": heads_after[n]} for n in heads_before}
        if macs_after >= macs_before:
            notes.append("nothing was pruned: every prunable group is coupled to an ignored or output layer")
        elif config.target_latency is None and config.target_macs is None:
            notes.append(f"structured: {config.ratio:.0%} of the channels removed ({config.scope} scope, "
                         f"{config.importance} importance); kept whole: {', '.join(ignored)}")

    return details, notes


def _prune_decoder(module, example, config: PruneConfig, progress):
    """Width-prune a decoder language model by its layout (`effkit.passes.prune_llm`), in place; return
    (details, notes)."""
    if config.target_latency is not None or config.target_macs is not None or config.iterative_steps != 1:
        raise UsageError("a decoder language model is pruned in one step to a fixed ratio",
                         "drop --target-latency, --target-macs and --iterative-steps; set --ratio heads=R,ffn=R")
    if config.ignore:
        raise UsageError("--ignore does not apply to a decoder language model: every block keeps the same width",
                         "drop --ignore, and set --ratio heads=0 or ffn=0 to keep a block type whole")
    macs_before, params_before = count_macs_params(module, example)
    head_ratio, ffn_ratio = config.decoder_ratios()
    shapes = prune_decoder(module, head_ratio, ffn_ratio, config.importance, config.round_to)
    if progress:
        progress("pruning", 1.0)
    macs_after, params_after = count_macs_params(module, example)
    details = {"method": "structured", "ignored_layers": ["embeddings", "norms", "lm_head"], "output_layers": ["lm_head"],
               "decoder": shapes, "ratio": {"heads": head_ratio, "ffn": ffn_ratio},
               "macs": {"before": macs_before, "after": macs_after},
               "parameters": {"before": params_before, "after": params_after}}
    heads, ffn = shapes["heads"], shapes["ffn_channels"]
    notes = [f"decoder width ({shapes['layout']}, {config.importance} importance): attention heads "
             f"{heads['before']} -> {heads['after']} per block"
             + (f" ({shapes['kv_heads']['before']} -> {shapes['kv_heads']['after']} key/value heads, whole groups)"
                if "kv_heads" in shapes else "")
             + f", FFN channels {ffn['before']} -> {ffn['after']}, in all {shapes['blocks']} blocks; embeddings, "
               "norms and the LM head keep their width"]
    if params_after >= params_before:
        notes.append("nothing was pruned: the ratios round to no whole head and no channel; raise --ratio")
    return details, notes


def run(model, config: PruneConfig, ctx: PassContext) -> PassResult:
    """The pass interface: `prune` with the context's data, evaluation data and progress."""
    return prune(model, config, data=ctx.data, eval_data=ctx.eval_data, progress=ctx.progress, threads=ctx.threads,
                 min_time=DEFAULT_TARGET_TIME if ctx.min_time is None else ctx.min_time, iterations=ctx.iterations)


def setting(config: PruneConfig) -> str:
    """What a prune config asks for, in words: "ratio 0.5", "sparsity 0.9", "target-latency 0.5x"."""
    if config.unstructured:
        return f"sparsity {config.sparsity:g}" if config.sparsity is not None else f"pattern {config.pattern}"
    if config.head_ratio is not None or config.ffn_ratio is not None:
        heads, ffn = config.decoder_ratios()
        return f"ratio heads={heads:g},ffn={ffn:g}"
    if config.target_latency is not None:
        return f"target-latency {config.target_latency:g}x"
    if config.target_macs is not None:
        return f"target-macs {config.target_macs:g}x"
    return f"ratio {config.ratio:g}"


def back_off(config: PruneConfig, bar, attempt: int) -> PruneConfig | None:
    """The same prune removing about half as much (the bar does not matter: less pruning is closer to
    the original); None when the setting cannot be lessened (N:M)."""
    if config.unstructured:
        return dataclasses.replace(config, sparsity=config.sparsity / 2) if config.sparsity is not None else None
    if config.target_latency is not None:
        return dataclasses.replace(config, target_latency=(1 + config.target_latency) / 2)
    if config.target_macs is not None:
        return dataclasses.replace(config, target_macs=(1 + config.target_macs) / 2)
    halve = {k: getattr(config, k) / 2 for k in ("head_ratio", "ffn_ratio") if getattr(config, k) is not None}
    return dataclasses.replace(config, ratio=config.ratio / 2, **halve)


def backoff_note(asked: PruneConfig, used: PruneConfig, result: PassResult) -> str:
    return f"backed off: {setting(asked)} broke the bar; {setting(used)} keeps it"


def _check_prunable(model) -> None:
    """Only a torch module with its Python layers can be resized: say why the others cannot."""
    if model.kind != "torch":
        raise UsageError(f"{model.source} is an ONNX model, which effkit cannot prune",
                         "prune the PyTorch model it was exported from (a factory, or a state_dict with --arch)")
    if model.format == "torchscript":
        raise UsageError(f"{model.source} is a TorchScript archive: its layers are compiled code and cannot be resized",
                         "prune the PyTorch model it was scripted from (a factory, or a state_dict with --arch)")
    if model.format == "pt2":
        raise UsageError(f"{model.source} is a torch.export archive: its layers are flattened into graph operations "
                         "that cannot be traced for pruning",
                         "prune the PyTorch model it was exported from (a factory, or a state_dict with --arch)")


def _run(module, example) -> list:
    import torch

    with torch.no_grad():
        return flatten_outputs(module(*example))


def _check_same_outputs(reference: list, pruned: list) -> None:
    if [r.shape for r in reference] != [p.shape for p in pruned]:
        raise StepFailed(f"pruning changed the output shapes from {[list(r.shape) for r in reference]} to "
                         f"{[list(p.shape) for p in pruned]}",
                         "add the layers that produce those outputs to --ignore")


# ---------------------------------------------------------------- structured

def _prune_structured(model, module, example, graph, config: PruneConfig, ignored, data, details, notes,
                      progress, threads, timing: dict) -> None:
    import torch_pruning as tp

    if not any(isinstance(m, prunable_types()) for m in module.modules()):
        raise UsageError("the model has no Linear, convolution, recurrent or attention layers to prune")
    groups = graph.get_all_groups(ignored_layers=modules_named(module, ignored),
                                  root_module_types=[tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM])
    if next(groups, None) is None:
        raise UsageError("nothing to prune: every prunable layer is an output layer or ignored",
                         f"ignored: {', '.join(ignored) or 'none'}")
    if config.target_latency is None and config.target_macs is None:
        steps = pruner(module, example, config, ignored, config.ratio, config.iterative_steps)
        for step in range(config.iterative_steps):
            prune_step(steps, module, config, data)
            if progress:
                progress("pruning", (step + 1) / config.iterative_steps)
        details["ratio"] = config.ratio
        return
    search_target(model, module, example, config, ignored, data, details, notes, progress, threads, **timing)


# ---------------------------------------------------------------- recovery

def _recover(model, module, config: PruneConfig, data, progress):
    """Recover accuracy after pruning. Returns (module, description).

    By default the pruned model is distilled from the unpruned one (effkit.passes.distill: soft
    targets, plus the labels when the data has them); `distill=False` trains on the labels alone.
    Unstructured zeros are re-applied after every optimizer step (supervised) or once at the end
    (distillation), so the sparsity survives.
    """
    import torch

    masks = _zero_masks(module) if config.unstructured else {}
    if config.distill:
        student = model.replace(module=module, path=None, format="derived")
        result = distill(model, student, DistillConfig(epochs=config.finetune_epochs, batch_size=config.batch_size,
                                                       lr=config.lr, seed=config.seed),
                         data=data, progress=progress)
        module = result.model.module
        _apply_masks(module, masks)
        return module, {"kind": "distillation from the unpruned model", **{
            k: result.details.get(k) for k in ("epochs", "train_samples", "val_samples", "best_epoch", "best_metric")}}
    torch.manual_seed(config.seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.lr)
    labels = torch.from_numpy(data.labels)
    module.train()
    steps = config.finetune_epochs * -(-len(data) // config.batch_size)
    done = 0
    for _ in range(config.finetune_epochs):
        for idx in torch.randperm(len(data)).split(config.batch_size):
            optimizer.zero_grad()
            rows = np.sort(idx.numpy())  # read only this batch's rows (the data may stream from disk)
            out = module(*(torch.from_numpy(np.ascontiguousarray(a[rows])) for a in data.inputs))
            torch.nn.functional.cross_entropy(out.reshape(out.shape[0], -1), labels[rows]).backward()
            optimizer.step()
            _apply_masks(module, masks)
            done += 1
            if progress:
                progress("fine-tuning", done / steps)
    module.eval()
    return module, {"kind": "supervised on labels", "epochs": config.finetune_epochs, "lr": config.lr,
                    "batch_size": config.batch_size, "samples": len(data)}


def _apply_masks(module, masks: dict) -> None:
    """Zero again the weights that unstructured pruning removed (masks keyed by parameter name)."""
    import torch

    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def _zero_masks(module) -> dict:
    return {name: (p != 0).to(p.dtype) for name, p in module.named_parameters()
            if name.endswith("weight") and p.dim() > 1 and bool((p == 0).any())}


def _accuracy(module, data) -> float:
    return accuracy(TorchRunner(module.eval(), _threads()), data.inputs, data.labels)


def _threads() -> int:
    import torch

    return torch.get_num_threads()
