"""Ctrl-C and --timeout end a command within seconds, even while a model runs inside native code.

Python runs signal handlers only between bytecodes, so a forward pass that never returns to
Python (an endless ONNX `Loop`, a TorchScript `while`) would ignore Ctrl-C forever. While a command
runs, `guard()` also hands every signal to a watchdog thread through `signal.set_wakeup_fd`, which
the C-level handler writes to whatever the main thread is doing. The main thread still gets its
usual exception (KeyboardInterrupt; RunTimedOut from the --timeout alarm) as soon as it runs Python
again, and unwinds normally: temporaries removed, one `Error:` line. When it has not finished within
GRACE_S, the watchdog prints that same line, removes effkit's temporaries (effkit/files.py) and ends
the process with the same exit code. Outputs are renamed into place only when complete, so either
way none is left half-written.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Iterator

from effkit.errors import RunTimedOut, Terminated
from effkit.files import remove_temporaries

GRACE_S = 1.0  # how long the main thread may take to unwind by itself after Ctrl-C or the timeout
INTERRUPTED = "interrupted; no output was left half-written"
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report a process ended by Ctrl-C
TERMINATED = "terminated; no output was left half-written"
TERMINATED_EXIT = 143  # 128 + SIGTERM


@contextlib.contextmanager
def guard(command: str, timeout: float | None = None) -> Iterator[None]:
    """Run the block under the watchdog; with `timeout`, raise RunTimedOut after that many seconds.

    Signals reach only the main thread's handlers, so from another thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # set_wakeup_fd requires it: a signal handler must never block
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watchdog = threading.Thread(target=_watch, args=(read_fd, RunTimedOut(command, timeout or 0).message),
                                name="effkit-watchdog", daemon=True)
    watchdog.start()
    previous_alarm = None
    try:
        if timeout:
            previous_alarm = signal.signal(signal.SIGALRM, lambda *_: _raise(RunTimedOut(command, timeout)))
            signal.setitimer(signal.ITIMER_REAL, timeout)
        yield
    finally:
        if previous_alarm is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_alarm)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)  # end-of-file tells the watchdog that the command is over
        watchdog.join()


def _raise(error: BaseException) -> None:
    raise error


# The signals received while the current command runs: a library may turn the KeyboardInterrupt raised
# inside it into another error (an import interrupted half-way says "ImportError: initialization failed"),
# and the command must still say it was interrupted.
_RECEIVED: list[int] = []


def _interrupt(signum, _frame) -> None:
    _RECEIVED.append(signum)
    raise KeyboardInterrupt


def _terminate(signum, _frame) -> None:
    _RECEIVED.append(signum)
    raise Terminated


def received() -> int | None:
    """The last SIGINT or SIGTERM received while the command ran under `stop_signals`, else None."""
    return _RECEIVED[-1] if _RECEIVED else None


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """While a command runs, Ctrl-C raises KeyboardInterrupt and SIGTERM `Terminated` (a KeyboardInterrupt),
    so that the same cleanup runs for both; `received()` remembers which came."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return
    _RECEIVED.clear()
    previous = {sig: signal.signal(sig, handler) for sig, handler in ((signal.SIGINT, _interrupt),
                                                                       (signal.SIGTERM, _terminate))}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch(read_fd: int, timeout_message: str) -> None:
    """Wait for Ctrl-C or the alarm; then give the main thread GRACE_S to finish before ending the process."""
    try:
        interrupts = terminations = 0
        while True:
            signals = os.read(read_fd, 64)
            if not signals:
                return
            for signum in signals:
                if signum == signal.SIGALRM:
                    _grace(read_fd, f"Error: {timeout_message}", RunTimedOut.exit_code)
                    return
                if signum == signal.SIGINT:
                    interrupts += 1
                    # A command that handles Ctrl-C itself (distill saves a checkpoint after the step)
                    # gets its first one; a second means "stop now".
                    if interrupts > 1 or signal.getsignal(signal.SIGINT) is _interrupt:
                        _grace(read_fd, f"Error: {INTERRUPTED}", INTERRUPTED_EXIT)
                        return
                if signum == signal.SIGTERM:
                    terminations += 1
                    # as for Ctrl-C: a command with its own SIGTERM handler (distill) gets the first one
                    if terminations > 1 or signal.getsignal(signal.SIGTERM) is _terminate:
                        _grace(read_fd, f"Error: {TERMINATED}", TERMINATED_EXIT)
                        return
    finally:
        os.close(read_fd)


def _grace(read_fd: int, message: str, exit_code: int) -> None:
    """Return when the guarded block ends within GRACE_S; else end the process now.

    A second Ctrl-C during the grace period ends it at once.
    """
    deadline = time.monotonic() + GRACE_S
    while (left := deadline - time.monotonic()) > 0:
        if select.select([read_fd], [], [], left)[0]:
            signals = os.read(read_fd, 64)
            if not signals:
                return  # the block ended: the main thread reports as usual
            if signal.SIGINT in signals or signal.SIGTERM in signals:
                break
    _end_now(message, exit_code)


def _end_now(message: str, exit_code: int) -> None:
    """Remove effkit's temporaries, print the one error line, and end the process without unwinding."""
    remove_temporaries()
    prefix = b""
    if os.isatty(2):  # a spinner may have hidden the cursor and left the line half-drawn
        prefix = b"\x1b[?25h\n"
    os.write(2, prefix + message.encode() + b"\n")
    os._exit(exit_code)
