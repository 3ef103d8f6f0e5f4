"""`load_recipe`: fragments, the recipe's own keys, `--set` overrides, validation, the typed `Recipe`."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from os_cli.errors import UserError
from os_cli.mix.distributions import TOPK_OF_DEFAULT
from os_cli.recipe.checks import CheckContext
from os_cli.recipe.fragments import find_recipe, load_with_fragments, resolve_tree
from os_cli.recipe.overrides import apply_override, parse_override
from os_cli.recipe.places import BUILTIN_PREFIX, BUNDLED_DIR
from os_cli.recipe.schema import SCHEMA
from os_cli.recipe.typed import Recipe, RecipeSource, build_section
from os_cli.recipe.validate import cross_checks, validate_tree
from os_cli.recipe.yaml_io import YamlSource


def load_recipe(
    path_or_name: str | os.PathLike | None = None, overrides: Iterable = (), *, data: Mapping | None = None
) -> Recipe:
    """Resolve and validate a recipe; every default is filled in. Raises `UserError`.

    `path_or_name`: a recipe file or the name of a bundled recipe. `overrides`: `key.path=value`
    strings (as given to `--set`) or `(key_path, value)` pairs. `data` validates an in-memory recipe
    instead of a file (fragments are then looked up in the repository's `configs/`). Places (models,
    dataset path) are resolved here, once: `recipe.places`; where the recipe came from: `recipe.source`.
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
    if recipe["run_name"] is None:
        recipe["run_name"] = name
    # `places` (models and dataset resolved once, for every consumer: recipe/places.py) and `source` are
    # not part of the recipe's identity (not hashed); the manifest's `recipe_source` is `source`
    origin = RecipeSource(
        path=recipe_file,
        name=name,
        bundled=bundled,
        fragments=tuple(str(f) for f in fragments),
        overrides=tuple(applied),
    )
    typed = build_section(Recipe, recipe, source=origin)
    return dataclasses.replace(typed, source=dataclasses.replace(origin, warnings=tuple(_warnings(typed))))


def _warnings(recipe: Recipe) -> list[str]:
    """Settings that are valid but have no effect (the CLI prints these as warnings)."""
    out = []
    revision = recipe.models.revision
    if revision is not None:
        for key in ("theta", "teacher"):
            value = recipe.models.name(key)
            if value and key not in recipe.places.hub:  # builtin or an existing local folder
                kind = "a builtin model" if value.startswith(BUILTIN_PREFIX) else "a local folder"
                out.append(
                    f"models.revision {revision!r} is ignored for models.{key} ({value}): it is {kind}, not a hub name"
                )
    output = recipe.output
    if not output.topk_logprobs and output.topk_of != TOPK_OF_DEFAULT:
        out.append(f"output.topk_of {list(output.topk_of)} has no effect while output.topk_logprobs is 0 (off)")
    return out


def output_dir(recipe: Recipe, override: str | os.PathLike | None = None) -> Path:
    """`--output`, else `output.dir`, else `outputs/<run_name>` under the working directory."""
    if override is not None:
        return Path(override).expanduser()
    if recipe.output.dir:
        return Path(recipe.output.dir).expanduser()
    return Path("outputs") / recipe.run_name
