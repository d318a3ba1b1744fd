"""`effkit bench`: measure a model alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from effkit.benchmark import DEFAULT_WARMUP, bench
from effkit.cli.data_options import (ImageOpt, ImageSizeOpt, MaxLengthOpt, MeanOpt, StdOpt, TextFileOpt, TextOpt,
                                     example_reading, example_texts)
from effkit.cli.common import (HtmlOpt, ArchOpt, ForceOpt, InputShapeOpt, InputsOpt, JsonOpt, MarkdownOpt, MinTimeOpt,
                               ModelArg, ThreadsOpt, TimeoutOpt, TrustOpt, check_outputs_free, command, console_for, load,
                               print_warnings, progress_bar, resolve_threads, warned, write_outputs)
from effkit.errors import UsageError
from effkit.generation import (DEFAULT_NEW_TOKENS, DEFAULT_PROMPT_LEN, bench_generation, check_counts,
                              check_generation)
from effkit.generation import DEFAULT_WARMUP as GENERATION_WARMUP
from effkit.report.text import bench_markdown, bench_table, generation_markdown, generation_table


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
    generate: Annotated[bool, typer.Option(
        "--generate", help="Time greedy text generation of a causal LM (hf:PATH, or the ONNX file effkit quantize "
                           "writes of one) with its KV cache: time to first "
                           "token, decode latency per token, prefill and decode tokens/s. --runtime onnxruntime "
                           "exports it with past key/values first (untimed, checked against torch token by "
                           "token); all runs both and gives the ratio of decode tokens/s.")] = False,
    prompt_len: Annotated[int, typer.Option(
        "--prompt-len", help="With --generate: tokens in the (seeded random) prompt.")] = DEFAULT_PROMPT_LEN,
    new_tokens: Annotated[int, typer.Option(
        "--new-tokens", help="With --generate: tokens to generate after the prompt.")] = DEFAULT_NEW_TOKENS,
    prompt: Annotated[Optional[str], typer.Option(
        "--prompt", help="With --generate: prompt text, tokenized with the folder's tokenizer.json "
                         "(instead of --prompt-len random tokens).")] = None,
    prompt_file: Annotated[Optional[Path], typer.Option(
        "--prompt-file", help="With --generate: read the prompt text from a file.")] = None,
    threads: ThreadsOpt = None,
    warmup: Annotated[Optional[int], typer.Option(
        "--warmup", help=f"Untimed calls before timing (default {DEFAULT_WARMUP}; with --generate, "
                         f"{GENERATION_WARMUP} generation).", min=0)] = None,
    iterations: Annotated[Optional[int], typer.Option(
        "--iterations", help="Timed calls per measurement, or with --generate timed generations (default: as "
                             "many as fit in --min-time).", min=1)] = None,
    min_time: MinTimeOpt = 1.0,
    arch: ArchOpt = None,
    trust: TrustOpt = False,
    input_shape: InputShapeOpt = None,
    inputs: InputsOpt = None,
    text: TextOpt = None,
    text_file: TextFileOpt = None,
    image: ImageOpt = None,
    max_length: MaxLengthOpt = None,
    image_size: ImageSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    json: JsonOpt = None,
    html: HtmlOpt = None,
    markdown: MarkdownOpt = None,
    force: ForceOpt = False,
    timeout: TimeoutOpt = None,
) -> None:
    """Measure a model: latency percentiles and throughput, size, peak memory, and the machine it ran on.

With --generate, a causal language model generates text greedily instead, and the runs hold decode \
latency per token, with time to first token and tokens/s beside it.
    """
    check_outputs_free([json, html, markdown], force)
    if generate:
        _bench_generate(model, runtime, batch_size, prompt_len, new_tokens, prompt, prompt_file, threads, warmup,
                        iterations, min_time, trust, json, markdown, html, force)
        return
    given = [name for name, value in (("--prompt", prompt), ("--prompt-file", prompt_file)) if value is not None]
    if given:
        raise UsageError(f"{given[0]} applies to generation", "add --generate")
    warmup = DEFAULT_WARMUP if warmup is None else warmup
    texts = example_texts(text, text_file)
    loaded = load(model, arch, trust, input_shape, inputs, texts=texts, images=image or [],
                  reading=example_reading(max_length, image_size, mean, std), console=console_for(json))
    check_outputs_free([json, html, markdown], force)  # against the files loading read (an ONNX model's data, ...)
    threads = resolve_threads(threads, console_for(json))
    runtimes = parse_runtimes(runtime or ("torch" if loaded.kind == "torch" else "onnxruntime"), loaded.kind)
    with progress_bar() as progress:
        result = bench(loaded, runtimes=runtimes, batch_sizes=batch_size, threads=threads, warmup=warmup,
                       iterations=iterations, min_time=min_time, progress=progress)
    result.general_warnings = warned()
    console = console_for(json)
    console.print(bench_table(result))
    print_warnings(console, result.warnings)
    write_outputs(json, result.to_json, markdown, lambda: bench_markdown(result), force, html_path=html)


def _prompt_text(prompt: str | None, prompt_file: Path | None) -> str | None:
    if prompt is not None and prompt_file is not None:
        raise UsageError("--prompt and --prompt-file both give a prompt", "pass one of them")
    if prompt_file is None:
        return prompt
    try:
        return prompt_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read --prompt-file {prompt_file}: {getattr(e, 'strerror', None) or e}",
                         "pass a UTF-8 text file") from e


def _bench_generate(model: str, runtime, batch_size, prompt_len, new_tokens, prompt, prompt_file, threads, warmup,
                    iterations, min_time, trust, json, markdown, html, force) -> None:
    """`bench --generate`: every refusal (not a causal LM, no tokens, too long, no tokenizer, too big for
    memory, an unknown runtime) comes before the model loads. --runtime onnxruntime exports the model with
    past key/values (untimed, verified against torch token by token); all times torch and onnxruntime."""
    path = Path(model[3:] if model.startswith("hf:") else model)
    onnx_file = path.suffix == ".onnx" and path.is_file()  # effkit quantize's causal LM, with its KV cache
    runtimes = parse_runtimes(runtime or ("onnxruntime" if onnx_file else "torch"), "torch")
    if not onnx_file and not (path / "config.json").is_file():
        raise UsageError(f"--generate needs a Hugging Face causal LM folder or an ONNX file with past key/values, "
                         f"and {model} is neither", "pass hf:PATH to a folder with config.json")
    text = _prompt_text(prompt, prompt_file)
    batch_sizes = batch_size or [1]
    if onnx_file:
        check_counts(prompt_len, new_tokens)
    else:
        check_generation(path, prompt_len=prompt_len, new_tokens=new_tokens, batch_sizes=batch_sizes, prompt=text,
                         runtimes=runtimes)
    loaded = load(model, None, trust, None, None, console=console_for(json), show_inputs=False)
    threads = resolve_threads(threads, console_for(json))
    with progress_bar() as progress:
        result = bench_generation(loaded, prompt=text, prompt_len=prompt_len, new_tokens=new_tokens,
                                  batch_sizes=batch_sizes, runtimes=runtimes, threads=threads,
                                  warmup=GENERATION_WARMUP if warmup is None else warmup, iterations=iterations,
                                  min_time=min_time, progress=progress)
    result.general_warnings = warned()
    console = console_for(json)
    console.print(generation_table(result))
    print_warnings(console, result.warnings)
    write_outputs(json, result.to_json, markdown, lambda: generation_markdown(result), force, html_path=html)
