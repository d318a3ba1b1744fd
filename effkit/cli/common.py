"""What every command shares: the Typer app, consoles, options, output writing, error handling.

This is the one place where errors become exit codes: EffkitError kinds carry their own (2 for
user mistakes, 1 for a failed step or gate); anything unexpected is exit 2 with one line, and
`--debug` shows the traceback. Ctrl-C (SIGINT) ends with exit 130 and SIGTERM with 143, both after
the same cleanup: temporaries removed, old outputs left as they were.
"""

from __future__ import annotations

import contextlib
import functools
import json as jsonlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional, get_args

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup

from effkit.apply import StepRefused
from effkit.data import Reading
from effkit.env import available_cores, default_threads
from effkit.errors import EffkitError, RunTimedOut, StepFailed, Terminated, UsageError, first_line
from effkit.factory import is_factory_spec
from effkit.fidelity import check_finite
from effkit.files import check_output, reading_scope, write_text
from effkit.interrupts import INTERRUPTED, INTERRUPTED_EXIT, TERMINATED, TERMINATED_EXIT, guard, received, stop_signals
from effkit.limits import check_threads
from effkit.load import check_runs, load_model
from effkit.report.render import render_html
from effkit.runners import set_onnxruntime_logging
from effkit.specs import check_number, parse_input_shape
from effkit.util import plural

try:  # newer Typer vendors Click as typer._click; older Typer runs on Click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click.exceptions import ClickException


class OneLineErrorsGroup(TyperGroup):
    """Typer's command group, but Click's own usage errors (an unknown option, `--iterations 0`) end
    like every other user mistake: one `Error: ... (see effkit CMD --help)` line and exit 2, not a
    Rich box under a usage line. Help and `--version` are untouched."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                **extra)
        try:
            code = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                **extra)
        except ClickException as e:
            if type(e).__name__ != "NoArgsIsHelpError":  # `effkit` alone: the help is printed already
                print_error(click_error_line(e))
            sys.exit(e.exit_code)
        sys.exit(code if isinstance(code, int) else 0)  # a command's typer.Exit(n) comes back as n


def click_error_line(e: ClickException) -> str:
    """`Error: <Click's message on one line> (see effkit CMD --help)`."""
    message = " ".join(e.format_message().split())
    names, ctx = [], getattr(e, "ctx", None)  # Click leaves out the context of some parser errors
    while ctx is not None and ctx.parent is not None:
        names.insert(0, ctx.info_name)
        ctx = ctx.parent
    return f"Error: {message} (see {' '.join(['effkit', *names, '--help'])})"


_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(32), 127)}


def print_error(line: str) -> None:
    """One error line on stderr, printed as is: no markup, no highlighting, no wrapping, and control
    characters (a newline in a path or in a library's message) escaped so it stays one line."""
    err.print(line.translate(_CONTROL_ESCAPES), markup=False, highlight=False, soft_wrap=True)


app = typer.Typer(
    name="effkit",
    cls=OneLineErrorsGroup,
    help="Make PyTorch models smaller and faster (prune, int8, distill), measured before and after; "
         "gate the result in CI.\n\nExit codes: 0 success, 1 a gate or a step's quality bar failed, "
         "2 usage or input error, 124 --timeout expired, 130 interrupted (Ctrl-C).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Markup is off: what effkit prints holds user-controlled text (paths, layer names, messages) that
# Rich would read as markup ("[/]" in a path raised MarkupError). Styling goes through Text objects.
out = Console(markup=False)
err = Console(stderr=True, markup=False)
DEBUG = {"on": bool(os.environ.get("EFFKIT_DEBUG"))}
# the running command's arguments (so outputs can be checked against them) and the warnings it printed
_RUNNING: dict = {"params": {}, "warnings": []}

MODEL_HELP = ("Model: a .pt/.pth or .safetensors state_dict (with --arch), .pt2, TorchScript, .onnx, a "
              "Hugging Face folder (hf:PATH), or a factory path/to/file.py:function or package.module:function. "
              "Factories are your own Python code and run as such.")

# ---------------------------------------------------------------- shared options

ModelArg = Annotated[str, typer.Argument(help=MODEL_HELP, show_default=False)]
ArchOpt = Annotated[Optional[str], typer.Option(
    "--arch", help="Factory that builds the architecture for a state_dict or .safetensors file (runs its code).")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust", help="Allow loading pickled whole models, .pt2 archives that hold code and Hugging Face remote "
                    "code: this runs code from the file.")]
InputShapeOpt = Annotated[Optional[list[str]], typer.Option(
    "--input-shape", help="Example input shape, e.g. 1x3x224x224 or int64:1x128; repeat for several inputs.")]
InputsOpt = Annotated[Optional[Path], typer.Option(
    "--inputs", help="An .npz file with one example array per model input.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", help="Threads for torch and ONNX Runtime, at most 4 per core (default: the cores free when the "
                      "command starts)", min=1)]
TimeoutOpt = Annotated[Optional[float], typer.Option(
    "--timeout", help="Stop after SECONDS, with exit code 124 and no output written (default: no limit)",
    show_default=False)]
WarmupOpt = Annotated[int, typer.Option("--warmup", help="Untimed calls before timing.", min=0)]
IterationsOpt = Annotated[Optional[int], typer.Option(
    "--iterations", help="Timed calls per measurement (default: as many as fit in --min-time)", min=1)]
MinTimeOpt = Annotated[float, typer.Option("--min-time", help="Seconds of timed calls per measurement.", min=0.0)]
JsonOpt = Annotated[Optional[str], typer.Option(
    "--json", help="Write the result as JSON to PATH; '-' writes JSON alone to stdout (the rest goes to stderr).")]
MarkdownOpt = Annotated[Optional[Path], typer.Option("--markdown", help="Write a Markdown report to PATH.",
                                                      metavar="PATH")]
HtmlOpt = Annotated[Optional[Path], typer.Option(
    "--html", help="Write a self-contained HTML report (charts, no network needed) to PATH.", metavar="PATH")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
ExportOnnxOpt = Annotated[Optional[Path], typer.Option(
    "--export-onnx", help="Also export the result to this .onnx path, verified in ONNX Runtime.")]


def console_for(json_path: str | None) -> Console:
    """Human output goes to stdout, unless stdout carries JSON (`--json -`)."""
    return err if json_path == "-" else out


def load(model: str, arch: str | None, trust: bool, input_shape: list[str] | None, inputs: Path | None,
         data: tuple[str | None, ...] = (), console: Console | None = None, show_inputs: bool = True,
         reading: Reading = Reading(), texts: list[str] = (), images: list[Path] = ()):
    """Load MODEL with the shared options; parse shapes first so a typo fails before any import.

    `data` are the command's data specs, first choice first (--eval, --calib, --data): the first
    one given supplies example inputs when neither --inputs, --input-shape nor the model does, read
    as the command's data options say (`reading`).
    The inputs used are printed on `console` (default: stdout), with the command's other output,
    unless `show_inputs` is False (bench --generate feeds a prompt instead, and says so).
    """
    shapes = [parse_input_shape(s) for s in input_shape or []]
    first_data = next((d for d in data if d is not None and d != "random"), None)
    with err.status(Text(f"loading {model}"), spinner="dots"):
        loaded = load_model(model, arch=arch, trust=trust, input_shapes=shapes, inputs=inputs, data=first_data,
                            reading=reading, texts=texts, images=images, check=False)
        if show_inputs:
            (console or out).print(f"inputs ({loaded.meta.get('inputs_from', 'the model')}): {loaded.describe_inputs()}",
                                   markup=False, highlight=False, soft_wrap=True)
        outputs = check_runs(loaded)
    try:  # timings of a model that computes NaN still stand; its numbers do not
        check_finite(outputs, "the model on its example inputs")
    except StepFailed as e:
        warn(f"{e.message}; any step that compares its outputs will fail")
    return loaded


def resolve_threads(threads: int | None, console: Console | None = None) -> int:
    """The one thread policy of every command: --threads, else the cores free now; printed on `console`."""
    chosen = threads or default_threads()
    origin = "--threads" if threads else f"the free cores of {available_cores()}; --threads N to change"
    (console or out).print(f"{plural(chosen, 'thread')} ({origin})", markup=False, highlight=False)
    return chosen


def warning_text(text: str) -> Text:
    """`warning: TEXT` with the label in yellow; TEXT is printed as it is, never read as markup."""
    return Text.assemble(("warning:", "yellow"), " ", text)


def warn(text: str, console: Console | None = None) -> None:
    """Print `warning: TEXT` on `console` (default: stderr), once per command, and keep it: `warned()` hands
    the command's warnings to its result, so that its JSON, Markdown and HTML carry them too."""
    if text in _RUNNING["warnings"]:
        return
    _RUNNING["warnings"].append(text)
    (console or err).print(warning_text(text), soft_wrap=True)


def print_warnings(console: Console, warnings: list[str]) -> None:
    """A result's warnings after its table: those not printed yet as they arose (`warn`)."""
    for text in warnings:
        warn(text, console)


def warned() -> list[str]:
    """Every warning this command printed so far, in order."""
    return list(_RUNNING["warnings"])


def write_outputs(json_path: str | None, json_text: Callable[[], str], markdown_path: Path | None,
                  markdown_text: Callable[[], str], force: bool, html_path: Path | None = None) -> None:
    """Write --json, --markdown and --html outputs (atomically; '-' means stdout for JSON).

    The HTML page is rendered from the JSON document, so both always say the same; it is rendered
    before anything is written, so a rendering error leaves no partial set of outputs."""
    html_text = render_html(jsonlib.loads(json_text())) if html_path else None
    if json_path == "-":
        sys.stdout.write(json_text() + "\n")
    elif json_path:
        write_text(json_path, json_text() + "\n", force)
        err.print(f"wrote {json_path}")
    if markdown_path:
        write_text(markdown_path, markdown_text(), force)
        err.print(f"wrote {markdown_path}")
    if html_path:
        write_text(html_path, html_text, force)
        err.print(f"wrote {html_path}")


def bar_options_help(default_drop: str, default_fidelity: str) -> tuple[str, str]:
    """The help of --max-accuracy-drop and --tolerance, the same words for every command that changes a model."""
    return (f"The most accuracy the result may lose on the labelled evaluation data, e.g. 0.5pt (default: "
            f"{default_drop}; none: no accuracy bar). Missed: exit 1, nothing written.",
            f"A bound on the result's outputs against the original's on held-out inputs, e.g. cosine>=0.999 or "
            f"sqnr>=20; repeatable (default without labels: {default_fidelity}; none: no fidelity bar).")


def show_step(apply: Callable[[Callable[[str, float], None] | None], Any], render: Callable[[Any], None],
              json: str | None, markdown: Path | None, markdown_text: Callable[[Any], str], force: bool,
              html: Path | None = None) -> Any:
    """Make a step's one library call, `apply(progress)` (`effkit.apply.apply_step`), under a progress bar,
    then show its Outcome: the tables (`render`), the files written, the reports. A refused step is shown
    all the same: its tables and, when it missed the quality bar, the reports that say why (marked
    failed); then its error ends the command with exit 1 and nothing else written."""
    def show(outcome) -> None:  # the command's own warnings join the step's, in every report
        outcome.general_warnings = list(dict.fromkeys(warned() + outcome.general_warnings))
        render(outcome)
        print_warnings(console_for(json), outcome.warnings())

    try:
        with progress_bar() as progress:
            outcome = apply(progress)
    except StepRefused as e:
        show(e.outcome)
        if e.outcome.status == "failed":  # a slower result's record says "ok": no report of it is written
            write_outputs(json, e.outcome.to_json, markdown, lambda: markdown_text(e.outcome), force, html_path=html)
        raise
    show(outcome)
    console_for(json).print(f"wrote {', '.join(outcome.outputs)}")
    write_outputs(json, outcome.to_json, markdown, lambda: markdown_text(outcome), force, html_path=html)
    return outcome


def check_outputs_free(paths: list[Path | str | None], force: bool, inputs: tuple = ()) -> None:
    """Fail before any work when an output exists (without --force) or is an input.

    Besides `inputs`, every file named by the running command's arguments (MODEL, --arch, --data, ...)
    counts: an output path that appears twice among them names an input too.
    """
    outputs = [Path(p) for p in paths if p is not None and str(p) != "-"]
    resolved = [p.resolve() for p in outputs]
    named = _named_files()
    for p, target in zip(outputs, resolved):
        check_output(p, force, inputs)
        if resolved.count(target) > 1:
            raise UsageError(f"output {p} is given for two outputs", "give each output its own path")
        if named.count(target) > 1:
            raise UsageError(f"output {p} is also an input of this command", "write the result to another path")


def _named_files() -> list[Path]:
    """Existing files named by the running command's arguments, one entry per mention."""
    files = []
    for value in _RUNNING["params"].values():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(v, (str, Path)):
                continue
            text = str(v).removeprefix("hf:")
            if is_factory_spec(text) and not _exists(text):
                text = text.rsplit(":", 1)[0]  # path/to/file.py:function names file.py
            if _exists(text):
                files.append(Path(text).resolve())
    return files


def _exists(text: str) -> bool:
    try:
        return Path(text).exists()
    except OSError:  # not a path at all: a name too long, say
        return False


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, float], None] | None]:
    """A transient Rich progress bar on stderr; yields `update(label, fraction)`."""
    if not enabled or not err.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(),
                  TimeRemainingColumn(), console=err, transient=True) as progress:
        tasks: dict[str, int] = {}

        def update(label: str, fraction: float) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=1.0)
            progress.update(tasks[label], completed=fraction)

        yield update


def handle_errors(func: Callable, name: str | None = None) -> Callable:
    """Turn exceptions into one `Error:` line and an exit code; --debug shows the traceback.

    The command runs under effkit.interrupts.guard: Ctrl-C and its --timeout end it within
    seconds even while a model runs in native code.
    """
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        _RUNNING["params"], _RUNNING["warnings"] = kwargs, []
        if DEBUG["on"]:
            set_onnxruntime_logging(True)
        try:
            check_shared_options(kwargs)
            for option, value in kwargs.items():  # `--min-time inf`, `--lr nan`, `--seed 10**30`: for every command
                check_number(f"--{option.replace('_', '-')}", value)
            with (reading_scope(), stop_signals(), _debug_log(),
                  guard(name or func.__name__, kwargs.get("timeout"))):
                return func(*args, **kwargs)
        except typer.Exit:
            raise
        except RunTimedOut as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt as e:
            _stopped(signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
        except Exception as e:
            if received() is not None:  # a library turned the interrupt into an error of its own
                _stopped(received())
            if DEBUG["on"]:
                traceback.print_exc()
            if isinstance(e, EffkitError):
                _fail(str(e), e.exit_code)
            first = first_line(e) if str(e).strip() else ""
            _fail(f"unexpected {type(e).__name__}{': ' + first if first else ''} (run with --debug for the traceback)", 2)
        finally:
            _RUNNING["params"], _RUNNING["warnings"] = {}, []

    return wrapper


def _fail(message: str, exit_code: int) -> NoReturn:
    """Print the one `Error:` line and end the command with `exit_code`."""
    print_error(f"Error: {message}")
    raise typer.Exit(exit_code) from None


def _stopped(signum: int) -> NoReturn:
    """End a command stopped by Ctrl-C (exit 130) or SIGTERM (exit 143) with its one line."""
    if signum == signal.SIGTERM:
        _fail(TERMINATED, TERMINATED_EXIT)
    _fail(INTERRUPTED, INTERRUPTED_EXIT)


def command(name: str, **kwargs) -> Callable:
    """`@app.command(name)` with effkit's error handling and help."""

    def decorate(func: Callable) -> Callable:
        return app.command(name, cls=HelpCommand, **kwargs)(handle_errors(func, name))

    return decorate


# What --help shows for a value of each type, unless the option names its own metavar.
_METAVARS = {int: "INT", float: "NUMBER", Path: "PATH", str: "TEXT"}


class HelpCommand(TyperCommand):
    """A command whose --help reads at 80 columns: metavars MODEL, PATH, INT instead of Typer's
    `<str>`, `<bool>` and `{model}`; flags show no type at all."""

    def get_params(self, ctx):
        params = super().get_params(ctx)  # with --help, which click adds here
        for param in params:
            if isinstance(param, TyperArgument):  # its name is its metavar: no type column
                param.metavar = param.metavar or param.name.upper()
                param._usage_display_name = (lambda p=param: p.metavar if p.required else f"[{p.metavar}]")
                shown = None
            else:
                shown = None if param.is_flag else param.metavar or _metavar(param)
            param.display_type_rich = lambda ctx, shown=shown: shown
            # no "[x>=0.0]" beside the type: it squeezed option names at 80 columns (the range is
            # still checked, and its error says it)
            param._get_number_range_help_str = lambda: ""
        return params


def _metavar(param) -> str:
    annotation = param.type_descriptor.annotation
    for kind in get_args(annotation) or (annotation,):  # list[int], Optional[Path]: the inner type
        if kind in _METAVARS:
            return _METAVARS[kind]
    return "TEXT"


def check_shared_options(params: dict) -> None:
    """Refuse bad values of the options many commands share, before any work."""
    check_threads(params.get("threads"))
    timeout = params.get("timeout")
    if timeout is not None and not (0 < timeout < float("inf")):
        raise UsageError(f"--timeout must be a positive number of seconds, got {timeout:g}", "e.g. --timeout 600")


@contextlib.contextmanager
def _debug_log() -> Iterator[None]:
    """With --debug, effkit's log messages (what it is doing now) go to stderr as `debug: ...` lines."""
    if not DEBUG["on"]:
        yield
        return
    import logging

    logger = logging.getLogger("effkit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("debug: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
