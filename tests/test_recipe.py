"""Recipe schema: defaults, fragments, --set overrides, strict validation with useful messages, hashing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from os_cli.errors import UserError
from os_cli.api.build import model_kwargs
from os_cli.recipe import (
    dump_recipe, list_bundled, load_recipe, output_dir, recipe_diff, recipe_hash, template_fields,
)

BASE = {
    "models": {"theta": "org/theta-model"},
    "dataset": {"inline": [{"question": "1+1?", "answer": "2"}]},
    "prompts": {"theta": {"template": "{question}"}},
}


def write(tmp_path: Path, data, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def merged(**changes) -> dict:
    out = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        node = out
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def error_of(tmp_path, data, overrides=()) -> UserError:
    with pytest.raises(UserError) as info:
        load_recipe(write(tmp_path, data), overrides)
    return info.value


def test_defaults_filled_and_run_name_from_file(tmp_path):
    r = load_recipe(write(tmp_path, BASE, "my-run.yaml"))
    assert r.run_name == "my-run"
    assert r.alpha.to_dict() == {"method": "kl_symmetry", "fixed": 0.5, "min": 0.5, "max": 1.0}
    assert r.sampling.batch_size == 8 and r.sampling.stop == () and r.sampling.temperature == 1.0
    assert r.models.teacher is None and r.models.quantization == "none"
    assert r.prompts.teacher is None and r.prompts.theta.chat_template is True
    assert r.dataset.keep_fields == "all" and r.dataset.answer_field == "answer"
    assert r.output.to_dict() == {"dir": None, "shard_size": 1000, "per_token": False, "topk_logprobs": 0,
                                  "topk_of": ["t"]}
    assert output_dir(r) == Path("outputs/my-run")
    assert output_dir(r, "x/y") == Path("x/y")
    assert r.source.path is not None and r.source.path.name == "my-run.yaml"


def test_fragments_then_recipe_then_set(tmp_path):
    write(tmp_path, {"sampling": {"batch_size": 3, "temperature": 0.7}, "models": {"theta": "org/a"}},
          "configs/one.yaml")
    write(tmp_path, {"defaults": ["one"], "sampling": {"batch_size": 5, "top_k": 20}}, "configs/sub/two.yaml")
    path = write(tmp_path, {**BASE, "defaults": ["sub/two"], "sampling": {"temperature": 0.9}})
    r = load_recipe(path, ["sampling.batch_size=4", "alpha.method=fixed", 'sampling.stop=["\\n\\n"]'])
    assert r.sampling.batch_size == 4          # --set beats the recipe beats fragments
    assert r.sampling.temperature == 0.9       # recipe beats fragment one
    assert r.sampling.top_k == 20              # from fragment two
    assert r.models.theta == "org/theta-model"  # recipe beats fragment one
    assert r.alpha.method == "fixed"
    assert r.sampling.stop == ("\n\n",)
    assert [Path(f).stem for f in r.source.fragments] == ["one", "two"]


def test_bundled_fragments_resolve(tmp_path):
    r = load_recipe(write(tmp_path, {**BASE, "defaults": ["models/qwen2.5-7b-14b", "sampling/default"]}))
    assert r.models.theta == "org/theta-model"
    assert r.models.quantization == "4bit"
    assert r.sampling.max_new_tokens == 512
    assert model_kwargs(r)["load_in_4bit"] is True


def test_set_values_are_yaml_typed_and_null_clears(tmp_path):
    path = write(tmp_path, merged(models__teacher="org/teacher"))
    r = load_recipe(path, ["models.teacher=null", "sampling.seed=7", "output.per_token=true",
                           "dataset.keep_fields=[question]", "prompts.teacher.template={question} hint"])
    assert r.models.teacher is None
    assert r.sampling.seed == 7 and r.output.per_token is True
    assert r.dataset.keep_fields == ("question",)
    assert r.prompts.teacher.template == "{question} hint"
    assert r.prompts.teacher.chat_template is True


def test_typo_suggests_closest_key_with_file_and_line(tmp_path):
    text = "models:\n  theta: org/x\nsampling:\n  temprature: 0.5\n"
    err = error_of(tmp_path, text)
    assert "r.yaml:4" in str(err)
    assert "sampling.temprature" in str(err) and "did you mean 'sampling.temperature'" in str(err)
    assert err.exit_code == 2
    err = error_of(tmp_path, {**BASE, "sampler": {}})
    assert "did you mean 'sampling'" in str(err)


def test_set_typo_suggests(tmp_path):
    err = error_of(tmp_path, BASE, ["sampling.batchsize=4"])
    assert "--set sampling.batchsize=4" in str(err) and "did you mean 'sampling.batch_size'" in str(err)
    err = error_of(tmp_path, BASE, ["sampling.batch_size"])
    assert "expected key.path=value" in str(err)


@pytest.mark.parametrize(
    "key,value,expect",
    [
        ("sampling__temperature", 0, "must be >= 0.001"),
        ("sampling__temperature", 1e-40, "greedy is not supported"),
        ("sampling__max_new_tokens", 10**9, "must be in [1, 1048576]"),
        ("sampling__seed", 2**63, "must be in [0, 9223372036854775807]"),
        ("sampling__seed", -1, "must be in [0, 9223372036854775807]"),
        ("sampling__batch_size", 99999999999999999999, "must be in [1, 65536]"),
        ("sampling__temperature", "hot", "must be a number"),
        ("sampling__top_p", 1.5, "must be in (0, 1]"),
        ("sampling__top_p", 0.0, "must be in (0, 1]"),
        ("sampling__batch_size", 0, "must be in [1, 65536]"),
        ("sampling__batch_size", 2.5, "must be an integer"),
        ("sampling__batch_size", True, "must be an integer"),
        ("sampling__max_new_tokens", "10", "must be an integer"),
        ("sampling__draft_tokens", 20000, "must be in [0, 64], got 20000; a round runs k + 1 theta forwards"),
        ("sampling__top_k", 0, "-1 (off) or a positive integer"),
        ("alpha__fixed", 1.2, "must be in [0, 1]"),
        ("alpha__min", -0.1, "must be in [0, 1]"),
        ("alpha__method", "kl_symetry", "did you mean 'kl_symmetry'"),
        ("models__dtype", "bf16", "must be one of auto, float32, bfloat16, float16"),
        ("models__device", "gpu", "auto, cpu, cuda or cuda:N"),
        ("output__shard_size", 0, "must be >= 1"),
        ("output__per_token", "yes", "must be true or false"),
        ("constraints__top_p", 2, "must be in (0, 1]"),
        ("dataset__skip", -1, "must be >= 0"),
        ("dataset__keep_fields", "some", "all, none or a list"),
        ("prompts__on_bad_row", "ignore", "error, skip"),
        ("run_name", "a/b", "plain folder name"),
    ],
)
def test_types_and_ranges(tmp_path, key, value, expect):
    err = error_of(tmp_path, merged(**{key: value}))
    assert expect in str(err), str(err)
    assert key.replace("__", ".") in str(err)
    assert err.exit_code == 2


def test_cross_field_checks(tmp_path):
    err = error_of(tmp_path, merged(alpha__min=0.8, alpha__max=0.6))
    assert "alpha.min" in str(err) and "<= alpha.max" in str(err)
    err = error_of(tmp_path, merged(dataset={"split": "train"}))
    assert "needs a `source`" in str(err)
    err = error_of(tmp_path, merged(dataset__source="org/data"))
    assert "not both" in str(err)


def test_required_keys(tmp_path):
    err = error_of(tmp_path, {k: v for k, v in BASE.items() if k != "models"})
    assert "models" in str(err) and "required" in str(err)
    err = error_of(tmp_path, merged(prompts={"theta": {"system": "hi"}}))
    assert "prompts.theta.template" in str(err) and "required" in str(err)
    err = error_of(tmp_path, merged(prompts__theta__template=""))
    assert "prompts.theta.template" in str(err)


def test_missing_files(tmp_path):
    err = error_of(tmp_path, merged(dataset={"source": str(tmp_path / "nope.jsonl")}))
    assert "dataset.source" in str(err) and "not found" in str(err) and "nope.jsonl" in str(err)
    err = error_of(tmp_path, merged(models__theta="./no/such/model"))
    assert "models.theta" in str(err) and "not found" in str(err)
    err = error_of(tmp_path, merged(models__theta="builtin:no-such-model"))
    assert "unknown builtin model" in str(err)
    err = error_of(tmp_path, merged(dataset={"source": "builtin:no-such-data"}))
    assert "unknown builtin dataset" in str(err)
    (tmp_path / "d.txt").write_text("x")
    err = error_of(tmp_path, merged(dataset={"source": str(tmp_path / "d.txt")}))
    assert "unsupported suffix" in str(err)
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="did you mean 'chat'"):
        load_recipe("chatt")
    err = error_of(tmp_path, {**BASE, "defaults": ["sampling/defualt"]})
    assert "unknown defaults fragment" in str(err) and "did you mean 'sampling/default'" in str(err)


def test_relative_paths_resolve_against_recipe_folder(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rows.jsonl").write_text('{"question": "q"}\n')
    path = write(tmp_path, merged(dataset={"source": "rows.jsonl"}), "sub/r.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_recipe(path).dataset.source == "rows.jsonl"


def test_invalid_yaml_and_duplicate_keys(tmp_path):
    err = error_of(tmp_path, "models:\n  theta: [unclosed\n")
    assert "invalid YAML" in str(err) and "r.yaml" in str(err)
    err = error_of(tmp_path, "models:\n  theta: a/b\n  theta: c/d\n")
    assert "appears twice" in str(err) and "r.yaml:3" in str(err)
    err = error_of(tmp_path, "- a\n- b\n")
    assert "must be a mapping" in str(err)


def test_hash_ignores_placement_but_not_sampling(tmp_path):
    path = write(tmp_path, BASE)
    base = load_recipe(path)
    same = load_recipe(path, ["output.dir=elsewhere", "dataset.limit=5", "sampling.batch_size=2", "models.device=cpu",
                              "output.shard_size=7", "run_name=other"])
    assert recipe_hash(base) == recipe_hash(same)
    changed = load_recipe(path, ["sampling.temperature=0.5", "alpha.method=fixed"])
    assert recipe_hash(base) != recipe_hash(changed)
    keys = [k for k, _, _ in recipe_diff(base, changed)]
    assert keys == ["alpha.method", "sampling.temperature"]
    assert recipe_hash(base).startswith("sha256:")


def test_template_fields_and_literal_braces():
    assert template_fields("{question} and {meta.src}, \\boxed{} {{x}} {answer}") == ["question", "meta.src", "answer"]


def test_dump_roundtrips(tmp_path):
    r = load_recipe(write(tmp_path, BASE))
    again = load_recipe(write(tmp_path, dump_recipe(r), "again.yaml"))
    assert recipe_hash(again) == recipe_hash(r)


def test_every_bundled_recipe_validates():
    bundled = list_bundled()
    names = {name for name, _, _ in bundled}
    assert {"chat", "math-hint"} <= names
    for name, description, path in bundled:
        r = load_recipe(name)
        assert r.description and description == r.description
        assert r.source.bundled is True


def test_math_hint_teacher_sees_the_solution():
    r = load_recipe("math-hint")
    assert r.models.theta == "Qwen/Qwen2.5-1.5B-Instruct"
    assert r.models.teacher == "Qwen/Qwen2.5-3B-Instruct"
    assert "answer" in template_fields(r.prompts.teacher.template)
    assert "answer" not in template_fields(r.prompts.theta.template)
    assert "\\boxed{}" in r.prompts.theta.template


def test_in_memory_recipe():
    r = load_recipe(data={**BASE, "defaults": ["sampling/greedy-ish"]})
    assert r.sampling.temperature < 1.0
    with pytest.raises(UserError, match="<recipe>"):
        load_recipe(data={**BASE, "bogus": 1})


def test_recipe_not_utf8_names_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"description: caf\xe9\n")
    with pytest.raises(UserError, match=r"latin.yaml is not UTF-8 text: byte offset 16") as info:
        load_recipe(path)
    assert info.value.exit_code == 2


def test_self_referencing_anchor_is_refused(tmp_path):
    err = error_of(tmp_path, "models: &m\n  theta: a/b\n  again: *m\n")
    assert "used inside its own value" in str(err) and "r.yaml:1" in str(err)
    err = error_of(tmp_path, "dataset:\n  inline: &rows [{q: 1}, *rows]\n")
    assert "used inside its own value" in str(err)


def test_billion_laughs_is_bounded_and_fast(tmp_path):
    import time

    lines = ['a0: &a0 {x: "lol"}']
    for i in range(1, 30):  # 2**30 values once expanded
        lines.append(f"a{i}: &a{i} {{l: *a{i - 1}, r: *a{i - 1}}}")
    lines.append("models: {theta: a/b, extra: *a29}")
    start = time.monotonic()
    err = error_of(tmp_path, "\n".join(lines) + "\n")
    assert time.monotonic() - start < 5
    assert "YAML aliases (*name) expand this file" in str(err)
    merges = ['a0: &a0 {x: lol}'] + [f"a{i}: &a{i} {{<<: *a{i - 1}, l: *a{i - 1}, r: *a{i - 1}}}" for i in range(1, 40)]
    assert "YAML aliases" in str(error_of(tmp_path, "\n".join(merges) + "\n"))
    assert "nested too deeply" in str(error_of(tmp_path, "models: " + "[" * 1000 + "]" * 1000 + "\n"))
    # a few aliases are fine
    ok = dict(BASE, prompts={"theta": {"template": "{question}"}})
    text = yaml.safe_dump(ok) + "sampling: &s {seed: 1}\n"
    assert load_recipe(write(tmp_path, text)).sampling.seed == 1


def test_model_folder_without_config_and_missing_flash_attn(tmp_path):
    (tmp_path / "not_a_model").mkdir()
    err = error_of(tmp_path, merged(models__theta=str(tmp_path / "not_a_model")))
    assert "models.theta" in str(err) and "no config.json" in str(err) and "hub" not in str(err)
    err = error_of(tmp_path, merged(models__teacher=str(tmp_path / "not_a_model")))
    assert "models.teacher" in str(err) and "no config.json" in str(err)
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        err = error_of(tmp_path, merged(models__attn_implementation="flash_attention_2"))
        assert "models.attn_implementation" in str(err) and "flash-attn package" in str(err)
    err = error_of(tmp_path, merged(models__attn_implementation="flash_attention_2", models__device="cpu"))
    assert "flash" in str(err)


def test_revision_on_local_or_builtin_model_warns(tmp_path):
    r = load_recipe(data=merged(models={"theta": "builtin:demo-theta", "revision": "v1"}))
    assert any("models.revision 'v1' is ignored for models.theta" in w for w in r.source.warnings)
    r = load_recipe(data=merged(models={"theta": "org/model", "revision": "v1"}))
    assert r.source.warnings == ()
