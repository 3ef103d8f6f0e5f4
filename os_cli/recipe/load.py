"""`load_recipe`: fragments, the recipe's own keys, `--set` overrides, validation, `_meta`."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from os_cli.errors import UserError
from os_cli.recipe.places import BUILTIN_PREFIX, BUNDLED_DIR, Places, resolve_places
from os_cli.mix.distributions import TOPK_OF_DEFAULT
from os_cli.recipe.checks import CheckContext
from os_cli.recipe.fragments import load_with_fragments, resolve_tree, find_recipe
from os_cli.recipe.overrides import apply_override, parse_override
from os_cli.recipe.schema import SCHEMA
from os_cli.recipe.validate import cross_checks, validate_tree
from os_cli.recipe.yaml_io import YamlSource


def load_recipe(path_or_name: str | os.PathLike | None = None, overrides: Iterable = (), *,
                data: Mapping | None = None) -> dict:
    """Resolve and validate a recipe; every default is filled in. Raises `UserError`.

    `path_or_name`: a recipe file or the name of a bundled recipe. `overrides`: `key.path=value`
    strings (as given to `--set`) or `(key_path, value)` pairs. `data` validates an in-memory recipe
    instead of a file (fragments are then looked up in the repository's `configs/`). Places (models,
    dataset path) are resolved here, once: `_meta.places`, read with `places.places_of(recipe)`.
    """
    prov: dict = {}
    fragments: list[Path] = []
    if data is not None:
        recipe_file = None
        source = YamlSource("<recipe>")
        merged, fragments = resolve_tree(copy.deepcopy(dict(data)), source, None, prov, (), is_fragment=False)
        label = source.label
    else:
        if path_or_name is None:
            raise UserError("no recipe given: pass --config RECIPE.yaml or the name of a bundled recipe")
        recipe_file = find_recipe(path_or_name)
        merged, fragments, source = load_with_fragments(recipe_file, prov)
        label = source.label
    applied = []
    for item in overrides or ():
        key, value, opt_label = parse_override(item)
        merged = apply_override(merged, key, value, opt_label, prov)
        applied.append(f"{key}={json.dumps(value, default=str)}" if not isinstance(item, str) else item)
    ctx = CheckContext(prov, recipe_file, label)
    recipe = validate_tree(merged, SCHEMA, (), ctx)
    cross_checks(recipe, ctx)
    bundled = recipe_file is not None and recipe_file.parent == BUNDLED_DIR.resolve()
    if bundled and not recipe["description"]:
        raise UserError(f"{label}: bundled recipes need a one-line `description:` (shown by `os-sample recipes`)")
    name = recipe_file.stem if recipe_file is not None else "recipe"
    # models and dataset resolved once, for every consumer (os_cli/places.py); not part of the recipe's
    # identity (`_meta` is not hashed) nor of the manifest's `recipe_source`
    places = resolve_places(recipe["models"], recipe["dataset"], recipe_file)
    recipe["_meta"] = {
        "path": str(recipe_file) if recipe_file is not None else None,
        "name": name,
        "bundled": bundled,
        "fragments": [str(f) for f in fragments],
        "overrides": applied,
        "warnings": _warnings(recipe, places),
        "places": places,
    }
    if recipe["run_name"] is None:
        recipe["run_name"] = name
    return recipe


def _warnings(recipe: dict, places: Places) -> list[str]:
    """Settings that are valid but have no effect (the CLI prints these as warnings)."""
    out = []
    revision = recipe["models"]["revision"]
    if revision is not None:
        for key in ("theta", "teacher"):
            value = recipe["models"][key]
            if value and key not in places.hub:  # builtin or an existing local folder
                kind = "a builtin model" if value.startswith(BUILTIN_PREFIX) else "a local folder"
                out.append(f"models.revision {revision!r} is ignored for models.{key} ({value}): it is {kind}, "
                           f"not a hub name")
    output = recipe["output"]
    if not output["topk_logprobs"] and output["topk_of"] != list(TOPK_OF_DEFAULT):
        out.append(f"output.topk_of {output['topk_of']} has no effect while output.topk_logprobs is 0 (off)")
    return out


def output_dir(recipe: Mapping, override: str | os.PathLike | None = None) -> Path:
    """`--output`, else `output.dir`, else `outputs/<run_name>` under the working directory."""
    if override is not None:
        return Path(override).expanduser()
    if recipe["output"]["dir"]:
        return Path(recipe["output"]["dir"]).expanduser()
    return Path("outputs") / recipe["run_name"]
