"""What `validate` checks beyond the schema, and the plan checks `generate` shares with it.

- `validate_rows(recipe, console)`: reads the first VALIDATE_ROWS planned rows and renders both prompts
  (as `generate --dry-run` does), with the context check of os_cli/preflight.py where the tokenizers
  are available, so a template field typo fails in `validate`.
- `nothing_planned(recipe) -> str`: the message for a plan without rows.
- `model_contexts(recipe, tokenizer, tokenizer_t) -> {"theta": n, "teacher": n}`: context lengths from
  the models' config.json and tokenizers (no weights loaded).
"""

from __future__ import annotations

from ..errors import UserError

VALIDATE_ROWS = 3  # `validate` renders this many rows from the start of the plan


def validate_rows(recipe, console) -> None:
    """Render the first rows' prompts (as --dry-run does), so a template field typo fails here. A dataset or
    tokenizer this machine cannot reach (hub) is a note, not a failure: the recipe itself is valid."""
    from ..data import load_rows, render_prompts
    from ..hub import load_tokenizers
    from ..preflight import hub_offline_note, screen_prompts
    from ..build import check_models_reachable

    def note(text):
        console.print(f"  {'note':<15} {text}", markup=False, highlight=False)

    limit = recipe["dataset"]["limit"]
    preview = {**recipe, "dataset": {**recipe["dataset"],
                                     "limit": VALIDATE_ROWS if limit is None else min(limit, VALIDATE_ROWS)}}
    offline = hub_offline_note(recipe)
    if offline:
        note(offline)
    try:
        rows = load_rows(preview)
    except UserError as exc:
        if exc.exit_code != 1:
            raise
        note(f"rows not checked: {exc}")
        return
    if not rows:
        raise UserError(nothing_planned(recipe))
    tokenizers = None
    try:
        check_models_reachable(recipe)
        tokenizers = load_tokenizers(recipe)
    except UserError as exc:
        if exc.exit_code != 1:
            raise
        note(f"chat templates not applied and prompt lengths not checked (no tokenizer here): {exc}")
    if tokenizers is None:
        plain = {role: (None if spec is None else {**spec, "chat_template": False})
                 for role, spec in recipe["prompts"].items() if role in ("theta", "teacher")}
        preview = {**preview, "prompts": {**recipe["prompts"], **plain}}
        rendered = render_prompts(preview, None, rows)
    else:
        rendered = render_prompts(preview, tokenizers[0], rows, tokenizer_t=tokenizers[1])
        screen_prompts(preview, rendered, *tokenizers, model_contexts(recipe, *tokenizers))
    if not rendered.items:
        raise UserError(f"none of the first {len(rows)} rows can be sampled: row {rendered.errors[0]['id']!r}: "
                        f"{rendered.errors[0]['reason']}")
    console.print(f"  {'rows':<15} the first {len(rows)} render ({len(rendered.errors)} bad, "
                  f"on_bad_row: {recipe['prompts']['on_bad_row']})", markup=False, highlight=False)
    for err in rendered.errors:
        note(f"bad row {err['id']!r}: {err['reason']}")
    item = rendered.items[0]
    for role, text in (("theta", item.prompt), ("teacher", item.prompt_t)):
        console.print(f"  --- row {item.id!r}: {role} prompt ---", markup=False, highlight=False)
        console.print(text, markup=False, highlight=False)


def nothing_planned(recipe) -> str:
    ds = recipe["dataset"]
    return (f"nothing to generate: no rows are planned (dataset.skip {ds['skip']}, dataset.limit {ds['limit']}); "
            f"lower dataset.skip or raise the limit")


def model_contexts(recipe, tokenizer, tokenizer_t) -> dict:
    """The context length of theta and the teacher, from their config.json and tokenizers (no weights)."""
    from ..hub import recipe_load_kwargs
    from ..preflight import model_context
    from ..places import model_location

    kwargs = recipe_load_kwargs(recipe)
    theta = model_location(recipe, "theta")
    teacher = model_location(recipe, "teacher") or theta
    out = {"theta": model_context(theta, tokenizer, **kwargs)}
    out["teacher"] = out["theta"] if teacher == theta else model_context(teacher, tokenizer_t, **kwargs)
    return out
