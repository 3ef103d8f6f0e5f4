"""Prompts: render the two prompts of each dataset row (the rows come from os_cli/prompts/datasets.py).

Public functions:

- `render_prompts(prompts, tokenizer, rows, tokenizer_t=None, on_bad_row=None, *, models, skip)
  -> Rendered`: fills the templates of a recipe's `prompts` section, `theta` and `teacher` (null: the
  teacher gets theta's prompt) for each row; `models` is the `models` section (its names appear in
  errors), `skip` is `dataset.skip` (the dataset index of the first row). `Rendered.items` is a list of `Prompt(index, id, row, prompt, prompt_t)` (index =
  the row's index in the dataset, `skip` + position, which seeds the row's draws), `Rendered.errors` a list of
  `{"id", "reason", "row"}` for rows that could not be rendered. With `on_bad_row: error` (the
  recipe's default) the first bad row raises `UserError` naming the row id and the field instead.
  `tokenizer_t` renders the teacher's prompt (default: `tokenizer`).
- `render_template(template, row) -> str`, `template_fields(template)`, `kept_row(keep_fields, row)`.

Templates: `{field}` (or `{field.sub}` for nested mappings) is replaced by the row's value;
`{{` and `}}` write literal braces; any other brace, like `\\boxed{}`, is left as written. A missing
or null field makes the row bad. With `chat_template: true` the filled template (stripped of
surrounding whitespace) becomes the user turn, after an optional system turn, rendered with the
tokenizer's chat template and its generation prompt. With `chat_template: false` the prompt is the
filled template itself, after `system` and a blank line when a system text is given.

Chat datasets: with `messages_field` the section renders the row's conversation (os_cli/chat.py:
a final assistant turn dropped, `system` added, the filled `template`, if any, appended to the last
user turn) with the chat template and its generation prompt; `Prompt.messages` keeps theta's turns.
A malformed conversation is a bad row (`BadRow`), reported like a missing field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from os_cli.errors import UserError
from os_cli.prompts.chat import BadConversation, conversation, prompt_turns
from os_cli.recipe.prompt_syntax import TEMPLATE_TOKEN, template_fields
from os_cli.recipe.typed import Models, Prompts, PromptSpec
from os_cli.store.record_format import json_safe

__all__ = ["Prompt", "Rendered", "render_prompts", "render_template", "template_fields", "kept_row", "MissingField"]


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


class MissingField(KeyError):
    """A template field the row lacks (or holds null)."""

    def __init__(self, name: str, present: Sequence[str], null: bool = False):
        super().__init__(name)
        self.name = name
        self.present = list(present)
        self.null = null

    def describe(self) -> str:
        if self.null:
            return f"field {self.name!r} is empty (null, or missing in this row)"
        return f"missing field {self.name!r} (row fields: {', '.join(self.present) or 'none'})"


def _lookup(row: Mapping, name: str) -> Any:
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise MissingField(name, list(row.keys()))
        value = value[part]
    if value is None:
        raise MissingField(name, list(row.keys()), null=True)
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def render_template(template: str, row: Mapping) -> str:
    """Fill `{field}` placeholders from `row`; raises `MissingField`."""

    def replace(match):
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        return _as_text(_lookup(row, match.group(1)))

    return TEMPLATE_TOKEN.sub(replace, template)


def _render_one(spec: PromptSpec, tokenizer, row: Mapping, role: str, model_name: str) -> tuple[str, list | None]:
    """(the rendered prompt, the conversation it renders when the section reads messages_field, else None)."""
    if spec.messages_field:
        return _render_chat(spec, tokenizer, row, role, model_name)
    text = render_template(spec.template or "", row)
    if not spec.chat_template:
        return (f"{spec.system}\n\n{text}" if spec.system else text), None
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"prompts.{role}.chat_template is true, but the tokenizer of {model_name} has no chat template; "
            f"set prompts.{role}.chat_template: false to use the filled template as the prompt"
        )
    messages = []
    if spec.system:
        messages.append({"role": "system", "content": spec.system})
    messages.append({"role": "user", "content": text.strip()})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), None


def _render_chat(spec: PromptSpec, tokenizer, row: Mapping, role: str, model_name: str) -> tuple[str, list]:
    """A row's conversation (os_cli/chat.py) rendered with the chat template and its generation prompt."""
    field = spec.messages_field
    assert field  # _render_one renders a conversation only where messages_field is set
    if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"prompts.{role}.messages_field is set, but the tokenizer of {model_name} has no chat template to "
            f"render a conversation with; use a model whose tokenizer has one, or a {{field}} template instead"
        )
    value = _lookup(row, field)
    extra = render_template(spec.template, row).strip() if spec.template else None
    try:
        turns = prompt_turns(conversation(value), spec.system, extra)
    except BadConversation as exc:
        raise BadRow(f"prompts.{role}.messages_field: row field {field!r} {exc}") from None
    if tokenizer is None:  # `validate` without a reachable tokenizer: the turns as plain text, a preview only
        return "\n\n".join(f"[{t['role']}] {t['content']}" for t in turns), turns
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True), turns


class BadRow(ValueError):
    """A row whose value cannot be used as the recipe says (e.g. a malformed conversation)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _field_key(spec: PromptSpec, exc: MissingField) -> str:
    """Which recipe key named the missing field: the conversation column or the template."""
    return "messages_field" if spec.messages_field == exc.name else "template"


@dataclass
class Prompt:
    index: int  # the row's index in the dataset (skip + position); seeds its draws
    id: str
    row: dict
    prompt: str  # theta's rendered prompt
    prompt_t: str  # the teacher's rendered prompt (theta's when prompts.teacher is null)
    messages: list | None = None  # theta's conversation prefix (prompts.theta.messages_field), else None


@dataclass
class Rendered:
    items: list = field(default_factory=list)  # [Prompt]
    errors: list = field(default_factory=list)  # [{"id", "reason", "row"}]


def render_prompts(
    prompts: Prompts,
    tokenizer,
    rows: Sequence[tuple[str, dict]],
    tokenizer_t=None,
    on_bad_row: str | None = None,
    *,
    models: Models,
    skip: int,
) -> Rendered:
    """Render both prompts of every row. Bad rows raise (`error`) or are collected (`skip`)."""
    on_bad_row = on_bad_row or prompts.on_bad_row
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    tokenizer_t = tokenizer_t if tokenizer_t is not None else tokenizer
    theta_name = models.theta
    teacher_name = models.teacher or theta_name
    out = Rendered()
    for position, (row_id, row) in enumerate(rows):
        index = skip + position
        role = "theta"
        try:
            prompt, messages = _render_one(prompts.theta, tokenizer, row, "theta", theta_name)
            role = "teacher"
            if prompts.teacher is None:
                prompt_t = prompt
            else:
                prompt_t, _ = _render_one(prompts.teacher, tokenizer_t, row, "teacher", teacher_name)
        except (MissingField, BadRow) as exc:
            reason = (
                exc.reason
                if isinstance(exc, BadRow)
                else f"prompts.{role}.{_field_key(prompts.spec(role) or prompts.theta, exc)}: {exc.describe()}"
            )
            if on_bad_row == "error":
                raise UserError(
                    f"dataset row {row_id!r}: {reason}; fix the data or the template, or set "
                    f"prompts.on_bad_row: skip to write such rows to errors.jsonl"
                ) from None
            out.errors.append({"id": row_id, "reason": reason, "row": json_safe(row)})
            continue
        out.items.append(Prompt(index=index, id=row_id, row=row, prompt=prompt, prompt_t=prompt_t, messages=messages))
    return out


def kept_row(keep_fields, row: Mapping) -> dict:
    """The dataset fields a record keeps (`dataset.keep_fields`: all, none or a list), JSON-safe."""
    keep = keep_fields
    if keep == "all":
        kept = dict(row)
    elif keep == "none":
        kept = {}
    else:
        kept = {k: row.get(k) for k in keep}
    return json_safe(kept)
