"""Prompt template syntax, shared by the recipe's validation and prompt rendering (data.py).

`{field}` or `{field.sub}` is a placeholder; `{{` and `}}` are literal braces; any other brace
(`\\boxed{}`, `{ x }`) is left as written.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from os_cli.recipe.typed import Prompts

TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\}")


def template_fields(template: str) -> list[str]:
    """The field names a template refers to, in order of first appearance."""
    seen: list[str] = []
    for match in TEMPLATE_TOKEN.finditer(template):
        name = match.group(1)
        if name and name not in seen:
            seen.append(name)
    return seen


def prompt_fields(prompts: Prompts) -> list[str]:
    """The row fields a recipe's `prompts` section reads: theta's template fields, then the teacher's, then
    the conversation fields (`messages_field`), each once, in that order."""
    fields = template_fields(prompts.theta.template or "")
    if prompts.teacher:
        fields += [f for f in template_fields(prompts.teacher.template or "") if f not in fields]
    for spec in (prompts.theta, prompts.teacher):
        if spec is not None and spec.messages_field and spec.messages_field not in fields:
            fields.append(spec.messages_field)
    return fields
