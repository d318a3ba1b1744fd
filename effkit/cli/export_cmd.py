"""`effkit export`: ONNX export, verified in ONNX Runtime."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated

import typer

from effkit.cli.data_options import (ImageOpt, ImageSizeOpt, MaxLengthOpt, MeanOpt, StdOpt, TextFileOpt, TextOpt,
                                     example_reading, example_texts)
from effkit.cli.common import (HtmlOpt, ArchOpt, ForceOpt, InputShapeOpt, InputsOpt, JsonOpt, ModelArg, TimeoutOpt, TrustOpt,
                               check_outputs_free, command, console_for, load, warn, warned, write_outputs)
from effkit.errors import UsageError
from effkit.export import DEFAULT_OPSET, ExportConfig, describe_export, export_onnx


@command("export")
def export_command(
    model: ModelArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="The .onnx file to write.")],
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version.")] = DEFAULT_OPSET,
    static_batch: Annotated[bool, typer.Option("--static-batch", help="Fix the batch dimension instead of "
                                                                      "making it dynamic.")] = False,
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance of the verification.")] = 1e-4,
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance of the verification.")] = 1e-3,
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
    force: ForceOpt = False,
    timeout: TimeoutOpt = None,
) -> None:
    """Export to ONNX, then check every output against torch in ONNX Runtime on fresh inputs."""
    if output.suffix.lower() != ".onnx":
        raise UsageError(f"output {output} must end in .onnx")
    config = ExportConfig(opset=opset, dynamic_batch=not static_batch, atol=atol, rtol=rtol)
    texts = example_texts(text, text_file)
    loaded = load(model, arch, trust, input_shape, inputs, texts=texts, images=image or [],
                  reading=example_reading(max_length, image_size, mean, std), console=console_for(json))
    check_outputs_free([output, json, html], force, inputs=(loaded.path,))
    with console_for(json).status("exporting and verifying", spinner="dots"):
        exported = export_onnx(loaded, output, config, force=force)
    report = exported.meta["export"]
    axes, checked, sequence_warning = describe_export(report)
    console_for(json).print(f"wrote {output} (opset {report['opset']}, {report['exporter']} exporter, "
                            f"{axes}); verified in ONNX Runtime: max abs diff {report['max_abs_diff']:.3g} at "
                            f"{checked}", markup=False, highlight=False)
    if "fallback_reason" in report:
        console_for(json).print(f"note: the {report['exporter']} exporter was used because "
                                f"{report['fallback_reason']}", markup=False, highlight=False, soft_wrap=True)
    if sequence_warning:
        warn(sequence_warning)
    write_outputs(json, lambda: jsonlib.dumps({"schema": "effkit.export/1", "output": str(output), **report,
                                               "warnings": warned()}, indent=2),
                  None, str, force, html_path=html)
