"""Prompt template syntax, shared by the recipe's validation and prompt rendering (data.py).

`{field}` or `{field.sub}` is a placeholder; `{{` and `}}` are literal braces; any other brace
(`\\boxed{}`, `{ x }`) is left as written.
"""

from __future__ import annotations

import re

TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\}")


def template_fields(template: str) -> list[str]:
    """The field names a template refers to, in order of first appearance."""
    seen: list[str] = []
    for match in TEMPLATE_TOKEN.finditer(template):
        name = match.group(1)
        if name and name not in seen:
            seen.append(name)
    return seen


def prompt_fields(prompts) -> list[str]:
    """The row fields a recipe's `prompts` section reads: theta's template fields, then the teacher's, then
    the conversation fields (`messages_field`), each once, in that order."""
    fields = template_fields(prompts["theta"]["template"] or "")
    if prompts["teacher"]:
        fields += [f for f in template_fields(prompts["teacher"]["template"] or "") if f not in fields]
    for p in (prompts["theta"], prompts["teacher"] or {}):
        if p.get("messages_field") and p["messages_field"] not in fields:
            fields.append(p["messages_field"])
    return fields
