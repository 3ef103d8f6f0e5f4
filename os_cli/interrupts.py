"""Ctrl-C as the console script sees it: the handler `main` installs first (`remember_interrupt`),
whether it fired (`interrupted`), and the one "interrupted" line (`report_interrupted`). Imports nothing
but the standard library, so os_cli/entry.py can install the handler before anything heavy loads; the CLI
(cli/common) and the run loop (run/signals) read it from here."""

from __future__ import annotations

EXIT_INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C or SIGTERM (128 + SIGINT)

_interrupt = {"seen": False, "reported": False}  # this process's Ctrl-C, once main installed the handler


def remember_interrupt(signum, frame) -> None:
    """The SIGINT handler: raise KeyboardInterrupt as Python's default does, and remember it."""
    _interrupt["seen"] = True
    raise KeyboardInterrupt


def interrupted() -> bool:
    """Whether Ctrl-C reached this process through the console script's handler."""
    return _interrupt["seen"]


def report_interrupted(write) -> None:
    """Tell the user once that the command was interrupted: `write("interrupted")` the first time only."""
    if not _interrupt["reported"]:
        _interrupt["reported"] = True
        write("interrupted")
