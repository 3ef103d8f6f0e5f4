"""`--set key.path=value` overrides: parsed as YAML, checked against the schema, merged last."""

from __future__ import annotations

from typing import Any

import yaml

from os_cli.errors import UserError
from os_cli.recipe.fragments import check_keys, merge_trees
from os_cli.recipe.schema import SCHEMA, Field, Section, all_key_paths, spec_at, suggest
from os_cli.recipe.yaml_io import YamlSource

_TEXT_KINDS = ("str", "template", "model", "source", "name", "device", "choice")


def parse_override(item: Any) -> tuple[str, Any, str]:
    """`key.path=value` -> (key, value, label). Values are YAML; a text key keeps text YAML cannot read
    (or reads as a mapping/list, like `{question}`) as written."""
    if isinstance(item, tuple) and len(item) == 2:
        key, value = item
        return str(key), value, f"--set {key}={value}"
    text = str(item)
    if "=" not in text:
        raise UserError(f"--set {text}: expected key.path=value, e.g. --set sampling.batch_size=4")
    key, raw = text.split("=", 1)
    key = key.strip()
    spec = spec_at(key)
    text_kind = isinstance(spec, Field) and spec.kind in _TEXT_KINDS
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        if text_kind:
            return key, raw, f"--set {text}"
        raise UserError(f"--set {text}: the value is not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if text_kind and isinstance(value, (dict, list)):
        value = raw
    return key, value, f"--set {text}"


def apply_override(recipe: dict, key: str, value: Any, label: str, prov: dict) -> dict:
    parts = tuple(key.split("."))
    if not key or any(not p for p in parts):
        raise UserError(f"{label}: {key!r} is not a key path like sampling.batch_size")
    schema: Any = SCHEMA
    for i, part in enumerate(parts):
        if not isinstance(schema, Section):
            raise UserError(f"{label}: {'.'.join(parts[:i])} is a single value and has no key {part!r}")
        if part not in schema.fields:
            full = ".".join(parts)
            hint = suggest(full, all_key_paths())
            if not hint:
                hint = suggest(part, schema.fields)
            raise UserError(f"{label}: unknown key {full!r}{hint}")
        schema = schema.fields[part]
    source = YamlSource(label)
    if isinstance(schema, Section) and isinstance(value, dict):
        check_keys(value, schema, parts, source)
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return merge_trees(recipe, nested, prov, source)
