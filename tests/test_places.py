"""Places are resolved once, by `load_recipe`, and each consumer receives only its sections: the
resolved `Places` (models, the recipe's folder, hub names) stay out of the recipe's identity and the
manifest, and the consumers read the sections they are given, not the whole recipe."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from os_cli.prompts.data import render_prompts
from os_cli.prompts.datasets import load_rows
from os_cli.recipe.places import BUILTIN_DIR, Places, resolve_places
from os_cli.run.plan import nothing_planned
from os_cli.recipe.prompt_syntax import prompt_fields
from os_cli.recipe import Dataset, Models, Prompts, PromptSpec, load_recipe, recipe_hash
from os_cli.store.writer import RunWriter, read_manifest


def _recipe_file(folder: Path, **sections) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(sections))
    return path


def test_load_recipe_resolves_models_and_folder_once(tmp_path, monkeypatch, tiny_models):
    folder = tmp_path / "recipes"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "theta").symlink_to(tiny_models["theta"], target_is_directory=True)
    (folder / "rows.jsonl").write_text('{"question": "q0"}\n{"question": "q1"}\n')
    path = _recipe_file(folder, models={"theta": "models/theta", "teacher": "builtin:demo-teacher"},
                        dataset={"source": "rows.jsonl"}, prompts={"theta": {"template": "{question}"}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = load_recipe(path)
    places = r.places
    assert isinstance(places, Places) and r.places is places              # resolved once, read back as is
    assert places.base_dir == folder
    assert places.theta == str((folder / "models" / "theta").resolve())   # relative to the recipe's folder
    assert places.teacher == str(BUILTIN_DIR / "demo-teacher") and places.hub == frozenset()
    assert r.models.theta == "models/theta"                                # the recipe keeps what was written
    # the dataset section and the recipe's folder are all load_rows needs; the working directory is elsewhere
    assert [row["question"] for _, row in load_rows(r.dataset, places.base_dir)] == ["q0", "q1"]


def test_places_are_not_part_of_the_identity_nor_the_manifest(tmp_path):
    path = _recipe_file(tmp_path / "r", models={"theta": "org/model"}, dataset={"inline": [{"q": "a"}]},
                        prompts={"theta": {"template": "{q}"}})
    r = load_recipe(path)
    assert r.places.hub == frozenset({"theta"})
    assert "places" not in r.to_dict() and "source" not in r.to_dict()
    elsewhere = dataclasses.replace(r, places=dataclasses.replace(r.places, base_dir=tmp_path / "x"),
                                    source=dataclasses.replace(r.source, name="other"))
    assert recipe_hash(r) == recipe_hash(elsewhere) == recipe_hash(r.to_dict())
    RunWriter(tmp_path / "out", r).start(["0"], [])
    manifest = read_manifest(tmp_path / "out")
    assert set(manifest["recipe_source"]) == {"path", "name", "bundled", "fragments", "overrides", "warnings"}
    assert manifest["recipe"] == json.loads(json.dumps(r.to_dict()))


def test_a_recipe_edited_after_loading_resolves_as_edited(tmp_path):
    path = _recipe_file(tmp_path / "r", models={"theta": "builtin:demo-theta"}, dataset={"inline": [{"q": "a"}]},
                        prompts={"theta": {"template": "{q}"}})
    r = load_recipe(path)
    assert r.places.teacher is None
    # a Python user's edit (a copy with other models) must not load the old model
    r = dataclasses.replace(r, models=dataclasses.replace(r.models, teacher="builtin:demo-teacher"))
    assert r.places.teacher == str(BUILTIN_DIR / "demo-teacher")
    r = dataclasses.replace(r, models=dataclasses.replace(r.models, theta="org/other"))
    assert r.places.theta == "org/other" and r.places.hub == frozenset({"theta"})


def test_hand_built_sections_resolve_on_the_call(tmp_path):
    places = resolve_places("builtin:demo-theta", None, "org/data", None)
    assert places.theta == str(BUILTIN_DIR / "demo-theta") and places.teacher is None
    assert places.hub == frozenset({"dataset"}) and places.base_dir is None


def test_relative_dataset_source_working_directory_first_then_base_dir(tmp_path, monkeypatch):
    base, cwd = tmp_path / "base", tmp_path / "cwd"
    base.mkdir()
    cwd.mkdir()
    (base / "rows.jsonl").write_text('{"q": "from base"}\n')
    monkeypatch.chdir(cwd)
    section = Dataset(source="rows.jsonl")
    assert load_rows(section, base)[0][1] == {"q": "from base"}
    (cwd / "rows.jsonl").write_text('{"q": "from cwd"}\n')
    assert load_rows(section, base)[0][1] == {"q": "from cwd"}


def test_render_prompts_reads_only_its_sections():
    prompts = Prompts(theta=PromptSpec(template="{q}", chat_template=False), on_bad_row="skip")
    rows = [("a", {"q": "x"}), ("b", {"other": 1})]
    out = render_prompts(prompts, None, rows, models=Models(theta="m"), skip=4)
    assert [(it.id, it.index, it.prompt, it.prompt_t) for it in out.items] == [("a", 4, "x", "x")]
    assert out.errors[0]["id"] == "b" and "missing field 'q'" in out.errors[0]["reason"]


def test_prompt_fields_and_nothing_planned():
    prompts = Prompts(theta=PromptSpec(template="{q} {a}", messages_field="chat"),
                      teacher=PromptSpec(template="{a} {hint}", messages_field="turns"))
    assert prompt_fields(prompts) == ["q", "a", "hint", "chat", "turns"]
    assert prompt_fields(Prompts(theta=PromptSpec(template=None))) == []
    message = nothing_planned(Dataset(skip=7, limit=0))
    assert "dataset.skip 7" in message and "dataset.limit 0" in message
