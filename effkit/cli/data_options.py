"""The options that say how a command reads its DATA (--data, --calib, --eval, --val-data): how many
samples, how images and text become inputs. Shared by quantize, prune, distill and compress, shown
together under "Data" in their --help."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from effkit.data import Reading
from effkit.data_images import ImagePreprocess, parse_floats, parse_image_size
from effkit.data_text import read_text_lines

PANEL = "Data"

LimitOpt = Annotated[Optional[int], typer.Option(
    "--limit", help="Use only the first N samples of each data file or folder.", min=1, metavar="N",
    rich_help_panel=PANEL)]
NumWorkersOpt = Annotated[int, typer.Option(
    "--num-workers", help="Processes that decode images of a folder (0: this process).", min=0, max=64, metavar="N",
    rich_help_panel=PANEL)]
ImageSizeOpt = Annotated[Optional[str], typer.Option(
    "--image-size", help="For images (a folder, --image): the crop, HxW or one number (default: a Hugging Face "
                         "folder's image processor, else the images' own size).",
    metavar="HxW", rich_help_panel=PANEL)]
ResizeOpt = Annotated[Optional[int], typer.Option(
    "--resize", help="For a folder of images: the shorter side before the crop (default: the crop's larger side).",
    min=1, metavar="PIXELS", rich_help_panel=PANEL)]
MeanOpt = Annotated[Optional[str], typer.Option(
    "--mean", help="For images (a folder, --image): per-channel mean after scaling to [0, 1], e.g. 0.485,0.456,0.406 "
                   "(default: a Hugging Face folder's image processor, else 0).",
    metavar="R,G,B", rich_help_panel=PANEL)]
StdOpt = Annotated[Optional[str], typer.Option(
    "--std", help="For images (a folder, --image): per-channel std, e.g. 0.229,0.224,0.225 (default: a Hugging "
                  "Face folder's image processor, else 1).", metavar="R,G,B",
    rich_help_panel=PANEL)]
TextOpt = Annotated[Optional[list[str]], typer.Option(
    "--text", help="Example input of a text model: this text, tokenized with the model's tokenizer.json "
                   "(repeatable: a batch, padded to the longest or to --max-length).", metavar="TEXT")]
ImageOpt = Annotated[Optional[list[Path]], typer.Option(
    "--image", help="Example input of an image model: this image file, preprocessed with a Hugging Face folder's "
                    "image processor, else as --image-size, --mean and --std say (repeatable: a batch).",
    metavar="FILE")]
TextFileOpt = Annotated[Optional[Path], typer.Option(
    "--text-file", help="Example inputs of a text model: one text per line of FILE, as --text.", metavar="FILE")]
MaxLengthOpt = Annotated[Optional[int], typer.Option(
    "--max-length", "--seq-len", help="For .txt/.jsonl text: tokens per sample, padded or truncated (default: the model's "
                         "sequence length).", min=1, metavar="N", rich_help_panel=PANEL)]
EvalTextOpt = Annotated[Optional[str], typer.Option(
    "--eval-text", help="A language model's perplexity before and after on this .txt/.jsonl text, in windows "
                        "of its sequence length (--max-length).", metavar="FILE")]
TextFieldOpt = Annotated[str, typer.Option(
    "--text-field", help="For .jsonl text: the field that holds the text.", metavar="NAME", rich_help_panel=PANEL)]
LabelFieldOpt = Annotated[str, typer.Option(
    "--label-field", help="For .jsonl text: the field that holds the class index.", metavar="NAME",
    rich_help_panel=PANEL)]


def reading(limit: int | None, num_workers: int, image_size: str | None, resize: int | None, mean: str | None,
            std: str | None, max_length: int | None, text_field: str, label_field: str) -> Reading:
    """The data options of a command as one `effkit.data.Reading`."""
    images = ImagePreprocess(image_size=parse_image_size(image_size), resize=resize,
                             mean=parse_floats("--mean", mean, None), std=parse_floats("--std", std, None),
                             workers=num_workers)
    return Reading(limit=limit, images=images, max_length=max_length, text_field=text_field, label_field=label_field)


def example_reading(max_length: int | None, image_size: str | None, mean: str | None, std: str | None) -> Reading:
    """How a command without DATA options reads its example --text and --image."""
    return reading(None, 0, image_size, None, mean, std, max_length, "text", "label")


def example_texts(text: list[str] | None, text_file: Path | None) -> list[str]:
    """The texts of --text and --text-file, in that order: a text model's example inputs."""
    return [*(text or []), *(read_text_lines(text_file) if text_file is not None else [])]
