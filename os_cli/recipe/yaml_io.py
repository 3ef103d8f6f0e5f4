"""Reading a recipe file: UTF-8 text, YAML with line numbers, and the safety checks YAML needs
(duplicate keys, recursive anchors, alias bombs beyond MAX_ALIAS_EXPANSION, nesting too deep)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from os_cli.errors import UserError
from os_cli.limits import MAX_ALIAS_EXPANSION
from os_cli.textfile import read_text


class YamlSource:
    """Where values came from: a file (with the line of each key path) or a --set option."""

    def __init__(self, label: str, lines: dict | None = None, file: Path | None = None):
        self.label = label
        self.lines = lines or {}
        self.file = file

    def where(self, path: tuple) -> str:
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return f"{self.label}:{self.lines[path[:n]]}"
        return self.label


def display_path(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


def read_yaml(path: Path) -> tuple[dict, YamlSource]:
    label = display_path(path)
    text = read_text(path, "recipe", label)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _check_aliases(node, label)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{label}:{mark.line + 1}" if mark is not None else label
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{where}: invalid YAML: {problem}") from exc
    except RecursionError:
        raise UserError(f"{label}: the YAML is nested too deeply") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{label}: a recipe must be a mapping of keys (like `models:`), got {type(data).__name__}")
    lines: dict = {}
    if node is not None:
        _collect_lines(node, (), lines, label)
    return data, YamlSource(label, lines, path)


def _check_aliases(root, label: str) -> None:
    """Refuse an anchor used inside itself (a recursive value) and aliases that expand the file to more
    than MAX_ALIAS_EXPANSION extra values, from the node graph alone (aliases are shared nodes there)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise UserError(
                f"{label}:{node.start_mark.line + 1}: a YAML anchor (&name) is used inside its own "
                f"value (*name), which would make the recipe infinitely deep"
            )
        active.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(v) for v in node.value)
        active.discard(key)
        sizes[key] = total
        return total

    try:
        expanded = size(root)
    except RecursionError:
        raise UserError(f"{label}: the YAML is nested too deeply") from None
    if expanded - len(sizes) > MAX_ALIAS_EXPANSION:
        raise UserError(
            f"{label}: YAML aliases (*name) expand this file to {expanded:,} values from {len(sizes):,} "
            f"written ones (at most {MAX_ALIAS_EXPANSION:,} repeated values are allowed); write the "
            f"values out or use fewer nested aliases"
        )


def _collect_lines(node, path: tuple, lines: dict, label: str) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise UserError(
                    f"{label}:{key_node.start_mark.line + 1}: key {'.'.join(path + (key,))!r} appears twice"
                )
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _collect_lines(value_node, path + (key,), lines, label)
            lines[path + (key,)] = key_node.start_mark.line + 1
