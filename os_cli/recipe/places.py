"""Places: where a name in a recipe points -- a `builtin:` name, a local path or a hub name.

The one module for these rules; the recipe's validation, dataset loading, model loading, preflight
and the CLI import them. No torch, no I/O beyond looking at the file system.

- `BUILTIN_PREFIX`, `BUILTIN_DIR`: `builtin:NAME` is `os_cli/builtin/NAME` (a model folder) or
  `os_cli/builtin/NAME.jsonl` (a dataset); `builtin_models()`, `builtin_datasets()` list them.
- `BUNDLED_DIR`, `CONFIGS_DIR`: the bundled recipes and `defaults:` fragments. The repository's
  `recipes/` and `configs/` are the source of truth; a wheel carries copies as `os_cli/recipes/` and
  `os_cli/configs/` (pyproject.toml maps them), which win where they exist.
- `local_candidate(value, recipe_file)`: the existing local path a value names (working directory
  first, then the recipe's folder); `local_path(value, base_dir)` the same, absolute, against a folder.
- `Places`: where a loaded recipe's models load from, its folder (`base_dir`, for a relative
  dataset.source) and which names are hub names; resolved once (`resolve_places`) when a `Recipe` is
  made (recipe/typed.py), read as `recipe.places`; a copy whose models or dataset.source were replaced
  is resolved again.
- `hub_offline()`: HF_HUB_OFFLINE read as huggingface_hub reads it (1, true, yes, on; any case).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from os_cli.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # os_cli/
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
    target = BUILTIN_DIR / name[len(BUILTIN_PREFIX) :]
    if not target.is_dir():
        raise UserError(f"unknown builtin model {name!r}; available: {', '.join(builtin_models()) or 'none'}")
    return str(target)


def looks_local(value: str) -> bool:
    """Written like a path (not a hub name), whether or not it exists."""
    return value.startswith(("/", "./", "../", "~", ".\\")) or value.count("/") > 1 or "\\" in value


def local_candidate(value: str, recipe_file: Path | None) -> Path | None:
    """The existing local path `value` names: relative to the working directory, else to the recipe's folder."""
    return _existing(value, recipe_file.parent if recipe_file is not None else None)


def local_path(value: str, base_dir: Path | None) -> Path | None:
    """The existing local file/folder `value` names, absolute: the working directory first, then `base_dir`."""
    found = _existing(value, base_dir)
    return found.resolve() if found is not None else None


def _existing(value: str, base_dir: Path | None) -> Path | None:
    path = Path(value).expanduser()
    if path.is_absolute():
        return path if path.exists() else None
    if path.exists():
        return path
    if base_dir is not None and (base_dir / path).exists():
        return base_dir / path
    return None


def _model_location(value: str | None, base_dir: Path | None) -> str | None:
    if value is None:
        return None
    if value.startswith(BUILTIN_PREFIX):
        return resolve_model_path(value)
    local = local_path(value, base_dir)
    return str(local) if local is not None else value


@dataclass(frozen=True)
class Places:
    """Where a recipe's names point, resolved once (`load_recipe`); the written names stay in the recipe."""

    theta: str | None  # theta's model: an absolute local folder, a builtin folder, or a hub name
    teacher: str | None  # the teacher's, the same way; None when models.teacher is null (theta's model)
    base_dir: Path | None  # the recipe's folder (relative paths: the working directory first, then here)
    hub: frozenset = frozenset()  # the keys ("theta", "teacher", "dataset") whose value is a hub name
    written: tuple = ()  # (models.theta, models.teacher, dataset.source) as resolved, to notice an edit

    def model(self, role: str) -> str | None:
        """`theta` or `teacher`: where that model loads from (the teacher's None: theta's model)."""
        return self.theta if role == "theta" else self.teacher


def resolve_places(
    theta: str | None, teacher: str | None, dataset_source: str | None, recipe_file: str | os.PathLike | None
) -> Places:
    """The `Places` of a recipe's `models.theta`, `models.teacher` and `dataset.source`, the recipe read from
    `recipe_file`."""
    base_dir = Path(recipe_file).parent if recipe_file else None
    values = {"theta": theta, "teacher": teacher, "dataset": dataset_source}
    hub = frozenset(
        key
        for key, value in values.items()
        if value and not value.startswith(BUILTIN_PREFIX) and local_path(value, base_dir) is None
    )
    return Places(
        theta=_model_location(theta, base_dir),
        teacher=_model_location(teacher, base_dir),
        base_dir=base_dir,
        hub=hub,
        written=tuple(values.values()),
    )
