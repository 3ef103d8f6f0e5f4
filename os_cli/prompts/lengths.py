"""Prompt lengths against the models' context, before any weights load.

- `prompt_token_ids(tokenizer, texts) -> list[list[int]]`: the prompt ids exactly as the engine feeds
  them (texts that already start with BOS, like chat templates, get no second one).
- `length_problem(n, max_new_tokens, context, drafts=0) -> str | None`: why a prompt of `n` tokens cannot be
  sampled (empty, or `n + max_new_tokens + drafts` beyond the context; `drafts = draft_overrun(k,
  max_new_tokens)`, the positions speculative rounds may feed past a row's cap).
- `screen_prompts(prompts, rendered, tokenizer, tokenizer_t, contexts, *, models, max_new_tokens, draft_tokens)`:
  applies both to every rendered row of a recipe, for theta's and the teacher's prompts: a bad row raises
  `UserError` naming the row id and the lengths, or goes to `rendered.errors` with `prompts.on_bad_row: skip`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from os_cli.errors import UserError
from os_cli.limits import AUTO_MAX_DRAFT_TOKENS, DRAFT_TOKENS_AUTO
from os_cli.recipe.typed import Models, Prompts
from os_cli.store.record_format import json_safe


def prompt_token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    bos = tokenizer.bos_token
    out: list = [None] * len(texts)
    for add in (True, False):  # one batch call per setting: a fast tokenizer encodes a batch in one go
        rows = [i for i, t in enumerate(texts) if (not (bos and t.startswith(bos))) == add]
        if rows:
            encoded = tokenizer([texts[i] for i in rows], add_special_tokens=add).input_ids
            for i, ids in zip(rows, encoded):
                out[i] = list(ids)
    return out


def _lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    """Prompt lengths in tokens; an empty text counts as 0 even where the tokenizer would add a BOS."""
    return [len(ids) if text else 0 for text, ids in zip(texts, prompt_token_ids(tokenizer, texts))]


def draft_overrun(draft_tokens: int | str, max_new_tokens: int) -> int:
    """Positions past a row's last new token that speculative rounds may feed: a round drafts up to
    min(k, the most tokens any row in flight has left) for every row, so a row near its cap can be fed
    up to min(k, max_new_tokens) drafted tokens beyond it (they are never emitted, but take positions)."""
    k = AUTO_MAX_DRAFT_TOKENS if draft_tokens == DRAFT_TOKENS_AUTO else int(draft_tokens)
    return min(k, max_new_tokens)


def length_problem(n_tokens: int, max_new_tokens: int, context: int | None, drafts: int = 0) -> str | None:
    """`drafts`: draft_overrun(...) of the run, counted on top of the new tokens."""
    if n_tokens == 0:
        return "the prompt is empty (0 tokens)"
    if context is not None and n_tokens + max_new_tokens + drafts > context:
        with_drafts = f" and up to {drafts} drafted past them (draft_tokens)" if drafts else ""
        return (
            f"the prompt has {n_tokens} tokens; with {max_new_tokens} new tokens{with_drafts} that is "
            f"{n_tokens + max_new_tokens + drafts} > {context}, the model's context"
        )
    return None


def screen_prompts(
    prompts: Prompts,
    rendered,
    tokenizer,
    tokenizer_t,
    contexts: Mapping[str, int | None],
    *,
    models: Models,
    max_new_tokens: int,
    draft_tokens: int | str = 0,
) -> None:
    """Check every rendered row's two prompts (empty, too long for the context) in place; see module doc."""
    max_new, drafts = max_new_tokens, draft_overrun(draft_tokens, max_new_tokens)
    names = {"theta": models.theta, "teacher": models.teacher or models.theta}
    for role, context in contexts.items():
        if context is not None and max_new + drafts >= context:
            with_drafts = (
                f" and speculative rounds may draft {drafts} past it (sampling.draft_tokens: {draft_tokens})"
                if drafts
                else ""
            )
            raise UserError(
                f"sampling.max_new_tokens is {max_new}{with_drafts}, but models.{role} ({names[role]}) has "
                f"a context of {context} tokens: no prompt fits; lower sampling.max_new_tokens"
                + (" or sampling.draft_tokens" if drafts else "")
            )
    if not rendered.items:
        return
    own_teacher = prompts.teacher is not None
    lengths = {"theta": _lengths(tokenizer, [it.prompt for it in rendered.items])}
    if own_teacher or tokenizer_t is not tokenizer:
        lengths["teacher"] = _lengths(tokenizer_t, [it.prompt_t for it in rendered.items])
    else:
        lengths["teacher"] = lengths["theta"]
    skip = prompts.on_bad_row == "skip"
    kept = []
    for i, item in enumerate(rendered.items):
        problem = None
        for role in ("theta", "teacher"):
            problem = length_problem(lengths[role][i], max_new, contexts.get(role), drafts)
            if problem is not None:
                problem = f"prompts.{role}: {problem} (models.{role}: {names[role]})"
                break
        if problem is None:
            kept.append(item)
            continue
        if not skip:
            lower = "sampling.max_new_tokens" + (" or sampling.draft_tokens" if drafts else "")
            raise UserError(
                f"dataset row {item.id!r}: {problem}; shorten the prompt or {lower}, "
                f"or set prompts.on_bad_row: skip to write such rows to errors.jsonl"
            )
        rendered.errors.append({"id": item.id, "reason": problem, "row": json_safe(item.row)})
    rendered.items[:] = kept
