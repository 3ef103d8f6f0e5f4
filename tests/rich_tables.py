"""Test helper: the lines of the rich tables a command printed, found by their title lines."""

from __future__ import annotations

from typing import Sequence


def table_lines(text: str, titles: Sequence[str]) -> list[str]:
    """Each table's title line (starting with one of `titles`) and its indented non-blank lines."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith(tuple(titles)):
            inside = True
        elif inside and line.strip() and not line.startswith(" "):
            inside = False
        if inside and line.strip():
            lines.append(line)
    return lines
