"""`effkit prune`: structured (channels, neurons, heads removed for real) or unstructured pruning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from effkit.apply import apply_step
from effkit.cli.bench_cmd import parse_runtimes
from effkit.cli.data_options import (EvalTextOpt, ImageOpt, ImageSizeOpt, LabelFieldOpt, LimitOpt, MaxLengthOpt, MeanOpt,
                                     NumWorkersOpt, ResizeOpt, StdOpt, TextFieldOpt, TextFileOpt, TextOpt,
                                     example_texts, reading)
from effkit.cli.common import (HtmlOpt, ArchOpt, ExportOnnxOpt, ForceOpt, InputShapeOpt, InputsOpt, IterationsOpt, JsonOpt,
                               MarkdownOpt, MinTimeOpt, ModelArg, ThreadsOpt, TimeoutOpt, TrustOpt, WarmupOpt,
                               bar_options_help, check_outputs_free, command, console_for, load, resolve_threads,
                               show_step)
from effkit.data import load_data, load_text_stream
from effkit.errors import InputError, UsageError
from effkit.judge import DEFAULT_FIDELITY_BAR, DEFAULT_MAX_ACCURACY_DROP, quality_bar
from effkit.passes.prune import PruneConfig, prune, ratio_fields
from effkit.report.text import outcome_markdown, outcome_table
from effkit.specs import parse_factor, parse_ratio


@command("prune")
def prune_command(
    model: ModelArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="The pruned model (.pt2: loads back without your code).")],
    ratio: Annotated[str, typer.Option("--ratio", help="Fraction of channels to remove, in (0, 1) (a --target-* replaces it). "
                                       "A decoder LM (Llama-style, GPT-2) loses whole attention heads and FFN "
                                       "channels: one ratio for both, or per block type: heads=0.25,ffn=0.5.")] = "0.5",
    scope: Annotated[str, typer.Option("--scope", help="layer: the ratio in every layer; global: ranked across "
                                                       "the model.")] = "layer",
    importance: Annotated[str, typer.Option("--importance", help="l1, l2 or taylor (taylor needs --data).")] = "l1",
    ignore: Annotated[Optional[list[str]], typer.Option(
        "--ignore", help="Layer name or glob to keep unpruned; repeat. Output layers are always kept.")] = None,
    round_to: Annotated[Optional[int], typer.Option("--round-to", help="Keep widths multiples of N (e.g. 8).",
                                                    min=1)] = None,
    iterative_steps: Annotated[int, typer.Option("--iterative-steps", help="Reach the ratio in N steps.", min=1)] = 1,
    prune_heads: Annotated[bool, typer.Option(
        "--prune-heads", help="Remove whole attention heads (the --ratio of them) instead of narrowing every head; "
                              "nn.MultiheadAttention keeps its heads.")] = False,
    target_latency: Annotated[Optional[str], typer.Option(
        "--target-latency", help="Prune in steps until latency is this factor of the original, e.g. 0.5x: timed "
                                 "side by side with the original (--min-time/2 seconds each per step), met when the "
                                 "95% interval of the ratio is at or below it.")] = None,
    target_macs: Annotated[Optional[str], typer.Option(
        "--target-macs", help="Prune in steps until MACs are this factor of the original, e.g. 0.5x.")] = None,
    target_runtime: Annotated[str, typer.Option(
        "--target-runtime", help="Runtime on which --target-latency is measured: onnxruntime or torch.")] = "onnxruntime",
    unstructured: Annotated[bool, typer.Option("--unstructured", help="Zero single weights instead (dense size "
                                                                      "and latency do not drop).")] = False,
    sparsity: Annotated[Optional[str], typer.Option("--sparsity", help="Unstructured: fraction of weights zeroed.")] = None,
    pattern: Annotated[Optional[str], typer.Option("--pattern", help="Unstructured N:M pattern, e.g. 2:4.")] = None,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Recover accuracy with N epochs on --data.",
                                                 min=0)] = 0,
    no_distill: Annotated[bool, typer.Option("--no-distill", help="Fine-tune on labels instead of distilling from "
                                                                  "the unpruned model.")] = False,
    data: Annotated[Optional[str], typer.Option("--data", help="Training data (for taylor and fine-tuning; a "
                                                               ".txt/.jsonl text recovers a language model).")] = None,
    eval_data: Annotated[Optional[str], typer.Option("--eval", help="Labelled data for accuracy before and after "
                                                                    "(and the quality bar).")] = None,
    eval_text: EvalTextOpt = None,
    max_accuracy_drop: Annotated[Optional[str], typer.Option(
        "--max-accuracy-drop", help=bar_options_help(DEFAULT_MAX_ACCURACY_DROP, DEFAULT_FIDELITY_BAR)[0])] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(
        "--tolerance", help=bar_options_help(DEFAULT_MAX_ACCURACY_DROP, DEFAULT_FIDELITY_BAR)[1])] = None,
    lr: Annotated[float, typer.Option("--lr", help="Fine-tuning learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Fine-tuning batch size.", min=1)] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    runtime: Annotated[str, typer.Option("--runtime", help="Runtimes of the before/after measurement: torch, "
                                                           "onnxruntime or all.")] = "all",
    limit: LimitOpt = None,
    num_workers: NumWorkersOpt = 0,
    image_size: ImageSizeOpt = None,
    resize: ResizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    max_length: MaxLengthOpt = None,
    text_field: TextFieldOpt = "text",
    label_field: LabelFieldOpt = "label",
    threads: ThreadsOpt = None,
    warmup: WarmupOpt = 10,
    iterations: IterationsOpt = None,
    min_time: MinTimeOpt = 1.0,
    arch: ArchOpt = None,
    trust: TrustOpt = False,
    input_shape: InputShapeOpt = None,
    inputs: InputsOpt = None,
    text: TextOpt = None,
    text_file: TextFileOpt = None,
    image: ImageOpt = None,
    export_onnx: ExportOnnxOpt = None,
    json: JsonOpt = None,
    html: HtmlOpt = None,
    markdown: MarkdownOpt = None,
    force: ForceOpt = False,
    timeout: TimeoutOpt = None,
) -> None:
    """Prune a model for real: a smaller dense model (or permanent unstructured zeros), measured before and after."""
    if output.suffix.lower() != ".pt2":
        raise UsageError(f"output {output} must end in .pt2 (a torch.export archive that loads back without code)",
                         "for ONNX, add --export-onnx PATH")
    if export_onnx is not None and export_onnx.suffix.lower() != ".onnx":
        raise UsageError(f"--export-onnx {export_onnx} must end in .onnx")
    config = PruneConfig(
        unstructured=unstructured, **ratio_fields(ratio, "--ratio"), scope=scope, importance=importance,
        ignore=tuple(ignore or ()), round_to=round_to, iterative_steps=iterative_steps,
        prune_heads=prune_heads,
        target_latency=parse_factor(target_latency, "--target-latency") if target_latency else None,
        target_macs=parse_factor(target_macs, "--target-macs") if target_macs else None,
        sparsity=parse_ratio(sparsity, "--sparsity") if sparsity is not None else None, pattern=pattern,
        finetune_epochs=finetune_epochs, distill=not no_distill, lr=lr, batch_size=batch_size, seed=seed,
        runtime=target_runtime,
    )
    bar = quality_bar(max_accuracy_drop, tolerance or (), labelled=eval_data is not None, text=eval_text is not None)
    if bar.max_drop_pt is not None and eval_data is None:
        raise UsageError("--max-accuracy-drop needs labelled evaluation data", "pass --eval FILE with labels")
    check_outputs_free([output, export_onnx, json, html, markdown], force)
    data_reading = reading(limit, num_workers, image_size, resize, mean, std, max_length, text_field, label_field)
    texts = example_texts(text, text_file)
    loaded = load(model, arch, trust, input_shape, inputs, texts=texts, images=image or [],
                  data=(eval_data, data), console=console_for(json),
                  reading=data_reading)
    threads = resolve_threads(threads, console_for(json))
    check_outputs_free([output, export_onnx, json, html, markdown], force, inputs=(loaded.path,))
    runtimes = parse_runtimes(runtime, loaded.kind)
    train, evaluation = _data(data, eval_data, loaded, data_reading)
    text = None if eval_text is None else load_text_stream(eval_text, loaded, data_reading)
    check_outputs_free([output, export_onnx, json, html, markdown], force)  # against every file read so far
    _run(loaded, config, bar, train, evaluation, text, output, export_onnx, runtimes, threads, warmup, iterations,
         min_time, json, markdown, html, force)


def _data(data: str | None, eval_data: str | None, model, data_reading):
    train = load_data(data, model=model, reading=data_reading) if data else None
    evaluation = load_data(eval_data, model=model, reading=data_reading) if eval_data else None
    if evaluation is not None and evaluation.labels is None:
        raise InputError(f"--eval {eval_data} has no labels, so accuracy cannot be measured",
                         "add an array named labels")
    return train, evaluation


def _run(loaded, config, bar, train, evaluation, text, output, export_onnx, runtimes, threads, warmup, iterations,
         min_time, json, markdown, html, force) -> None:
    console = console_for(json)
    # Sizes compare like with like: both models as .pt2 archives (the output's format).
    original = loaded.replace(path=None, save_suffix=".pt2")

    def step(progress):
        run = lambda: prune(loaded, config, data=train, eval_data=evaluation, text=text,  # noqa: E731
                            progress=progress, threads=threads, min_time=min_time / 2, iterations=iterations)
        return apply_step("prune", original, run, bar=bar, output=output, runtimes=runtimes, threads=threads,
                          warmup=warmup, iterations=iterations, min_time=min_time, eval_data=evaluation, text=text,
                          judge_data=text if evaluation is None else None,
                          export_onnx=export_onnx, force=force, what="the pruned model",
                          hint="prune less (a smaller --ratio), recover with --finetune-epochs N --data FILE, or "
                               "loosen --max-accuracy-drop / --tolerance", progress=progress)

    show_step(step, lambda outcome: console.print(outcome_table(outcome)), json, markdown, outcome_markdown, force, html)
