"""Dataset loading (local files, folders, inline rows, skip/limit/ids) and prompt rendering."""

from __future__ import annotations

import json

import pytest

from os_cli.prompts.data import kept_row, render_prompts, render_template
from os_cli.prompts.datasets import load_rows
from os_cli.errors import UserError
from os_cli.recipe import load_recipe

ROWS = [{"qid": f"q{i}", "question": f"What is {i} plus 3?", "answer": str(i + 3)} for i in range(6)]


def recipe(**dataset):
    prompts = dataset.pop("prompts", None) or {"theta": {"template": "{question}"}}
    return load_recipe(data={"models": {"theta": "org/model"}, "dataset": dataset, "prompts": prompts})


def dataset(**section):
    return recipe(**section).dataset


def render(r, tokenizer, **kwargs):
    """render_prompts on a loaded recipe's sections, as the CLI calls it."""
    return render_prompts(r.prompts, tokenizer, load_rows(r.dataset), models=r.models,
                          skip=r.dataset.skip, **kwargs)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_skip_limit_and_default_ids(tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    rows = load_rows(dataset(source=str(src), skip=1, limit=3))
    assert [i for i, _ in rows] == ["1", "2", "3"]           # ids are dataset indices, before skip
    assert rows[0][1] == ROWS[1]
    assert load_rows(dataset(source=str(src), limit=0)) == []
    assert len(load_rows(dataset(source=str(src), skip=4, limit=10))) == 2


def test_id_field_and_duplicates(tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    assert [i for i, _ in load_rows(dataset(source=str(src), id_field="qid"))][:2] == ["q0", "q1"]
    with pytest.raises(UserError, match="share the id 'x'"):
        load_rows(dataset(inline=[{"k": "x", "question": "a"}, {"k": "x", "question": "b"}], id_field="k"))
    with pytest.raises(UserError, match="has no 'nope'"):
        load_rows(dataset(source=str(src), id_field="nope"))


def test_csv_parquet_and_folder(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    ds.to_csv(str(tmp_path / "rows.csv"), index=False)
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    assert load_rows(dataset(source=str(tmp_path / "rows.csv")))[2][1]["question"] == "What is 2 plus 3?"
    assert load_rows(dataset(source=str(tmp_path / "rows.parquet")))[5][1]["qid"] == "q5"
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", ROWS[:2])
    write_jsonl(folder / "b.jsonl", ROWS[2:])
    assert [r["qid"] for _, r in load_rows(dataset(source=str(folder)))] == [r["qid"] for r in ROWS]


def test_inline_rows():
    rows = load_rows(dataset(inline=ROWS, skip=2, limit=2))
    assert [(i, r["qid"]) for i, r in rows] == [("2", "q2"), ("3", "q3")]


def test_malformed_file_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n\n{not json\n')
    with pytest.raises(UserError, match=r"bad.jsonl, line 3: not valid JSON"):
        load_rows(dataset(source=str(bad)))
    bad.write_text('{"question": "ok"}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"line 2: a row must be a JSON object"):
        load_rows(dataset(source=str(bad)))


def test_ids_are_kept_exactly_as_written(tmp_path):
    src = tmp_path / "rows.jsonl"
    ids = ['1', '2', '3.5', '123456789012345678901234567890', '"07"', '7', '1e5', '-0.0', 'true']
    src.write_text("".join(f'{{"k": {i}, "question": "q{n}"}}\n' for n, i in enumerate(ids)))
    got = [i for i, _ in load_rows(dataset(source=str(src), id_field="k"))]
    assert got == ["1", "2", "3.5", "123456789012345678901234567890", "07", "7", "1e5", "-0.0", "true"]
    as_json = tmp_path / "rows.json"
    as_json.write_text("[" + ", ".join(f'{{"k": {i}, "question": "q"}}' for i in ids[:4]) + "]")
    assert [i for i, _ in load_rows(dataset(source=str(as_json), id_field="k"))] == got[:4]
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("\ufeffk,question\n1,a\n2,b\n3.5,c\n07,d\n123456789012345678901234567890,e\n")
    rows = load_rows(dataset(source=str(csv_file), id_field="k"))
    assert [i for i, _ in rows] == ["1", "2", "3.5", "07", "123456789012345678901234567890"]
    assert rows[2][1]["question"] == "c"


def test_empty_and_non_utf8_datasets(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match=r"dataset .*empty.jsonl has no rows"):
        load_rows(dataset(source=str(empty)))
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("")
    with pytest.raises(UserError, match=r"empty.csv has no rows"):
        load_rows(dataset(source=str(empty_csv)))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"question": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"latin.jsonl is not UTF-8 text: byte offset 17"):
        load_rows(dataset(source=str(latin)))


def test_unreachable_hub_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        load_rows(dataset(source="no-such-org/no-such-dataset-xyz"))
    assert "hub is unreachable" in str(info.value) and "local file" in str(info.value)


def test_render_chat_template_and_teacher_hint(tiny_tokenizer):
    r = recipe(inline=ROWS, prompts={
        "theta": {"template": "{question}", "system": "Be brief."},
        "teacher": {"template": "{question}\nHint: the answer is {answer}."},
    })
    out = render(r, tiny_tokenizer)
    assert not out.errors and len(out.items) == 6
    first = out.items[0]
    assert first.prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 0 plus 3?<|im_end|>\n"
                            "<|im_start|>assistant\n")
    assert "Hint: the answer is 3." in first.prompt_t and "Hint" not in first.prompt
    assert "system" not in first.prompt_t
    assert [it.index for it in out.items] == list(range(6))


def test_render_plain_and_same_prompt_for_teacher(tiny_tokenizer):
    r = recipe(inline=ROWS, skip=1, prompts={"theta": {"template": "Q: {question}\nA:", "chat_template": False,
                                                       "system": "Math."}})
    out = render(r, tiny_tokenizer)
    assert out.items[0].prompt == "Math.\n\nQ: What is 1 plus 3?\nA:"
    assert out.items[0].prompt_t == out.items[0].prompt
    assert out.items[0].index == 1


def test_missing_field_errors_or_skips(tiny_tokenizer):
    rows_data = ROWS[:2] + [{"qid": "q-bad", "question": "no answer here"}] + [{"question": None, "answer": "1"}]
    prompts = {"theta": {"template": "{question}"}, "teacher": {"template": "{question} {answer}"}}
    r = recipe(inline=rows_data, id_field=None, prompts=prompts)
    with pytest.raises(UserError) as info:
        render(r, tiny_tokenizer)
    message = str(info.value)
    assert "row '2'" in message and "prompts.teacher.template" in message and "'answer'" in message
    assert "on_bad_row: skip" in message
    out = render(r, tiny_tokenizer, on_bad_row="skip")
    assert [it.id for it in out.items] == ["0", "1"]
    assert [e["id"] for e in out.errors] == ["2", "3"]
    assert "missing field 'answer'" in out.errors[0]["reason"]
    assert "prompts.theta.template" in out.errors[1]["reason"] and "empty" in out.errors[1]["reason"]
    assert out.errors[0]["row"] == {"qid": "q-bad", "question": "no answer here"}


def test_template_braces_and_nested_fields():
    row = {"q": "x", "meta": {"src": "gsm"}, "n": 3}
    assert render_template("{q} \\boxed{} {{q}} {meta.src} {n}", row) == "x \\boxed{} {q} gsm 3"


def test_tokenizer_without_chat_template(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    r = recipe(inline=ROWS)
    with pytest.raises(UserError, match="no chat template"):
        render(r, tok)


def test_kept_row():
    r = recipe(inline=ROWS, keep_fields=["answer"])
    assert kept_row(r.dataset.keep_fields, ROWS[0]) == {"answer": "3"}
    assert kept_row(dataset(inline=ROWS, keep_fields="none").keep_fields, ROWS[0]) == {}
    assert kept_row(dataset(inline=ROWS).keep_fields, {"x": float("nan"), "y": b"b"}) == {"x": None, "y": "b"}
