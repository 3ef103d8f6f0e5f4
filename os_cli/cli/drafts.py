"""os-sample bench --draft-tokens: the speculative section (parsing, refusals, table, recommendation).
Measurement lives in os_cli/draft_bench.py; cli/bench.py calls these."""

from __future__ import annotations

import dataclasses

from os_cli.cli.common import followup_batch_size, note, percent, point_status
from os_cli.errors import UserError
from os_cli.recipe.typed import Recipe


def parse_draft_tokens(text: str, max_new_tokens: int) -> list[int]:
    """Draft lengths k from 1 to min(MAX_BENCH_DRAFT_TOKENS, max_new_tokens); k = 0 always runs as the baseline."""
    from os_cli.bench.draft_costs import MAX_BENCH_DRAFT_TOKENS

    top = min(MAX_BENCH_DRAFT_TOKENS, max_new_tokens)
    ks: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= top:
            why = ""
            if part.isdigit() and int(part) == 0:
                why = " (k=0, the plain loop, always runs as the baseline)"
            elif part.isdigit() and top == max_new_tokens:
                why = f" (longer than the {max_new_tokens} new tokens per row: --max-new-tokens or sampling.max_new_tokens)"
            elif part.isdigit():
                why = (
                    f" (more than {top} is a typo, not a plan: a round runs k + 1 theta forwards and late drafts "
                    f"are rarely accepted)"
                )
            raise UserError(
                f"--draft-tokens {text!r}: {part!r} is not allowed{why}; give draft lengths from 1 to "
                f"{top} separated by commas, e.g. 1,2,3"
            )
        if int(part) not in ks:
            ks.append(int(part))
    return ks


def check_speculative(recipe: Recipe, ks: list[int]) -> None:
    """Before models load: speculative bench rows need a teacher distribution that differs from theta's and
    the dynamic-cache decode step (models.compile off)."""
    from os_cli.run.loop import check_draft_tokens

    if recipe.models.compile:
        raise UserError(
            f"--draft-tokens needs models.compile: false (got {recipe.models.compile!r}): "
            f"speculative rounds roll caches back, which the fixed-slot decode step does not do; "
            f"add --set models.compile=false"
        )
    try:
        check_draft_tokens(dataclasses.replace(recipe.sampling, draft_tokens=max(ks)), recipe.prompts, recipe.places)
    except UserError as exc:
        raise UserError(
            f"--draft-tokens: {exc}".replace("Set sampling.draft_tokens: 0", "Drop --draft-tokens"),
            exit_code=exc.exit_code,
        ) from None


def speculative_section(console, model, prompts, prompts_t, settings, ks, rec, sweep_rows) -> tuple[dict | None, list]:
    """The --draft-tokens section: measure, print the table and the recommendation. Returns the JSON
    section and the rows' timings (BenchRow)."""
    from os_cli.bench import draft_costs as D

    at = followup_batch_size(rec, sweep_rows)
    if at is None:
        console.print("[red]--draft-tokens skipped:[/] no batch size ran to completion")
        return None, []
    note(
        console,
        f"[bold]speculative[/] at batch size {at} (speculative decoding pays off mostly at small "
        f"batches; --batch-sizes 1 measures batch 1)",
    )

    def progress(row) -> None:
        t = row.timing
        console.print(
            f"  {t.label} @ batch {at}: {point_status(t)}"
            + (f", {t.tokens_per_s:.1f} tokens/s ({percent(t.spread)} spread)" if t.ok else "")
        )

    rows, costs = D.measure_draft_tokens(model, prompts, prompts_t, at, ks, settings, on_row=progress)
    pick = D.recommend_draft_tokens(rows)
    n = rows[0].timing.rows
    console.print(
        _draft_table(f"Speculative at batch size {at}, {n} rows, {settings.repeats} interleaved rounds", rows)
    )
    note(
        console,
        f"[dim]lengths: {rows[0].timing.lengths}; × plain: median over rounds of tokens/s over the "
        f"same round's k=0 (min-max); spread * over 10%; forward costs (ms, batch {at}, medians over "
        f"interleaved rounds): " + ", ".join(f"{name} {ms:.2f}" for name, ms in costs.items()) + "[/]",
    )
    for r in rows:
        if not r.ok:
            note(console, f"[red]{r.timing.label}:[/] {r.timing.error}")
    note(console, f"Recommended draft_tokens: [bold]{pick['draft_tokens']}[/] ({pick['reason']}):")
    note(console, f"  [bold green]{pick['set']}[/]")
    return D.report(rows, costs, pick, at), [r.timing for r in rows]


def _draft_table(title: str, rows):
    """k, acceptance, E, ideal, ideal+, measured speed-up and its range, tokens/s and spread: fits 80 columns."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, padding=(0, 1))
    for c in ("k", "accept", "E", "ideal", "ideal+", "× plain", "min-max", "tokens/s", "spread"):
        table.add_column(c, justify="right", no_wrap=True)

    def num(x, digits=2):
        return "–" if x is None else f"{x:.{digits}f}"

    for r in rows:
        t = r.timing
        if not t.ok:
            table.add_row(str(r.k), *(["–"] * 6), "[red]OOM[/]" if t.oom else "[red]error[/]", "–")
            continue
        rng = "–" if r.speedup_min is None else f"{r.speedup_min:.2f}-{r.speedup_max:.2f}"
        table.add_row(
            str(r.k),
            num(r.acceptance, 3),
            num(r.expected_tokens),
            num(r.ideal),
            num(r.ideal_plus),
            num(r.speedup),
            rng,
            f"{t.tokens_per_s:,.1f}",
            percent(t.spread) + ("*" if t.noisy else ""),
        )
    return table
