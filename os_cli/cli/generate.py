"""`os-sample generate`, `os-sample validate`, `os-sample recipes`: recipes in, JSONL shards out.

generate: load and validate the recipe, load the rows, render both prompts of every row, check and
lock the output folder (resume / refuse / overwrite; see os_cli/outfolder.py: --overwrite writes into a
hidden sibling folder swapped in on completion), then hand over to the run loop (os_cli/run.py:
models, the engine's continuous batching, records appended as rows finish, OOM back-off, stop
signals). This module parses arguments and owns the console: the run reports through `RunEvents`,
implemented here on the dashboard (os_cli/dashboard.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import typer

from os_cli.cli.common import (
    DebugOption,
    SetOption,
    ThreadsOption,
    apply_threads,
    cli_errors,
    err_console,
    literal,
    out_console,
)
from os_cli.cli.preview import validate_rows
from os_cli.errors import UserError
from os_cli.run.loop import RunEvents

BACKENDS = ("local", "ray")

if TYPE_CHECKING:
    from os_cli.cli.dashboard import Dashboard
    from os_cli.recipe.typed import Output
    from os_cli.run.ray_backend import RayLaunch


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------


def generate(
    config: str = typer.Option(..., "--config", "-c", help="Recipe file (.yaml) or the name of a bundled recipe."),
    set_: Optional[list[str]] = SetOption,
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Output folder (default: output.dir, else outputs/<run_name>)."
    ),
    limit: Optional[int] = typer.Option(
        None, "--limit", min=0, help="Use at most N rows (same as --set dataset.limit=N)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in the output folder (the default when its recipe matches)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start over: the new run replaces the folder's run only once it completes."
    ),
    repair: bool = typer.Option(
        False,
        "--repair",
        help="On resume, drop invalid record lines anywhere in the shards and generate their rows again.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Validate, load the rows, render the first prompts; load no model."
    ),
    threads: Optional[int] = ThreadsOption,
    backend: str = typer.Option(
        "local",
        "--backend",
        help="local: this process (or torchrun/accelerate ranks); ray: a pool of Ray actors (pip install 'os-sample[ray]').",
    ),
    ray_address: Optional[str] = typer.Option(
        None,
        "--ray-address",
        help="--backend ray: the cluster to join (auto, or the head's HOST:PORT); default: a local Ray on this machine.",
    ),
    actors: Optional[int] = typer.Option(
        None,
        "--actors",
        min=1,
        help="--backend ray: sampling actors, each holding both models (default: one per recipe placement's GPUs in the cluster; 1 on CPU).",
    ),
    debug: bool = DebugOption,
) -> None:
    """Sample a dataset from the mixture q* described by a recipe, into JSONL shards."""
    with cli_errors(debug):
        if resume and overwrite:
            raise UserError("--resume and --overwrite exclude each other: choose one")
        apply_threads(threads, set_now=not dry_run)
        if backend not in BACKENDS:
            raise UserError(f"--backend {backend!r}: allowed: {', '.join(BACKENDS)}")
        if backend != "ray" and (ray_address is not None or actors is not None):
            raise UserError("--ray-address and --actors go with --backend ray")
        overrides: list[str | tuple[str, object]] = list(set_ or [])  # --set items, then (key, value) pairs
        if limit is not None:
            overrides.append(("dataset.limit", limit))
        ray = None
        if backend == "ray":
            from os_cli.run.ray_backend import RayLaunch

            ray = RayLaunch(address=ray_address, actors=actors)
        run_generate(
            config,
            overrides,
            output=output,
            overwrite=overwrite,
            dry_run=dry_run,
            resume=resume,
            repair=repair,
            ray=ray,
        )


def validate(
    recipe: str = typer.Argument(..., help="Recipe file (.yaml) or the name of a bundled recipe."),
    set_: Optional[list[str]] = SetOption,
    debug: bool = DebugOption,
) -> None:
    """Check a recipe (schema, fragments, overrides, local files), then read its first few rows and render their
    prompts with the models' tokenizers, as --dry-run does (the prompt lengths checked against the models'
    config.json). No model weights are loaded and nothing is written; a dataset or tokenizer on an
    unreachable hub is a note, not a failure."""
    with cli_errors(debug):
        from os_cli.recipe import fragment_label, load_recipe, output_dir, recipe_hash
        from os_cli.recipe.prompt_syntax import prompt_fields
        from os_cli.run.loop import check_draft_tokens
        from os_cli.run.plan import records_text

        resolved = load_recipe(recipe, set_ or [])
        check_draft_tokens(resolved.sampling, resolved.prompts, resolved.places)
        meta = resolved.source
        console = out_console()
        console.print(f"[bold]{literal(meta.path)}[/bold]", highlight=False)
        models = resolved.models
        ds = resolved.dataset
        prompts = resolved.prompts
        fields = prompt_fields(prompts)
        rows = f"{len(ds.inline)} inline rows" if ds.inline is not None else ds.source
        on_hub = "dataset" in resolved.places.hub  # split and config name parts of a hub dataset only
        hub = f"split {ds.split}, " + (f"config {ds.config}, " if ds.config else "") if on_hub else ""
        n_rows = len(ds.inline) if ds.inline is not None else ds.limit
        if ds.inline is not None and ds.limit is not None:
            n_rows = min(len(ds.inline), ds.limit)
        records = records_text(n_rows, resolved.sampling.num_samples, up_to=ds.inline is None)
        lines = [
            ("models", f"theta={models.theta}  teacher={models.teacher or '(same as theta)'}"),
            ("alpha", f"{resolved.alpha.method} in [{resolved.alpha.min:g}, {resolved.alpha.max:g}]"),
            ("dataset", f"{rows} ({hub}skip {ds.skip}, limit {ds.limit})"),
            ("records", records),
            ("fields", ", ".join(fields) or "(none)"),
            ("teacher prompt", "own template" if prompts.teacher else "same as theta"),
            ("output", str(output_dir(resolved)) + _records_note(resolved.output)),
            ("fragments", ", ".join(fragment_label(f) for f in meta.fragments) or "(none)"),
            ("hash", recipe_hash(resolved)),
        ]
        for key, value in lines:
            console.print(f"  {key:<15} {value}", markup=False, highlight=False)
        for warning in meta.warnings:
            console.print(f"  warning: {warning}", markup=False, highlight=False)
        validate_rows(resolved, console)
        console.print(f"[green]ok[/green]: {literal(meta.path)} is a valid recipe", highlight=False)  # last: all passed


def _records_note(output: Output) -> str:
    """What records carry beyond the summary: per-token lists, the teacher's top-k (output.topk_logprobs)."""
    k = output.topk_logprobs
    if k:
        return f"  (per token, with topk_logprobs: {k} of {', '.join(output.topk_of)})"
    return "  (per token)" if output.per_token else ""


def recipes(debug: bool = DebugOption) -> None:
    """List the bundled recipes (use one with --config NAME) and the fragments recipes can build on."""
    with cli_errors(debug):
        from rich.table import Table

        from os_cli.recipe import BUNDLED_DIR, list_bundled, list_fragments

        bundled = list_bundled()
        console = out_console()
        if not bundled:
            console.print(f"no bundled recipes in {BUNDLED_DIR}", markup=False)
            return
        table = Table(title="Bundled recipes (os-sample generate --config NAME)")
        table.add_column("name", style="bold cyan", no_wrap=True)
        table.add_column("description")
        for name, description, _ in bundled:
            table.add_row(name, description)
        console.print(table)
        fragments = list_fragments()
        if fragments:
            console.print(
                "fragments for `defaults:` (configs/): " + ", ".join(fragments), markup=False, highlight=False
            )


def register(app) -> None:
    app.command("generate")(generate)
    app.command("validate")(validate)
    app.command("recipes")(recipes)


# ----------------------------------------------------------------------------------------------
# The run (the loop itself: os_cli/run.py)
# ----------------------------------------------------------------------------------------------


def _print_dry_run(recipe, out_dir, planned, mode_text) -> None:
    from rich.rule import Rule

    from os_cli.recipe import dump_recipe, recipe_hash
    from os_cli.run.plan import records_text

    rows, rendered = planned.rows, planned.rendered
    console = out_console()
    console.print(Rule("resolved recipe"))
    console.print(dump_recipe(recipe), markup=False, highlight=False, end="")
    console.print(Rule("plan"))
    console.print(f"recipe hash: {recipe_hash(recipe)}", markup=False, highlight=False)
    console.print(
        f"rows: {len(rows)} planned, {len(rendered.items)} renderable, {len(rendered.errors)} bad "
        f"(on_bad_row: {recipe.prompts.on_bad_row})",
        markup=False,
        highlight=False,
    )
    console.print(
        f"records: {records_text(len(rendered.items), recipe.sampling.num_samples)} "
        f"(one per sample of each renderable row)",
        markup=False,
        highlight=False,
    )
    for err in rendered.errors[:3]:
        console.print(f"  bad row {err['id']!r}: {err['reason']}", markup=False, highlight=False)
    console.print(f"output: {out_dir} ({mode_text})", markup=False, highlight=False)
    for item in rendered.items[:2]:
        console.print(Rule(literal(f"row {item.id!r}: theta prompt")))
        console.print(item.prompt, markup=False, highlight=False)
        console.print(
            Rule(
                literal(
                    f"row {item.id!r}: teacher prompt" + (" (same as theta)" if recipe.prompts.teacher is None else "")
                )
            )
        )
        console.print(item.prompt_t, markup=False, highlight=False)
    console.print(Rule("dry run: no model loaded, nothing written"))


def run_generate(
    config,
    overrides: Sequence,
    *,
    output=None,
    overwrite: bool = False,
    dry_run: bool = False,
    resume: bool = False,
    repair: bool = False,
    ray: RayLaunch | None = None,
) -> None:
    """The whole command (also callable from Python); raises `UserError` / KeyboardInterrupt.
    `ray`: --backend ray's launch settings (run/ray_backend.py), None for this process."""
    from os_cli.quiet import quiet_progress_bars
    from os_cli.recipe import load_recipe, output_dir
    from os_cli.run.loop import Distributed, check_draft_tokens, run_in_folder
    from os_cli.run.plan import dry_run_mode, plan_rows, run_warnings

    quiet_progress_bars()
    if ray is not None:
        from os_cli.run.ray_backend import require_ray

        require_ray()  # before the recipe: exit 2 with the install line
    recipe = load_recipe(config, overrides)
    out_dir = output_dir(recipe, output)
    check_draft_tokens(recipe.sampling, recipe.prompts, recipe.places)
    dist = Distributed(recipe.models.device)
    if ray is not None and dist.world_size > 1:
        raise UserError("--backend ray runs one driver; launch it without torchrun / accelerate launch")
    warnings = run_warnings(recipe)
    if dist.is_main:
        for text in warnings:
            err_console().print(f"warning: {text}", markup=False, highlight=False)
    planned = plan_rows(recipe)
    if dry_run:
        _print_dry_run(recipe, out_dir, planned, dry_run_mode(out_dir, recipe, planned.entries, overwrite))
        return
    events = _DashboardEvents(dist, out_dir, len(planned.rendered.errors))
    if ray is not None:
        from os_cli.run.ray_backend import run_ray

        run_ray(recipe, out_dir, planned, events, ray, overwrite=overwrite, resume=resume, repair=repair)
        return
    run_in_folder(recipe, out_dir, dist, planned, events, overwrite=overwrite, resume=resume, repair=repair)


class _DashboardEvents(RunEvents):
    """The run's events on the console: log lines, then the live dashboard while rows are sampled."""

    def __init__(self, dist, out_dir, n_errors: int):
        self.dist, self.out_dir, self.n_errors = dist, out_dir, n_errors
        self.dash: Dashboard | None = None
        # Under torchrun every rank prints its own progress and summary: each line says whose it is.
        self.rank = f"rank {dist.rank}/{dist.world_size}" if dist.world_size > 1 else ""

    def note(self, message: str) -> None:
        if self.dash is not None:
            self.dash.note(message)
        else:
            err_console().print(f"{self.rank} | {message}" if self.rank else message, markup=False, highlight=False)

    def started(self, total: int, done: int, limit: int, shard: str) -> None:
        from os_cli.cli.dashboard import Dashboard

        title = "os-sample generate" + (f", {self.rank}" if self.rank else "")
        self.dash = Dashboard(total=total, done=done, title=title, console=err_console(), label=self.rank)
        self.dash.start()
        self.dash.batch_started(limit, shard)

    def in_flight(self, rows: int, limit: int) -> None:
        assert self.dash is not None  # started() comes first
        self.dash.rows_in_flight(rows, limit)

    def written(self, tokens: int, alpha: list[float], ess: list[float], shard: str) -> None:
        assert self.dash is not None  # started() comes first
        self.dash.batch_done(1, tokens, alpha, ess, shard=shard)

    def actors(self, alive: int, total: int) -> None:
        if self.dash is not None:
            self.dash.actors_alive(alive, total)

    def finished(self, status: str, manifest: dict, written: int) -> None:
        dash, self.dash = self.dash, None
        if dash is None:
            return
        dash.stop()
        if self.dist.is_main or self.dist.world_size > 1:
            err_console().print(
                dash.summary_table(status, str(self.out_dir), errors=self.n_errors if self.dist.is_main else 0)
            )
        if status == "interrupted":
            err_console().print(
                f"{self.rank + ': ' if self.rank else ''}interrupted: {written} records written this "
                f"run; rerun the same command to resume",
                markup=False,
                highlight=False,
            )
        if status == "complete" and self.dist.is_main:
            counts = manifest.get("counts", {})
            out_console().print(
                f"wrote {self.out_dir}: {counts.get('records')} records, {counts.get('errors')} "
                f"skipped rows, {counts.get('planned')} planned",
                markup=False,
                highlight=False,
            )
