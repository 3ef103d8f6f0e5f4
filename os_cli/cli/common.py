"""Shared CLI plumbing: consoles, the --debug option, and the error wrapper every command uses.

    from os_cli.cli.common import DebugOption, cli_errors, err_console

    @app.command()
    def inspect(..., debug: bool = DebugOption):
        with cli_errors(debug):
            ...

`cli_errors` turns exceptions into a one-paragraph message on stderr and an exit code: `UserError`
-> its own code (2 invalid input, 1 runtime failure), KeyboardInterrupt -> 130, anything else -> 1
with a hint to rerun with --debug. With --debug the traceback is printed as well, and the `os_cli`
logger's INFO messages (device, dtype, attention choices) go to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from contextlib import contextmanager
from typing import Iterator

import typer
from rich.console import Console

from os_cli.errors import UserError
from os_cli.interrupts import EXIT_INTERRUPTED, interrupted, report_interrupted

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID = 2

DebugOption = typer.Option(False, "--debug", help="Show full tracebacks and the library's log messages.")
SetOption = typer.Option(
    None,
    "--set",
    "-s",
    metavar="KEY=VALUE",
    help="Override a recipe key, value parsed as YAML (repeatable): --set sampling.batch_size=4",
)
ThreadsOption = typer.Option(
    None,
    "--threads",
    metavar="N",
    help="CPU only: torch threads for this process's CPU work (intra-op, and inter-op unless already started); "
    "default: torch's, one per core, which oversubscribes a machine other processes keep busy. No effect on "
    "GPU kernels.",
)


def apply_threads(threads: int | None, *, set_now: bool = True) -> None:
    """--threads N (generate, bench): N from 1 to this machine's cores, else UserError (exit 2); then set
    (machine.set_cpu_threads) unless `set_now` is False (a dry run checks it only)."""
    if threads is None:
        return
    cores = os.cpu_count() or 1
    if not 1 <= threads <= cores:
        raise UserError(
            f"--threads {threads}: give a number of CPU threads from 1 to {cores} (this machine's cores; "
            f"more only oversubscribes them)"
        )
    if set_now:
        from os_cli.machine import set_cpu_threads

        set_cpu_threads(threads)


def make_console(file) -> Console:
    """The one place the CLI builds a console. emoji=False: user text is printed as written (rich would
    turn `cuda:-1` into `cuda👎` and a stop string `:smile:` into an emoji). Markup stays on for our own
    styling, so user text printed with it goes through `literal` (or print(..., markup=False))."""
    return Console(file=file, soft_wrap=True, emoji=False)


def out_console() -> Console:
    """stdout (bound at call time, so test runners that swap sys.stdout see the output)."""
    return make_console(sys.stdout)


def err_console() -> Console:
    return make_console(sys.stderr)


def literal(text) -> str:
    """User text (paths, ids, values, messages) to put inside a markup string, a table cell or a rule title:
    shown exactly as written, `[red]` and `[/]` included."""
    from rich.markup import escape

    return escape(str(text))


def print_error(message: str) -> None:
    console = err_console()
    console.print("[bold red]error:[/bold red] ", end="")
    console.print(message, markup=False, highlight=False)


def setup_logging(debug: bool) -> logging.Handler | None:
    """With --debug, show the library's log lines on stderr; returns the handler to remove after."""
    if not debug:
        return None
    logger = logging.getLogger("os_cli")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


@contextmanager
def cli_errors(debug: bool = False) -> Iterator[None]:
    """Run a command body; map exceptions to a message and an exit code (see module docstring)."""
    handler = setup_logging(debug)
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc(file=sys.stderr)
        report_interrupted(print_error)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no trace without --debug
        if interrupted():  # Ctrl-C cut something short (an import, a load) and it failed: an interruption
            if debug:
                traceback.print_exc(file=sys.stderr)
            report_interrupted(print_error)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        if isinstance(exc, UserError):
            if debug:
                traceback.print_exc(file=sys.stderr)
            print_error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        if debug:
            traceback.print_exc(file=sys.stderr)
            print_error(f"{type(exc).__name__}: {exc}")
        else:
            print_error(f"{type(exc).__name__}: {exc}\n(run again with --debug to see the full traceback)")
        raise typer.Exit(EXIT_FAILURE) from None
    finally:
        if handler is not None:
            logging.getLogger("os_cli").removeHandler(handler)


def point_status(row) -> str:
    """A measured bench point as the tables show it: ok, OOM or error."""
    if row.oom:
        return "OOM"
    if row.error:
        return "error"
    return "ok"


def percent(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.0f}%"


NOTE_WIDTH = 80  # notes under the tables wrap here even in a wider terminal (the tables fit 80 columns)


def note(console, text: str) -> None:
    """A line of prose (rich markup) under a table, word-wrapped at NOTE_WIDTH columns or the terminal's width."""
    console.print(text, width=min(NOTE_WIDTH, console.width), soft_wrap=False, highlight=False)


def followup_batch_size(rec: dict, sweep_rows) -> int | None:
    """Where --compare and --draft-tokens run: the recommended batch size, else the fastest by median that
    fits (no measurable difference), else the largest that ran."""
    return rec["batch_size"] or rec.get("fastest") or next((r.batch_size for r in reversed(sweep_rows) if r.ok), None)
