"""A loaded recipe, typed: `Recipe`, one frozen dataclass per schema section, built by `load_recipe`.

The section classes' fields are the schema's keys (recipe/schema.py SCHEMA), in schema order;
tests/test_recipe_typed.py fails when the two differ. Lists of the validated recipe are tuples here
(`sampling.stop`, `output.topk_of`, `dataset.keep_fields` when a list, `dataset.inline`); mappings
(`models.device_map`, `models.max_memory`, the inline rows) stay as validated.

- `Recipe.to_dict()`: the resolved recipe as the plain dict it was validated as (schema order, lists
  as lists): what the manifest stores and what `recipe_hash`, `recipe_diff` and `dump_recipe` read.
- `Recipe.places`: where the models load from and the recipe's folder (recipe/places.py), resolved
  once; a copy made with `dataclasses.replace` that changes models.theta, models.teacher or
  dataset.source is resolved again, so an edited recipe never loads the old model.
- `Recipe.source`: where the recipe came from (`RecipeSource`: file, name, fragments, overrides,
  warnings); not part of the recipe's identity. `source.to_dict()` is the manifest's `recipe_source`.
- `build_section(cls, data)`: a section (or the `Recipe`'s schema part) from its validated dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, TypeVar, get_args, get_type_hints

from os_cli.mix.distributions import TOPK_OF_DEFAULT
from os_cli.recipe.places import Places, resolve_places

T = TypeVar("T")


def _plain(value: Any) -> Any:
    """A section, tuple, list or mapping as plain dicts and lists (new containers; scalars as they are)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.to_dict()  # type: ignore[attr-defined]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _Section:
    """What every section shares: `to_dict()` (its schema keys, in order, as plain data)."""

    def to_dict(self) -> dict:
        return {
            f.name: _plain(getattr(self, f.name))
            for f in fields(self)  # type: ignore[arg-type]
            if f.metadata.get("schema", True)
        }


@dataclass(frozen=True)
class Placement(_Section):
    """`models.per_model.theta|teacher`: one model's placement keys; None: the shared `models.<key>`."""

    dtype: str | None = None
    device: str | None = None
    device_map: Any = None  # "auto" / "balanced" / ... or {module: device}
    max_memory: Any = None  # {device: size}
    quantization: str | None = None
    quant_type: str | None = None
    compute_dtype: str | None = None


@dataclass(frozen=True)
class PerModel(_Section):
    theta: Placement = field(default_factory=Placement)
    teacher: Placement = field(default_factory=Placement)


@dataclass(frozen=True)
class Models(_Section):
    """`models`: the two models as written (places: `Recipe.places`), both models' placement defaults."""

    theta: str
    teacher: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    device_map: Any = None
    max_memory: Any = None
    quantization: str = "none"
    quant_type: str = "nf4"
    compute_dtype: str = "auto"
    per_model: PerModel = field(default_factory=PerModel)
    attn_implementation: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    compile: bool | str = False

    def name(self, role: str) -> str | None:
        """`theta` or `teacher` as written (the teacher's None: theta's model)."""
        return self.theta if role == "theta" else self.teacher


@dataclass(frozen=True)
class Alpha(_Section):
    method: str = "kl_symmetry"
    fixed: float = 0.5
    min: float = 0.5
    max: float = 1.0


@dataclass(frozen=True)
class Constraints(_Section):
    to_target: bool = False
    top_k: int = -1
    top_p: float = 1.0
    force_first_token: bool = False
    force_special_tokens: bool = False


@dataclass(frozen=True)
class Sampling(_Section):
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    batch_size: int = 8
    seed: int = 0
    num_samples: int = 1
    stop: tuple[str, ...] = ()
    draft_tokens: int | str = 0  # k, or "auto"


@dataclass(frozen=True)
class Dataset(_Section):
    source: str | None = None
    inline: tuple[dict, ...] | None = None
    split: str = "train"
    config: str | None = None
    limit: int | None = None
    skip: int = 0
    id_field: str | None = None
    keep_fields: str | tuple[str, ...] = "all"  # all | none | (field, ...)
    answer_field: str | None = "answer"


@dataclass(frozen=True)
class PromptSpec(_Section):
    """`prompts.theta` / `prompts.teacher`: one model's prompt."""

    system: str | None = None
    template: str | None = None
    chat_template: bool = True
    messages_field: str | None = None


@dataclass(frozen=True)
class Prompts(_Section):
    theta: PromptSpec = field(default_factory=PromptSpec)
    teacher: PromptSpec | None = None  # None: the teacher reads theta's prompt
    on_bad_row: str = "error"

    def spec(self, role: str) -> PromptSpec | None:
        return self.theta if role == "theta" else self.teacher


@dataclass(frozen=True)
class Output(_Section):
    dir: str | None = None
    shard_size: int = 1000
    per_token: bool = False
    topk_logprobs: int = 0
    topk_of: tuple[str, ...] = TOPK_OF_DEFAULT


@dataclass(frozen=True)
class RecipeSource(_Section):
    """Where a loaded recipe came from; not part of the recipe (not hashed)."""

    path: Path | None = None  # the recipe file; None for an in-memory recipe (`load_recipe(data=...)`)
    name: str = "recipe"  # its file's stem (the default run_name)
    bundled: bool = False  # one of the repository's recipes/
    fragments: tuple[str, ...] = ()  # the `defaults:` fragment files merged, in order
    overrides: tuple[str, ...] = ()  # the `--set` overrides applied, as `key=value`
    warnings: tuple[str, ...] = ()  # settings that are valid but have no effect

    def to_dict(self) -> dict:
        """As the manifest's `recipe_source` stores it (the path as a string)."""
        out = super().to_dict()
        out["path"] = str(self.path) if self.path is not None else None
        return out


_NOT_SCHEMA = {"schema": False}


@dataclass(frozen=True)
class Recipe(_Section):
    """A resolved, validated recipe (`load_recipe`). `to_dict()` leaves out `places` and `source`."""

    description: str | None
    defaults: tuple[str, ...]
    run_name: str
    models: Models
    alpha: Alpha
    constraints: Constraints
    sampling: Sampling
    dataset: Dataset
    prompts: Prompts
    output: Output
    places: Places = field(default=None, compare=False, metadata=_NOT_SCHEMA)  # type: ignore[assignment]
    source: RecipeSource = field(default_factory=RecipeSource, compare=False, metadata=_NOT_SCHEMA)

    def __post_init__(self) -> None:
        # resolved by load_recipe; resolved again where models or dataset.source changed (dataclasses.replace)
        written = (self.models.theta, self.models.teacher, self.dataset.source)
        if not isinstance(self.places, Places) or self.places.written != written:
            object.__setattr__(
                self,
                "places",
                resolve_places(self.models.theta, self.models.teacher, self.dataset.source, self.source.path),
            )


def schema_fields(cls: type) -> list[str]:
    """The names of a section class's schema keys, in order (`Recipe`: without places and source)."""
    return [f.name for f in fields(cls) if f.metadata.get("schema", True)]


def _section_type(hint: Any) -> type | None:
    """The section class an annotation names (`PromptSpec | None` -> PromptSpec), else None."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    for arg in get_args(hint):
        if isinstance(arg, type) and dataclasses.is_dataclass(arg):
            return arg
    return None


def _frozen(value: Any) -> Any:
    """A validated list as a tuple (its items as they are); anything else as it is."""
    return tuple(value) if isinstance(value, list) else value


def build_section(cls: type[T], data: Mapping, **extra: Any) -> T:
    """`cls` from a validated section dict (every schema key present); `extra`: non-schema fields."""
    hints = get_type_hints(cls)
    kwargs: dict = {}
    for name in schema_fields(cls):
        value = data[name]
        section = _section_type(hints[name])
        kwargs[name] = build_section(section, value) if section is not None and value is not None else _frozen(value)
    return cls(**kwargs, **extra)
