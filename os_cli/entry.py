"""The `os-sample` console script (pyproject's [project.scripts], `python -m os_cli`).

`main`'s first act, before typer, rich, torch or transformers are imported, installs a Ctrl-C handler
that raises KeyboardInterrupt as Python's default does and also remembers it (os_cli/interrupts.py). An
import that Ctrl-C cut short surfaces later as some other error (transformers reports a missing
module, so a model "could not load"); the CLI (cli/common.cli_errors) and `main` report any failure
after a Ctrl-C as what it is: one "interrupted" line and exit 130, no traceback.
The run loop replaces the handler while it runs (os_cli/signals.StopSignals) and puts it back after.
This module imports nothing but `signal`, `sys` and os_cli/interrupts.py before the handler is in place.
"""

from __future__ import annotations

import signal
import sys

from os_cli.interrupts import EXIT_INTERRUPTED, interrupted, remember_interrupt, report_interrupted


def _say(message: str) -> None:
    sys.stderr.write(f"\nerror: {message}\n")
    sys.stderr.flush()


def main() -> None:
    signal.signal(signal.SIGINT, remember_interrupt)
    try:
        from os_cli.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        report_interrupted(_say)
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == EXIT_INTERRUPTED or (code != 0 and interrupted()):
            report_interrupted(_say)  # says nothing where the command already said it
            sys.exit(EXIT_INTERRUPTED)
        raise
    except BaseException:
        if interrupted():
            report_interrupted(_say)
            sys.exit(EXIT_INTERRUPTED)
        raise
