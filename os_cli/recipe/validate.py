"""Validation of a merged recipe: each key through its checker, defaults filled in, then the checks
that span keys (alpha.min <= alpha.max, dataset source xor inline, prompt sections, placement)."""

from __future__ import annotations

import copy
from typing import Any

from os_cli.recipe.checks import CHECKERS, CheckContext, show_value, type_name
from os_cli.recipe.schema import Section, model_settings, suggest
from os_cli.recipe.typed import Models, build_section


def validate_tree(value: Any, schema: Section, path: tuple, ctx: CheckContext) -> Any:
    if value is None and (schema.nullable or schema.default_null):
        return None
    if value is None:
        value = {}
    if not isinstance(value, dict):
        ctx.fail(
            path, f"must be a mapping of keys ({', '.join(schema.fields)}), got {type_name(value)} {show_value(value)}"
        )
    out = {}
    for key, spec in schema.fields.items():
        p = path + (key,)
        present = key in value
        v = value.get(key)
        if isinstance(spec, Section):
            if not present and spec.required:
                ctx.fail(p, f"is required (keys: {', '.join(spec.fields)})")
            out[key] = validate_tree(v if present else (None if spec.default_null else {}), spec, p, ctx)
            continue
        if not present or (v is None and not spec.nullable):
            if spec.required:
                ctx.fail(p, "is required" if not present else "is required and must not be null")
            if present and v is None:
                ctx.fail(p, f"must not be null (default: {show_value(spec.default)})")
            out[key] = copy.deepcopy(spec.default)
            continue
        out[key] = None if v is None else CHECKERS[spec.kind](spec, v, p, ctx)
    return out


def cross_checks(recipe: dict, ctx: CheckContext) -> None:
    alpha = recipe["alpha"]
    if alpha["min"] > alpha["max"]:
        ctx.fail(("alpha", "min"), f"must be <= alpha.max ({alpha['max']:g}), got {alpha['min']:g}")
    ds = recipe["dataset"]
    if ds["source"] is None and ds["inline"] is None:
        ctx.fail(("dataset",), "needs a `source` (hub name, local file or builtin:NAME) or `inline` rows")
    if ds["source"] is not None and ds["inline"] is not None:
        ctx.fail(("dataset", "inline"), "give either dataset.source or dataset.inline, not both")
    keep = ds["keep_fields"]
    if ds["id_field"] is not None and ds["inline"] is not None:
        missing = [i for i, row in enumerate(ds["inline"]) if ds["id_field"] not in row]
        if missing:
            ctx.fail(("dataset", "id_field"), f"inline row {missing[0]} has no field {ds['id_field']!r}")
    if isinstance(keep, list) and ds["inline"] is not None:
        fields = set().union(*(row.keys() for row in ds["inline"]))
        for name in keep:
            if name not in fields:
                ctx.fail(("dataset", "keep_fields"), f"no inline row has a field {name!r}{suggest(name, fields)}")
    _check_prompt_sections(recipe, ctx)
    _check_compile(recipe, ctx)
    for role in ("theta", "teacher"):
        _placement_checks(recipe, role, ctx)


def _placement_checks(recipe: dict, role: str, ctx: CheckContext) -> None:
    """One model's effective placement: contradictions that no machine could run."""
    from os_cli.recipe.machine_checks import attn_problem

    settings = model_settings(build_section(Models, recipe["models"]), role)
    device, device_path = settings["device"]
    device_map, map_path = settings["device_map"]
    max_memory, memory_path = settings["max_memory"]
    key = lambda path: tuple(path.split("."))  # noqa: E731
    for level in (("models",), ("models", "per_model", role)):
        node = recipe["models"] if len(level) == 1 else recipe["models"]["per_model"][role]
        if node["device_map"] is not None and node["device"] not in (None, "auto"):
            ctx.fail(
                level + ("device_map",),
                f"give either {'.'.join(level)}.device ({node['device']}) or {'.'.join(level)}.device_map, not both",
            )
    if max_memory is not None and device_map is None:
        ctx.fail(key(memory_path), f"max_memory needs a device_map for the {role} model (e.g. {map_path}: auto)")
    if device_map is None:
        problem = attn_problem(recipe["models"]["attn_implementation"], device)
        if problem:
            ctx.fail(("models", "attn_implementation"), f"{problem} ({device_path} for the {role} model)")
    quantization, quant_path = settings["quantization"]
    if quantization != "none" and device_map is None and device == "cpu":
        ctx.fail(
            key(quant_path),
            f"4bit/8bit (bitsandbytes) needs a CUDA device, but {device_path} is cpu for the {role} model",
        )


def _check_compile(recipe: dict, ctx: CheckContext) -> None:
    """models.compile decodes one token per step in fixed slots with sdpa/eager masks (os_cli/static_stream.py)."""
    if not recipe["models"]["compile"]:
        return
    if recipe["sampling"]["draft_tokens"]:
        ctx.fail(
            ("models", "compile"),
            f"needs sampling.draft_tokens: 0 (got {recipe['sampling']['draft_tokens']}): "
            f"speculative rounds do not run on the compiled fixed-slot step",
        )
    if recipe["models"]["attn_implementation"] == "flash_attention_2":
        ctx.fail(
            ("models", "compile"),
            "needs models.attn_implementation sdpa, eager or auto (auto picks sdpa "
            "with compile), not flash_attention_2",
        )


def _check_prompt_sections(recipe: dict, ctx: CheckContext) -> None:
    """A template is required unless the section reads a conversation (messages_field), and a
    conversation is rendered with the chat template."""
    for role in ("theta", "teacher"):
        spec = recipe["prompts"][role]
        if spec is None:
            continue
        if spec["messages_field"] is None and spec["template"] is None:
            ctx.fail(
                ("prompts", role, "template"),
                "is required (a {field} template, or set "
                f"prompts.{role}.messages_field to the row field holding a conversation)",
            )
        if spec["messages_field"] is not None and not spec["chat_template"]:
            ctx.fail(
                ("prompts", role, "messages_field"),
                "needs chat_template: true (a conversation is rendered "
                f"with the tokenizer's chat template); remove prompts.{role}.chat_template: false",
            )
        if spec["messages_field"] is not None and not spec["messages_field"].strip():
            ctx.fail(("prompts", role, "messages_field"), "must name a row field, got an empty string")
