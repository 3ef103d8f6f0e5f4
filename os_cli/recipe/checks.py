"""The checker of each schema `Field.kind`: types, ranges, choices, files that must exist. Each takes
(spec, value, key path, context), returns the value to keep and fails with the file and line."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from os_cli.errors import UserError
from os_cli.limits import DRAFT_TOKENS_AUTO as AUTO
from os_cli.recipe.places import BUILTIN_PREFIX, DATA_SUFFIXES, HUB_NAME, builtin_datasets, builtin_models
from os_cli.recipe.places import local_candidate as _local_candidate
from os_cli.recipe.places import looks_local as _looks_local
from os_cli.recipe.schema import Field, suggest


class CheckContext:
    def __init__(self, prov: dict, recipe_file: Path | None, default_source: str):
        self.prov = prov
        self.recipe_file = recipe_file
        self.default_source = default_source

    def where(self, path: tuple) -> str:
        for n in range(len(path), 0, -1):
            source = self.prov.get(path[:n])
            if source is not None:
                return source.where(path)
        return self.default_source

    def fail(self, path: tuple, message: str, exit_code: int = 2):
        raise UserError(f"{self.where(path)}: {'.'.join(path)}: {message}", exit_code)


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def show_value(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_range(spec: Field, value: float, path: tuple, ctx: CheckContext) -> None:
    lo, hi = spec.min, spec.max
    too_low = lo is not None and (value <= lo if spec.min_open else value < lo)
    too_high = hi is not None and value > hi
    if too_low or too_high:
        lo_, hi_ = _num(lo), _num(hi)
        if lo is not None and hi is not None:
            allowed = f"in ({lo_}, {hi_}]" if spec.min_open else f"in [{lo_}, {hi_}]"
        elif lo is not None:
            allowed = f"> {lo_}" if spec.min_open else f">= {lo_}"
        else:
            allowed = f"<= {hi_}"
        ctx.fail(path, f"must be {allowed}, got {show_value(value)}{spec.note}")


def _num(value) -> str:
    return "" if value is None else str(value) if isinstance(value, int) else f"{value:g}"


def _check_int(spec, value, path, ctx):
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.fail(path, f"must be an integer, got {type_name(value)} {show_value(value)}")
    _check_range(spec, value, path, ctx)
    return value


def _check_float(spec, value, path, ctx):
    if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
        try:
            value = float(value)
        except ValueError:
            ctx.fail(path, f"must be a number, got the string {show_value(value)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        ctx.fail(path, f"must be a number, got {type_name(value)} {show_value(value)}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        ctx.fail(path, f"must be a finite number, got {value}")
    _check_range(spec, value, path, ctx)
    return value


def _check_draft_tokens(spec, value, path, ctx):
    """sampling.draft_tokens: an integer k in range, or "auto" (engine/draft_policy.py picks k as it runs)."""
    if value == AUTO:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.fail(path, f"must be an integer or {AUTO!r}, got {type_name(value)} {show_value(value)}")
    _check_range(spec, value, path, ctx)
    return value


def _check_bool(spec, value, path, ctx):
    if not isinstance(value, bool):
        ctx.fail(path, f"must be true or false, got {type_name(value)} {show_value(value)}")
    return value


def _check_compile(spec, value, path, ctx):
    if value not in spec.choices or not isinstance(value, (bool, str)):
        ctx.fail(
            path,
            f"must be true, false or static (fixed slots, no torch.compile), got {type_name(value)} "
            f"{show_value(value)}",
        )
    return value


def _check_str(spec, value, path, ctx):
    if not isinstance(value, str):
        ctx.fail(path, f"must be a string, got {type_name(value)} {show_value(value)}")
    return value


def _check_name(spec, value, path, ctx):
    _check_str(spec, value, path, ctx)
    if not value or "/" in value or "\\" in value or value in (".", ".."):
        ctx.fail(path, f"must be a plain folder name (no slashes), got {show_value(value)}")
    return value


def _check_choice(spec, value, path, ctx):
    if value not in spec.choices or isinstance(value, bool):
        hint = suggest(str(value), [str(c) for c in spec.choices])
        ctx.fail(path, f"must be one of {', '.join(map(str, spec.choices))}, got {show_value(value)}{hint}")
    return value


def _check_choice_list(spec, value, path, ctx):
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not value or any(v not in spec.choices or isinstance(v, bool) for v in value):
        ctx.fail(
            path,
            f"must be a non-empty list of names among {', '.join(map(str, spec.choices))}, got {show_value(value)}",
        )
    if len(set(value)) != len(value):
        ctx.fail(path, f"lists a name twice: {show_value(value)}")
    return [c for c in spec.choices if c in value]  # one order: the same set hashes the same


def _check_device(spec, value, path, ctx):
    from os_cli.recipe.machine_checks import device_problem

    if device_problem(value, hardware=False):
        ctx.fail(path, f"must be {spec.allowed}, got {show_value(value)}")
    return value


def _check_device_map(spec, value, path, ctx):
    from os_cli.recipe.machine_checks import device_map_problem

    problem = device_map_problem(value, hardware=False)
    if problem:
        ctx.fail(path, problem)
    return copy.deepcopy(value)


def _check_max_memory(spec, value, path, ctx):
    from os_cli.recipe.machine_checks import max_memory_problem

    problem = max_memory_problem(value, hardware=False)
    if problem:
        ctx.fail(path, problem)
    return copy.deepcopy(value)


def _check_top_k(spec, value, path, ctx):
    if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
        ctx.fail(path, f"must be -1 (off) or a positive integer, got {show_value(value)}")
    return value


def _check_str_list(spec, value, path, ctx):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        ctx.fail(path, f"must be a list of strings, got {show_value(value)}")
    if any(v == "" for v in value):
        ctx.fail(path, "must not contain empty strings")
    return list(value)


def _check_keep_fields(spec, value, path, ctx):
    if value in ("all", "none"):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    ctx.fail(path, f"must be all, none or a list of field names, got {show_value(value)}")


def _check_rows(spec, value, path, ctx):
    if not isinstance(value, list) or not value:
        ctx.fail(path, f"must be a non-empty list of rows (mappings), got {show_value(value)}")
    for i, row in enumerate(value):
        if not isinstance(row, dict):
            ctx.fail(path + (str(i),), f"every inline row must be a mapping of fields, got {show_value(row)}")
    return copy.deepcopy(value)


def _check_template(spec, value, path, ctx):
    if not isinstance(value, str) or not value.strip():
        ctx.fail(path, f"must be a non-empty string with {{field}} placeholders, got {show_value(value)}")
    return value


def _check_builtin(value: str, kind: str, available: list[str], path, ctx) -> str:
    """A `builtin:NAME` must name one of the shipped models or datasets (`available`)."""
    name = value[len(BUILTIN_PREFIX) :]
    if name not in available:
        ctx.fail(
            path,
            f"unknown builtin {kind} {value!r}{suggest(name, available)}; "
            f"available: {', '.join(BUILTIN_PREFIX + a for a in available) or 'none'}",
        )
    return value


def _check_model(spec, value, path, ctx):
    if not isinstance(value, str) or not value.strip():
        ctx.fail(path, f"must be a local model folder, a hub name (org/name) or builtin:NAME, got {show_value(value)}")
    value = value.strip()
    if value.startswith(BUILTIN_PREFIX):
        return _check_builtin(value, "model", builtin_models(), path, ctx)
    local = _local_candidate(value, ctx.recipe_file)
    if local is not None:
        if not local.is_dir():
            ctx.fail(path, f"{value!r} is a file; a model is a folder written by save_pretrained")
        from os_cli.recipe.machine_checks import model_folder_problem

        problem = model_folder_problem(local)
        if problem:
            ctx.fail(path, problem)
        return value
    if _looks_local(value) or not HUB_NAME.match(value):
        ctx.fail(path, f"model folder not found: {value!r} (not a folder here, and not a hub name like org/name)")
    return value


def _check_source(spec, value, path, ctx):
    if not isinstance(value, str) or not value.strip():
        ctx.fail(path, f"must be a hub dataset name, a local file or folder, or builtin:NAME, got {show_value(value)}")
    value = value.strip()
    if value.startswith(BUILTIN_PREFIX):
        return _check_builtin(value, "dataset", builtin_datasets(), path, ctx)
    local = _local_candidate(value, ctx.recipe_file)
    if local is not None:
        if local.is_file() and local.suffix not in DATA_SUFFIXES:
            ctx.fail(path, f"{value!r} has an unsupported suffix {local.suffix!r}; use {', '.join(DATA_SUFFIXES)}")
        if local.is_dir() and not any(p.suffix in DATA_SUFFIXES for p in local.iterdir()):
            ctx.fail(path, f"folder {value!r} holds no {', '.join(DATA_SUFFIXES)} files")
        return value
    if _looks_local(value) or Path(value).suffix in DATA_SUFFIXES or not HUB_NAME.match(value):
        ctx.fail(path, f"dataset file not found: {value!r}")
    return value


CHECKERS = {
    "int": _check_int,
    "float": _check_float,
    "bool": _check_bool,
    "str": _check_str,
    "name": _check_name,
    "choice": _check_choice,
    "choice_list": _check_choice_list,
    "device": _check_device,
    "device_map": _check_device_map,
    "max_memory": _check_max_memory,
    "top_k": _check_top_k,
    "str_list": _check_str_list,
    "keep_fields": _check_keep_fields,
    "rows": _check_rows,
    "template": _check_template,
    "model": _check_model,
    "source": _check_source,
    "compile": _check_compile,
    "draft_tokens": _check_draft_tokens,
}
