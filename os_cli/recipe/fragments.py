"""Finding recipes (files or bundled names) and `defaults:` fragments, and merging them in order,
with the source (file and line) of every key remembered for error messages."""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from os_cli.errors import UserError
from os_cli.recipe.places import BUNDLED_DIR, CONFIGS_DIR
from os_cli.recipe.schema import SCHEMA, Section, all_key_paths, suggest
from os_cli.recipe.yaml_io import YamlSource, display_path, read_yaml

NOT_FRAGMENTS = ("accelerate",)  # configs/accelerate/ holds `accelerate launch` configs, not recipe fragments


RECIPE_SUFFIXES = (".yaml", ".yml")


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
        hint = suggest(text, bundled)
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


def fragment_label(path: str) -> str:
    """A fragment file as `defaults:` names it (`sampling/default`); a file outside configs/ as its path."""
    p = Path(path)
    try:
        return str(p.relative_to(CONFIGS_DIR.resolve()).with_suffix(""))
    except ValueError:
        return str(p)


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
        raise UserError(
            f"{where}: every entry of `defaults` must be a fragment name like 'sampling/default', got {name!r}"
        )
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
    hint = suggest(name, known)
    raise UserError(
        f"{where}: unknown defaults fragment {name!r}{hint}; fragments live in configs/ "
        f"(available: {', '.join(known) or 'none'})"
    )


def check_keys(data: Any, schema: Section, path: tuple, source: YamlSource) -> None:
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
            hint = suggest(key, schema.fields)
            if hint:
                hint = f" (did you mean {'.'.join(path + (difflib.get_close_matches(key, list(schema.fields), 1, 0.6)[0],))!r}?)"
            else:
                hint = suggest(full, all_key_paths())
            allowed = ", ".join(schema.fields)
            where_ = f" under {'.'.join(path)}" if path else ""
            raise UserError(
                f"{source.where(path + (key,))}: unknown key {full!r}{hint}; allowed keys{where_}: {allowed}"
            )
        sub = schema.fields[key]
        if isinstance(sub, Section):
            check_keys(value, sub, path + (key,), source)


def merge_trees(base: dict, over: dict, prov: dict, source: YamlSource, path: tuple = ()) -> dict:
    """Deep-merge `over` into a copy of `base`; `prov` maps key paths to the source that set them."""
    out = dict(base)
    for key, value in over.items():
        p = path + (key,)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_trees(out[key], value, prov, source, p)
        else:
            for q in [q for q in prov if q[: len(p)] == p]:
                del prov[q]
            out[key] = copy.deepcopy(value)
            _mark(value, p, prov, source)
        prov.setdefault(p, source)
    return out


def _mark(value: Any, path: tuple, prov: dict, source: YamlSource) -> None:
    prov[path] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(v, path + (k,), prov, source)


def load_with_fragments(path: Path, prov: dict, stack: tuple = ()) -> tuple[dict, list[Path], YamlSource]:
    if path in stack:
        chain = " -> ".join(display_path(p) for p in stack + (path,))
        raise UserError(f"defaults fragments include each other in a loop: {chain}")
    data, source = read_yaml(path)
    merged, fragments = resolve_tree(data, source, path, prov, stack + (path,), is_fragment=bool(stack))
    return merged, fragments, source


def resolve_tree(
    data: dict, source: YamlSource, recipe_file: Path | None, prov: dict, stack: tuple, is_fragment: bool
) -> tuple[dict, list[Path]]:
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
        frag, sub_fragments, _ = load_with_fragments(frag_path, prov, stack)
        merged = merge_trees(merged, frag, prov, YamlSource(display_path(frag_path)))
        fragments += [f for f in sub_fragments + [frag_path] if f not in fragments]
    own = {k: v for k, v in data.items() if k != "defaults"}
    check_keys(own, SCHEMA, (), source)
    if is_fragment:  # a fragment configures; it does not name or describe the run
        own.pop("description", None)
        own.pop("run_name", None)
    return merge_trees(merged, own, prov, source), fragments
