"""os-sample export: an output folder as a trainer-ready dataset (TRL, Parquet, datasets)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from os_cli.cli.common import DebugOption, cli_errors, err_console

HELP = (
    "Export an output folder of `os-sample generate` for training.\n\n"
    "--format trl: a JSON Lines file of prompt-completion records (theta's rendered prompt, chat template "
    "already applied, and the completion) that TRL's SFT trainers read as they are; parquet: one Parquet "
    "file; hf: a folder written by datasets' save_to_disk. parquet and hf flatten every record field "
    "(alpha.mean -> alpha_mean, row.question -> row_question). Every format adds log_weight = log pi_theta(y) "
    "- log q*(y), weight = its self-normalised value over the exported records (they sum to 1) and, for "
    "per-token records, token_log_weights. Filters run before the weights are normalised. Exit 2 for bad "
    "input or when no record passes the filters."
)


def register(app: typer.Typer) -> None:
    app.command("export", help=HELP)(export_command)


def export_command(
    output_dir: Path = typer.Argument(..., help="Output folder of `os-sample generate` (e.g. outputs/<run>)."),
    fmt: str = typer.Option(..., "--format", "-f", metavar="trl|parquet|hf", help="What to write."),
    to: Optional[Path] = typer.Option(
        None,
        "--to",
        "-t",
        help="File (trl: .jsonl, parquet: .parquet) or "
        "folder (hf) to write; missing folders are created. Never a run's own "
        "files or folder.",
    ),
    where: Optional[str] = typer.Option(
        None,
        "--where",
        metavar="correct",
        help="correct: keep records whose final answer matches the row's reference answer (as inspect counts).",
    ),
    min_ess: Optional[float] = typer.Option(
        None, "--min-ess", help="Keep records whose mean ESS ratio (ess_theta/ess_t) is at least this."
    ),
    finish_reason: Optional[list[str]] = typer.Option(
        None, "--finish-reason", metavar="eos|length|stop", help="Keep records that ended this way (repeatable)."
    ),
    answer_field: Optional[str] = typer.Option(
        None, "--answer-field", help="Row field with the reference answer (default: the recipe's dataset.answer_field)."
    ),
    push_to_hub: Optional[str] = typer.Option(
        None,
        "--push-to-hub",
        metavar="REPO",
        help="Also upload with datasets' push_to_hub (needs network and a Hugging Face token).",
    ),
    private: bool = typer.Option(False, "--private", help="With --push-to-hub: create the repo private."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --to."),
    debug: bool = DebugOption,
) -> None:
    with cli_errors(debug):
        from os_cli.quiet import quiet_progress_bars
        from os_cli.report.export import Filters, export

        quiet_progress_bars()

        filters = Filters(
            where=where, min_ess=min_ess, finish_reasons=tuple(finish_reason or ()), answer_field=answer_field
        )
        result = export(
            output_dir,
            fmt.lower(),
            to,
            filters=filters,
            push_to_hub=push_to_hub,
            private=private or None,
            overwrite=overwrite,
        )
        console = err_console()
        dropped = ", ".join(f"{n} by --{k.replace('_', '-')}" for k, n in result.dropped.items())
        console.print(
            f"exported {result.kept} of {result.read} records"
            + (f" (dropped {dropped})" if dropped else "")
            + f" as {result.format}",
            markup=False,
            highlight=False,
        )
        if result.path:
            console.print(f"wrote {result.path}", markup=False, highlight=False)
        if result.pushed_to:
            console.print(f"pushed to {result.pushed_to}", markup=False, highlight=False)
        if result.ess_fraction is not None:
            console.print(
                f"ESS of the exported weights: {100 * result.ess_fraction:.1f}% of records",
                markup=False,
                highlight=False,
            )
        if result.status not in (None, "complete"):
            console.print(
                f"note: the run's status is {result.status!r}; the export holds the records written so far",
                markup=False,
                highlight=False,
            )
