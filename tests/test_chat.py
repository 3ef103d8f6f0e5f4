"""Chat datasets: `prompts.*.messages_field` (os_cli/chat.py, data.py), validation, records, trl export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from os_cli.prompts.chat import BadConversation, conversation, prompt_turns
from os_cli.cli import _register, app
from os_cli.errors import UserError
from os_cli.recipe import load_recipe, recipe_hash

if not any(c.name == "generate" for c in app.registered_commands):
    _register()
runner = CliRunner()

CONVS = [
    [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fox."},
     {"role": "assistant", "content": "Reynard."}, {"role": "user", "content": "Another one?"}],
    [{"role": "user", "content": "Explain quantum computing in one sentence."}],
]
ROWS = [{"qid": f"c{i}", "messages": conv, "answer": str(i)} for i, conv in enumerate(CONVS)]


# --------------------------------------------------------------------------------------------------
# The conversation itself (pure)


def test_conversation_prefix_drops_the_reference_reply_and_adds_system_and_hint():
    turns = conversation(CONVS[1] + [{"role": "assistant", "content": "Tod.", "name": "x"}])
    assert turns[-1] == {"role": "assistant", "content": "Tod."}  # other keys dropped
    prefix = prompt_turns(turns, system="You know the answer.", extra="Hint: 42")
    assert prefix == [
        {"role": "system", "content": "Be brief.\n\nYou know the answer."},
        {"role": "user", "content": "Name a fox."},
        {"role": "assistant", "content": "Reynard."},
        {"role": "user", "content": "Another one?\n\nHint: 42"},
    ]
    assert prompt_turns(conversation(CONVS[0]), system="S") == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "What is 2 plus 3?"}]
    assert turns == conversation(CONVS[1] + [{"role": "assistant", "content": "Tod."}])  # inputs not modified
    sharegpt = [{"from": "system", "value": "s"}, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]
    assert conversation(sharegpt) == [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
                                      {"role": "assistant", "content": "yo"}]


@pytest.mark.parametrize("value, message", [
    ("hello", "is a string, not a list of {role, content} turns"),
    ({"role": "user"}, "is an object, not a list"),
    ([], "is an empty list"),
    ([["user", "hi"]], "turn 0 is a list"),
    ([{"role": "user"}], "turn 0 has no 'content'"),
    ([{"content": "hi"}], "turn 0 has no 'role'"),
    ([{"role": "usr", "content": "hi"}], "turn 0 has role \"usr\"; allowed: system, user, assistant, tool"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": None}], "turn 1 (user) has content null"),
    ([{"from": "bot", "value": "hi"}], "turn 0 has from \"bot\""),
])
def test_malformed_conversations_say_what_is_wrong(value, message):
    with pytest.raises(BadConversation) as info:
        prompt_turns(conversation(value))
    assert message in str(info.value)


def test_conversation_must_end_with_a_user_turn():
    with pytest.raises(BadConversation, match="must end with a user turn.*ends with system"):
        prompt_turns(conversation([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]))
    with pytest.raises(BadConversation, match="ends with nothing"):
        prompt_turns(conversation([{"role": "assistant", "content": "a"}]))


# --------------------------------------------------------------------------------------------------
# Recipes


def base(**prompts):
    return {"models": {"theta": "org/model"}, "dataset": {"inline": ROWS},
            "prompts": prompts or {"theta": {"messages_field": "messages"}}}


def test_schema_messages_field_template_and_chat_template_rules():
    r = load_recipe(data=base())
    assert r.prompts.theta.messages_field == "messages" and r.prompts.theta.template is None
    with pytest.raises(UserError, match="prompts.theta.messages_field: needs chat_template: true"):
        load_recipe(data=base(theta={"messages_field": "messages", "chat_template": False}))
    with pytest.raises(UserError, match="prompts.theta.template: is required"):
        load_recipe(data=base(theta={"system": "x"}))
    with pytest.raises(UserError, match="prompts.teacher.template: is required"):
        load_recipe(data=base(theta={"messages_field": "messages"}, teacher={"system": "x"}))


def test_messages_field_at_its_default_leaves_the_recipe_hash_as_before():
    """Folders written before these keys existed still resume: the stored recipe lacks them."""
    r = load_recipe(data=base(theta={"template": "{answer}"}, teacher={"template": "{answer}!"}))
    old = json.loads(json.dumps(r.to_dict()))
    for section in ("theta", "teacher"):
        del old["prompts"][section]["messages_field"]
    del old["sampling"]["num_samples"]
    assert recipe_hash(old) == recipe_hash(r)
    chat = load_recipe(data=base(theta={"template": "{answer}", "messages_field": "messages"}))
    assert recipe_hash(chat) != recipe_hash(load_recipe(data=base(theta={"template": "{answer}"})))


# --------------------------------------------------------------------------------------------------
# Rendering and generate, on the tiny models (whose tokenizer has a ChatML template)


@pytest.fixture
def work(tmp_path, tiny_models):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))

    def write(name: str = "recipe", theta=None, teacher="hint", data_path=data, **extra) -> Path:
        recipe = {
            "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"]},
            "sampling": {"max_new_tokens": 5, "batch_size": 2, "seed": 1},
            "dataset": {"source": str(data_path), "id_field": "qid"},
            "prompts": {
                "theta": theta or {"messages_field": "messages"},
                "teacher": {"messages_field": "messages", "system": "You are the teacher.",
                            "template": "(The reference answer is {answer}.)"} if teacher == "hint" else teacher,
            },
            "output": {"shard_size": 10},
            **extra,
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    return write, tmp_path


def gen(recipe: Path, out: Path, *extra):
    return runner.invoke(app, ["generate", "--config", str(recipe), "--output", str(out), *map(str, extra)])


def records(out: Path) -> list[dict]:
    return [json.loads(line) for s in sorted(out.glob("shard-*.jsonl")) for line in s.read_text().splitlines()]


def test_chat_rows_render_as_the_chat_template_does_and_only_the_teacher_sees_the_hint(work, tiny_tokenizer):
    write, tmp = work
    out = tmp / "out"
    result = gen(write(), out)
    assert result.exit_code == 0, result.output
    recs = {r["id"]: r for r in records(out)}
    assert sorted(recs) == ["c0", "c1", "c2"]
    for row in ROWS:
        rec = recs[row["qid"]]
        conv = row["messages"][:-1] if row["messages"][-1]["role"] == "assistant" else row["messages"]
        assert rec["messages"] == conv  # the conversation prefix is kept in the record
        assert rec["prompt"] == tiny_tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        teacher = [dict(t) for t in conv]
        if teacher[0]["role"] == "system":
            teacher[0]["content"] += "\n\nYou are the teacher."
        else:
            teacher.insert(0, {"role": "system", "content": "You are the teacher."})
        teacher[-1]["content"] += f"\n\n(The reference answer is {row['answer']}.)"
        assert rec["prompt_t"] == tiny_tokenizer.apply_chat_template(teacher, tokenize=False,
                                                                     add_generation_prompt=True)
        assert "reference answer" not in rec["prompt"] and "teacher" not in rec["prompt"]
    assert "Reynard." in recs["c1"]["prompt"] and "5<|im_end|>" not in recs["c0"]["prompt"]  # reference dropped


def test_export_trl_gives_conversational_prompt_completion_rows(work, tiny_tokenizer):
    from datasets import load_dataset

    write, tmp = work
    out, to = tmp / "out", tmp / "train.jsonl"
    assert gen(write(), out).exit_code == 0
    result = runner.invoke(app, ["export", str(out), "--format", "trl", "--to", str(to)])
    assert result.exit_code == 0, result.output
    ds = load_dataset("json", data_files=str(to), split="train")
    recs = {r["id"]: r for r in records(out)}
    assert sorted(ds["id"]) == sorted(recs)
    for row in ds:
        rec = recs[row["id"]]
        assert row["prompt"] == rec["messages"]
        assert row["completion"] == [{"role": "assistant", "content": rec["completion"]}]
        # what a trainer renders from the row is the prompt theta was sampled with
        assert tiny_tokenizer.apply_chat_template(row["prompt"], tokenize=False,
                                                  add_generation_prompt=True) == rec["prompt"]
        assert "messages" not in row  # TRL would not know the row's type with prompt + completion + messages
    assert sum(ds["weight"]) == pytest.approx(1.0)
    flat = tmp / "flat.parquet"
    assert runner.invoke(app, ["export", str(out), "--format", "parquet", "--to", str(flat)]).exit_code == 0
    pq = load_dataset("parquet", data_files=str(flat), split="train")
    assert {r["id"]: r["messages"] for r in pq} == {i: r["messages"] for i, r in recs.items()}


def test_bad_conversation_names_the_row_or_goes_to_errors_jsonl(work):
    write, tmp = work
    data = tmp / "bad.jsonl"
    bad_rows = ROWS[:1] + [{"qid": "broken", "messages": [{"role": "user", "text": "hi"}], "answer": "1"}] + ROWS[2:]
    data.write_text("".join(json.dumps(r) + "\n" for r in bad_rows))
    result = gen(write("bad", data_path=data), tmp / "out")
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "loading models" not in text
    assert "dataset row 'broken': prompts.theta.messages_field: row field 'messages' turn 0 has no 'content'" in text
    assert "Traceback" not in result.output
    skip = write("skip", data_path=data, teacher=None)
    recipe = yaml.safe_load(skip.read_text())
    recipe["prompts"]["on_bad_row"] = "skip"
    skip.write_text(yaml.safe_dump(recipe))
    result = gen(skip, tmp / "out2")
    assert result.exit_code == 0, result.output
    errors = [json.loads(line) for line in (tmp / "out2" / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["broken"] and "turn 0 has no 'content'" in errors[0]["reason"]
    assert sorted(r["id"] for r in records(tmp / "out2")) == ["c0", "c2"]
    missing = tmp / "missing.jsonl"
    missing.write_text(json.dumps({"qid": "m", "answer": "1"}) + "\n")
    result = gen(write("missing", data_path=missing, teacher=None), tmp / "out3")
    assert result.exit_code == 2 and "prompts.theta.messages_field: missing field 'messages'" in \
        " ".join(result.output.split())


def test_messages_field_needs_a_tokenizer_with_a_chat_template(work, tiny_models):
    write, tmp = work
    plain = tmp / "plain-model"
    shutil.copytree(tiny_models["theta"], plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    recipe = write("plain", teacher=None)
    data = yaml.safe_load(recipe.read_text())
    data["models"] = {"theta": str(plain)}
    recipe.write_text(yaml.safe_dump(data))
    result = gen(recipe, tmp / "out")
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "loading models" not in text
    assert "prompts.theta.messages_field is set, but the tokenizer of" in text and "has no chat template" in text
    validate = runner.invoke(app, ["validate", str(recipe)])
    assert validate.exit_code == 2 and "has no chat template" in " ".join(validate.output.split())


def test_chat_run_with_several_samples_and_template_theta_still_works(work):
    write, tmp = work
    # theta reads a template, the teacher the conversation: records carry no `messages` then
    result = gen(write("mixed", theta={"template": "Answer: {answer}"}, sampling={
        "max_new_tokens": 4, "batch_size": 4, "seed": 2, "num_samples": 2}), tmp / "out")
    assert result.exit_code == 0, result.output
    recs = records(tmp / "out")
    assert len(recs) == 6 and all("messages" not in r for r in recs)
    assert all("(The reference answer is" in r["prompt_t"] for r in recs)


def test_validate_previews_a_conversation_without_a_reachable_tokenizer(tmp_path):
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(base()))  # models.theta is a hub name; the tests run with HF_HUB_OFFLINE=1
    result = runner.invoke(app, ["validate", str(path)])
    text = result.output
    assert result.exit_code == 0, text
    assert "no tokenizer here" in " ".join(text.split()) and "[user] What is 2 plus 3?" in text
    assert "[assistant] 5" not in text  # the reference reply is dropped in the preview too
    bad = base()
    bad["dataset"]["inline"] = [{"messages": "What is 2 plus 3?"}]
    path.write_text(yaml.safe_dump(bad))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "is a string, not a list of {role, content} turns" in " ".join(result.output.split())


def test_errors_on_values_read_from_a_file_name_json_kinds_not_python_types(tmp_path):
    """JSON numbers are read as int / float subclasses that keep how the file wrote them: messages say
    `an integer`, never the class's name."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"messages": [{"role": "user", "content": 5}]}\n')
    recipe = base()
    recipe["dataset"] = {"source": str(rows)}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = runner.invoke(app, ["validate", str(path)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "turn 0 (user) has content an integer 5, not text" in text, text
    rows.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n7\n')
    result = runner.invoke(app, ["validate", str(path)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "line 2: a row must be a JSON object {...}, got an integer" in text, text
    assert "_Raw" not in text
