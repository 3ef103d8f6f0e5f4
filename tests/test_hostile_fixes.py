"""Defects a hostile tester found: per-token fields of a record checked against the run's settings
(resume, --repair, inspect, export), validate's top-K bound, the API's token cap types, and the
effective values in a refused resume's message."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from os_cli import OptimalSamplingModel
from os_cli.cli import _register, app
from os_cli.store.record_format import (TOKEN_KEYS, RecordSettings, TokenSpec, build_record, record_problem,
                                        token_spec, topk_keys)
from os_cli.recipe import load_recipe, recipe_diff
from os_cli.api.rows import RowOutput, StreamRow
from os_cli.report.summary import summarize_dir

if not any(c.name == "generate" for c in app.registered_commands):
    _register()

runner = CliRunner()


# --------------------------------------------------------------------------------------------------
# record_problem with the run's TokenSpec (pure)


def _record(n=3, k=2, of=("t", "q"), per_token=True):
    traces = {name: [0.5] * n for name in TOKEN_KEYS if name != "ids"}
    output = RowOutput(index=0, id=0, text="c", token_ids=list(range(n)), finish_reason="length", traces=traces,
                       topk_ids=[[1] * k] * n if k else None,
                       topk_logprobs={s: [[-1.0] * k] * n for s in of} if k else None)
    return build_record(RecordSettings("kl_symmetry", per_token=per_token, topk_logprobs=k), output, row_id="a",
                        sample=0, prompt="p", prompt_t="p", messages=None, row={})


def test_token_spec_names_exactly_what_build_record_writes():
    recipe = {"output": {"per_token": False, "topk_logprobs": 2, "topk_of": ["q", "t"]}}
    spec = token_spec(recipe)
    assert spec == TokenSpec(TOKEN_KEYS + topk_keys(("t", "q")), 2)
    assert set(_record()["tokens"]) == set(spec.keys)
    assert token_spec({"output": {"per_token": True, "topk_logprobs": 0}}) == TokenSpec(TOKEN_KEYS, 0)
    assert token_spec({"output": {"per_token": False}}) == TokenSpec((), 0)
    assert set(_record(k=0)["tokens"]) == set(TOKEN_KEYS)
    assert record_problem(_record(), spec) is None


@pytest.mark.parametrize("key", TOKEN_KEYS + topk_keys(("t", "q")))
def test_every_per_token_key_missing_or_misaligned_is_invalid(key):
    spec = token_spec({"output": {"per_token": False, "topk_logprobs": 2, "topk_of": ["t", "q"]}})
    missing = _record()
    del missing["tokens"][key]
    assert record_problem(missing, spec) == f"incomplete record: tokens lacks {key}"
    short = _record()
    short["tokens"][key] = short["tokens"][key][:-1]
    assert "is not a list of num_tokens = 3 entries (2 entries)" in record_problem(short, spec)
    assert "is not a list of num_tokens" in record_problem(short)  # without a spec: alignment still checked
    if key in topk_keys():
        narrow = _record()
        narrow["tokens"][key][1] = narrow["tokens"][key][1][:1]
        assert record_problem(narrow, spec) == f"tokens.{key}[1] is not a list of K = 2 entries (1 entries)"


def test_tokens_required_only_when_the_settings_call_for_them():
    bare = _record(per_token=False, k=0)
    assert "tokens" not in bare
    assert record_problem(bare, token_spec({"output": {"per_token": False}})) is None
    assert record_problem(bare, token_spec({"output": {"per_token": True}})) == "incomplete record: missing tokens"
    nulled = _record()
    nulled["tokens"] = None
    assert record_problem(nulled) == "tokens is not a JSON object"
    counted = _record()
    counted["num_tokens"] = "3"
    assert record_problem(counted) == 'num_tokens is not a non-negative integer ("3")'


# --------------------------------------------------------------------------------------------------
# generate / inspect / export on a folder whose per-token fields were edited


@pytest.fixture
def work(tmp_path, tiny_models):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus 3?", "answer": str(i + 3)}) + "\n"
                            for i in range(6)))

    def write(name: str, output: dict, limit: int) -> str:
        recipe = {
            "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"]},
            "sampling": {"max_new_tokens": 6, "batch_size": 3, "seed": 5},
            "dataset": {"source": str(data), "limit": limit},
            "prompts": {"theta": {"template": "{question}", "chat_template": False},
                        "teacher": {"template": "{question} ({answer})", "chat_template": False}},
            "output": {"shard_size": 10, **output},
        }
        path = tmp_path / f"{name}-{limit}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return str(path)

    return write, tmp_path


def gen(recipe, out, *extra):
    return runner.invoke(app, ["generate", "--config", recipe, "--output", str(out), *map(str, extra)])


def edit_lines(shard: Path, edits: dict) -> list[str]:
    lines = shard.read_text().splitlines()
    for number, edit in edits.items():
        record = json.loads(lines[number - 1])
        edit(record["tokens"])
        lines[number - 1] = json.dumps(record)
    shard.write_text("".join(line + "\n" for line in lines))
    return lines


def _cut(key):
    def cut(tokens):  # a record has at least one token (EOS counts)
        tokens[key] = tokens[key][:-1]
    return cut


@pytest.mark.parametrize("output, edits", [
    ({"topk_logprobs": 3, "topk_of": ["t", "q"]},
     {2: lambda t: t.pop("topk_ids"), 3: lambda t: t.pop("topk_logprob_q"), 4: _cut("topk_ids")}),
    ({"per_token": True}, {2: lambda t: t.pop("alpha"), 3: lambda t: t.pop("logprob_q"), 4: _cut("kl_t")}),
])
def test_edited_per_token_fields_are_refused_reported_and_repaired(work, output, edits, tiny_models):
    write, tmp = work
    out = tmp / "rep"
    assert gen(write("r", output, 4), out).exit_code == 0
    shard = out / "shard-00000.jsonl"
    original = shard.read_text().splitlines()
    edit_lines(shard, edits)
    grown = write("r", output, 6)

    refused = gen(grown, out)
    text = " ".join(refused.output.split())
    assert refused.exit_code == 2, refused.output
    for number in edits:
        assert f"{shard}:{number}:" in text.replace(" ", "") or f"{shard}:{number}" in text
    assert "Traceback" not in text

    report = summarize_dir(out)["integrity"]
    assert not report["clean"] and report["invalid_lines"]["count"] == 3
    assert sorted(p["line"] for p in report["invalid_lines"]["lines"]) == sorted(edits)

    exported = runner.invoke(app, ["export", str(out), "--format", "trl", "--to", str(tmp / "x.jsonl")])
    assert exported.exit_code == 1 and "not a valid record" in exported.output
    assert not (tmp / "x.jsonl").exists()

    repaired = gen(grown, out, "--repair")
    assert repaired.exit_code == 0, repaired.output
    by_id = {json.loads(line)["id"]: json.loads(line) for line in shard.read_text().splitlines()}
    assert len(by_id) == 6 and summarize_dir(out)["integrity"]["clean"]
    for line in original:  # the dropped rows are generated again: the same tokens (floats to batch rounding)
        before, after = json.loads(line)["tokens"], by_id[json.loads(line)["id"]]["tokens"]
        assert set(after) == set(before) and after["ids"] == before["ids"]
        assert after.get("topk_ids") == before.get("topk_ids")
        assert after["logprob_t"] == pytest.approx(before["logprob_t"], abs=1e-4)


# --------------------------------------------------------------------------------------------------
# validate: output.topk_logprobs above the vocabulary, as generate --dry-run refuses it


def test_validate_refuses_top_k_above_the_vocabulary(work, tiny_models):
    write, _ = work
    recipe = write("v", {"topk_logprobs": 100000}, 4)
    result = runner.invoke(app, ["validate", recipe])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "output.topk_logprobs: 100000 is more than the vocabulary" in text and "Traceback" not in text
    dry = gen(recipe, work[1] / "dry", "--dry-run")
    assert dry.exit_code == 2 and "output.topk_logprobs: 100000 is more than the vocabulary" in " ".join(
        dry.output.split())
    assert runner.invoke(app, ["validate", write("ok", {"topk_logprobs": 4}, 4)]).exit_code == 0


# --------------------------------------------------------------------------------------------------
# API: a token cap that is not an integer


@pytest.fixture(scope="module")
def model(tiny_models):
    return OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu")


@pytest.mark.parametrize("cap", [2.5, True, "3", None])
def test_non_integer_token_caps_raise_value_error_naming_the_argument(model, cap):
    with pytest.raises(ValueError, match=r"max_new_tokens must be an integer in 1\.\.1048576"):
        model.generate(prompts=["hi"], max_new_tokens=cap)
    with pytest.raises(ValueError, match=r"^max_new_tokens must be an integer in 1\.\.1048576"):
        list(model.generate_stream([StreamRow("hi")], max_new_tokens=cap))
    if cap is not None:
        with pytest.raises(ValueError, match=r"row 0: max_new_tokens must be an integer in 1\.\.1048576"):
            list(model.generate_stream([StreamRow("hi", max_new_tokens=cap)]))
    with pytest.raises(ValueError, match=r"row 0: max_new_tokens must be an integer"):
        list(model.generate_stream([StreamRow("hi", max_new_tokens=[2])]))  # one row, one cap


def test_integer_caps_still_work(model):
    import numpy as np

    out = list(model.generate_stream([StreamRow("hi", max_new_tokens=np.int64(2))], max_new_tokens=5,
                                      ignore_eos=True))
    assert int(out[0].num_tokens if hasattr(out[0], "num_tokens") else len(out[0].token_ids)) == 2
    assert model.generate(prompts=["hi", "ho"], max_new_tokens=(1, 2), ignore_eos=True).mask.sum(1).tolist() == [1, 2]


# --------------------------------------------------------------------------------------------------
# a refused resume shows effective values, not null


def test_refusal_shows_effective_values_on_both_sides(work):
    write, tmp = work
    out = tmp / "k"
    assert gen(write("k10", {"topk_logprobs": 10, "topk_of": ["q"]}, 2), out).exit_code == 0
    result = gen(write("k0", {"topk_logprobs": 0}, 2), out)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert 'output.topk_logprobs: 10 -> 0' in text and 'output.topk_of: ["q"] -> ["t"]' in text
    assert "null" not in text


def test_an_older_recipe_without_the_key_shows_its_default(work):
    write, _ = work
    new = load_recipe(write("n", {"topk_logprobs": 3}, 2))
    old = json.loads(json.dumps(new.to_dict()))
    del old["output"]["topk_logprobs"], old["output"]["topk_of"]
    assert recipe_diff(old, new) == [("output.topk_logprobs", 0, 3)]


def test_csv_integer_ids_past_64_bits(tmp_path):
    """A CSV whose id column is all integers, one of them 30 digits: the ids stay exact (docs/cli.md), instead
    of 'could not read dataset: DatasetGenerationError' (pyarrow cannot hold the int in int64)."""
    from os_cli.prompts.datasets import load_rows
    from os_cli.recipe import load_recipe

    src = tmp_path / "big.csv"
    src.write_text("id,question\n123456789012345678901234567890,a\n123456789012345678901234567891,b\n0012,c\n")
    r = load_recipe(data={"models": {"theta": "org/model"}, "prompts": {"theta": {"template": "{question}"}},
                          "dataset": {"source": str(src), "id_field": "id"}})
    rows = load_rows(r.dataset)
    assert [i for i, _ in rows] == ["123456789012345678901234567890", "123456789012345678901234567891", "0012"]
    assert [row["question"] for _, row in rows] == ["a", "b", "c"]


def test_unreadable_csv_names_the_cause(tmp_path):
    """A CSV that datasets cannot read: the message carries the root cause, not only DatasetGenerationError."""
    import pytest
    from os_cli.errors import UserError
    from os_cli.prompts.datasets import load_rows
    from os_cli.recipe import load_recipe

    src = tmp_path / "big.csv"
    src.write_text("id,n,question\n1,123456789012345678901234567890,a\n2,3,b\n")
    r = load_recipe(data={"models": {"theta": "org/model"}, "prompts": {"theta": {"template": "{question}"}},
                          "dataset": {"source": str(src), "id_field": "id"}})
    with pytest.raises(UserError, match=r"could not read dataset .*\(OverflowError: "):
        load_rows(r.dataset)


def test_export_removes_copies_left_by_a_killed_export(tmp_path):
    """kill -9 during `export --overwrite` leaves `.NAME.tmp-PID` (for hf a whole dataset copy) beside --to; the
    next export of the same target removes those of dead processes and keeps a live one's."""
    import subprocess
    import sys

    import datasets

    from os_cli.report.export_write import write_dataset

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    to = tmp_path / "hf out"
    stale = tmp_path / f".hf out.tmp-{dead.pid}"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "x.arrow").write_text("old")
    live = tmp_path / f".hf out.tmp-{os.getppid()}"
    live.mkdir()
    other = tmp_path / f".other.tmp-{dead.pid}"
    other.write_text("not ours")
    write_dataset(datasets.Dataset.from_dict({"id": ["1"]}), "hf", to)
    assert datasets.load_from_disk(str(to))["id"] == ["1"]
    assert not stale.exists() and live.exists() and other.exists()
