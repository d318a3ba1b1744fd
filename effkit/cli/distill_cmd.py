"""`effkit distill`: train a student to match a teacher, then compare them before/after.

Under `torchrun --nproc-per-node N -m effkit distill ...` every process trains its share of each
batch (DistributedDataParallel: gloo on CPU, nccl on CUDA); only rank 0 prints and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from effkit.apply import StepRefused, apply_step
from effkit.cli.bench_cmd import parse_runtimes
from effkit.cli.data_options import (EvalTextOpt, ImageSizeOpt, LabelFieldOpt, LimitOpt, MaxLengthOpt, MeanOpt, NumWorkersOpt,
                                     ResizeOpt, StdOpt, TextFieldOpt, reading)
from effkit.cli.common import (HtmlOpt, ArchOpt, ExportOnnxOpt, ForceOpt, InputShapeOpt, InputsOpt, IterationsOpt, JsonOpt,
                               MarkdownOpt, MinTimeOpt, ModelArg, ThreadsOpt, TimeoutOpt, TrustOpt, WarmupOpt,
                               bar_options_help, check_outputs_free, command, console_for, err, load, resolve_threads,
                               show_step)
from effkit.data import load_data, load_text_stream
from effkit.errors import EffkitError, UsageError
from effkit.files import check_not_read, remove
from effkit.judge import DEFAULT_FIDELITY_BAR, DEFAULT_MAX_ACCURACY_DROP, quality_bar
from effkit.load import load_model
from effkit.passes.distill import DistillConfig, distill, parse_feature_pair, validation_notes
from effkit.passes.prune import PruneConfig, prune
from effkit.report.text import outcome_markdown, outcome_table
from effkit.specs import InputShape, parse_input_shape, parse_ratio

DATA_HELP = ("an .npz or .pt file of tensors (inputs, optional labels), a folder of .npy files or of images, "
             ".txt/.jsonl text, or module:factory returning a Dataset, DataLoader or iterable")


def checkpoint_path(output: Path) -> Path:
    """Where an interrupted run leaves its checkpoint: beside the output, OUT.ckpt."""
    return output.with_name(output.name + ".ckpt")


@contextlib.contextmanager
def _training_bar(enabled: bool) -> Iterator:
    """A Rich progress bar on stderr: epoch, step, loss, samples/s, ETA. Yields an on_step callback."""
    if not enabled or not err.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), TextColumn("step {task.fields[step]}"),
                  TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} samples/s"),
                  TimeRemainingColumn(), console=err, transient=True) as progress:
        task = progress.add_task("distilling", total=None, epoch="-", step="-", loss="-", rate="-")

        def on_step(s) -> None:
            progress.update(task, total=s.total_steps, completed=s.global_step, epoch=f"{s.epoch}/{s.epochs}",
                            step=f"{s.step}/{s.steps_per_epoch}", loss=f"{s.loss:.4f}", rate=f"{s.samples_per_s:,.0f}")

        yield on_step


def _distributed() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside torchrun."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as e:
        raise UsageError(f"RANK / WORLD_SIZE are not integers: {e}", "start distributed runs with torchrun") from e


@contextlib.contextmanager
def _process_group(world: int) -> Iterator[None]:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA) for the duration of the block."""
    if world == 1:
        yield
        return
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _load_student(spec: str, arch: str | None, trust: bool, teacher, input_shape, inputs):
    """Load the student with the teacher's example inputs (it must take the same inputs)."""
    shapes = ([parse_input_shape(s) for s in input_shape] if input_shape else
              [InputShape(str(a.dtype), tuple(a.shape)) for a in teacher.example_inputs])
    try:
        student = load_model(spec, arch=arch, trust=trust, input_shapes=shapes, inputs=inputs)
    except EffkitError as e:  # name the student and its own option in the message
        student_arch = lambda text: text and text.replace("--arch", "--student-arch")  # noqa: E731
        raise type(e)(f"student: {student_arch(e.message)}", student_arch(e.hint)) from e
    return student.replace(example_inputs=teacher.example_inputs, input_names=teacher.input_names)


def _pruned_student(teacher, ratio: float, seed: int):
    """The teacher with `ratio` of its channels removed (structured, L1 importance): the student."""
    if teacher.kind != "torch":
        raise UsageError("--student-from-prune needs a torch teacher; this one is ONNX", "pass --student SPEC")
    with err.status(f"pruning {ratio:.0%} of the teacher's channels", spinner="dots"):
        result = prune(teacher, PruneConfig(ratio=ratio, seed=seed))
    return result.model, result


@command("distill")
def distill_command(
    teacher: ModelArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to save the trained student (.pt2 loads "
                                         "back without code; .pt / .safetensors need --student-arch).")],
    data: Annotated[str, typer.Option("--data", help=f"Training data: {DATA_HELP}.")],
    student: Annotated[Optional[str], typer.Option("--student", help="The student: any model spec (a factory, a "
                                                   "checkpoint with --student-arch, ...); its outputs must have the "
                                                   "teacher's shapes.")] = None,
    student_from_prune: Annotated[Optional[str], typer.Option(
        "--student-from-prune", help="Make the student by structured-pruning this fraction of the teacher's "
                                     "channels (e.g. 0.5), then distill: the prune-then-distill recipe.")] = None,
    student_arch: Annotated[Optional[str], typer.Option("--student-arch", help="Factory that builds the student's "
                                                        "architecture for a state_dict student.")] = None,
    val_data: Annotated[Optional[str], typer.Option("--val-data", help=f"Validation data, which chooses the best "
                                                    f"epoch: {DATA_HELP}.")] = None,
    eval_data: Annotated[Optional[str], typer.Option(
        "--eval", help="Data the result is judged on and reported on (accuracy with labels, fidelity to the "
                       "teacher), never trained on nor used to choose the epoch (default: the validation data).")]
    = None,
    eval_text: EvalTextOpt = None,
    max_accuracy_drop: Annotated[Optional[str], typer.Option(
        "--max-accuracy-drop", help=bar_options_help(DEFAULT_MAX_ACCURACY_DROP + " on labelled --eval (else "
                                                     "validation) data", DEFAULT_FIDELITY_BAR)[0])] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(
        "--tolerance", help=bar_options_help(DEFAULT_MAX_ACCURACY_DROP, DEFAULT_FIDELITY_BAR)[1])] = None,
    val_split: Annotated[float, typer.Option("--val-split", help="Fraction of --data held out for validation when "
                                             "--val-data is not given (0: no validation).")] = 0.1,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training data.")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per step, over all processes.")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 0.01,
    lr_warmup: Annotated[float, typer.Option("--lr-warmup", help="Fraction of the steps that warm the learning rate "
                                             "up linearly before the cosine decay.")] = 0.05,
    grad_clip: Annotated[float, typer.Option("--grad-clip", help="Clip the gradient norm to this (0: no "
                                             "clipping).")] = 1.0,
    temperature: Annotated[float, typer.Option("--temperature", help="Softens teacher and student outputs for the "
                                               "KL loss.")] = 4.0,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the distillation loss; 1 - alpha weighs "
                                         "cross-entropy on the labels when the data has them.")] = 0.5,
    loss: Annotated[str, typer.Option("--loss", help="kl (classifier logits) or mse (regression outputs).")] = "kl",
    feature_pairs: Annotated[Optional[list[str]], typer.Option(
        "--feature-pairs", metavar="STUDENT:TEACHER",
        help="Also match intermediate outputs by MSE: STUDENT:TEACHER, two layer names (shapes equal but for the "
             "channels, which a learned linear map bridges); repeat for several.")] = None,
    feature_weight: Annotated[float, typer.Option("--feature-weight", help="Weight of the feature loss.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data order and of torch's RNG "
                                      "(the same command gives the same weights on CPU).")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run whose checkpoint is "
                                         "OUT.ckpt (same command and data).")] = False,
    runtime: Annotated[Optional[str], typer.Option(
        "--runtime", help="Runtime of the before/after measurement: torch, onnxruntime or all (default: torch; "
                          "onnxruntime for an ONNX teacher)")] = None,
    arch: ArchOpt = None,
    trust: TrustOpt = False,
    input_shape: InputShapeOpt = None,
    inputs: InputsOpt = None,
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
    json: JsonOpt = None,
    html: HtmlOpt = None,
    markdown: MarkdownOpt = None,
    export_onnx: ExportOnnxOpt = None,
    force: ForceOpt = False,
    timeout: TimeoutOpt = None,
) -> None:
    """Distill TEACHER into a smaller student on your data, then compare them: latency, size, accuracy.

    KL on softened outputs (+ cross-entropy on labels), validation each epoch, the best epoch kept;
    Ctrl-C saves OUT.ckpt for --resume. Runs under torchrun for DistributedDataParallel training."""
    import sys

    rank, world = _distributed()
    if rank != 0:  # only rank 0 prints; the others' errors are rank 0's errors too
        sys.stdout = sys.stderr = open(os.devnull, "w")
    config = DistillConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                           temperature=temperature, alpha=alpha, loss=loss,
                           feature_pairs=tuple(parse_feature_pair(p) for p in feature_pairs or ()),
                           feature_weight=feature_weight, lr_warmup=lr_warmup,
                           grad_clip=grad_clip if grad_clip > 0 else None, seed=seed, val_split=val_split)
    if (student is None) == (student_from_prune is None):
        raise UsageError("give exactly one of --student and --student-from-prune",
                         "--student SPEC trains your model; --student-from-prune 0.5 prunes the teacher first")
    prune_ratio = parse_ratio(student_from_prune, "--student-from-prune") if student_from_prune else None
    if export_onnx is not None and export_onnx.suffix.lower() != ".onnx":
        raise UsageError(f"--export-onnx {export_onnx} must end in .onnx")
    ckpt = checkpoint_path(output)
    check_outputs_free([output, json, html, markdown, export_onnx], force)
    if ckpt.exists() and not resume and not force:
        raise UsageError(f"{ckpt} holds the checkpoint of an interrupted run",
                         "pass --resume to continue it, or --force to start over")

    data_reading = reading(limit, num_workers, image_size, resize, mean, std, max_length, text_field, label_field)
    teacher_model = load(teacher, arch, trust, input_shape, inputs, data=(eval_data, val_data, data),
                         console=console_for(json), reading=data_reading)
    check_outputs_free([output], force, inputs=(teacher_model.path,))
    runtimes = parse_runtimes(runtime or ("torch" if teacher_model.kind == "torch" else "onnxruntime"),
                              teacher_model.kind)
    train, val = _load_data(data, val_data, val_split, seed, teacher_model, data_reading)
    evaluation = load_data(eval_data, model=teacher_model, reading=data_reading) if eval_data else None
    if evaluation is not None:
        evaluation.check_against(teacher_model)
    text = None if eval_text is None else load_text_stream(eval_text, teacher_model, data_reading)
    if prune_ratio is None:
        student_model = _load_student(student, student_arch, trust, teacher_model, input_shape, inputs)
    else:
        student_model, pruned = _pruned_student(teacher_model, prune_ratio, seed)

    # everything is loaded now: no output, and not the checkpoint either, may be a file this run reads
    check_not_read(ckpt, "checkpoint")
    check_outputs_free([output, json, html, markdown, export_onnx, ckpt], True)
    result = _train(rank, world, teacher_model, student_model, config, train, val, ckpt, resume, threads)
    if prune_ratio is not None:
        result.details["prune"] = pruned.details
        result.notes[:0] = pruned.notes + [f"student: the teacher with {prune_ratio:.0%} of its channels pruned"]
    if rank == 0:
        judged = evaluation if evaluation is not None else val
        bar = quality_bar(max_accuracy_drop, tolerance or (), labelled=judged is not None and judged.labels is not None,
                          text=text is not None)
        measure_threads = resolve_threads(threads, console_for(json))
        _report(teacher_model, result, judged, text, bar, output, ckpt, runtimes, measure_threads, warmup, iterations,
                min_time, json, markdown, html, export_onnx, force, chose_epoch=judged is val)


def _load_data(data: str, val_data: str | None, val_split: float, seed: int, teacher, data_reading):
    with err.status(Text(f"loading {data}"), spinner="dots"):
        train = load_data(data, model=teacher, reading=data_reading)
        val = load_data(val_data, model=teacher, reading=data_reading) if val_data else None
    if val is None and val_split > 0:
        train, val = train.split(val_split, seed=seed)
        val = dataclasses.replace(val, source=f"{data} (held-out {val_split:g})")
    return train, val


def _train(rank, world, teacher, student, config, train, val, ckpt: Path, resume: bool, threads: int | None):
    with _process_group(world), _training_bar(rank == 0) as on_step:
        return distill(teacher, student, config, data=train, val_data=val, on_step=on_step, checkpoint=ckpt,
                       resume=resume, threads=threads)


def _report(teacher, result, judged, text, bar, output, ckpt, runtimes, threads, warmup, iterations, min_time, json,
            markdown, html, export_onnx, force, chose_epoch: bool) -> None:
    """Measure the student against the teacher, judged on `judged` (--eval, else the validation data, which
    also chose the best epoch: `chose_epoch`) and a language model's perplexity on `text`, hold it to the
    bar, print and write."""
    result.details["judged_on"] = None if judged is None else {"source": judged.source, "samples": len(judged),
                                                                "chose_the_epoch": chose_epoch}
    console = console_for(json)

    def step(progress):  # trained already: on every torchrun process, under its own progress display
        return apply_step("distill", teacher, lambda: result, bar=bar, output=output, runtimes=runtimes,
                          threads=threads, warmup=warmup, iterations=iterations, min_time=min_time, eval_data=judged,
                          text=text, export_onnx=export_onnx, force=force, what="the distilled student",
                          hint="train longer (--epochs), use a larger student, or loosen --max-accuracy-drop / "
                               "--tolerance",
                          notes=lambda outcome: validation_notes(judged, outcome.fidelity, chose_epoch),
                          progress=progress)

    try:
        show_step(step, lambda outcome: console.print(outcome_table(outcome)), json, markdown, outcome_markdown,
                  force, html)
    except StepRefused:
        remove(ckpt, "checkpoint")  # the run finished: its checkpoint is spent
        raise
    remove(ckpt, "checkpoint")
