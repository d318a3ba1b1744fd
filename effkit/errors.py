"""Errors that reach the user: each kind knows its exit code; the CLI turns them into one line."""

from __future__ import annotations

from pathlib import Path


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's first message line, cut to `limit` characters (its type name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


class EffkitError(Exception):
    """A problem the user can fix: bad path, bad spec, bad shape, bad threshold. Exit code 2."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def __reduce__(self):
        # pickled with its hint: an error raised in a worker process (image decoding) arrives whole
        return type(self), (self.message, self.hint)


class UsageError(EffkitError):
    """Invalid options or values given on the command line or in a file."""


class ModelLoadError(EffkitError):
    """A model spec or file that cannot be loaded."""


class InputError(EffkitError):
    """Example inputs or data that do not fit the model."""


class OutputExistsError(EffkitError):
    """An output file exists and --force was not given."""


class OutputError(EffkitError):
    """An output cannot be written: the disk is full, or the path is a block device or socket."""


class StepFailed(EffkitError):
    """A pass (quantize, prune, ...) ran but its result is unusable: NaN outputs, tolerance missed.

    Exit code 1: the inputs were fine; the result did not meet the bar.
    """

    exit_code = 1


class GateFailed(EffkitError):
    """A CI gate failed. Exit code 1."""

    exit_code = 1


def unreadable(path: Path, what: str, e: Exception) -> ModelLoadError:
    first = first_line(e)
    return ModelLoadError(f"{path} is not a readable {what}: {first[:300]}",
                          "the file may be truncated or corrupt; save or download it again")
class RunTimedOut(BaseException):
    """A command ran past --timeout. Exit code 124, as GNU timeout(1) gives.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way turns it into
    another error: it comes from a timer, not from the code it interrupts.
    """

    exit_code = 124

    def __init__(self, command: str, seconds: float):
        super().__init__(command, seconds)
        self.message = (f"{command} ran past --timeout {seconds:g} s; no output was left half-written "
                        "(raise --timeout if the model needs longer)")

    def __str__(self) -> str:
        return self.message


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same cleanup runs. Exit code 143."""
