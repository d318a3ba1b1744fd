"""The `effkit` command: a thin Typer layer over the library. Each command lives in its own module."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from effkit import __version__
# Importing a command module registers its command; this order is the order of `effkit --help`.
from effkit.cli import (  # noqa: F401
    bench_cmd,
    inspect_cmd,
    export_cmd,
    quantize_cmd,
    prune_cmd,
    distill_cmd,
    compress_cmd,
    compare_cmd,
    gate_cmd,
    report_cmd,
)
from effkit.cli.common import DEBUG, app


def _version(value: bool) -> None:
    if value:
        typer.echo(f"effkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Show the version and exit.")] = None,
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show tracebacks and what effkit is doing (also accepted after the command).")] = False,
) -> None:
    if debug:
        DEBUG["on"] = True


def main() -> None:
    """Console entry point. `--debug` is accepted anywhere on the line."""
    if "--debug" in sys.argv[1:]:
        DEBUG["on"] = True
        sys.argv = [a for a in sys.argv if a != "--debug"]
    else:
        # torch's C++ warnings bypass Python's warning filters (loading an int8 TorchScript prints the
        # Quantizer.cpp deprecation of quantized tensors); read once, when torch is first imported
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    app()
