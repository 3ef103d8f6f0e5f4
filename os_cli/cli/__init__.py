"""The `os-sample` command line: a thin Typer layer over recipes and the library."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="os-sample",
    help="Optimal sampling: generate training data from a mixture of two causal language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


_registered = False


def _register() -> None:
    """Attach the commands once (importing them lazily keeps `--help` fast)."""
    global _registered
    if _registered:
        return
    _registered = True
    from . import bench, generate, inspect

    generate.register(app)
    inspect.register(app)
    bench.register(app)


def main() -> None:
    _register()
    app()
