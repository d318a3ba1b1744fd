"""`effkit compress`: prune → recover (distill) → quantize → export, measured after every step."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from effkit.cli.data_options import (ImageOpt, ImageSizeOpt, LabelFieldOpt, LimitOpt, MaxLengthOpt, MeanOpt,
                                     NumWorkersOpt, ResizeOpt, StdOpt, TextFieldOpt, TextFileOpt, TextOpt,
                                     example_texts, reading)
from effkit.cli.common import (HtmlOpt, ArchOpt, ExportOnnxOpt, ForceOpt, InputShapeOpt, InputsOpt, IterationsOpt, JsonOpt,
                               ModelArg, ThreadsOpt, TimeoutOpt, TrustOpt, check_outputs_free, command, console_for,
                               err, load, print_warnings, progress_bar, warned, write_outputs)
from effkit.data import load_data
from effkit.errors import UsageError
from effkit.onnx_files import save_onnx_file
from effkit.outdir import check_outdir, compress
from effkit.passes.prune import ratio_fields
from effkit.pipeline import CompressFailed
from effkit.recipe import Recipe
from effkit.report.compress import compress_summary

# `--quantize int8` asks for int8 with quantize's own choice of method; a method name picks one.
QUANTIZE_CHOICES = ("int8", "auto", "dynamic", "static", "weight-only")


def build_recipe(recipe_path: Path | None, *, prune: str | None, distill: bool, quantize: str | None,
                 max_accuracy_drop: str | None, tolerance: list[str] | None, opset: int | None,
                 threads: int | None, warmup: int | None, iterations: int | None, min_time: float | None):
    """The recipe file (or an empty recipe) with the command-line options laid over it."""
    recipe = Recipe.load(recipe_path) if recipe_path is not None else Recipe()
    if prune is not None:
        recipe = recipe.with_changes("prune", **ratio_fields(prune, "--prune"))
    if distill and recipe.distill is None:
        recipe = recipe.with_changes("distill")
    if quantize is not None:
        if quantize not in QUANTIZE_CHOICES:
            raise UsageError(f"unknown --quantize {quantize!r}", f"use one of {', '.join(QUANTIZE_CHOICES)}")
        recipe = recipe.with_changes("quantize", **({} if quantize == "int8" else {"method": quantize}))
    pipeline = {k: v for k, v in (("max_accuracy_drop", max_accuracy_drop),
                                  ("tolerance", tuple(tolerance) if tolerance else None)) if v is not None}
    if pipeline:
        recipe = recipe.with_changes("pipeline", **pipeline)
    if opset is not None:
        recipe = recipe.with_changes("export", opset=opset)
    timing = {k: v for k, v in (("threads", threads), ("warmup", warmup), ("iterations", iterations),
                                ("min_time", min_time)) if v is not None}
    if timing:
        recipe = recipe.with_changes("bench", **timing)
    if not recipe.steps or recipe.steps == ["export"]:
        raise UsageError("nothing to compress: no step was asked for",
                         "pass --prune RATIO, --quantize int8 (and --distill), or --recipe FILE")
    return recipe


@command("compress")
def compress_command(
    model: ModelArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the results: model, model.onnx, "
                                         "recipe.toml, report.json, report.md, report.html.")],
    prune: Annotated[Optional[str], typer.Option(
        "--prune", help="Structured pruning: the ratio of channels removed, e.g. 0.5 or 50%; for a decoder LM, "
                        "per block type: heads=0.25,ffn=0.5.")] = None,
    distill: Annotated[bool, typer.Option(
        "--distill", help="Recover the pruned model by distillation from the original (needs --data).")] = False,
    quantize: Annotated[Optional[str], typer.Option(
        "--quantize", help="int8 quantization: int8 (the fastest method that meets the bar), dynamic, static "
                           "or weight-only.")] = None,
    recipe: Annotated[Optional[Path], typer.Option(
        "--recipe", help="A TOML recipe (e.g. OUTDIR/recipe.toml of an earlier run); options given here "
                         "override it.")] = None,
    data: Annotated[Optional[str], typer.Option(
        "--data", help="Training and calibration data (.npz, .pt, a folder of .npy or of images, .txt/.jsonl text, "
                      "or module:factory).")] = None,
    eval_data: Annotated[Optional[str], typer.Option(
        "--eval", help="Labelled evaluation data: accuracy after every step (else fidelity to the original).")] = None,
    max_accuracy_drop: Annotated[Optional[str], typer.Option(
        "--max-accuracy-drop", help="The most accuracy the whole pipeline may lose on --eval, e.g. 0.5pt "
                                    "(default with --eval: 1pt; none: no accuracy bar); steps that lose more are "
                                    "backed off, and a bar still missed is exit 1.")] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(
        "--tolerance", help="A bound on the final outputs against the original's, e.g. cosine>=0.999 or "
                            "sqnr>=20; repeat for several (default without --eval labels: cosine>=0.99; none: "
                            "no fidelity bar).")] = None,
    opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset of the export (default 18).")] = None,
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
    warmup: Annotated[Optional[int], typer.Option("--warmup", help="Untimed calls before timing (default 5).",
                                                  min=0)] = None,
    iterations: IterationsOpt = None,
    min_time: Annotated[Optional[float], typer.Option(
        "--min-time", help="Seconds of timed calls per model and runtime (default 0.25).", min=0.0)] = None,
    arch: ArchOpt = None,
    trust: TrustOpt = False,
    input_shape: InputShapeOpt = None,
    inputs: InputsOpt = None,
    text: TextOpt = None,
    text_file: TextFileOpt = None,
    image: ImageOpt = None,
    json: JsonOpt = None,
    html: HtmlOpt = None,
    export_onnx: ExportOnnxOpt = None,
    force: ForceOpt = False,
    timeout: TimeoutOpt = None,
) -> None:
    """Prune, recover, quantize and export in one go, timing every step, within one quality bar.

    Writes the final model, its verified ONNX export, report.json, report.md, report.html and the
    resolved recipe.toml to OUTDIR."""
    the_recipe = build_recipe(recipe, prune=prune, distill=distill, quantize=quantize,
                              max_accuracy_drop=max_accuracy_drop, tolerance=tolerance, opset=opset, threads=threads,
                              warmup=warmup, iterations=iterations, min_time=min_time)
    check_outdir(output, force)
    check_outputs_free([json, html, export_onnx], force)
    data_reading = reading(limit, num_workers, image_size, resize, mean, std, max_length, text_field, label_field)
    texts = example_texts(text, text_file)
    loaded = load(model, arch, trust, input_shape, inputs, texts=texts, images=image or [],
                  data=(eval_data, data), console=console_for(json),
                  reading=data_reading)
    train = load_data(data, model=loaded, reading=data_reading) if data else None
    evaluation = load_data(eval_data, model=loaded, reading=data_reading) if eval_data else None
    check_outputs_free([json, html, export_onnx], force)  # against every file read (compress checks OUTDIR again)
    console = console_for(json)
    try:
        with progress_bar() as progress:  # closed (and cleared) before anything else is printed
            result = compress(loaded, the_recipe, output, data=train, eval_data=evaluation, force=force,
                              progress=progress, log=lambda message: err.print(message, markup=False,
                                                                               highlight=False),
                              warnings=warned())
    except CompressFailed as failed:  # the table and where the reports are; the reason is the Error: line
        console.print(compress_summary(jsonlib.loads(failed.result.to_json())))
        print_warnings(console, failed.result.warnings())
        console.print(f"wrote {output}: {', '.join(Path(p).name for p in failed.result.outputs)} "
                      "(the reports of the failed run, no model)", markup=False, highlight=False, soft_wrap=True)
        write_outputs(json, failed.result.to_json, None, str, force, html_path=html)
        raise
    console.print(compress_summary(jsonlib.loads(result.to_json())))
    print_warnings(console, result.warnings())
    if export_onnx is not None:
        save_onnx_file(output / "model.onnx", export_onnx, force)
        result.outputs.append(str(export_onnx))
    console.print(f"wrote {output}: {', '.join(Path(p).name for p in result.outputs)}", markup=False,
                  highlight=False)
    write_outputs(json, result.to_json, None, str, force, html_path=html)
