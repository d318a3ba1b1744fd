"""`effkit bench`: measure a model alone."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from effkit.cli.common import (
    ArchOpt, ForceOpt, InputShapeOpt, InputsOpt, IterationsOpt, JsonOpt, MarkdownOpt, MinTimeOpt, ModelArg,
    ThreadsOpt, TrustOpt, WarmupOpt, check_outputs_free, command, console_for, load, progress_bar, warning_text,
    write_outputs,
)
from effkit.errors import UsageError


def parse_runtimes(runtime: str, kind: str) -> list[str]:
    """`torch`, `onnxruntime` or `all` (all: what applies to the model's kind)."""
    if runtime == "all":
        return ["torch", "onnxruntime"] if kind == "torch" else ["onnxruntime"]
    if runtime not in ("torch", "onnxruntime"):
        raise UsageError(f"unknown runtime {runtime!r}", "use torch, onnxruntime or all")
    if runtime == "torch" and kind == "onnx":
        raise UsageError("an ONNX model runs on onnxruntime only", "use --runtime onnxruntime")
    return [runtime]


@command("bench")
def bench_command(
    model: ModelArg,
    runtime: Annotated[Optional[str], typer.Option(
        "--runtime", help="torch, onnxruntime (a torch model is exported to a verified temporary ONNX) or all "
                          "(default: torch for torch models, onnxruntime for ONNX)")] = None,
    batch_size: Annotated[Optional[list[int]], typer.Option(
        "--batch-size", help="Batch size; repeat for a sweep (default: the example inputs' batch)", min=1)] = None,
    threads: ThreadsOpt = None,
    warmup: WarmupOpt = 10,
    iterations: IterationsOpt = None,
    min_time: MinTimeOpt = 1.0,
    arch: ArchOpt = None,
    trust: TrustOpt = False,
    input_shape: InputShapeOpt = None,
    inputs: InputsOpt = None,
    json: JsonOpt = None,
    markdown: MarkdownOpt = None,
    force: ForceOpt = False,
) -> None:
    """Measure a model: latency percentiles and throughput, size, peak memory, and the machine it ran on."""
    from effkit.benchmark import bench
    from effkit.report import bench_markdown, bench_table

    check_outputs_free([json, markdown], force)
    loaded = load(model, arch, trust, input_shape, inputs)
    runtimes = parse_runtimes(runtime or ("torch" if loaded.kind == "torch" else "onnxruntime"), loaded.kind)
    with progress_bar() as progress:
        result = bench(loaded, runtimes=runtimes, batch_sizes=batch_size, threads=threads, warmup=warmup,
                       iterations=iterations, min_time=min_time, progress=progress)
    console = console_for(json)
    console.print(bench_table(result))
    for warning in result.warnings:
        console.print(warning_text(warning))
    write_outputs(json, result.to_json, markdown, lambda: bench_markdown(result), force)
