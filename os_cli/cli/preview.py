"""What `validate` checks beyond the schema, with the plan checks `generate` makes (os_cli/planning.py).

- `validate_rows(recipe, console)`: reads the first VALIDATE_ROWS planned rows and renders both prompts
  (as `generate --dry-run` does), with the context check of os_cli/preflight.py where the tokenizers
  are available, so a template field typo fails in `validate`.
"""

from __future__ import annotations

import dataclasses

from os_cli.errors import UserError
from os_cli.recipe.typed import Recipe

VALIDATE_ROWS = 3  # `validate` renders this many rows from the start of the plan


def validate_rows(recipe: Recipe, console) -> None:
    """Render the first rows' prompts (as --dry-run does), so a template field typo fails here. A dataset or
    tokenizer this machine cannot reach (hub) is a note, not a failure: the recipe itself is valid."""
    from os_cli.api.build import check_models_reachable
    from os_cli.models.hub import load_tokenizers
    from os_cli.models.preflight import hub_offline_note, model_contexts
    from os_cli.prompts.data import render_prompts
    from os_cli.prompts.datasets import load_rows
    from os_cli.prompts.lengths import screen_prompts
    from os_cli.run.loop import check_topk_logprobs
    from os_cli.run.plan import nothing_planned

    def note(text):
        console.print(f"  {'note':<15} {text}", markup=False, highlight=False)

    places, models, prompts, dataset = recipe.places, recipe.models, recipe.prompts, recipe.dataset
    limit = dataset.limit
    preview = dataclasses.replace(dataset, limit=VALIDATE_ROWS if limit is None else min(limit, VALIDATE_ROWS))
    offline = hub_offline_note(models, dataset, places)
    if offline:
        note(offline)
    try:
        rows = load_rows(preview, places.base_dir)
    except UserError as exc:
        if exc.exit_code != 1:
            raise
        note(f"rows not checked: {exc}")
        return
    if not rows:
        raise UserError(nothing_planned(dataset))
    tokenizers = None
    try:
        check_models_reachable(models, places)
        tokenizers = load_tokenizers(models, places)
    except UserError as exc:
        if exc.exit_code != 1:
            raise
        note(f"chat templates not applied and prompt lengths not checked (no tokenizer here): {exc}")
    if tokenizers is not None:
        check_topk_logprobs(recipe.output, models.theta, len(tokenizers[0]))  # as --dry-run / generate do
    if tokenizers is None:
        plain = dataclasses.replace(
            prompts,
            theta=dataclasses.replace(prompts.theta, chat_template=False),
            teacher=None if prompts.teacher is None else dataclasses.replace(prompts.teacher, chat_template=False),
        )
        rendered = render_prompts(plain, None, rows, models=models, skip=dataset.skip)
    else:
        rendered = render_prompts(
            prompts, tokenizers[0], rows, tokenizer_t=tokenizers[1], models=models, skip=dataset.skip
        )
        screen_prompts(
            prompts,
            rendered,
            *tokenizers,
            model_contexts(models, places, *tokenizers),
            models=models,
            max_new_tokens=recipe.sampling.max_new_tokens,
            draft_tokens=recipe.sampling.draft_tokens,
        )
    if not rendered.items:
        raise UserError(
            f"none of the first {len(rows)} rows can be sampled: row {rendered.errors[0]['id']!r}: "
            f"{rendered.errors[0]['reason']}"
        )
    console.print(
        f"  {'rows':<15} the first {len(rows)} render ({len(rendered.errors)} bad, on_bad_row: {prompts.on_bad_row})",
        markup=False,
        highlight=False,
    )
    for err in rendered.errors:
        note(f"bad row {err['id']!r}: {err['reason']}")
    item = rendered.items[0]
    for role, text in (("theta", item.prompt), ("teacher", item.prompt_t)):
        console.print(f"  --- row {item.id!r}: {role} prompt ---", markup=False, highlight=False)
        console.print(text, markup=False, highlight=False)
