"""`effkit inspect`: what a model is made of."""

from __future__ import annotations

import json as jsonlib

from effkit.cli.data_options import (ImageOpt, ImageSizeOpt, MaxLengthOpt, MeanOpt, StdOpt, TextFileOpt, TextOpt,
                                     example_reading, example_texts)
from effkit.cli.common import (HtmlOpt, ArchOpt, ForceOpt, InputShapeOpt, InputsOpt, JsonOpt, ModelArg, TimeoutOpt, TrustOpt,
                               check_outputs_free, command, console_for, load, warned, write_outputs)
from effkit.report.text import inspect_tables
from effkit.structure import describe


@command("inspect")
def inspect_command(
    model: ModelArg,
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
    """Layers and parameters by type, sparsity per layer, what int8 and channel pruning can touch, inputs and outputs."""
    check_outputs_free([json, html], force)
    texts = example_texts(text, text_file)
    loaded = load(model, arch, trust, input_shape, inputs, texts=texts, images=image or [],
                  reading=example_reading(max_length, image_size, mean, std), console=console_for(json))
    check_outputs_free([json, html], force)  # against the files loading read (an ONNX model's data, ...)
    info = describe(loaded)
    console = console_for(json)
    for table in inspect_tables(info):
        console.print(table)
    write_outputs(json, lambda: jsonlib.dumps({"schema": "effkit.inspect/1", **info, "warnings": warned()}, indent=2),
                  None, str, force, html_path=html)
