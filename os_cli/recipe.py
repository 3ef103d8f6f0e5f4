"""Recipes: the YAML schema, `defaults:` fragments, `--set` overrides and strict validation.

A recipe is declarative data (see "Recipe schema" in docs/ARCHITECTURE.md). Resolution order:

1. the fragments listed under `defaults:` (files in `configs/`, e.g. `models/qwen2.5-1.5b-3b`), merged
   in order (a fragment may list its own `defaults:`);
2. the recipe's own keys;
3. `--set key.path=value` overrides, values parsed as YAML (`--set sampling.batch_size=4`).

Mappings merge key by key; any other value (lists included) replaces what was there. The result is
validated against the schema (unknown keys with a "did you mean" suggestion, types, allowed values,
ranges, files that must exist) and every default is filled in. Errors are `UserError`s that name the
file and line (or the `--set` option) the bad value came from.

Public functions:

- `load_recipe(path_or_name, overrides=()) -> dict`: resolved, validated, defaults filled. A name
  without a suffix or folder (`chat`) is a bundled recipe from the repository's `recipes/`. The dict
  carries a `_meta` entry (recipe file, name, fragments, overrides) that is not part of the recipe.
- `recipe_hash(recipe) -> str`: `sha256:<hex>` of the keys that change the records (see HASH_EXCLUDED).
- `recipe_diff(old, new) -> list[(key_path, old, new)]`: the hashed keys that differ.
- `build_model(recipe) -> OptimalSamplingModel`: loads the two models the recipe names.
- `output_dir(recipe, override=None) -> Path`, `dump_recipe(recipe) -> str` (YAML),
  `list_bundled() -> list[(name, description, path)]`, `resolve_local_path(recipe, value)`,
  `model_location(recipe, role)`.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .errors import UserError
from .limits import (
    MAX_ALIAS_EXPANSION, MAX_BATCH_SIZE, MAX_NEW_TOKENS, MAX_NUM_SAMPLES, MAX_SEED, MIN_TEMPERATURE,
)

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
BUNDLED_DIR = REPO_DIR / "recipes"
CONFIGS_DIR = REPO_DIR / "configs"
NOT_FRAGMENTS = ("accelerate",)  # configs/accelerate/ holds `accelerate launch` configs, not recipe fragments
BUILTIN_DIR = PACKAGE_DIR / "builtin"
BUILTIN_PREFIX = "builtin:"
RECIPE_SUFFIXES = (".yaml", ".yml")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")

# Keys that do not change which records a run writes, so they may change between a run and its
# resume: names and places, hardware placement, grouping (batch size: OOM back-off changes it anyway),
# shard rotation, the bad-row policy, the row limit (a larger limit extends the run) and the number
# of samples per row (a sample's seed does not depend on it, so a larger n extends the run too; records
# with a sample index beyond a smaller n are refused like rows beyond a smaller limit).
HASH_EXCLUDED = (
    "_meta", "description", "defaults", "run_name", "output.dir", "output.shard_size",
    "dataset.limit", "sampling.batch_size", "prompts.on_bad_row", "sampling.num_samples",
) + tuple(f"models.{where}{key}" for where in ("", "per_model.theta.", "per_model.teacher.")
          for key in ("device", "device_map", "max_memory"))
# Keys added after output folders already existed: left out of the hash while unset (the default;
# for a section, its null keys), so folders written before them still resume.
HASH_IF_SET = {"models.quant_type": "nf4", "models.compute_dtype": "auto", "models.per_model.theta": None,
               "models.per_model.teacher": None, "models.per_model": None,
               "prompts.theta.messages_field": None, "prompts.teacher.messages_field": None,
               "sampling.draft_tokens": 0}


# ----------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One leaf of the schema. `kind` names the checker in `_CHECKERS`."""

    kind: str
    default: Any = None
    nullable: bool = False
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    required: bool = False
    note: str = ""  # appended to a range error (why the bound exists)
    allowed: str = ""  # how the error message describes what is allowed, when the kind's default is not enough


@dataclass(frozen=True)
class Section:
    """A mapping of named fields. `nullable` sections may be null (prompts.teacher)."""

    fields: dict
    nullable: bool = False
    required: bool = False
    default_null: bool = False


def _prompt_section(**kw) -> Section:
    return Section(
        {
            "system": Field("str", None, nullable=True),
            # required unless messages_field is set (then it is appended to the last user turn): _cross_checks
            "template": Field("template", None, nullable=True),
            "chat_template": Field("bool", True),
            "messages_field": Field("str", None, nullable=True),
        },
        **kw,
    )


_DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
# The keys that place and load one model: under `models:` they are both models' defaults; under
# `models.per_model.theta|teacher:` (null = the default) they override one model.
PLACEMENT_KEYS = ("device", "device_map", "max_memory", "dtype", "quantization", "quant_type", "compute_dtype")


def _placement_fields(defaults: bool) -> dict:
    fields = {
        "dtype": Field("choice", "auto", choices=_DTYPE_CHOICES),
        "device": Field("device", "auto", allowed="auto, cpu, cuda or cuda:N"),
        "device_map": Field("device_map", None, nullable=True),
        "max_memory": Field("max_memory", None, nullable=True),
        "quantization": Field("choice", "none", choices=("none", "4bit", "8bit")),
        "quant_type": Field("choice", "nf4", choices=("nf4", "fp4")),
        "compute_dtype": Field("choice", "auto", choices=_DTYPE_CHOICES),
    }
    if defaults:
        return fields
    return {k: Field(f.kind, None, nullable=True, choices=f.choices, allowed=f.allowed) for k, f in fields.items()}


SCHEMA = Section(
    {
        "description": Field("str", None, nullable=True),
        "defaults": Field("str_list", []),
        "run_name": Field("name", None, nullable=True),
        "models": Section(
            {
                "theta": Field("model", required=True),
                "teacher": Field("model", None, nullable=True),
                **_placement_fields(defaults=True),
                "per_model": Section({
                    "theta": Section(_placement_fields(defaults=False)),
                    "teacher": Section(_placement_fields(defaults=False)),
                }),
                "attn_implementation": Field(
                    "choice", "auto", choices=("auto", "sdpa", "eager", "flash_attention_2")
                ),
                "revision": Field("str", None, nullable=True),
                "trust_remote_code": Field("bool", False),
            },
            required=True,
        ),
        "alpha": Section(
            {
                "method": Field(
                    "choice", "kl_symmetry",
                    choices=("fixed", "kl_symmetry", "reverse_kl_symmetry", "ess_balance", "entropy"),
                ),
                "fixed": Field("float", 0.5, min=0.0, max=1.0),
                "min": Field("float", 0.5, min=0.0, max=1.0),
                "max": Field("float", 1.0, min=0.0, max=1.0),
            }
        ),
        "constraints": Section(
            {
                "to_target": Field("bool", False),
                "top_k": Field("top_k", -1),
                "top_p": Field("float", 1.0, min=0.0, max=1.0, min_open=True),
                "force_first_token": Field("bool", False),
                "force_special_tokens": Field("bool", False),
            }
        ),
        "sampling": Section(
            {
                "max_new_tokens": Field("int", 256, min=1, max=MAX_NEW_TOKENS),
                "temperature": Field(
                    "float", 1.0, min=MIN_TEMPERATURE,
                    note="; the bound keeps logits / temperature finite (temperature 0 / greedy is not supported)",
                ),
                "top_p": Field("float", 1.0, min=0.0, max=1.0, min_open=True),
                "top_k": Field("top_k", -1),
                "batch_size": Field("int", 8, min=1, max=MAX_BATCH_SIZE),
                "seed": Field("int", 0, min=0, max=MAX_SEED),
                "num_samples": Field("int", 1, min=1, max=MAX_NUM_SAMPLES),
                "stop": Field("str_list", []),
                "draft_tokens": Field("int", 0, min=0, max=MAX_NEW_TOKENS),
            }
        ),
        "dataset": Section(
            {
                "source": Field("source", None, nullable=True),
                "inline": Field("rows", None, nullable=True),
                "split": Field("str", "train"),
                "config": Field("str", None, nullable=True),
                "limit": Field("int", None, nullable=True, min=0),
                "skip": Field("int", 0, min=0),
                "id_field": Field("str", None, nullable=True),
                "keep_fields": Field("keep_fields", "all"),
                "answer_field": Field("str", "answer", nullable=True),
            }
        ),
        "prompts": Section(
            {
                "theta": _prompt_section(required=True),
                "teacher": _prompt_section(nullable=True, default_null=True),
                "on_bad_row": Field("choice", "error", choices=("error", "skip")),
            },
            required=True,
        ),
        "output": Section(
            {
                "dir": Field("str", None, nullable=True),
                "shard_size": Field("int", 1000, min=1),
                "per_token": Field("bool", False),
            }
        ),
    }
)

# Placeholders in prompt templates: `{field}` or `{field.sub}`; `{{` and `}}` are literal braces;
# any other brace (`\boxed{}`, `{ x }`) is left as written.
TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\}")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.\-]+)?$")


def template_fields(template: str) -> list[str]:
    """The field names a template refers to, in order of first appearance."""
    seen: list[str] = []
    for match in TEMPLATE_TOKEN.finditer(template):
        name = match.group(1)
        if name and name not in seen:
            seen.append(name)
    return seen


# ----------------------------------------------------------------------------------------------
# YAML loading with line numbers
# ----------------------------------------------------------------------------------------------


class _Source:
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


def _display(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _read_yaml(path: Path) -> tuple[dict, _Source]:
    label = _display(path)
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
    return data, _Source(label, lines, path)


def read_text(path: str | os.PathLike, what: str = "dataset", label: str | None = None) -> str:
    """A file's text; a file that is not UTF-8 is a `UserError` naming it and the byte offset."""
    label = label or str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{what} {label}: cannot read the file: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {label} is not UTF-8 text: byte offset {exc.start} "
                        f"({data[exc.start:exc.start + 4]!r}: {exc.reason}); convert it to UTF-8") from None


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
            raise UserError(f"{label}:{node.start_mark.line + 1}: a YAML anchor (&name) is used inside its own "
                            f"value (*name), which would make the recipe infinitely deep")
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
        raise UserError(f"{label}: YAML aliases (*name) expand this file to {expanded:,} values from {len(sizes):,} "
                        f"written ones (at most {MAX_ALIAS_EXPANSION:,} repeated values are allowed); write the "
                        f"values out or use fewer nested aliases")


def _collect_lines(node, path: tuple, lines: dict, label: str) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise UserError(f"{label}:{key_node.start_mark.line + 1}: key {'.'.join(path + (key,))!r} appears twice")
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _collect_lines(value_node, path + (key,), lines, label)
            lines[path + (key,)] = key_node.start_mark.line + 1


# ----------------------------------------------------------------------------------------------
# Finding recipes and fragments
# ----------------------------------------------------------------------------------------------


def list_bundled() -> list[tuple[str, str, Path]]:
    """(name, description, path) of every recipe in the repository's `recipes/` folder."""
    out = []
    if BUNDLED_DIR.is_dir():
        for path in sorted(BUNDLED_DIR.iterdir()):
            if path.suffix in RECIPE_SUFFIXES and path.is_file():
                try:
                    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
                    description = data.get("description") if isinstance(data, dict) else None
                except (OSError, yaml.YAMLError):
                    description = None
                out.append((path.stem, str(description or "(no description)"), path))
    return out


def find_recipe(path_or_name: str | os.PathLike) -> Path:
    """A recipe file: an existing path, or the name of a bundled recipe (`chat`, `math-hint`)."""
    text = str(path_or_name)
    path = Path(text).expanduser()
    if path.is_file():
        return path.resolve()
    if path.is_dir():
        raise UserError(f"{text} is a folder; --config takes a recipe file (.yaml) or a bundled recipe name")
    bundled = {name: p for name, _, p in list_bundled()}
    is_name = path.suffix == "" and "/" not in text and os.sep not in text
    if is_name and text in bundled:
        return bundled[text].resolve()
    if is_name:
        hint = _suggest(text, bundled)
        names = ", ".join(sorted(bundled)) or "none"
        raise UserError(f"no recipe file {text!r} and no bundled recipe of that name{hint}; bundled recipes: {names}")
    hint = ""
    if path.stem in bundled:
        hint = f" (there is a bundled recipe {path.stem!r}: use --config {path.stem})"
    raise UserError(f"recipe file not found: {text}{hint}")


def _fragment_dirs(recipe_file: Path | None, root_file: Path | None = None) -> list[Path]:
    """Where `defaults:` names are looked up: next to the recipe (its `configs/` or its parent's), then
    the same for the top-level recipe when a fragment includes another, then the repository's `configs/`."""
    dirs = []
    for f in (recipe_file, root_file):
        if f is not None:
            dirs += [f.parent, f.parent / "configs", f.parent.parent / "configs"]
    dirs.append(CONFIGS_DIR)
    unique: list[Path] = []
    for d in dirs:
        d = d.resolve()
        if d not in unique:
            unique.append(d)
    return unique


def list_fragments() -> list[str]:
    if not CONFIGS_DIR.is_dir():
        return []
    return sorted(
        str(p.relative_to(CONFIGS_DIR).with_suffix("")).replace(os.sep, "/")
        for p in CONFIGS_DIR.rglob("*")
        if p.suffix in RECIPE_SUFFIXES and p.relative_to(CONFIGS_DIR).parts[0] not in NOT_FRAGMENTS
    )


def _find_fragment(name: str, recipe_file: Path | None, where: str, root_file: Path | None = None) -> Path:
    if not isinstance(name, str) or not name:
        raise UserError(f"{where}: every entry of `defaults` must be a fragment name like 'sampling/default', got {name!r}")
    candidates = []
    if Path(name).suffix in RECIPE_SUFFIXES:
        base = recipe_file.parent if recipe_file is not None else Path.cwd()
        candidates.append(base / name)
    for d in _fragment_dirs(recipe_file, root_file):
        candidates += [d / f"{name}{suffix}" for suffix in RECIPE_SUFFIXES]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    known = list_fragments()
    hint = _suggest(name, known)
    raise UserError(
        f"{where}: unknown defaults fragment {name!r}{hint}; fragments live in configs/ "
        f"(available: {', '.join(known) or 'none'})"
    )


# ----------------------------------------------------------------------------------------------
# Merging
# ----------------------------------------------------------------------------------------------


def _suggest(word: str, options: Iterable[str]) -> str:
    matches = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def _check_keys(data: Any, schema: Section, path: tuple, source: _Source) -> None:
    """Unknown keys are errors, reported where they were written, with the closest valid key."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        if path == () and key == "defaults":
            continue
        if not isinstance(key, str):
            raise UserError(f"{source.where(path)}: keys must be strings, got {key!r}")
        if key not in schema.fields:
            full = ".".join(path + (key,))
            hint = _suggest(key, schema.fields)
            if hint:
                hint = f" (did you mean {'.'.join(path + (difflib.get_close_matches(key, list(schema.fields), 1, 0.6)[0],))!r}?)"
            else:
                hint = _suggest(full, _all_key_paths())
            allowed = ", ".join(schema.fields)
            where_ = f" under {'.'.join(path)}" if path else ""
            raise UserError(f"{source.where(path + (key,))}: unknown key {full!r}{hint}; allowed keys{where_}: {allowed}")
        sub = schema.fields[key]
        if isinstance(sub, Section):
            _check_keys(value, sub, path + (key,), source)


def _all_key_paths(schema: Section = SCHEMA, prefix: tuple = ()) -> list[str]:
    out = []
    for key, sub in schema.fields.items():
        out.append(".".join(prefix + (key,)))
        if isinstance(sub, Section):
            out += _all_key_paths(sub, prefix + (key,))
    return out


def _merge(base: dict, over: dict, prov: dict, source: _Source, path: tuple = ()) -> dict:
    """Deep-merge `over` into a copy of `base`; `prov` maps key paths to the source that set them."""
    out = dict(base)
    for key, value in over.items():
        p = path + (key,)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, prov, source, p)
        else:
            for q in [q for q in prov if q[: len(p)] == p]:
                del prov[q]
            out[key] = copy.deepcopy(value)
            _mark(value, p, prov, source)
        prov.setdefault(p, source)
    return out


def _mark(value: Any, path: tuple, prov: dict, source: _Source) -> None:
    prov[path] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(v, path + (k,), prov, source)


def _load_with_fragments(path: Path, prov: dict, stack: tuple = ()) -> tuple[dict, list[Path], _Source]:
    if path in stack:
        chain = " -> ".join(_display(p) for p in stack + (path,))
        raise UserError(f"defaults fragments include each other in a loop: {chain}")
    data, source = _read_yaml(path)
    merged, fragments = _resolve_tree(data, source, path, prov, stack + (path,), is_fragment=bool(stack))
    return merged, fragments, source


def _resolve_tree(data: dict, source: _Source, recipe_file: Path | None, prov: dict, stack: tuple,
                  is_fragment: bool) -> tuple[dict, list[Path]]:
    """Merge `data`'s `defaults:` fragments in order, then `data`'s own keys on top."""
    defaults = data.get("defaults", [])
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, list):
        raise UserError(f"{source.where(('defaults',))}: `defaults` must be a list of fragment names, got {defaults!r}")
    merged: dict = {}
    fragments: list[Path] = []
    for name in defaults:
        root = stack[0] if stack and isinstance(stack[0], Path) else None
        frag_path = _find_fragment(name, recipe_file, source.where(("defaults",)), root)
        frag, sub_fragments, _ = _load_with_fragments(frag_path, prov, stack)
        merged = _merge(merged, frag, prov, _Source(_display(frag_path)))
        fragments += [f for f in sub_fragments + [frag_path] if f not in fragments]
    own = {k: v for k, v in data.items() if k != "defaults"}
    _check_keys(own, SCHEMA, (), source)
    if is_fragment:  # a fragment configures; it does not name or describe the run
        own.pop("description", None)
        own.pop("run_name", None)
    return _merge(merged, own, prov, source), fragments


_TEXT_KINDS = ("str", "template", "model", "source", "name", "device", "choice")


def _parse_override(item: Any) -> tuple[str, Any, str]:
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
    spec = _spec_at(key)
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


def _spec_at(key: str):
    schema: Any = SCHEMA
    for part in key.split("."):
        if not isinstance(schema, Section) or part not in schema.fields:
            return None
        schema = schema.fields[part]
    return schema


def _apply_override(recipe: dict, key: str, value: Any, label: str, prov: dict) -> dict:
    parts = tuple(key.split("."))
    if not key or any(not p for p in parts):
        raise UserError(f"{label}: {key!r} is not a key path like sampling.batch_size")
    schema: Any = SCHEMA
    for i, part in enumerate(parts):
        if not isinstance(schema, Section):
            raise UserError(f"{label}: {'.'.join(parts[:i])} is a single value and has no key {part!r}")
        if part not in schema.fields:
            full = ".".join(parts)
            hint = _suggest(full, _all_key_paths())
            if not hint:
                hint = _suggest(part, schema.fields)
            raise UserError(f"{label}: unknown key {full!r}{hint}")
        schema = schema.fields[part]
    source = _Source(label)
    if isinstance(schema, Section) and isinstance(value, dict):
        _check_keys(value, schema, parts, source)
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return _merge(recipe, nested, prov, source)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


class _Ctx:
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


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_range(spec: Field, value: float, path: tuple, ctx: _Ctx) -> None:
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
        ctx.fail(path, f"must be {allowed}, got {_show(value)}{spec.note}")


def _num(value) -> str:
    return "" if value is None else str(value) if isinstance(value, int) else f"{value:g}"


def _check_int(spec, value, path, ctx):
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.fail(path, f"must be an integer, got {_type_name(value)} {_show(value)}")
    _check_range(spec, value, path, ctx)
    return value


def _check_float(spec, value, path, ctx):
    if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
        try:
            value = float(value)
        except ValueError:
            ctx.fail(path, f"must be a number, got the string {_show(value)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        ctx.fail(path, f"must be a number, got {_type_name(value)} {_show(value)}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        ctx.fail(path, f"must be a finite number, got {value}")
    _check_range(spec, value, path, ctx)
    return value


def _check_bool(spec, value, path, ctx):
    if not isinstance(value, bool):
        ctx.fail(path, f"must be true or false, got {_type_name(value)} {_show(value)}")
    return value


def _check_str(spec, value, path, ctx):
    if not isinstance(value, str):
        ctx.fail(path, f"must be a string, got {_type_name(value)} {_show(value)}")
    return value


def _check_name(spec, value, path, ctx):
    _check_str(spec, value, path, ctx)
    if not value or "/" in value or "\\" in value or value in (".", ".."):
        ctx.fail(path, f"must be a plain folder name (no slashes), got {_show(value)}")
    return value


def _check_choice(spec, value, path, ctx):
    if value not in spec.choices or isinstance(value, bool):
        hint = _suggest(str(value), [str(c) for c in spec.choices])
        ctx.fail(path, f"must be one of {', '.join(map(str, spec.choices))}, got {_show(value)}{hint}")
    return value


def _check_device(spec, value, path, ctx):
    from .preflight import device_problem

    if device_problem(value, hardware=False):
        ctx.fail(path, f"must be {spec.allowed}, got {_show(value)}")
    return value


def _check_device_map(spec, value, path, ctx):
    from .preflight import device_map_problem

    problem = device_map_problem(value, hardware=False)
    if problem:
        ctx.fail(path, problem)
    return copy.deepcopy(value)


def _check_max_memory(spec, value, path, ctx):
    from .preflight import max_memory_problem

    problem = max_memory_problem(value, hardware=False)
    if problem:
        ctx.fail(path, problem)
    return copy.deepcopy(value)


def _check_top_k(spec, value, path, ctx):
    if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
        ctx.fail(path, f"must be -1 (off) or a positive integer, got {_show(value)}")
    return value


def _check_str_list(spec, value, path, ctx):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        ctx.fail(path, f"must be a list of strings, got {_show(value)}")
    if any(v == "" for v in value):
        ctx.fail(path, "must not contain empty strings")
    return list(value)


def _check_keep_fields(spec, value, path, ctx):
    if value in ("all", "none"):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    ctx.fail(path, f"must be all, none or a list of field names, got {_show(value)}")


def _check_rows(spec, value, path, ctx):
    if not isinstance(value, list) or not value:
        ctx.fail(path, f"must be a non-empty list of rows (mappings), got {_show(value)}")
    for i, row in enumerate(value):
        if not isinstance(row, dict):
            ctx.fail(path + (str(i),), f"every inline row must be a mapping of fields, got {_show(row)}")
    return copy.deepcopy(value)


def _check_template(spec, value, path, ctx):
    if not isinstance(value, str) or not value.strip():
        ctx.fail(path, f"must be a non-empty string with {{field}} placeholders, got {_show(value)}")
    return value


def _check_builtin(value: str, kind: str, available: list[str], path, ctx) -> str:
    """A `builtin:NAME` must name one of the shipped models or datasets (`available`)."""
    name = value[len(BUILTIN_PREFIX):]
    if name not in available:
        ctx.fail(path, f"unknown builtin {kind} {value!r}{_suggest(name, available)}; "
                       f"available: {', '.join(BUILTIN_PREFIX + a for a in available) or 'none'}")
    return value


def _check_model(spec, value, path, ctx):
    if not isinstance(value, str) or not value.strip():
        ctx.fail(path, f"must be a local model folder, a hub name (org/name) or builtin:NAME, got {_show(value)}")
    value = value.strip()
    if value.startswith(BUILTIN_PREFIX):
        available = sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir()) if BUILTIN_DIR.is_dir() else []
        return _check_builtin(value, "model", available, path, ctx)
    local = _local_candidate(value, ctx.recipe_file)
    if local is not None:
        if not local.is_dir():
            ctx.fail(path, f"{value!r} is a file; a model is a folder written by save_pretrained")
        from .preflight import model_folder_problem

        problem = model_folder_problem(local)
        if problem:
            ctx.fail(path, problem)
        return value
    if _looks_local(value) or not _HUB_NAME.match(value):
        ctx.fail(path, f"model folder not found: {value!r} (not a folder here, and not a hub name like org/name)")
    return value


def _check_source(spec, value, path, ctx):
    if not isinstance(value, str) or not value.strip():
        ctx.fail(path, f"must be a hub dataset name, a local file or folder, or builtin:NAME, got {_show(value)}")
    value = value.strip()
    if value.startswith(BUILTIN_PREFIX):
        available = sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl")) if BUILTIN_DIR.is_dir() else []
        return _check_builtin(value, "dataset", available, path, ctx)
    local = _local_candidate(value, ctx.recipe_file)
    if local is not None:
        if local.is_file() and local.suffix not in DATA_SUFFIXES:
            ctx.fail(path, f"{value!r} has an unsupported suffix {local.suffix!r}; use {', '.join(DATA_SUFFIXES)}")
        if local.is_dir() and not any(p.suffix in DATA_SUFFIXES for p in local.iterdir()):
            ctx.fail(path, f"folder {value!r} holds no {', '.join(DATA_SUFFIXES)} files")
        return value
    if _looks_local(value) or Path(value).suffix in DATA_SUFFIXES or not _HUB_NAME.match(value):
        ctx.fail(path, f"dataset file not found: {value!r}")
    return value


_CHECKERS = {
    "int": _check_int, "float": _check_float, "bool": _check_bool, "str": _check_str, "name": _check_name,
    "choice": _check_choice, "device": _check_device, "device_map": _check_device_map,
    "max_memory": _check_max_memory, "top_k": _check_top_k, "str_list": _check_str_list,
    "keep_fields": _check_keep_fields, "rows": _check_rows, "template": _check_template,
    "model": _check_model, "source": _check_source,
}


def _looks_local(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~", ".\\")) or value.count("/") > 1 or "\\" in value


def _local_candidate(value: str, recipe_file: Path | None) -> Path | None:
    """The existing local path `value` names: relative to the working directory, else to the recipe's folder."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path if path.exists() else None
    if path.exists():
        return path
    if recipe_file is not None and (recipe_file.parent / path).exists():
        return recipe_file.parent / path
    return None


def _validate(value: Any, schema: Section, path: tuple, ctx: _Ctx) -> Any:
    if value is None and (schema.nullable or schema.default_null):
        return None
    if value is None:
        value = {}
    if not isinstance(value, dict):
        ctx.fail(path, f"must be a mapping of keys ({', '.join(schema.fields)}), got {_type_name(value)} {_show(value)}")
    out = {}
    for key, spec in schema.fields.items():
        p = path + (key,)
        present = key in value
        v = value.get(key)
        if isinstance(spec, Section):
            if not present and spec.required:
                ctx.fail(p, f"is required (keys: {', '.join(spec.fields)})")
            out[key] = _validate(v if present else (None if spec.default_null else {}), spec, p, ctx)
            continue
        if not present or (v is None and not spec.nullable):
            if spec.required:
                ctx.fail(p, "is required" if not present else "is required and must not be null")
            if present and v is None:
                ctx.fail(p, f"must not be null (default: {_show(spec.default)})")
            out[key] = copy.deepcopy(spec.default)
            continue
        out[key] = None if v is None else _CHECKERS[spec.kind](spec, v, p, ctx)
    return out


def _cross_checks(recipe: dict, ctx: _Ctx) -> None:
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
                ctx.fail(("dataset", "keep_fields"), f"no inline row has a field {name!r}{_suggest(name, fields)}")
    _check_prompt_sections(recipe, ctx)
    from .preflight import attn_problem

    for role in ("theta", "teacher"):
        _placement_checks(recipe, role, ctx)


def _placement_checks(recipe: dict, role: str, ctx: _Ctx) -> None:
    """One model's effective placement: contradictions that no machine could run."""
    from .preflight import attn_problem

    settings = model_settings(recipe, role)
    device, device_path = settings["device"]
    device_map, map_path = settings["device_map"]
    max_memory, memory_path = settings["max_memory"]
    key = lambda path: tuple(path.split("."))  # noqa: E731
    for level in (("models",), ("models", "per_model", role)):
        node = recipe["models"] if len(level) == 1 else recipe["models"]["per_model"][role]
        if node["device_map"] is not None and node["device"] not in (None, "auto"):
            ctx.fail(level + ("device_map",), f"give either {'.'.join(level)}.device ({node['device']}) or "
                                              f"{'.'.join(level)}.device_map, not both")
    if max_memory is not None and device_map is None:
        ctx.fail(key(memory_path), f"max_memory needs a device_map for the {role} model "
                                   f"(e.g. {map_path}: auto)")
    if device_map is None:
        problem = attn_problem(recipe["models"]["attn_implementation"], device)
        if problem:
            ctx.fail(("models", "attn_implementation"), f"{problem} ({device_path} for the {role} model)")
    quantization, quant_path = settings["quantization"]
    if quantization != "none" and device_map is None and device == "cpu":
        ctx.fail(key(quant_path), f"4bit/8bit (bitsandbytes) needs a CUDA device, but {device_path} is cpu "
                                  f"for the {role} model")


def model_settings(recipe: Mapping, role: str) -> dict:
    """One model's effective placement keys (`PLACEMENT_KEYS`) as {key: (value, key path that set it)}:
    `models.per_model.<role>.<key>` where set (not null), else `models.<key>`."""
    own = ((recipe["models"].get("per_model") or {}).get(role)) or {}
    out = {}
    for key in PLACEMENT_KEYS:
        if own.get(key) is not None:
            out[key] = (own[key], f"models.per_model.{role}.{key}")
        else:
            out[key] = (recipe["models"].get(key, _spec_at(f"models.{key}").default), f"models.{key}")
    # A device_map under per_model wins over the shared device, a device under per_model over the shared map.
    if own.get("device") is not None and own.get("device_map") is None:
        out["device_map"] = (None, f"models.per_model.{role}.device_map")
        if own.get("max_memory") is None:
            out["max_memory"] = (None, f"models.per_model.{role}.max_memory")
    return out


def _check_prompt_sections(recipe: dict, ctx: _Ctx) -> None:
    """A template is required unless the section reads a conversation (messages_field), and a
    conversation is rendered with the chat template."""
    for role in ("theta", "teacher"):
        spec = recipe["prompts"][role]
        if spec is None:
            continue
        if spec["messages_field"] is None and spec["template"] is None:
            ctx.fail(("prompts", role, "template"), "is required (a {field} template, or set "
                     f"prompts.{role}.messages_field to the row field holding a conversation)")
        if spec["messages_field"] is not None and not spec["chat_template"]:
            ctx.fail(("prompts", role, "messages_field"), "needs chat_template: true (a conversation is rendered "
                     f"with the tokenizer's chat template); remove prompts.{role}.chat_template: false")
        if spec["messages_field"] is not None and not spec["messages_field"].strip():
            ctx.fail(("prompts", role, "messages_field"), "must name a row field, got an empty string")


def load_recipe(path_or_name: str | os.PathLike | None = None, overrides: Iterable = (), *,
                data: Mapping | None = None) -> dict:
    """Resolve and validate a recipe; every default is filled in. Raises `UserError`.

    `path_or_name`: a recipe file or the name of a bundled recipe. `overrides`: `key.path=value`
    strings (as given to `--set`) or `(key_path, value)` pairs. `data` validates an in-memory recipe
    instead of a file (fragments are then looked up in the repository's `configs/`).
    """
    prov: dict = {}
    fragments: list[Path] = []
    if data is not None:
        recipe_file = None
        source = _Source("<recipe>")
        merged, fragments = _resolve_tree(copy.deepcopy(dict(data)), source, None, prov, (), is_fragment=False)
        label = source.label
    else:
        if path_or_name is None:
            raise UserError("no recipe given: pass --config RECIPE.yaml or the name of a bundled recipe")
        recipe_file = find_recipe(path_or_name)
        merged, fragments, source = _load_with_fragments(recipe_file, prov)
        label = source.label
    applied = []
    for item in overrides or ():
        key, value, opt_label = _parse_override(item)
        merged = _apply_override(merged, key, value, opt_label, prov)
        applied.append(f"{key}={json.dumps(value, default=str)}" if not isinstance(item, str) else item)
    ctx = _Ctx(prov, recipe_file, label)
    recipe = _validate(merged, SCHEMA, (), ctx)
    _cross_checks(recipe, ctx)
    bundled = recipe_file is not None and recipe_file.parent == BUNDLED_DIR.resolve()
    if bundled and not recipe["description"]:
        raise UserError(f"{label}: bundled recipes need a one-line `description:` (shown by `os-sample recipes`)")
    name = recipe_file.stem if recipe_file is not None else "recipe"
    recipe["_meta"] = {
        "path": str(recipe_file) if recipe_file is not None else None,
        "name": name,
        "bundled": bundled,
        "fragments": [str(f) for f in fragments],
        "overrides": applied,
        "warnings": _warnings(recipe, ctx),
    }
    if recipe["run_name"] is None:
        recipe["run_name"] = name
    return recipe


def _warnings(recipe: dict, ctx: _Ctx) -> list[str]:
    """Settings that are valid but have no effect (the CLI prints these as warnings)."""
    out = []
    revision = recipe["models"]["revision"]
    if revision is not None:
        for key in ("theta", "teacher"):
            value = recipe["models"][key]
            if value and (value.startswith(BUILTIN_PREFIX) or _local_candidate(value, ctx.recipe_file) is not None):
                kind = "a builtin model" if value.startswith(BUILTIN_PREFIX) else "a local folder"
                out.append(f"models.revision {revision!r} is ignored for models.{key} ({value}): it is {kind}, "
                           f"not a hub name")
    return out


# ----------------------------------------------------------------------------------------------
# Hashing, diffs, dumping
# ----------------------------------------------------------------------------------------------


def _strip(recipe: Mapping) -> dict:
    out = copy.deepcopy({k: v for k, v in recipe.items()})
    for key in HASH_EXCLUDED:
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    for key, default in HASH_IF_SET.items():  # in order: a section left empty goes too
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            continue
        if isinstance(node[last], dict):  # a section: its unset (null) keys go, then the section if empty
            node[last] = {k: v for k, v in node[last].items() if v is not None}
            if not node[last]:
                node.pop(last)
        elif node[last] == default:
            node.pop(last)
    return out


def recipe_hash(recipe: Mapping) -> str:
    """`sha256:<hex>` over the keys that change which records a run writes (see HASH_EXCLUDED)."""
    text = json.dumps(_strip(recipe), sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict:
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def recipe_diff(old: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    """The hashed key paths whose values differ between two resolved recipes."""
    a, b = _flatten(_strip(old)), _flatten(_strip(new))
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            out.append((key, None if va is missing else va, None if vb is missing else vb))
    return out


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (templates) as `|` blocks, so a dumped recipe reads like the one written."""


def _str_representer(dumper, value: str):
    if "\n" in value and not value.endswith((" ", "\t")) and "\n " not in value.rstrip("\n"):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str_representer)


def dump_recipe(recipe: Mapping) -> str:
    """The resolved recipe as YAML, in schema order, without `_meta`."""
    clean = {k: v for k, v in recipe.items() if k != "_meta"}
    return yaml.dump(clean, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


# ----------------------------------------------------------------------------------------------
# Paths and models
# ----------------------------------------------------------------------------------------------


def _recipe_file(recipe: Mapping) -> Path | None:
    path = (recipe.get("_meta") or {}).get("path")
    return Path(path) if path else None


def resolve_local_path(recipe: Mapping, value: str) -> Path | None:
    """The local file/folder `value` names (working directory first, then the recipe's folder), or None."""
    local = _local_candidate(value, _recipe_file(recipe))
    return local.resolve() if local is not None else None


def output_dir(recipe: Mapping, override: str | os.PathLike | None = None) -> Path:
    """`--output`, else `output.dir`, else `outputs/<run_name>` under the working directory."""
    if override is not None:
        return Path(override).expanduser()
    if recipe["output"]["dir"]:
        return Path(recipe["output"]["dir"]).expanduser()
    return Path("outputs") / recipe["run_name"]


def model_location(recipe: Mapping, role: str = "theta") -> str | None:
    """Where a model is loaded from: an absolute local folder, a builtin folder, or a hub name."""
    value = recipe["models"]["theta" if role == "theta" else "teacher"]
    if value is None:
        return None
    if value.startswith(BUILTIN_PREFIX):
        from .models import resolve_model_path

        return resolve_model_path(value)
    local = resolve_local_path(recipe, value)
    return str(local) if local is not None else value


def model_kwargs(recipe: Mapping) -> dict:
    """The keyword arguments of `OptimalSamplingModel(...)` that the recipe sets."""
    m, a, c = recipe["models"], recipe["alpha"], recipe["constraints"]
    kwargs: dict = dict(
        model_theta_path=model_location(recipe, "theta"),
        model_t_path=model_location(recipe, "teacher"),
        alpha_method=a["method"], fixed_alpha=a["fixed"], alpha_min=a["min"], alpha_max=a["max"],
        constraint_to_target=c["to_target"], target_top_k=c["top_k"], target_top_p=c["top_p"],
        force_target_for_first_token=c["force_first_token"],
        force_target_for_special_tokens=c["force_special_tokens"],
    )
    per_role = {role: _load_kwargs(recipe, role) for role in ("theta", "teacher")}
    # What both models share stays a plain keyword argument (both); the rest goes to one model.
    shared = {k: v for k, v in per_role["theta"].items() if k in per_role["teacher"] and per_role["teacher"][k] == v}
    kwargs.update({k: v for k, v in shared.items() if k not in ("device", "dtype")})
    kwargs["device"], kwargs["dtype"] = per_role["theta"]["device"], per_role["theta"]["dtype"]
    if per_role["teacher"]["device"] != kwargs["device"]:
        kwargs["device_t"] = per_role["teacher"]["device"]
    if per_role["teacher"]["dtype"] != kwargs["dtype"]:
        kwargs["dtype_t"] = per_role["teacher"]["dtype"]
    for role, name in (("theta", "theta_kwargs"), ("teacher", "teacher_kwargs")):
        own = {k: v for k, v in per_role[role].items() if k not in shared and k not in ("device", "dtype")}
        if own:
            kwargs[name] = own
    if m["attn_implementation"] != "auto":
        kwargs["attn_implementation"] = m["attn_implementation"]
    if m["revision"] is not None:
        kwargs["revision"] = m["revision"]
    if m["trust_remote_code"]:
        kwargs["trust_remote_code"] = True
    return kwargs


def _load_kwargs(recipe: Mapping, role: str) -> dict:
    """One model's device, dtype and placement / quantization arguments of `from_pretrained`."""
    settings = {key: value for key, (value, _) in model_settings(recipe, role).items()}
    out: dict = {"device": settings["device"], "dtype": settings["dtype"]}
    if settings["device_map"] is not None:
        out["device_map"] = copy.deepcopy(settings["device_map"])
        if settings["max_memory"] is not None:
            out["max_memory"] = copy.deepcopy(settings["max_memory"])
    if settings["quantization"] == "4bit":
        compute = settings["compute_dtype"] if settings["compute_dtype"] != "auto" else settings["dtype"]
        out["load_in_4bit"] = True
        out["bnb_4bit_quant_type"] = settings["quant_type"]
        out["bnb_4bit_compute_dtype"] = compute  # auto: the model dtype auto picks on CUDA
    elif settings["quantization"] == "8bit":
        out["load_in_8bit"] = True
    return out


def check_placement(recipe: Mapping) -> None:
    """Before any model loads: each model's devices, device_map, max_memory and quantization can run
    on this machine (CUDA present, device indices in range, bitsandbytes usable); else exit 2."""
    from .preflight import placement_problem

    found = placement_problem(recipe)
    if found:
        path, problem = found
        raise UserError(f"{path}: {problem}")


def check_models_reachable(recipe: Mapping) -> None:
    """Fail fast, naming the model, when a hub model is not cached and the hub is off (HF_HUB_OFFLINE=1)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        return
    for role, key in (("theta", "theta"), ("teacher", "teacher")):
        value = recipe["models"][key]
        if value is None or value.startswith(BUILTIN_PREFIX) or resolve_local_path(recipe, value) is not None:
            continue
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(value, "config.json", revision=recipe["models"]["revision"])
        except Exception:  # noqa: BLE001 - an odd name is reported by from_pretrained itself
            continue
        if not isinstance(cached, str):
            raise UserError(
                f"models.{key}: {value!r} is not a local folder, not in the Hugging Face cache, and the hub is "
                f"unreachable (HF_HUB_OFFLINE=1); download it where the hub is reachable, or point models.{key} "
                f"at a local folder (--set models.{key}=PATH)",
                exit_code=1,
            )


def build_model(recipe: Mapping, **extra):
    """Load the recipe's models as an `OptimalSamplingModel`; `extra` overrides constructor arguments.

    Failures to load are `UserError`s (exit code 1) naming the model and whether the hub is unreachable.
    """
    from .api import OptimalSamplingModel

    check_placement(recipe)
    check_models_reachable(recipe)
    kwargs = model_kwargs(recipe)
    kwargs.update(extra)
    try:
        return OptimalSamplingModel(**kwargs)
    except UserError:
        raise
    except (OSError, ValueError, ImportError) as exc:
        raise UserError(_describe_load_failure(recipe, exc), exit_code=1) from exc


def _describe_load_failure(recipe: Mapping, exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    which = []
    for key in ("teacher", "theta"):
        value = recipe["models"][key]
        if value and (value in str(exc) or str(model_location(recipe, key)) in str(exc)):
            which.append(key)
    keys = which[:1] or ["theta", "teacher"]
    name = " or ".join(f"models.{k} ({recipe['models'][k]!r})" for k in keys if recipe["models"][k])
    hub_names = [k for k in keys if recipe["models"][k] and not recipe["models"][k].startswith(BUILTIN_PREFIX)
                 and resolve_local_path(recipe, recipe["models"][k]) is None]
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    markers = ("offline", "connect", "resolve", "internet", "network", "couldn't", "could not find", "not found")
    hub = ""
    if hub_names and (offline or any(m in str(exc).lower() for m in markers)):
        hub = "; it is a hub name, and the hub may be unreachable from here: use a local folder instead"
    return f"could not load {name}: {text}{hub}"
