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
