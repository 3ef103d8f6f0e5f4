"""generate's plan, made before any model loads: a loaded recipe's rows, both prompts of each row,
the checks that need no weights (placement, hub reachability, prompt lengths against the contexts)
and the plan entries the output folder records (plan.jsonl). No printing: the CLI prints what these
return.

- `run_warnings(recipe) -> list[str]`: the recipe's warnings (`recipe.source.warnings`) and, when it names
  something on an unreachable hub, the note that this process now runs offline
  (`preflight.hub_offline_note`, which switches it).
- `plan_rows(recipe) -> Planned`: the planned rows (`data.load_rows`), rendered (`data.render_prompts`)
  with the recipe's tokenizers and screened (`preflight.screen_prompts`), and their plan entries.
- `nothing_planned(dataset) -> str`: the message for a plan without rows (`dataset` section).
- `records_text(rows, samples, up_to=False) -> str`: "16 rows x 4 samples = 64 records" (a record is one sample of a row).
- `dry_run_mode(out_dir, recipe, entries, overwrite) -> str`: what a run would do with its folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from os_cli.errors import UserError
from os_cli.recipe.typed import Dataset, Recipe

if TYPE_CHECKING:
    from os_cli.prompts.data import Rendered


@dataclass
class Planned:
    rows: list  # [(id, row)] in dataset order (data.load_rows)
    rendered: Rendered  # the rows that can be sampled, and the bad ones (errors.jsonl)
    entries: list  # plan.jsonl entries, one per planned row (writer.plan_entries)


def run_warnings(recipe: Recipe) -> list[str]:
    """The recipe's warnings, then the hub note where the hub cannot be reached (this process goes offline)."""
    from os_cli.models.preflight import hub_offline_note

    offline = hub_offline_note(recipe.models, recipe.dataset, recipe.places)
    return list(recipe.source.warnings) + ([offline] if offline else [])


def records_text(rows: int | None, samples: int, up_to: bool = False) -> str:
    """Records a plan makes: rows x samples ("16 rows x 4 samples = 64 records"); `rows` None: not known yet
    (validate reads only the first rows), `up_to`: `rows` is a limit the dataset may not reach."""
    each = f"{samples} sample" + ("s" if samples != 1 else "")
    if rows is None:
        return f"{samples} record{'s' if samples != 1 else ''} per row (sampling.num_samples: {samples})"
    bound = "up to " if up_to else ""
    total = rows * samples
    return f"{bound}{rows} row{'s' if rows != 1 else ''} x {each} = {bound}{total} record{'s' if total != 1 else ''}"


def nothing_planned(dataset: Dataset) -> str:
    return (
        f"nothing to generate: no rows are planned (dataset.skip {dataset.skip}, dataset.limit "
        f"{dataset.limit}); lower dataset.skip or raise the limit"
    )


def plan_rows(recipe: Recipe) -> Planned:
    """Rows, prompts and plan entries of a loaded recipe, every check that needs no weights made; raises
    `UserError` (no rows, a placement this machine cannot run, a hub model out of reach, a bad row)."""
    from os_cli.api.build import check_models_reachable, check_placement
    from os_cli.models.hub import load_tokenizers
    from os_cli.models.preflight import model_contexts
    from os_cli.prompts.data import render_prompts
    from os_cli.prompts.datasets import load_rows
    from os_cli.prompts.lengths import screen_prompts
    from os_cli.run.loop import check_topk_logprobs
    from os_cli.store.writer import plan_entries

    places, models, prompts = recipe.places, recipe.models, recipe.prompts
    rows = load_rows(recipe.dataset, places.base_dir)
    if not rows:
        raise UserError(nothing_planned(recipe.dataset))
    check_placement(models)
    check_models_reachable(models, places)
    tokenizer, tokenizer_t = load_tokenizers(models, places)
    check_topk_logprobs(recipe.output, models.theta, len(tokenizer))
    rendered = render_prompts(
        prompts, tokenizer, rows, tokenizer_t=tokenizer_t, models=models, skip=recipe.dataset.skip
    )
    screen_prompts(
        prompts,
        rendered,
        tokenizer,
        tokenizer_t,
        model_contexts(models, places, tokenizer, tokenizer_t),
        models=models,
        max_new_tokens=recipe.sampling.max_new_tokens,
        draft_tokens=recipe.sampling.draft_tokens,
    )
    entries = plan_entries([row_id for row_id, _ in rows], rendered.items, rendered.errors)
    return Planned(rows=rows, rendered=rendered, entries=entries)


def dry_run_mode(out_dir: Path, recipe: Recipe, entries: list, overwrite: bool) -> str:
    """What the run would do with its output folder: a new run, resume, overwrite, or why it is refused."""
    from os_cli.store.writer import check_output

    try:
        mode = check_output(out_dir, recipe, overwrite=overwrite, plan=entries)
    except UserError as exc:
        return f"would be refused: {exc}"
    return {"new": "a new run", "resume": "would resume", "overwrite": "would be overwritten"}[mode]
