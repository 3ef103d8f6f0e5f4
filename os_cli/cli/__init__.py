"""The `os-sample` command line: a thin Typer layer over recipes and the library.

Habits shared with its peers: `--version` / `-V`, `-h` as well as `--help` on every command, shell
completion (`--install-completion`, `--show-completion`), and boolean flags shown as bare flags
in the help (no `<bool>` value column).
"""

from __future__ import annotations

from typing import Optional

import typer
from typer.core import TyperGroup

HELP_OPTION_NAMES = ["-h", "--help"]


def _flags_as_flags(params) -> None:
    """A boolean flag takes no value: show no type for it (Typer's rich help writes `<bool>`)."""
    for param in params:
        if getattr(param, "is_bool_flag", False) and param.metavar is None:
            param.metavar = ""


class OsSampleGroup(TyperGroup):
    """The app's group: every command it hands out shows its boolean flags as flags."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        _flags_as_flags(params)
        return params

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _flags_as_flags(command.get_params(ctx))
        return command


app = typer.Typer(
    name="os-sample",
    cls=OsSampleGroup,
    help="Optimal sampling: generate training data from a mixture of two causal language models.",
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": HELP_OPTION_NAMES},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from os_cli import __version__

        typer.echo(f"os-sample {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Optimal sampling: generate training data from a mixture of two causal language models."""


_registered = False


def _register() -> None:
    """Attach the commands once (importing them lazily keeps `--help` fast)."""
    global _registered
    if _registered:
        return
    _registered = True
    from os_cli.cli import bench, export, generate, inspect

    generate.register(app)
    inspect.register(app)
    bench.register(app)
    export.register(app)


def main() -> None:
    _register()
    app(prog_name="os-sample")
