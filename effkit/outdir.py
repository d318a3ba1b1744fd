"""Write a compress result to OUTDIR: the final model (.onnx, and .pt2 for torch pipelines), each loaded
back and checked, the recipe and the reports.

OUTDIR is built in a hidden staging folder beside it and moved into place only when complete:
an interrupted or failed run leaves OUTDIR as it was (absent, or the old result).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from effkit.errors import OutputExistsError, StepFailed, UsageError
from effkit.export import make_runner
from effkit.fidelity import compare_outputs
from effkit.files import _umask, check_not_read, forget_temporary, reading, track_temporary, write_text
from effkit.load import load_model, model_files
from effkit.onnx_files import is_sidecar_name, save_onnx_file
from effkit.pipeline import CompressFailed, run_pipeline
from effkit.pipeline_result import SCHEMA, CompressResult
from effkit.recipe import Recipe
from effkit.report.compress import compress_markdown
from effkit.report.render import render_html
from effkit.runners import native_runner
from effkit.save import save_model
from effkit.util import quiet_torch

# What compress writes to OUTDIR; --force replaces an OUTDIR that holds nothing else.
OUTDIR_FILES = ("model.onnx", "model.pt2", "recipe.toml", "report.json", "report.md", "report.html")


def check_outdir(outdir: str | Path, force: bool) -> Path:
    """Refuse an OUTDIR that is a file, that holds a file this command reads, or that holds files (without
    --force, or that effkit did not write: --force replaces a whole earlier OUTDIR, so it must never swallow
    a folder of the user's own files)."""
    shown = Path(outdir)
    outdir = shown.resolve()  # "-o ." needs a real name and parent to stage beside
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"{shown} is a file, not a folder", "pass a folder for -o")
    check_not_read(shown, "output folder")
    if outdir.is_dir() and any(outdir.iterdir()):
        if not _is_effkit_outdir(outdir):
            raise OutputExistsError(f"{shown} holds files that effkit compress did not write",
                                    "pass an empty or new folder for -o")
        if not force:
            raise OutputExistsError(f"{shown} already holds files", "pass --force to replace them")
    return outdir


def _is_effkit_outdir(outdir: Path) -> bool:
    """An earlier compress OUTDIR: its report.json says so, and it holds nothing else than compress writes
    (model.onnx's external data file included)."""
    try:
        schema = json.loads((outdir / "report.json").read_text()).get("schema")
    except (OSError, ValueError, AttributeError):
        return False
    return schema == SCHEMA and all(p.name in OUTDIR_FILES or is_sidecar_name(p.name, "model.onnx")
                                    for p in outdir.iterdir())


@contextlib.contextmanager
def _staged(outdir: Path, force: bool) -> Iterator[Path]:
    """A hidden folder beside OUTDIR to build it in; moved onto OUTDIR when the block succeeds,
    removed otherwise (an exception, Ctrl-C), so OUTDIR never holds a half-written result."""
    outdir = outdir.resolve()
    stage = track_temporary(tempfile.mkdtemp(prefix=f".{outdir.name}.effkit-", dir=outdir.parent))
    try:  # from here on, Ctrl-C removes the stage: the signal often lands right after mkdtemp
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes it private; OUTDIR should get the usual permissions
        yield stage
        check_outdir(outdir, force)
        old = None
        if outdir.exists():  # empty, or --force: swap the old one out, the new one in, then drop the old
            old = outdir.parent / f"{stage.name}.old"
            os.replace(outdir, old)
        os.replace(stage, outdir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        forget_temporary(stage)


def _verify_saved(path: Path, model, reference: list[np.ndarray]) -> None:
    """Load a written model back and check it gives the outputs of the model it came from."""
    loaded = load_model(str(path), check=False)
    loaded = loaded.replace(example_inputs=model.example_inputs)

    got = native_runner(loaded).run(model.example_inputs)
    fid = compare_outputs([reference], [got])
    if fid["cosine_min"] is None or fid["cosine_min"] < 0.9999:
        raise StepFailed(f"{path.name} does not reproduce the model it was saved from (cosine {fid['cosine_min']})")


def write_outdir(result: CompressResult, outdir: str | Path, force: bool = False) -> list[Path]:
    """Write OUTDIR: the final model (native format), its verified ONNX, the recipe and the reports.

    A failed result gets the recipe and the reports only. Everything is staged and moved in at once.
    """
    shown = Path(outdir)  # as the user wrote it, for the list of outputs
    outdir = check_outdir(outdir, force)
    outdir.parent.mkdir(parents=True, exist_ok=True)  # OUTDIR's own folder is created by the final move
    with _staged(outdir, force) as stage:
        names = []
        if result.status == "ok":
            final = result.final.model
            reference = native_runner(final).run(
                final.example_inputs)
            save_onnx_file(final.onnx_path, stage / "model.onnx", force=False)  # torch pipelines end in export
            _verify_saved(stage / "model.onnx", final, reference)
            names.append("model.onnx")
            native = _native_model(result)
            if native is not None:
                native_ref = make_runner(native, "torch").run(native.example_inputs)
                with quiet_torch():
                    save_model(native, stage / "model.pt2")
                    _verify_saved(stage / "model.pt2", native, native_ref)
                names.append("model.pt2")
        result.outputs = [str(shown / n) for n in names + ["recipe.toml", "report.json", "report.md", "report.html"]]
        _write(stage / "recipe.toml", result.recipe.to_toml(_recipe_comments(result)))
        document = result.to_json()
        _write(stage / "report.json", document + "\n")
        doc = json.loads(document)  # every report renders the saved document
        _write(stage / "report.md", compress_markdown(doc))
        _write(stage / "report.html", render_html(doc))
    return [Path(p) for p in result.outputs]


def _recipe_comments(result: CompressResult) -> list[str]:
    """How this recipe was run (the data is not part of it) and what the back-off changed."""
    command = f"effkit compress {result.source}"
    command += f" --data {result.data_source}" if result.data_source else ""
    command += f" --eval {result.eval_source}" if result.eval_source else ""
    lines = [f"Reproduce: {command} --recipe recipe.toml -o OUTDIR"]
    lines += [f"{step.name}: {note}" for step in result.steps for note in step.notes if note.startswith("backed off")]
    if any(note.startswith("backed off") for step in result.steps for note in step.notes):
        lines.append("(the recipe holds what was asked; running it again backs off the same way)")
    return lines


def _native_model(result: CompressResult):
    """The final torch model when the pipeline ended with an export of one (saved as .pt2 too)."""
    if result.steps and result.steps[-1].name == "export":
        return result.steps[-1].before.model
    return None


def _write(path: Path, text: str) -> None:
    write_text(path, text)


def compress(model, recipe: Recipe, outdir: str | Path, *, data=None, eval_data=None, force: bool = False,
             progress: Callable[[str, float], None] | None = None,
             log: Callable[[str], None] | None = None, warnings: Sequence[str] = ()) -> CompressResult:
    """Run the pipeline on `model` and write OUTDIR. Raises `CompressFailed` (exit 1) when the quality
    bar cannot be met; OUTDIR then holds the recipe and the reports, no model. OUTDIR may not hold
    the model's files (it is replaced whole). `warnings`: the caller's, which the reports list first."""
    with reading(*model_files(model)):
        check_outdir(outdir, force)
        result = run_pipeline(model, recipe, data=data, eval_data=eval_data, progress=progress, log=log,
                              warnings=warnings)
        write_outdir(result, outdir, force)
    if result.status != "ok":
        raise CompressFailed(result.message or "the quality bar could not be met", result.hint, result)
    return result
