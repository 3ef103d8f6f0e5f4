"""The typed recipe (os_cli/recipe/typed.py): its section classes are the schema's keys, `load_recipe` returns
a frozen `Recipe` whose `to_dict()` is the plain recipe the hash, the diff and the manifest read."""

from __future__ import annotations

import dataclasses
import json
from typing import get_type_hints

import pytest

from os_cli.recipe import (
    SCHEMA, Dataset, Models, Output, PromptSpec, Prompts, Recipe, Sampling, Section, dump_recipe, load_recipe,
    recipe_diff, recipe_hash,
)
from os_cli.recipe.typed import _frozen, _section_type, build_section, schema_fields
from os_cli.store.record_format import num_samples_of, token_spec

BASE = {
    "models": {"theta": "builtin:demo-theta"},
    "dataset": {"inline": [{"q": "a", "answer": "1"}, {"q": "b", "answer": "2"}]},
    "prompts": {"theta": {"template": "{q}"}},
}


def schema_mismatches(cls: type, section: Section, path: str = "") -> list[str]:
    """Where a section class and a schema section differ: key names and order, nested sections, defaults."""
    problems = []
    keys, names = list(section.fields), schema_fields(cls)
    if names != keys:
        problems.append(f"{path or 'recipe'}: fields {names} != schema keys {keys}")
    hints = get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for key, spec in section.fields.items():
        if key not in by_name:
            continue
        where = f"{path}.{key}" if path else key
        sub = _section_type(hints[key])
        if isinstance(spec, Section) != (sub is not None):
            problems.append(f"{where}: a section in one, a value in the other")
            continue
        if sub is not None:
            problems += schema_mismatches(sub, spec, where)
        f = by_name[key]
        if cls is Recipe or f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            continue  # no default to compare (Recipe's keys, models.theta)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if sub is not None:
            want = None if spec.default_null else build_section(sub, _schema_defaults(spec))
        else:
            want = _frozen(spec.default)
        if default != want:
            problems.append(f"{where}: default {default!r} != the schema's {want!r}")
    return problems


def _schema_defaults(section: Section) -> dict:
    return {key: (None if spec.default_null else _schema_defaults(spec)) if isinstance(spec, Section)
            else spec.default for key, spec in section.fields.items()}


def test_section_classes_are_the_schema_keys_and_defaults():
    assert schema_mismatches(Recipe, SCHEMA) == []


def test_the_schema_check_notices_a_difference():
    @dataclasses.dataclass(frozen=True)
    class Renamed:
        max_new_tokens: int = 256
        temperatur: float = 1.0

    @dataclasses.dataclass(frozen=True)
    class OtherDefault(Sampling):
        batch_size: int = 9

    sampling = SCHEMA.fields["sampling"]
    assert any("schema keys" in p for p in schema_mismatches(Renamed, sampling))
    assert schema_mismatches(OtherDefault, sampling) == [
        "batch_size: default 9 != the schema's 8"]
    assert schema_mismatches(Sampling, sampling) == []


def test_load_recipe_returns_a_frozen_typed_recipe():
    r = load_recipe(data=BASE, overrides=["sampling.batch_size=3", "sampling.stop=[x]"])
    assert isinstance(r, Recipe) and isinstance(r.sampling, Sampling) and isinstance(r.prompts.theta, PromptSpec)
    assert r.sampling.batch_size == 3 and r.sampling.stop == ("x",) and r.run_name == "recipe"
    assert r.prompts.teacher is None and r.models.per_model.teacher.device is None
    assert r.source.overrides == ("sampling.batch_size=3", "sampling.stop=[x]") and r.source.path is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.sampling.batch_size = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        r["sampling"]  # type: ignore[index]
    assert list(r.to_dict()) == list(SCHEMA.fields)  # no _meta, no places, no source


def test_to_dict_is_the_plain_recipe_and_builds_the_same_recipe():
    r = load_recipe("demo", ["output.topk_logprobs=2", "output.topk_of=[t, theta]", "dataset.keep_fields=[q]"])
    plain = r.to_dict()
    assert plain["output"]["topk_of"] == list(r.output.topk_of) and sorted(r.output.topk_of) == ["t", "theta"]
    assert plain["dataset"]["keep_fields"] == ["q"] and r.dataset.keep_fields == ("q",)
    assert plain["models"]["per_model"]["theta"] == {k: None for k in schema_fields(type(r.models.per_model.theta))}
    assert json.loads(json.dumps(plain)) == plain  # what a manifest stores, as is
    assert build_section(Recipe, plain, places=r.places, source=r.source) == r
    plain["sampling"]["batch_size"] = 99  # a copy: the recipe does not change
    assert r.sampling.batch_size == 16 and r.to_dict()["sampling"]["batch_size"] == 16


def test_hash_diff_and_dump_read_a_recipe_or_its_stored_dict():
    r = load_recipe("demo")
    # the demo recipe's hash, unchanged since recipes were plain dicts: its output folders still resume
    assert recipe_hash(r) == "sha256:8e26c0f1a4ffdd9b79c51307b09a053ed0fec3d86011c31fe4aba198e88b9b79"
    stored = json.loads(json.dumps(r.to_dict()))
    assert recipe_hash(stored) == recipe_hash(r) and dump_recipe(stored) == dump_recipe(r)
    changed = dataclasses.replace(r, sampling=dataclasses.replace(r.sampling, temperature=0.5, batch_size=2))
    assert recipe_diff(stored, changed) == [("sampling.temperature", 1.0, 0.5)]
    assert "_meta" not in dump_recipe(r) and "places" not in dump_recipe(r)


def test_token_spec_and_num_samples_read_a_loaded_recipe():
    """The writer and the run loop pass the loaded recipe: these must not mistake it for a recipe without keys."""
    r = load_recipe(data=BASE, overrides=["output.topk_logprobs=2", "sampling.num_samples=3"])
    assert num_samples_of(r) == 3 == num_samples_of(r.to_dict())
    assert token_spec(r) == token_spec(r.to_dict()) and token_spec(r).k == 2


def test_replace_keeps_the_places_unless_the_names_change(tmp_path):
    r = load_recipe(data=BASE)
    same = dataclasses.replace(r, run_name="other", sampling=dataclasses.replace(r.sampling, batch_size=1))
    assert same.places is r.places and same.source is r.source
    moved = dataclasses.replace(r, dataset=Dataset(source="org/data"))
    assert moved.places.hub == frozenset({"dataset"}) and moved.places.theta == r.places.theta


def test_sections_built_by_hand_have_the_schema_defaults():
    assert Models(theta="m").per_model.theta.quantization is None and Models(theta="m").compile is False
    assert Prompts().on_bad_row == "error" and Prompts().teacher is None
    assert Output().topk_of == ("t",) and Dataset().keep_fields == "all"
