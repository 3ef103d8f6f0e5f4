"""`os-sample export`: each format loaded back with `datasets` and checked against the shards.

The output folder is written by the real `generate` (built-in demo pair, per-token records) once
for the module; shards are read back with the writer's own `iter_records`.
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from os_cli.report.answers import completion_matches
from os_cli.report.summary import summarize_dir
from os_cli.store.writer import iter_records, list_shards

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from os_cli.cli import _register, app

    _register()
    out = tmp_path_factory.mktemp("export") / "run"
    result = runner.invoke(app, ["generate", "--config", "demo", "--output", str(out), "--limit", "16",
                                 "--set", "output.per_token=true", "--set", "sampling.max_new_tokens=48"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def shards(run_dir):
    return {r["id"]: r for r in iter_records(run_dir)}


def export(cli_app, *args):
    return runner.invoke(cli_app, ["export", *map(str, args)])


def _check_weights(rows, shards):
    lws = [shards[r["id"]]["logprob"]["theta"] - shards[r["id"]]["logprob"]["q"] for r in rows]
    top = max(lws)
    total = math.fsum(math.exp(x - top) for x in lws)
    for row, lw in zip(rows, lws):
        assert row["log_weight"] == pytest.approx(lw, abs=1e-12)
        assert row["weight"] == pytest.approx(math.exp(lw - top) / total, rel=1e-12)
        toks = shards[row["id"]]["tokens"]
        assert row["token_log_weights"] == pytest.approx(
            [a - b for a, b in zip(toks["logprob_theta"], toks["logprob_q"])], abs=1e-12)
        # the per-token weights add up to the sequence weight (sums over the same tokens)
        assert math.fsum(row["token_log_weights"]) == pytest.approx(row["log_weight"], abs=1e-4)
    assert math.fsum(r["weight"] for r in rows) == pytest.approx(1.0, abs=1e-12)


def test_trl_is_prompt_completion_with_weights(cli_app, run_dir, shards, tmp_path):
    import datasets

    target = tmp_path / "train.jsonl"
    result = export(cli_app, run_dir, "--format", "trl", "--to", target)
    assert result.exit_code == 0, result.output
    ds = datasets.load_dataset("json", data_files=str(target), split="train")
    assert ds.num_rows == len(shards) == 16
    assert {"prompt", "completion", "log_weight", "weight", "token_log_weights"} <= set(ds.column_names)
    rows = list(ds)
    for row in rows:
        rec = shards[row["id"]]
        # theta's rendered prompt, chat template already applied: TRL's standard prompt-completion type
        assert row["prompt"] == rec["prompt"] and row["prompt"].startswith("<|im_start|>user\n")
        assert row["completion"] == rec["completion"]
        assert row["num_tokens"] == rec["num_tokens"] and row["finish_reason"] == rec["finish_reason"]
    _check_weights(rows, shards)


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_parquet_and_hf_flatten_every_field(cli_app, run_dir, shards, tmp_path, fmt):
    import datasets

    target = tmp_path / ("train.parquet" if fmt == "parquet" else "train_ds")
    result = export(cli_app, run_dir, "--format", fmt, "--to", target)
    assert result.exit_code == 0, result.output
    if fmt == "parquet":
        ds = datasets.load_dataset("parquet", data_files=str(target), split="train")
    else:
        ds = datasets.load_from_disk(str(target))
    assert ds.num_rows == 16
    rows = list(ds)
    for row in rows:
        rec = shards[row["id"]]
        assert row["prompt_t"] == rec["prompt_t"] and row["completion"] == rec["completion"]
        for key in ("alpha", "ess_ratio", "kl_theta", "kl_t"):
            for stat in ("mean", "min", "max"):
                assert row[f"{key}_{stat}"] == rec[key][stat]
        for key in ("theta", "t", "q"):
            assert row[f"logprob_{key}"] == rec["logprob"][key]
        for key, value in rec["row"].items():  # the kept dataset fields
            assert row[f"row_{key}"] == value
        assert row["tokens_ids"] == rec["tokens"]["ids"]
        assert row["tokens_alpha"] == pytest.approx(rec["tokens"]["alpha"])
    _check_weights(rows, shards)


def test_where_correct_keeps_what_inspect_counts_as_correct(cli_app, run_dir, shards, tmp_path):
    target = tmp_path / "correct.jsonl"
    result = export(cli_app, run_dir, "-f", "trl", "--to", target, "--where", "correct")
    assert result.exit_code == 0, result.output
    kept = [json.loads(line) for line in target.read_text().splitlines()]
    expected = {i for i, r in shards.items() if completion_matches(r["completion"], r["row"]["answer"])}
    assert {r["id"] for r in kept} == expected
    assert len(kept) == summarize_dir(run_dir)["overall"]["answers"]["correct"]
    assert 0 < len(kept) < len(shards), "the demo run should hold right and wrong answers"
    _check_weights(kept, shards)  # renormalised over the kept records only
    assert f"exported {len(kept)} of 16 records" in result.output


def test_finish_reason_and_min_ess_filters(cli_app, run_dir, shards, tmp_path):
    target = tmp_path / "f.parquet"
    means = sorted(r["ess_ratio"]["mean"] for r in shards.values())
    cut = means[len(means) // 2]
    result = export(cli_app, run_dir, "-f", "parquet", "--to", target, "--finish-reason", "eos",
                    "--min-ess", cut)
    assert result.exit_code == 0, result.output
    import datasets

    ids = set(datasets.load_dataset("parquet", data_files=str(target), split="train")["id"])
    expected = {i for i, r in shards.items() if r["finish_reason"] == "eos" and r["ess_ratio"]["mean"] >= cut}
    assert ids == expected and 0 < len(ids) < 16


def test_push_to_hub_goes_through_datasets(cli_app, run_dir, shards, tmp_path, monkeypatch):
    """No network here: everything up to datasets' own Dataset.push_to_hub runs, the call is recorded."""
    import datasets

    calls = []

    def fake_push(self, repo_id, *args, **kwargs):
        calls.append((repo_id, kwargs, self.to_list()))

    monkeypatch.setattr(datasets.Dataset, "push_to_hub", fake_push)
    target = tmp_path / "t.jsonl"
    result = export(cli_app, run_dir, "-f", "trl", "--to", target, "--push-to-hub", "me/os-data", "--private")
    assert result.exit_code == 0, result.output
    (repo, kwargs, rows), = calls
    assert repo == "me/os-data" and kwargs.get("private") is True
    on_disk = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in on_disk]
    assert [r["weight"] for r in rows] == pytest.approx([r["weight"] for r in on_disk], rel=1e-12)
    assert "pushed to me/os-data" in result.output


def test_bad_input_is_refused_and_nothing_is_lost(cli_app, run_dir, tmp_path):
    target = tmp_path / "keep.jsonl"
    target.write_text("precious\n")
    cases = [
        (["-f", "trl", "--to", target], "exists; pass --overwrite"),
        (["-f", "csv", "--to", tmp_path / "x"], "allowed: trl, parquet, hf"),
        (["-f", "trl", "--to", tmp_path / "x", "--where", "right"], "allowed: correct"),
        (["-f", "trl", "--to", tmp_path / "x", "--finish-reason", "done"], "allowed: eos, length, stop"),
        (["-f", "trl", "--to", tmp_path / "x", "--min-ess", "-1"], "non-negative"),
        (["-f", "trl", "--to", tmp_path / "x", "--min-ess", "1e9"], "no record to export (16 read; dropped: 16 by min_ess)"),
        (["-f", "trl"], "give --to PATH, --push-to-hub REPO"),
        (["-f", "trl", "--to", target / "x.jsonl"], "is a file, not a folder"),
        (["-f", "trl", "--to", run_dir / "shard-00007.jsonl"], "is a name os-sample uses for the run"),
        (["-f", "trl", "--to", run_dir / "manifest.json", "--overwrite"], "is a name os-sample uses for the run"),
    ]
    for args, message in cases:
        result = export(cli_app, run_dir, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
        assert "Traceback" not in result.output
    assert target.read_text() == "precious\n"
    assert not (tmp_path / "x").exists()
    result = export(cli_app, tmp_path / "missing", "-f", "trl", "--to", tmp_path / "y")
    assert result.exit_code == 2 and "no such folder" in result.output


def test_overwrite_replaces_and_refuses_foreign_folders(cli_app, run_dir, shards, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    result = export(cli_app, run_dir, "-f", "hf", "--to", folder, "--overwrite")
    assert result.exit_code == 2 and "not a saved dataset" in result.output
    assert (folder / "notes.txt").read_text() == "keep"
    a_file = tmp_path / "f.csv"
    a_file.write_text("x\n")
    result = export(cli_app, run_dir, "-f", "hf", "--to", a_file, "--overwrite")
    assert result.exit_code == 2 and "is a file; --format hf writes a folder" in result.output
    assert a_file.read_text() == "x\n" and not list(tmp_path.glob(".f.csv.tmp-*"))
    target = tmp_path / "ds"
    assert export(cli_app, run_dir, "-f", "hf", "--to", target).exit_code == 0
    result = export(cli_app, run_dir, "-f", "hf", "--to", target, "--overwrite", "--finish-reason", "eos")
    assert result.exit_code == 0, result.output
    import datasets

    eos = sum(r["finish_reason"] == "eos" for r in shards.values())
    assert datasets.load_from_disk(str(target)).num_rows == eos


def test_duplicated_ids_are_a_run_time_error(cli_app, run_dir, tmp_path):
    import shutil

    copy = tmp_path / "dup"
    shutil.copytree(run_dir, copy)
    shard = list_shards(copy)[0]
    first = shard.read_text().splitlines()[0]
    shard.write_text(shard.read_text() + first + "\n")
    result = export(cli_app, copy, "-f", "trl", "--to", tmp_path / "d.jsonl")
    assert result.exit_code == 1 and "more than once" in result.output
    assert not (tmp_path / "d.jsonl").exists()


def test_rows_of_records_without_tokens_get_no_token_column(tmp_path):
    """Shards without per-token data: no token_log_weights; columns are the union over records."""
    from os_cli.report.export import build_rows
    from os_cli.report.export_write import to_dataset

    recs = [
        {"id": "a", "prompt": "p", "completion": "c", "num_tokens": 2, "finish_reason": "eos",
         "logprob": {"theta": -1.0, "t": -2.0, "q": -1.5}, "row": {"x": 1}},
        {"id": "b", "prompt": "p", "completion": "d", "num_tokens": 3, "finish_reason": "length",
         "logprob": {"theta": -4.0, "t": -2.0, "q": -2.5}, "row": {"x": 2, "y": "only here"}},
    ]
    ds = to_dataset(build_rows(recs, "parquet"))
    assert "token_log_weights" not in ds.column_names
    assert ds["row_y"] == [None, "only here"]
    assert ds["log_weight"] == [0.5, -1.5]
    assert ds["weight"] == pytest.approx([math.exp(0.5) / (math.exp(0.5) + math.exp(-1.5)),
                                          math.exp(-1.5) / (math.exp(0.5) + math.exp(-1.5))])


def test_a_field_with_mixed_types_is_named():
    from os_cli.errors import UserError
    from os_cli.report.export_write import to_dataset

    with pytest.raises(UserError, match="column 'row_answer' holds values of different types"):
        to_dataset([{"id": "a", "row_answer": 3}, {"id": "b", "row_answer": "three"}])


def test_a_folder_without_records_is_refused(cli_app, run_dir, tmp_path):
    import shutil

    empty = tmp_path / "empty"
    shutil.copytree(run_dir, empty)
    for shard in list_shards(empty):
        shard.unlink()
    result = export(cli_app, empty, "-f", "trl", "--to", tmp_path / "e.jsonl")
    assert result.exit_code == 2 and "no records yet" in result.output


def test_where_correct_names_what_is_wrong_with_the_answer_field(cli_app, run_dir, tmp_path):
    result = export(cli_app, run_dir, "-f", "trl", "--to", tmp_path / "a.jsonl", "--where", "correct",
                    "--answer-field", "")
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "--answer-field '' turns answers off" in text, text
    assert "the recipe has no dataset.answer_field" not in text  # it has one: answer
    result = export(cli_app, run_dir, "-f", "trl", "--to", tmp_path / "b.jsonl", "--where", "correct",
                    "--answer-field", "nosuch")
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert "--answer-field nosuch: no record's row has this field" in text and "row fields: answer, " in text, text
    assert not (tmp_path / "b.jsonl").exists()
