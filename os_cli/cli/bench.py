"""os-sample bench: throughput and peak memory per batch size, a recommended batch size, baselines."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from os_cli.cli.common import (
    DebugOption,
    SetOption,
    ThreadsOption,
    apply_threads,
    cli_errors,
    followup_batch_size,
    literal,
    note,
    out_console,
    percent,
    point_status,
)
from os_cli.errors import UserError
from os_cli.limits import MAX_NEW_TOKENS

if TYPE_CHECKING:
    from os_cli.bench.measure import BenchRow

HELP = (
    "Measure the sampler on the recipe's models and prompts across batch sizes.\n\n"
    "Loads the models once, renders real prompts from the recipe's dataset (as generate does) and, for "
    "each batch size, times `generate` on the rows generate would run: max(--prompts, ceil(batch size / n)) "
    "distinct prompts, each n times with n the recipe's sampling.num_samples (prompt-major, each sample its "
    "own seed; n = 1: max(--prompts, batch size) rows), --repeats times after one warm-up run, reporting "
    "the median and the spread ((max - min) / median; over 10% is flagged with *): "
    "tokens/s (generated tokens only), seconds per decode step, peak memory (CUDA: "
    "torch.cuda.max_memory_allocated per device, reset per point; CPU: the process's peak resident set "
    "size during the point, models included), whether it ran out of memory, and per model the prompt tokens "
    "its prefills ran per prompt token the point's distinct prompts hold (1.00: each prompt prefilled once, its "
    "samples sharing it; 'one stream' where theta's stream serves the teacher too). An out-of-memory point is "
    "recorded and ends the sweep. `auto` doubles the batch size from 1 until out of memory, until peak "
    "memory passes the --headroom limit (CUDA), or until two points in a row fail to beat the best "
    "throughput so far by more than 5%. Without --batch-sizes the sweep is 1,2,4,8 and the recipe's own "
    "sampling.batch_size. The recommendation is the best throughput that leaves --headroom of device memory "
    "free (CPU: best throughput), printed as `--set sampling.batch_size=N`, made only when that point is "
    "measurably faster than every other: where their tokens/s ranges over the timed runs (slowest to fastest) "
    "overlap, bench says there is no measurable difference and recommends nothing.\n\n"
    "--compare then runs, at the recommended batch size (else the fastest by median) on the same prompts: "
    "HF `generate` of the teacher alone, the two-model floor (both forwards, teacher draws, no alpha solve or mixing) and the engine "
    "with each alpha method, interleaved round by round, every row generating exactly max-new-tokens "
    "tokens (EOS and stop strings ignored; with --lengths long-tail, the same per-row caps), with each "
    "one's tokens/s as a ratio to the same round's floor (median and min-max over rounds).\n\n"
    "--draft-tokens 1,2,3 then runs, at the same batch size as --compare (the recommended one; pass "
    "--batch-sizes 1 to measure batch 1, where speculative decoding pays off most), the plain loop (k=0) and "
    "each k on the same rows, interleaved, every row to its cap (EOS and stop strings ignored): the "
    "acceptance a (accepted / verified drafts), E = (1 - a^(k+1)) / (1 - a) tokens per round, the ideal "
    "speed-up E (t_theta + t_T(1)) / (k t_theta + t_T(k+1)) from forward costs timed at that batch size "
    "(medians over interleaved rounds), "
    "ideal+ (also counting k+1 theta forwards, k draft draws and one q* step over k+1 positions per round), and the "
    "measured speed-up (median and min-max over rounds of tokens/s over the same round's k=0). It "
    "recommends the best k that is faster in every round by more than its spread (else 0), printed as "
    "`--set sampling.draft_tokens=k`. Needs a teacher that differs from theta (another model, or teacher "
    "prompts of its own) and models.compile off."
)


def register(app: typer.Typer) -> None:
    app.command("bench", help=HELP)(bench_command)


def bench_command(
    config: str = typer.Option(..., "--config", "-c", help="Recipe file or bundled recipe name."),
    overrides: Optional[list[str]] = SetOption,
    batch_sizes: Optional[str] = typer.Option(
        None,
        "--batch-sizes",
        help="Comma-separated batch sizes, or 'auto' (default: 1,2,4,8 and the recipe's sampling.batch_size).",
    ),
    prompts: int = typer.Option(
        16,
        "--prompts",
        min=1,
        help="Distinct prompts per point, each run sampling.num_samples times (rows = prompts × num_samples; "
        "enough prompts to fill the batch size are run).",
    ),
    max_new_tokens: Optional[int] = typer.Option(
        None, "--max-new-tokens", min=1, max=MAX_NEW_TOKENS, help="Tokens per completion (default: the recipe's)."
    ),
    compare: bool = typer.Option(
        False,
        "--compare",
        help="Also run HF generate, the two-model floor and every "
        "alpha method at the recommended batch size, interleaved, each row generating "
        "the same number of tokens (EOS and stop strings ignored).",
    ),
    repeats: int = typer.Option(
        3,
        "--repeats",
        min=3,
        help="Timed runs per point after the warm-up (median and "
        "min-max spread are reported; spread over 10% is flagged).",
    ),
    lengths: str = typer.Option(
        "natural",
        "--lengths",
        help="natural: rows end at EOS, a stop string or "
        "--max-new-tokens. long-tail: each row gets its own cap drawn from a Pareto(1.5) "
        "distribution (scale max/8, capped at max; deterministic from the recipe's seed).",
    ),
    draft_tokens: Optional[str] = typer.Option(
        None,
        "--draft-tokens",
        help="Comma-separated draft lengths k "
        "(e.g. 1,2,3): also measure speculative sampling against the plain "
        "loop at the recommended batch size, and recommend k.",
    ),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON to this file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json file."),
    headroom: float = typer.Option(
        0.1, "--headroom", help="Fraction of device memory the recommendation leaves free (CUDA)."
    ),
    threads: Optional[int] = ThreadsOption,
    debug: bool = DebugOption,
) -> None:
    with cli_errors(debug):
        apply_threads(threads)
        _bench(
            config,
            overrides or [],
            batch_sizes,
            prompts,
            max_new_tokens,
            compare,
            json_file,
            headroom,
            repeats,
            lengths,
            draft_tokens,
            overwrite=overwrite,
        )


def parse_batch_sizes(text: str) -> list[int] | str:
    """Batch sizes from 1 to MAX_BATCH_SIZE (larger is a typo, not a plan: memory grows with it)."""
    from os_cli.limits import MAX_BATCH_SIZE

    text = text.strip().lower()
    if text == "auto":
        return "auto"
    sizes: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise UserError(f"--batch-sizes {text!r}: give positive integers separated by commas (1,2,4,8) or 'auto'")
        if int(part) > MAX_BATCH_SIZE:
            raise UserError(
                f"--batch-sizes: {part} is more than the largest batch size, {MAX_BATCH_SIZE}; "
                f"use 'auto' to find the largest that fits in memory"
            )
        if int(part) not in sizes:
            sizes.append(int(part))
    return sizes


def _bench(
    config: str,
    overrides: list[str],
    batch_sizes_text: str | None,
    num_prompts: int,
    max_new_tokens: int | None,
    do_compare: bool,
    json_file: Path | None,
    headroom: float,
    repeats: int = 3,
    lengths: str = "natural",
    draft_tokens_text: str | None = None,
    *,
    overwrite: bool = False,
) -> None:
    from os_cli.api.build import build_model
    from os_cli.bench import compare as C
    from os_cli.bench import sweep as B
    from os_cli.cli import bench_tables as T
    from os_cli.cli.drafts import check_speculative, parse_draft_tokens, speculative_section
    from os_cli.limits import MAX_BATCH_SIZE
    from os_cli.prompts.data import render_prompts
    from os_cli.prompts.datasets import load_rows
    from os_cli.quiet import quiet_progress_bars
    from os_cli.recipe import load_recipe

    quiet_progress_bars()
    if not 0 <= headroom < 1:
        raise UserError(f"--headroom {headroom}: give a fraction of device memory in [0, 1), e.g. 0.1")
    sizes = parse_batch_sizes(batch_sizes_text) if batch_sizes_text is not None else None
    if num_prompts > MAX_BATCH_SIZE:
        raise UserError(f"--prompts {num_prompts}: at most {MAX_BATCH_SIZE} prompts per point")
    if lengths not in B.LENGTHS:
        raise UserError(f"--lengths {lengths!r}: choose one of {', '.join(B.LENGTHS)}")
    if json_file is not None:  # before the models load: no run's file, no device, --overwrite to replace
        from os_cli.store.targets import check_target

        json_path = check_target(json_file, "--json", overwrite=overwrite, writes="give a file name")
    console = out_console()

    recipe = load_recipe(config, overrides)
    from os_cli.run.plan import run_warnings

    for text in run_warnings(recipe):
        console.print(f"warning: {text}", markup=False, highlight=False)
    sampling = recipe.sampling
    if sizes is None:
        sizes = B.default_batch_sizes(sampling.batch_size)
    settings = B.BenchSettings(
        max_new_tokens=max_new_tokens or sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        seed=sampling.seed,
        stop=list(sampling.stop),
        num_prompts=num_prompts,
        num_samples=sampling.num_samples,
        repeats=repeats,
        lengths=lengths,
    )
    ks = parse_draft_tokens(draft_tokens_text, settings.max_new_tokens) if draft_tokens_text is not None else []
    if ks:
        check_speculative(recipe, ks)
    wanted = max(
        [num_prompts] + [B.point_prompt_count(settings, b) for b in (sizes if isinstance(sizes, list) else [])]
    )
    limit = recipe.dataset.limit
    dataset = dataclasses.replace(recipe.dataset, limit=wanted if limit is None else min(limit, wanted))
    rows = load_rows(dataset, recipe.places.base_dir)
    if not rows:
        raise UserError("the recipe's dataset has no rows to take prompts from (check dataset.source, skip and limit)")

    with console.status("loading models"):
        model = build_model(recipe)
    rendered = render_prompts(
        recipe.prompts,
        model.tokenizer,
        rows,
        tokenizer_t=getattr(model, "tokenizer_t", None),
        on_bad_row="skip",
        models=recipe.models,
        skip=dataset.skip,
    )
    if not rendered.items:
        reason = rendered.errors[0]["reason"] if rendered.errors else "no rows"
        raise UserError(f"no prompt could be rendered from the recipe's dataset ({reason})")
    prompts = [p.prompt for p in rendered.items]
    prompts_t = [p.prompt_t for p in rendered.items]
    if ks and model.same_model and prompts_t == prompts:
        raise UserError(
            "--draft-tokens needs a teacher that differs from theta: this recipe runs one model and its "
            "teacher prompts render exactly as theta's, so q* is pi_theta and there is nothing to draft"
        )

    info = B.machine_info(model)
    device = info["device"]
    console.print(
        f"[bold]bench[/] {literal(recipe.source.name)}: {device['name']} ({device['type']}), "
        f"dtype {info['dtype']}, alpha {model.alpha_method}, {settings.max_new_tokens} new tokens, "
        f"{len(prompts)} distinct prompts, {T.rows_header(num_prompts, settings.num_samples)}"
    )
    from os_cli.machine import busy_note

    busy = busy_note()
    if busy:
        console.print(f"note: {busy}", markup=False, highlight=False)

    def progress(row) -> None:
        console.print(
            f"  {row.label} @ batch {row.batch_size}: {point_status(row)}"
            + (f", {row.tokens_per_s:.1f} tokens/s ({percent(row.spread)} spread)" if row.ok else "")
        )

    total = B.device_memory(model)
    memory_limit = min(total.values()) * (1 - headroom) if total else None
    sweep_rows = B.sweep(model, prompts, prompts_t, sizes, settings, on_row=progress, memory_limit=memory_limit)
    rec = B.recommend(sweep_rows, headroom, total)
    console.print(T.rows_table(f"Batch-size sweep (median of {repeats} runs)", sweep_rows, compare=False))
    note(
        console,
        f"[dim]lengths: {settings_lengths(settings, B)}; spread: (max - min) / median of the timed "
        "runs, * when over 10%[/]",
    )
    note(console, T.memory_note(sweep_rows, device))
    for line in T.rows_note(sweep_rows) + T.split_notes(sweep_rows) + T.prefill_notes(sweep_rows):
        note(console, line)
    if rec["batch_size"] is not None:
        note(
            console,
            f"Recommended batch size: [bold]{rec['batch_size']}[/] ({rec['reason']}, "
            f"{rec['tokens_per_s']:.1f} tokens/s):",
        )
        note(console, f"  [bold green]{rec['set']}[/]")
    elif rec["tied"]:
        note(
            console,
            f"[yellow]No recommendation:[/] {rec['reason']}; more --repeats or a quieter machine may separate them",
        )
    else:
        note(console, f"[red]No recommendation:[/] {rec['reason']}")

    compare_rows = None
    if do_compare:
        at = followup_batch_size(rec, sweep_rows)
        if at is None:
            console.print("[red]--compare skipped:[/] no batch size ran to completion")
        else:
            console.print(f"[bold]compare[/] at batch size {at}")
            same_work = dataclasses.replace(settings, fixed_length=settings.lengths != "long-tail")
            compare_rows = C.compare(model, prompts, prompts_t, at, same_work, on_row=progress)
            n = B.point_rows(settings, at)
            console.print(
                T.rows_table(
                    f"Comparison at batch size {at}, {n} rows, {repeats} interleaved rounds",
                    compare_rows,
                    compare=True,
                )
            )
            note(
                console,
                f"[dim]lengths: {compare_rows[1].lengths}; × floor: median over rounds of tokens/s "
                "over the same round's floor (min-max); spread * over 10%[/]",
            )
            for line in T.prefill_notes(compare_rows[1:], name=lambda r: r.label):
                note(console, line)
            for r in compare_rows:
                if not r.ok:
                    note(console, f"[red]{r.label}:[/] {r.error}")

    spec_rows: list[BenchRow]
    speculative, spec_rows = None, []
    if ks:
        speculative, spec_rows = speculative_section(console, model, prompts, prompts_t, settings, ks, rec, sweep_rows)

    if json_file is not None:
        doc = B.report(
            model,
            settings,
            sweep_rows,
            compare_rows,
            rec,
            speculative=speculative,
            extra_settings={
                "config": config,
                "recipe": recipe.source.name,
                "overrides": list(overrides),
                "batch_sizes": sizes,
                "headroom": headroom,
                "alpha_method": model.alpha_method,
                "models": {"theta": recipe.models.theta, "teacher": recipe.models.teacher},
                "distinct_prompts": len(prompts),
                "repeats": repeats,
                "lengths": lengths,
                "draft_tokens": ks,
            },
        )
        try:
            from os_cli.store.folder import atomic_write
            from os_cli.store.targets import make_parents

            make_parents(json_path, "--json")
            atomic_write(json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
        except OSError as exc:
            raise UserError(f"--json {json_file}: cannot write the file ({exc})", exit_code=1) from None
        console.print(f"wrote {json_file}")

    failed = [r for r in sweep_rows + (compare_rows or []) + spec_rows if r.error and not r.oom]
    if failed:
        raise UserError(
            f"{len(failed)} run(s) failed (not out of memory): {failed[0].label} at batch size "
            f"{failed[0].batch_size}: {failed[0].error}",
            exit_code=1,
        )


def settings_lengths(settings, B) -> str:
    return B.lengths_label(settings)
