"""Places: where a name in a recipe points -- a `builtin:` name, a local path or a hub name.

The one module for these rules; the recipe's validation, dataset loading, model loading, preflight
and the CLI import them. No torch, no I/O beyond looking at the file system.

- `BUILTIN_PREFIX`, `BUILTIN_DIR`: `builtin:NAME` is `os_cli/builtin/NAME` (a model folder) or
  `os_cli/builtin/NAME.jsonl` (a dataset); `builtin_models()`, `builtin_datasets()` list them.
- `BUNDLED_DIR`, `CONFIGS_DIR`: the bundled recipes and `defaults:` fragments. The repository's
  `recipes/` and `configs/` are the source of truth; a wheel carries copies as `os_cli/recipes/` and
  `os_cli/configs/` (pyproject.toml maps them), which win where they exist.
- `local_candidate(value, recipe_file)`: the existing local path a value names (working directory
  first, then the recipe's folder); `resolve_local_path(recipe, value)` the same for a loaded recipe.
- `model_location(recipe, role)`: where a model loads from (absolute local folder, builtin folder or hub name).
- `hub_offline()`: HF_HUB_OFFLINE read as huggingface_hub reads it (1, true, yes, on; any case).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

from .errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
BUILTIN_DIR = PACKAGE_DIR / "builtin"
BUILTIN_PREFIX = "builtin:"
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
# A hub repository name: `name` or `org/name`.
HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.\-]+)?$")
_TRUE = ("1", "true", "yes", "on")


def _shipped(name: str) -> Path:
    """`os_cli/<name>` in an installed wheel, else the repository's `<name>/` (source and editable installs)."""
    inside = PACKAGE_DIR / name
    return inside if inside.is_dir() else REPO_DIR / name


BUNDLED_DIR = _shipped("recipes")
CONFIGS_DIR = _shipped("configs")


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for cached hub files only."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


def builtin_models() -> list[str]:
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir()) if BUILTIN_DIR.is_dir() else []


def builtin_datasets() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl")) if BUILTIN_DIR.is_dir() else []


def resolve_model_path(name: str) -> str:
    """Map `builtin:NAME` to the model shipped in `os_cli/builtin/NAME`; other names pass through."""
    if not isinstance(name, (str, os.PathLike)) or not str(name):
        raise UserError(f"model path must be a non-empty string, got {name!r}")
    name = str(name)
    if not name.startswith(BUILTIN_PREFIX):
        return name
    target = BUILTIN_DIR / name[len(BUILTIN_PREFIX):]
    if not target.is_dir():
        raise UserError(f"unknown builtin model {name!r}; available: {', '.join(builtin_models()) or 'none'}")
    return str(target)


def looks_local(value: str) -> bool:
    """Written like a path (not a hub name), whether or not it exists."""
    return value.startswith(("/", "./", "../", "~", ".\\")) or value.count("/") > 1 or "\\" in value


def local_candidate(value: str, recipe_file: Path | None) -> Path | None:
    """The existing local path `value` names: relative to the working directory, else to the recipe's folder."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path if path.exists() else None
    if path.exists():
        return path
    if recipe_file is not None and (recipe_file.parent / path).exists():
        return recipe_file.parent / path
    return None


def recipe_file(recipe: Mapping) -> Path | None:
    """The file a loaded recipe came from (`_meta.path`), or None for an in-memory recipe."""
    path = (recipe.get("_meta") or {}).get("path")
    return Path(path) if path else None


def resolve_local_path(recipe: Mapping, value: str) -> Path | None:
    """The local file/folder `value` names (working directory first, then the recipe's folder), or None."""
    local = local_candidate(value, recipe_file(recipe))
    return local.resolve() if local is not None else None


def is_hub_name(recipe: Mapping, value: str | None) -> bool:
    """A value that names something on the hub: set, not `builtin:`, not an existing local path."""
    return bool(value) and not value.startswith(BUILTIN_PREFIX) and resolve_local_path(recipe, value) is None


def model_location(recipe: Mapping, role: str = "theta") -> str | None:
    """Where a model is loaded from: an absolute local folder, a builtin folder, or a hub name."""
    value = recipe["models"]["theta" if role == "theta" else "teacher"]
    if value is None:
        return None
    if value.startswith(BUILTIN_PREFIX):
        return resolve_model_path(value)
    local = resolve_local_path(recipe, value)
    return str(local) if local is not None else value
