"""os-sample inspect: summarise an output folder as tables, one JSON document, or a PNG."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from os_cli.cli.common import DebugOption, cli_errors, literal, out_console
from os_cli.cli.inspect_tables import render
from os_cli.errors import UserError

HELP = (
    "Summarise an output folder of `os-sample generate`.\n\n"
    "Reads manifest.json, ids.txt, errors.jsonl and every shard-*.jsonl (all ranks) and reports: records, "
    "tokens, finish reasons and lengths; alpha, ESS ratio, KL(q||pi_theta) and KL(q||pi_t) over the "
    "records' per-record means (and per token when records carry `tokens`); sequence log-probabilities "
    "under pi_theta, pi_t and q* and the log importance weight log pi_theta - log q*; integrity (missing, "
    "duplicated or unexpected ids, torn or invalid lines, error rows); and, when rows carry a reference "
    "answer, the share of completions whose final answer (last \\boxed{...}, else last number) matches. "
    "Every valid record line counts, duplicates included. Exit 2 for a missing, empty or foreign folder."
)


def register(app: typer.Typer) -> None:
    app.command("inspect", help=HELP)(inspect_command)


def inspect_command(
    output_dir: Path = typer.Argument(..., help="Output folder of `os-sample generate` (e.g. outputs/<run>)."),
    json_out: bool = typer.Option(
        False, "--json", help="Print the summary as one JSON document on stdout, nothing else."
    ),
    plot: Optional[Path] = typer.Option(
        None,
        "--plot",
        help="Write a PNG: alpha histogram, alpha and ESS ratio by "
        "token position (needs per-token data), length histogram. Needs matplotlib.",
    ),
    by: Optional[str] = typer.Option(
        None, "--by", help="Split every table by a record field: a top-level key such as alpha_method, else row.FIELD."
    ),
    answer_field: Optional[str] = typer.Option(
        None,
        "--answer-field",
        help="Row field with the reference answer "
        "(default: the recipe's dataset.answer_field). '' switches "
        "matching off.",
    ),
    debug: bool = DebugOption,
) -> None:
    with cli_errors(debug):
        _inspect(output_dir, json_out, plot, by, answer_field)


def _inspect(output_dir: Path, json_out: bool, plot: Path | None, by: str | None, answer_field: str | None) -> None:
    from os_cli.cli.plot import require_matplotlib, write_plot
    from os_cli.report.summary import summarize_dir

    if plot is not None:
        require_matplotlib()
        if plot.suffix.lower() != ".png":
            raise UserError(f"--plot {plot}: give a .png file name")
    summary = summarize_dir(output_dir, by=by or None, answer_field=answer_field)
    _show_builtin_names(summary, output_dir)
    if plot is not None:
        write_plot(summary, plot)
    if json_out:
        sys.stdout.write(json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
        sys.stdout.flush()
        if plot is not None:
            typer.echo(f"wrote {plot}", err=True)
        return
    console = out_console()
    render(summary, console)
    if plot is not None:
        console.print(f"wrote [bold]{literal(plot)}[/]")


def _show_builtin_names(summary: dict, output_dir: Path) -> None:
    """Where the recipe named a model `builtin:NAME`, show that name (the manifest holds the folder)."""
    from os_cli.recipe.places import BUILTIN_PREFIX
    from os_cli.store.writer import read_manifest

    view = summary.get("manifest") or {}
    models = view.get("models")
    if not isinstance(models, dict):
        return
    try:
        named = (read_manifest(output_dir) or {}).get("recipe", {}).get("models", {})
    except (UserError, AttributeError):
        return
    for role, key in (("theta", "theta"), ("teacher", "teacher")):
        name = named.get(key) if isinstance(named, dict) else None
        if isinstance(name, str) and name.startswith(BUILTIN_PREFIX) and role in models:
            view.setdefault("model_paths", {})[role] = models[role]
            models[role] = name
