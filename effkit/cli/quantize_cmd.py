"""`effkit quantize`: int8 (dynamic, static or weight-only) on ONNX Runtime or torch, measured before and after."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from effkit.apply import apply_step
from effkit.cli.common import (HtmlOpt, ArchOpt, ExportOnnxOpt, ForceOpt, InputShapeOpt, InputsOpt, IterationsOpt, JsonOpt,
                               MarkdownOpt, MinTimeOpt, ModelArg, ThreadsOpt, TimeoutOpt, TrustOpt, WarmupOpt,
                               check_outputs_free, command, console_for, load, resolve_threads, show_step, warn)
from effkit.data import load_data, load_text_stream
from effkit.cli.data_options import (EvalTextOpt, ImageOpt, ImageSizeOpt, LabelFieldOpt, LimitOpt, MaxLengthOpt, MeanOpt,
                                     NumWorkersOpt, ResizeOpt, StdOpt, TextFieldOpt, TextFileOpt, TextOpt,
                                     example_texts, reading)
from effkit.env import cpu_info, int8_outlook
from effkit.errors import UsageError
from effkit.judge import judging_split, quality_bar, random_inputs_warning
from effkit.passes.quantize import (DEFAULT_CALIB_SAMPLES, DEFAULT_GROUP_SIZE, DEFAULT_TOLERANCE, QuantizeConfig,
                                   check_calibration, quantize)
from effkit.passes.quantize_calib import CALIBRATED
from effkit.report.text import fmt_ms, outcome_markdown, outcome_table
from effkit.specs import parse_threshold


@command("quantize")
def quantize_command(
    model: ModelArg,
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="Where to write the int8 model: OUT.onnx (ONNX Runtime), OUT.ts (TorchScript, "
                               "torch.ao), OUT.pt2 (torchao), or OUT without suffix (the suffix of the candidate "
                               "chosen).")],
    method: Annotated[str, typer.Option(
        "--method", help="dynamic (on torch also torchao's per-token int8 for Linear-heavy models), static (needs "
                         "--calib), smoothquant (needs --calib: outlier channels' scale moved into the weights, for "
                         "transformers), weight-only, bf16 (torch, saved as .pt2; where the CPU has avx512_bf16 or "
                         "AMX), or auto (dynamic and bf16; static and smoothquant when --calib is given; weight-only "
                         "int4/int8 for causal language models, GPTQ too with --calib). On transformer graphs ONNX "
                         "Runtime's fusions are measured too: the fused fp32 graph and dynamic int8 on it.")] = "auto",
    alpha: Annotated[Optional[float], typer.Option(
        "--alpha", help="SmoothQuant migration strength in [0, 1] (default: searched per LayerNorm on the "
                        "calibration data).")] = None,
    bits: Annotated[Optional[int], typer.Option(
        "--bits", help="Weight-only: 4 or 8-bit weights in groups (ONNX Runtime MatMulNBits; on torch, torchao's "
                       "int4 in groups and int8 per channel, and effkit's int8); default: int8 per channel. With "
                       "--method auto on a causal LM, 4 and 8 are both candidates.")] = None,
    group_size: Annotated[int, typer.Option(
        "--group-size", help="With --bits: weights per scale along the input axis (a power of two >= 16).")]
    = DEFAULT_GROUP_SIZE,
    weight_algorithm: Annotated[str, typer.Option(
        "--weight-algorithm", help="With --bits 4 on ONNX Runtime: rtn (round to nearest), hqq (half-quadratic "
                                      "fit) or gptq (error-correcting, calibrated: needs --calib). rtn with "
                                      "--calib measures GPTQ as one more candidate.")] = "rtn",
    backend: Annotated[str, typer.Option(
        "--backend", help="onnxruntime, torch, or auto: measure every candidate, keep the fastest that meets "
                          "the tolerance.")] = "auto",
    calib: Annotated[Optional[str], typer.Option(
        "--calib", help="Calibration data for static int8: .npz, .npy, .pt, a folder of .npy or of images, .txt/.jsonl "
                        "text, or module:factory "
                        "(Dataset, DataLoader, iterable); 'random' calibrates on random inputs (warned).")] = None,
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="Calibration samples to use.", min=1)]
    = DEFAULT_CALIB_SAMPLES,
    calib_method: Annotated[str, typer.Option("--calib-method", help="minmax, entropy or percentile.")] = "minmax",
    activation_type: Annotated[str, typer.Option(
        "--activation-type", help="Static int8 activations: u8 (fast on x86) or s8.")] = "u8",
    weight_type: Annotated[str, typer.Option("--weight-type", help="int8 weights: s8 or u8.")] = "s8",
    per_channel: Annotated[Optional[bool], typer.Option(
        "--per-channel/--per-tensor", show_default=False,
        help="Weight scales per output channel or per tensor (default: per-channel, and for dynamic int8 "
             "per-tensor measured too, kept when it meets the tolerance and is faster).")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option(
        "--exclude", help="Keep layers in float: a layer or node name, or a glob ('encoder.0.*'); repeatable.")]
    = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(
        "--tolerance", help=f"Quality bar on held-out inputs, e.g. cosine>=0.99, sqnr>=20, for language models "
                            f"agreement>=0.95 (next-token top-1), kl<=0.05 or, on --eval-text, perplexity:+5%; "
                            f"repeatable (default without --eval: {DEFAULT_TOLERANCE}, with --eval-text "
                            f"perplexity:+5%; none: no fidelity bar). Missed: sensitive layers are kept in float "
                            f"until it passes, else exit 1.")] = None,
    max_accuracy_drop: Annotated[Optional[str], typer.Option(
        "--max-accuracy-drop", help="The most accuracy int8 may lose on --eval, e.g. 0.5pt (default with --eval: "
                                    "1pt; none: no accuracy bar).")] = None,
    eval_data: Annotated[Optional[str], typer.Option(
        "--eval", help="Labelled data (inputs and labels): accuracy before and after, and the data the "
                       "tolerance is judged on (else a held-out quarter of --calib, else random inputs).")] = None,
    eval_text: EvalTextOpt = None,
    allow_slower: Annotated[bool, typer.Option(
        "--allow-slower", help="Write the result even when it is measurably slower than the original (the "
                                "paired timing's 95% interval above +5%).")] = False,
    limit: LimitOpt = None,
    num_workers: NumWorkersOpt = 0,
    image_size: ImageSizeOpt = None,
    resize: ResizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    max_length: MaxLengthOpt = None,
    text_field: TextFieldOpt = "text",
    label_field: LabelFieldOpt = "label",
    initializer_inputs: Annotated[bool, typer.Option(
        "--initializer-inputs", help="List the int8 model's weights as graph inputs too, as IR 3 (old converter) "
                                     "graphs did; effkit takes them off the inputs to calibrate.")] = False,
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
    json: JsonOpt = None,
    html: HtmlOpt = None,
    markdown: MarkdownOpt = None,
    export_onnx: ExportOnnxOpt = None,
    force: ForceOpt = False,
    timeout: TimeoutOpt = None,
) -> None:
    """Quantize to int8, keep the fastest candidate that meets the tolerance, and compare before/after.

    The ONNX Runtime path writes OUT.onnx; the torch path writes TorchScript (OUT.ts), the format in which \
torch.ao's packed int8 weights serialize and load back without your model's code \
(`effkit bench OUT.ts --input-shape ...` runs it), and torchao's candidates (when torchao is installed) OUT.pt2.
    """
    suffix = output.suffix.lower() or None
    bar = quality_bar(max_accuracy_drop, tolerance or (), labelled=eval_data is not None, text=eval_text is not None)
    config = QuantizeConfig(
        method=method, backend=backend, calib_samples=calib_samples, calib_method=calib_method,
        per_channel=per_channel, activation_type=activation_type, weight_type=weight_type,
        exclude=tuple(exclude or ()), tolerance=bar_as_tolerance(bar),
        allow_slower=allow_slower, random_calibration=calib == "random", output_format=suffix, bits=bits,
        group_size=group_size, weight_algorithm=weight_algorithm, initializer_inputs=initializer_inputs,
        alpha=alpha)
    check_calibration(config, None if calib in (None, "random") else calib)
    if export_onnx is not None and export_onnx.suffix.lower() != ".onnx":
        raise UsageError(f"--export-onnx {export_onnx} must end in .onnx")
    check_outputs_free([output if suffix else None, json, html, markdown, export_onnx], force)
    data_reading = reading(limit, num_workers, image_size, resize, mean, std, max_length, text_field, label_field)
    texts = example_texts(text, text_file)
    loaded = load(model, arch, trust, input_shape, inputs, texts=texts, images=image or [],
                  data=(eval_data, calib), console=console_for(json),
                  reading=data_reading)
    threads = resolve_threads(threads, console_for(json))
    check_outputs_free([output if suffix else None], force, inputs=(loaded.path,))
    if not suffix:  # OUT gets the chosen backend's suffix: neither may be the input model
        check_outputs_free([output.with_name(output.name + s) for s in (".onnx", ".ts", ".pt2")], True, inputs=(loaded.path,))
    console = console_for(json)

    outlook = int8_outlook(cpu_info()["isa"])
    if outlook:
        warn(outlook)
    calib_data = None if calib in (None, "random") else load_data(calib, model=loaded, limit=calib_samples,
                                                                  reading=data_reading)
    labelled = None if eval_data is None else load_data(eval_data, model=loaded, reading=data_reading)
    if labelled is not None and labelled.labels is None:
        raise UsageError(f"--eval {eval_data} holds no labels", "store them as 'labels' (or y/targets) beside the inputs")
    text = None if eval_text is None else load_text_stream(eval_text, loaded, data_reading)
    check_outputs_free([output if suffix else None, json, html, markdown, export_onnx], force)  # against every file read

    judged = judging_split(calib_data, labelled)[1]
    unrepresentative = random_inputs_warning(loaded, calib_data, labelled if labelled is not None else text)
    if unrepresentative and not (config.method in CALIBRATED and calib is None):  # else refused: no data at all
        warn(unrepresentative)

    def target(chosen) -> Path:  # OUT, or OUT with the chosen backend's suffix, checked before the measurement
        if suffix:
            return output
        path = output.with_name(output.name + chosen.save_suffix)
        check_outputs_free([path, json, html, markdown, export_onnx], force, inputs=(loaded.path,))
        return path

    def step(progress):
        run = lambda: quantize(loaded, config, calib=calib_data, eval_data=labelled, text=text, progress=progress,  # noqa: E731
                               threads=threads, candidate_time=min_time / 2, candidate_iterations=iterations)
        return apply_step("quantize", loaded, run, bar=bar, output=target, threads=threads, warmup=warmup,
                          iterations=iterations, min_time=min_time, eval_data=labelled, text=text,
                          judge_data=judged if judged is not None else text, export_onnx=export_onnx, force=force,
                          allow_slower=allow_slower, what="the int8 model",
                          hint="loosen --tolerance or --max-accuracy-drop, keep layers in float with --exclude, or "
                               "pass --calib with representative data", progress=progress)

    def render(outcome) -> None:
        console.print(outcome_table(outcome))
        console.print(candidates_table(outcome.details))

    show_step(step, render, json, markdown, lambda outcome: outcome_markdown(outcome) + candidates_markdown(
        outcome.details), force, html)


def bar_as_tolerance(bar) -> tuple:
    """The quality bar as quantize's tolerance: its fidelity bounds and `accuracy:-Npt`. A bar switched
    off entirely becomes a bound every model meets, so that quantize's own default does not return."""
    tolerance = list(bar.bounds)
    if bar.max_drop_pt is not None:
        tolerance.append(parse_threshold(f"accuracy:-{bar.max_drop_pt:g}pt"))
    return tuple(tolerance) or (parse_threshold("cosine>=-1"),)


def _candidate_rows(details: dict) -> list[list[str]]:
    torch_fp32 = details["baselines_ms"].get("torch fp32")
    rows = [[name, fmt_ms(ms), f"{torch_fp32 / ms:.2f}x" if torch_fp32 else "-", "1.00x", "1", "baseline"]
            for name, ms in details["baselines_ms"].items()]
    for c in details["candidates"]:
        f = c["fidelity"] or {}
        rows.append([c["label"], fmt_ms(c["latency_ms"]),
                     f"{torch_fp32 / c['latency_ms']:.2f}x" if torch_fp32 and c["latency_ms"] else "-",
                     f"{c['size_bytes'] / details['original_size_bytes']:.2f}x" if c["size_bytes"] else "-",
                     f"{f['cosine_min']:.5f}" if f else "-", c["status"]])
    return rows


_HEADER = ["candidate", "p50", "speedup", "size", "cosine", "status"]
_CAPTION = "speedup over torch fp32, size against the original on disk, cosine: min over held-out inputs"


def candidates_table(details: dict):
    """Every candidate measured, with the fp32 baselines: latency, speedup, size, fidelity, verdict."""
    from rich.table import Table

    table = Table(title="int8 candidates (interleaved timing)", title_justify="left", caption=_CAPTION,
                  caption_justify="left")
    for h in _HEADER:
        table.add_column(h, justify="left" if h in ("candidate", "status") else "right",
                         no_wrap=h not in ("candidate", "status"), min_width=8 if h == "status" else None)
    for row in _candidate_rows(details):
        table.add_row(*row)
    return table


def candidates_markdown(details: dict) -> str:
    lines = ["", "#### int8 candidates", "", "| " + " | ".join(_HEADER) + " |", "|---|---:|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in _candidate_rows(details)]
    lines += ["", f"<sub>{_CAPTION}</sub>"]
    return "\n".join(lines) + "\n"
