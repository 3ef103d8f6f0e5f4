"""Recipes: the YAML schema, `defaults:` fragments, `--set` overrides and strict validation.

Data only: nothing here imports torch or the API. The package's files, a few hundred lines each:
`schema.py` (Field, Section, SCHEMA, model_settings), `yaml_io.py` (YAML reading and its safety
checks), `fragments.py` (finding recipes and `defaults:`, merging), `overrides.py` (`--set`),
`checks.py` (one checker per field kind), `validate.py` (defaults, cross-key checks), `typed.py`
(`Recipe` and its section classes), `load.py` (`load_recipe`, `output_dir`), `identity.py` (hash, diff, dump).

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

- `load_recipe(path_or_name, overrides=()) -> Recipe`: resolved, validated, defaults filled. A name
  without a suffix or folder (`chat`) is a bundled recipe from the repository's `recipes/`. A `Recipe`
  is frozen: one dataclass per section (`recipe.sampling.batch_size`), `recipe.places` (where the models
  load from and the recipe's folder, resolved once; recipe/places.py) and `recipe.source` (recipe file,
  name, fragments, overrides, warnings: the manifest's `recipe_source`), neither part of the recipe
  (not hashed). `recipe.to_dict()` is the resolved recipe as a plain dict (the manifest's `recipe`);
  change a value with `dataclasses.replace` or by loading again with an override.
- `recipe_hash(recipe) -> str` (a `Recipe` or a plain dict, as each of identity.py): `sha256:<hex>` of the keys that change the records (see HASH_EXCLUDED).
- `recipe_diff(old, new) -> list[(key_path, old, new)]`: the hashed keys that differ.
- `output_dir(recipe, override=None) -> Path`, `dump_recipe(recipe) -> str` (YAML),
  `list_bundled() -> list[(name, description, path)]`, `fragment_label(path)` (a fragment as
  `defaults:` names it).

Building the models a recipe names lives in `os_cli/api/build.py`; places (`builtin:`, local paths,
hub names) in `recipe/places.py`.
"""

from __future__ import annotations

from os_cli.recipe.fragments import (
    NOT_FRAGMENTS,
    RECIPE_SUFFIXES,
    find_recipe,
    fragment_label,
    list_bundled,
    list_fragments,
)
from os_cli.recipe.identity import HASH_EXCLUDED, HASH_IF_SET, dump_recipe, recipe_diff, recipe_hash
from os_cli.recipe.load import load_recipe, output_dir
from os_cli.recipe.places import BUILTIN_DIR, BUILTIN_PREFIX, BUNDLED_DIR, CONFIGS_DIR, DATA_SUFFIXES
from os_cli.recipe.prompt_syntax import TEMPLATE_TOKEN, template_fields
from os_cli.recipe.schema import PLACEMENT_KEYS, SCHEMA, Field, Section, model_settings
from os_cli.recipe.typed import (
    Alpha,
    Constraints,
    Dataset,
    Models,
    Output,
    PerModel,
    Placement,
    Prompts,
    PromptSpec,
    Recipe,
    RecipeSource,
    Sampling,
)
from os_cli.textfile import read_text

__all__ = [
    "load_recipe",
    "output_dir",
    "Recipe",
    "RecipeSource",
    "Models",
    "PerModel",
    "Placement",
    "Alpha",
    "Constraints",
    "Sampling",
    "Dataset",
    "Prompts",
    "PromptSpec",
    "Output",
    "find_recipe",
    "list_bundled",
    "list_fragments",
    "fragment_label",
    "recipe_hash",
    "recipe_diff",
    "dump_recipe",
    "HASH_EXCLUDED",
    "HASH_IF_SET",
    "SCHEMA",
    "Field",
    "Section",
    "PLACEMENT_KEYS",
    "model_settings",
    "NOT_FRAGMENTS",
    "RECIPE_SUFFIXES",
    "BUNDLED_DIR",
    "CONFIGS_DIR",
    "BUILTIN_DIR",
    "BUILTIN_PREFIX",
    "DATA_SUFFIXES",
    "TEMPLATE_TOKEN",
    "template_fields",
    "read_text",
]
