"""bench's tables and the notes under them: the sweep and comparison tables (80 columns; the --json file has
every field), the memory note, long-tail occupancy and time split, and prompt tokens run per distinct prompt
token (prefill_notes)."""

from __future__ import annotations

from os_cli.cli.common import percent


def _mem(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def rows_table(title: str, rows, compare: bool):
    """Sweep: one row per batch size. Compare: one row per run (batch size and prompts are in the title).
    Both fit 80 columns: the JSON file has every field."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, padding=(0, 1))
    if compare:
        cols = ["run", "tokens/s", "spread", "× floor", "min-max", "peak mem"]
    else:
        cols = ["batch", "tokens", "steps", "tokens/s", "spread", "s/step", "peak mem", "status"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("run", "status") else "right", no_wrap=c != "status")
    for r in rows:
        mem = _mem(r.peak_reserved if r.peak_reserved is not None else r.peak_memory)
        failed = "[red]OOM[/]" if r.oom else "[red]error[/]"
        spread = percent(r.spread) + ("*" if r.noisy else "")
        if compare:
            cells = [r.label]
            if r.ok:
                ratio = "–" if r.ratio_to_floor is None else f"{r.ratio_to_floor:.2f}"
                rng = "–" if r.ratio_min is None else f"{r.ratio_min:.2f}-{r.ratio_max:.2f}"
                cells += [f"{r.tokens_per_s:,.1f}", spread, ratio, rng, mem]
            else:
                cells += [failed] + ["–"] * 4
            table.add_row(*cells)
        else:
            cells = [str(r.batch_size)]
            if r.ok:
                cells += [
                    f"{r.new_tokens:,}",
                    f"{r.steps:,}",
                    f"{r.tokens_per_s:,.1f}",
                    spread,
                    f"{r.s_per_step * 1000:.1f} ms" if r.s_per_step else "–",
                    mem,
                    "ok",
                ]
            else:
                cells += ["–"] * 6 + [failed]
            table.add_row(*cells)
    return table


def split_notes(rows) -> list[str]:
    """Long-tail points: slot occupancy and where each point's time went (engine/phase_clock.py)."""
    split = [r for r in rows if r.ok and r.time_split]
    if not split:
        return []
    lines = ["[dim]occupancy (mean rows in flight / batch) and time split of the last timed run:[/]"]
    for r in split:
        shares = ", ".join(f"{name} {share:.0%}" for name, share in r.time_split.items())
        lines.append(f"[dim]  batch {r.batch_size}: occupancy {r.slot_occupancy:.2f}; {shares}[/]")
    return lines


def memory_note(rows, device: dict) -> str:
    metric = next((r.memory_metric for r in rows if r.memory_metric), "")
    notes = {
        "cuda_max_memory_allocated": "peak memory: torch.cuda.max_memory_allocated, max over devices, reset per "
        "point (rsv: max_memory_reserved, used for the headroom check)",
        "cpu_peak_rss": "peak memory: the process's peak resident set size during each point (VmHWM, reset per "
        "point), models included",
        "cpu_peak_rss_sampled": "peak memory: the highest resident set size sampled during each point, models included",
        "cpu_ru_maxrss_process": "peak memory: ru_maxrss, the process's high-water mark so far (never goes down), "
        "models included",
    }
    return f"[dim]{notes.get(metric, 'peak memory: not measured')}[/]"


def rows_header(num_prompts: int, num_samples: int) -> str:
    """How many rows a point runs, for bench's header line."""
    if num_samples == 1:
        return f"max({num_prompts}, batch size) rows per point (one sample per prompt)"
    return (
        f"max({num_prompts}, ⌈batch size / {num_samples}⌉) prompts × {num_samples} samples "
        f"(sampling.num_samples) per point"
    )


def rows_note(rows) -> list[str]:
    """The rows each point ran: prompts × samples, prompt-major, seeded as generate seeds them."""
    ran = [r for r in rows if r.rows]
    if not ran:
        return []
    shapes = {(r.prompts, r.num_samples) for r in ran}
    if len(shapes) == 1:
        prompts, samples = shapes.pop()
        text = f"{prompts * samples} per point ({prompts} prompts × {samples} sample{'s' if samples > 1 else ''})"
    else:
        text = ", ".join(f"{r.rows} at batch {r.batch_size} ({r.prompts} × {r.num_samples})" for r in ran)
    if any(r.num_samples > 1 for r in ran):
        text += "; prompt-major, each sample its own seed, as generate runs them"
    return [f"[dim]rows: {text}[/]"]


def _side(ratio: float | None, ran: int | None, distinct: int | None) -> str:
    if ratio is None:
        return "–"
    return f"{ratio:.2f}× ({ran:,} of {distinct:,} tokens)"


def prefill_notes(rows, name=lambda r: f"batch {r.batch_size}") -> list[str]:
    """Engine points: prompt tokens each model ran in the last timed run per prompt token the point's distinct
    prompts hold (1.00: each prompt prefilled once, its samples sharing it); one line when every point agrees."""
    measured = [r for r in rows if r.ok and r.prompt_tokens_theta is not None]
    if not measured:
        return []

    def cells(r) -> str:
        if r.prefill_stacked:
            both = r.prompt_tokens_theta + r.prompt_tokens_t
            return (
                f"one stacked stream, both sides {_side(r.prefill_ratio_theta, both, r.distinct_prompt_tokens_theta)}"
            )
        theta = _side(r.prefill_ratio_theta, r.prompt_tokens_theta, r.distinct_prompt_tokens_theta)
        if r.distinct_prompt_tokens_t is None:
            return f"theta {theta}, teacher: one stream (theta's)"
        return f"theta {theta}, teacher {_side(r.prefill_ratio_t, r.prompt_tokens_t, r.distinct_prompt_tokens_t)}"

    title = "prefill, prompt tokens run per distinct prompt token (last timed run; 1.00: each prompt once)"
    if len({cells(r) for r in measured}) == 1:
        return [f"[dim]{title}: {cells(measured[0])}[/]"]
    return [f"[dim]{title}:[/]"] + [f"[dim]  {name(r)}: {cells(r)}[/]" for r in measured]
