"""`os-sample generate / validate / recipes` end to end through the CLI, on the tiny test models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from os_cli.cli import _register, app
from os_cli.store.record_format import read_ids

ROWS = [{"qid": f"q{i}", "question": f"What is {i} plus 3?", "answer": str(i + 3), "hint": f"{i}+3={i + 3}"}
        for i in range(5)]


_register()
runner = CliRunner()


def cli(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


@pytest.fixture
def work(tmp_path, tiny_models):
    """A recipe over a local JSONL of 5 rows: tiny theta and teacher, the teacher's prompt has a hint."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    recipe = {
        "description": "test recipe",
        "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"]},
        "sampling": {"max_new_tokens": 4, "batch_size": 3, "seed": 3},
        "dataset": {"source": str(data), "id_field": "qid", "keep_fields": ["question", "answer"]},
        "prompts": {
            "theta": {"template": "{question}"},
            "teacher": {"template": "{question}\nHint: {hint}"},
        },
        "output": {"shard_size": 2},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return {"recipe": path, "out": tmp_path / "out", "data": data, "tmp": tmp_path, "dict": recipe}


def shards(out: Path) -> list[Path]:
    return sorted(out.glob("shard-*.jsonl"))


def records(out: Path) -> list[dict]:
    return [json.loads(line) for s in shards(out) for line in s.read_text().splitlines()]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_generate_end_to_end(work):
    result = cli("generate", "--config", work["recipe"], "--output", work["out"])
    assert result.exit_code == 0, result.output
    out = work["out"]
    # 5 records, batches of 3, shards of 2: the first batch fills shard 0 and spills into shard 1
    assert [s.name for s in shards(out)] == ["shard-00000.jsonl", "shard-00001.jsonl", "shard-00002.jsonl"]
    recs = records(out)
    assert [r["id"] for r in recs] == [r["qid"] for r in ROWS]
    assert read_ids(out / "ids.txt") == [r["qid"] for r in ROWS]
    assert (out / "errors.jsonl").read_text() == ""
    m = manifest(out)
    assert m["status"] == "complete" and m["counts"] == {"planned": 5, "records": 5, "errors": 0}
    assert m["world_size"] == 1 and m["seed"] == 3 and m["device"] == "cpu" and m["finished_at"]
    assert m["models"]["theta"] == work["dict"]["models"]["theta"]
    for r, row in zip(recs, ROWS):
        assert set(r) == {"id", "sample", "alpha_method", "prompt", "prompt_t", "completion", "num_tokens", "finish_reason",
                          "alpha", "ess_ratio", "kl_theta", "kl_t", "logprob", "row"}
        assert r["alpha_method"] == "kl_symmetry"
        assert row["question"] in r["prompt"] and "Hint" not in r["prompt"]
        assert f"Hint: {row['hint']}" in r["prompt_t"]
        assert r["prompt"].startswith("<|im_start|>user\n") and r["prompt"].endswith("<|im_start|>assistant\n")
        assert 1 <= r["num_tokens"] <= 4 and r["finish_reason"] in ("eos", "length")
        assert 0.5 <= r["alpha"]["min"] <= r["alpha"]["mean"] <= r["alpha"]["max"] <= 1.0
        assert set(r["ess_ratio"]) == set(r["kl_t"]) == {"mean", "min", "max"}
        assert set(r["logprob"]) == {"theta", "t", "q"} and all(v <= 0 for v in r["logprob"].values())
        assert r["row"] == {"question": row["question"], "answer": row["answer"]}
    assert "wrote" in result.stdout and "5 records" in result.stdout
    assert "records 5/5" in result.stderr  # plain progress lines without a TTY

    # Same recipe, one batch of 5, per-token traces, no row fields: the same samples (row seeds do not
    # depend on batches), and every shard loads with `datasets`.
    other = work["tmp"] / "other"
    result = cli("generate", "--config", work["recipe"], "--output", other, "--set", "sampling.batch_size=5",
                 "--set", "output.per_token=true", "--set", "dataset.keep_fields=none", "--set", "output.shard_size=10")
    assert result.exit_code == 0, result.output
    key = lambda r: (r["id"], r["completion"], r["num_tokens"], r["finish_reason"])  # noqa: E731
    assert [key(r) for r in records(other)] == [key(r) for r in recs]
    for r in records(other):
        tokens = r["tokens"]
        assert len(tokens["ids"]) == len(tokens["alpha"]) == len(tokens["logprob_q"]) == r["num_tokens"]
        assert len(tokens["ess_ratio"]) == len(tokens["kl_theta"]) == len(tokens["kl_t"]) == r["num_tokens"]
        assert abs(sum(tokens["logprob_q"]) - r["logprob"]["q"]) < 1e-3
        assert r["row"] == {}
    import datasets

    for folder, n_shards in ((out, 3), (other, 1)):
        files = [str(s) for s in shards(folder)]
        assert len(files) == n_shards
        ds = datasets.load_dataset("json", data_files=files, split="train")
        assert len(ds) == 5


def test_limit_then_extend_resumes_by_default(work):
    out = work["out"]
    assert cli("generate", "--config", work["recipe"], "--output", out, "--limit", "3").exit_code == 0
    assert manifest(out)["counts"] == {"planned": 3, "records": 3, "errors": 0}
    first = records(out)
    result = cli("generate", "--config", work["recipe"], "--output", out)
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stderr and "3 of 5 rows already written" in result.stderr
    recs = records(out)
    assert sorted(r["id"] for r in recs) == sorted(r["qid"] for r in ROWS)
    assert recs[:3] == first
    assert manifest(out)["attempts"] == 2 and manifest(out)["counts"]["records"] == 5
    # complete: a third run has nothing to do and loads no model
    result = cli("generate", "--config", work["recipe"], "--output", out, "--resume")
    assert result.exit_code == 0 and "nothing to do" in result.stderr and "loading models" not in result.stderr
    # a smaller limit would leave records outside the plan
    result = cli("generate", "--config", work["recipe"], "--output", out, "--limit", "2")
    assert result.exit_code == 2 and "outside this run's plan" in result.stderr


def test_changed_recipe_refuses_and_overwrite_restarts(work):
    out = work["out"]
    assert cli("generate", "--config", work["recipe"], "--output", out, "--limit", "2").exit_code == 0
    result = cli("generate", "--config", work["recipe"], "--output", out, "--set", "sampling.temperature=0.5")
    assert result.exit_code == 2
    assert "sampling.temperature: 1.0 -> 0.5" in result.stderr and "--overwrite" in result.stderr
    assert "Traceback" not in result.output
    (out / "keep.txt").write_text("mine")
    result = cli("generate", "--config", work["recipe"], "--output", out, "--set", "sampling.temperature=0.5",
                 "--overwrite", "--limit", "3")
    assert result.exit_code == 0, result.output
    assert len(records(out)) == 3 and manifest(out)["recipe"]["sampling"]["temperature"] == 0.5
    assert manifest(out)["attempts"] == 1 and (out / "keep.txt").exists()
    result = cli("generate", "--config", work["recipe"], "--output", out, "--resume", "--overwrite")
    assert result.exit_code == 2 and "exclude each other" in result.stderr


def test_oom_halves_batch_size(work):
    result = cli("generate", "--config", work["recipe"], "--output", work["out"], "--set", "sampling.batch_size=4",
                 "--limit", "4", env={"OS_SAMPLE_INJECT_OOM": "4"})
    assert result.exit_code == 0, result.output
    assert "out of memory at batch size 4: retrying with batch size 2" in result.stderr
    assert sorted(r["id"] for r in records(work["out"])) == sorted(r["qid"] for r in ROWS[:4])
    result = cli("generate", "--config", work["recipe"], "--output", work["tmp"] / "o2",
                 env={"OS_SAMPLE_INJECT_OOM": "3,1"})
    assert result.exit_code == 1
    assert "out of memory with batch size 1" in result.stderr and "Traceback" not in result.output
    assert manifest(work["tmp"] / "o2")["status"] == "failed"


def test_bad_rows_error_or_skip(work):
    data = work["data"]
    data.write_text(json.dumps({"qid": "broken", "question": "no hint"}) + "\n" + data.read_text())
    result = cli("generate", "--config", work["recipe"], "--output", work["out"], "--limit", "3")
    assert result.exit_code == 2
    assert "row 'broken'" in result.stderr and "'hint'" in result.stderr and "prompts.teacher.template" in result.stderr
    assert not work["out"].exists()
    result = cli("generate", "--config", work["recipe"], "--output", work["out"], "--set", "prompts.on_bad_row=skip",
                 "--limit", "3")
    assert result.exit_code == 0, result.output
    errors = [json.loads(line) for line in (work["out"] / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["broken"] and "'hint'" in errors[0]["reason"]
    assert errors[0]["row"]["question"] == "no hint"
    assert manifest(work["out"])["counts"] == {"planned": 3, "records": 2, "errors": 1}
    assert read_ids(work["out"] / "ids.txt") == ["broken", "q0", "q1"]


def test_dry_run_renders_without_models_or_writes(work):
    result = cli("generate", "--config", work["recipe"], "--output", work["out"], "--dry-run", "--limit", "2")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "resolved recipe" in text and "max_new_tokens: 4" in text and "limit: 2" in text
    assert "Hint: 0+3=3" in text and "What is 1 plus 3?" in text
    assert "rows: 2 planned" in text and "a new run" in text
    assert not work["out"].exists()


@pytest.mark.parametrize(
    "args,expect",
    [
        (["--set", "sampling.temprature=0.5"], "did you mean 'sampling.temperature'"),
        (["--set", "sampling.batch_size=many"], "sampling.batch_size: must be an integer"),
        (["--set", "alpha.min=1.5"], "alpha.min: must be in [0, 1]"),
        (["--set", "dataset.source=/no/such/file.jsonl"], "dataset file not found"),
        (["--set", "models.theta=./missing-model"], "model folder not found"),
    ],
)
def test_invalid_input_exits_2_without_traceback(work, args, expect):
    result = cli("generate", "--config", work["recipe"], "--output", work["out"], *args)
    assert result.exit_code == 2, result.output
    assert expect in result.stderr and "error:" in result.stderr
    assert "Traceback" not in result.output


def test_unreachable_hub_names_the_model_or_dataset(work):
    result = cli("generate", "--config", work["recipe"], "--output", work["out"],
                 "--set", "models.teacher=some-org/not-cached-model")
    assert result.exit_code == 1, result.output
    assert "models.teacher" in result.stderr and "hub is unreachable" in result.stderr
    result = cli("generate", "--config", work["recipe"], "--dry-run", "--set", "dataset.source=some-org/not-cached-data")
    assert result.exit_code == 1 and "hub is unreachable" in result.stderr


def test_debug_shows_traceback(work):
    result = cli("generate", "--config", work["recipe"], "--set", "sampling.temprature=0.5", "--debug")
    assert result.exit_code == 2 and "Traceback" in result.stderr


def test_validate_and_recipes_commands(work, tmp_path):
    result = cli("validate", work["recipe"])
    assert result.exit_code == 0 and "ok" in result.stdout and "sha256:" in result.stdout
    assert "question, hint" in result.stdout
    result = cli("recipes")
    assert result.exit_code == 0
    assert "chat" in result.stdout and "math-hint" in result.stdout and "hinted teacher" in result.stdout
    from os_cli.recipe import list_bundled

    for name, _, _ in list_bundled():
        result = cli("validate", name)
        assert result.exit_code == 0, (name, result.output)
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  theta: org/m\n  techer: org/t\n")
    result = cli("validate", bad, "--set", "sampling.seed=1")
    assert result.exit_code == 2 and "bad.yaml:3" in result.stderr and "did you mean 'models.teacher'" in result.stderr
    result = cli("generate", "--config", "no-such-recipe")
    assert result.exit_code == 2 and "bundled recipes" in result.stderr


def test_python_dash_m_entry_point(work):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "os_cli", "validate", str(work["recipe"])], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout


def test_dashboard_live_and_plain_views():
    import io

    from rich.console import Console

    from os_cli.cli.dashboard import Dashboard, memory_usage

    assert "RSS" in memory_usage() or "cuda" in memory_usage()
    buffer = io.StringIO()
    dash = Dashboard(total=4, done=1, console=Console(file=buffer, force_terminal=True, width=100), live=True)
    dash.start()
    dash.batch_started(2, "shard-00000.jsonl")
    dash.batch_done(2, 10, [0.6] * 10, [0.9] * 10, shard="shard-00000.jsonl")
    dash.note("out of memory at batch size 2: retrying with batch size 1")
    dash.stop()
    text = buffer.getvalue()
    assert "3/4" in text and "0.600" in text and "0.900" in text and "retrying" in text and "shard-00000" in text
    buffer = io.StringIO()
    plain = Dashboard(total=2, console=Console(file=buffer, width=200), live=False)
    plain.start()
    plain.batch_started(2, "shard-00000.jsonl")
    plain.batch_done(2, 6, [0.5, 0.7], [1.0, 0.8])
    plain.stop()
    line = buffer.getvalue().splitlines()[-1]
    assert "records 2/2" in line and "eta done" in line and "alpha 0.600" in line and "ess 0.900" in line
    assert "batch 2" in line and "tok/s" in line and "shard-00000.jsonl" in line
    Console(file=buffer, width=120).print(plain.summary_table("complete", "out", errors=1))
    assert "skipped rows" in buffer.getvalue() and "mean alpha" in buffer.getvalue()


def test_validate_says_ok_last_and_only_when_every_check_passed(work):
    result = cli("validate", work["recipe"], "--set", "prompts.theta.template={questoin}")
    assert result.exit_code == 2 and "questoin" in result.stderr
    assert "is a valid recipe" not in result.stdout
    result = cli("validate", work["recipe"])
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().splitlines()[-1] == f"ok: {work['recipe']} is a valid recipe"
    assert "without loading data" not in cli("validate", "-h").stdout  # it reads rows and the tokenizers
    assert "first few rows" in " ".join(cli("validate", "-h").stdout.split())


def test_validate_and_dry_run_count_records_as_rows_times_samples(work, tmp_path):
    result = cli("validate", work["recipe"], "--set", "sampling.num_samples=4", "--set", "dataset.limit=3")
    assert result.exit_code == 0, result.output
    assert "up to 3 rows x 4 samples = up to 12 records" in result.stdout
    assert "split train" not in result.stdout  # a local file has no split
    result = cli("generate", "--config", work["recipe"], "--output", work["out"], "--dry-run", "--limit", "2",
                 "--set", "sampling.num_samples=4")
    assert result.exit_code == 0, result.output
    assert "records: 2 rows x 4 samples = 8 records" in result.stdout
    chat = dict(work["dict"], prompts={"theta": {"messages_field": "messages"},
                                       "teacher": {"messages_field": "messages", "system": "Be right."}})
    chat["dataset"] = {"inline": [{"messages": [{"role": "user", "content": "Hi"}]}]}
    path = tmp_path / "chat.yaml"
    path.write_text(yaml.safe_dump(chat))
    result = cli("validate", path)
    assert result.exit_code == 0, result.output
    assert "fields          messages\n" in result.stdout  # once, though both prompts read it
    assert "1 row x 1 sample = 1 record\n" in result.stdout


def test_each_rank_labels_its_output_under_torchrun(tmp_path, capsys):
    """world size 2: rank 1's log lines, summary heading and interruption line say they are rank 1's."""
    from types import SimpleNamespace

    from os_cli.cli.generate import _DashboardEvents

    events = _DashboardEvents(SimpleNamespace(rank=1, world_size=2, is_main=False), tmp_path / "out", 0)
    events.note("loading models")
    events.started(total=4, done=0, limit=2, shard="shard-r01-00000.jsonl")
    events.written(3, [0.5] * 3, [0.9] * 3, "shard-r01-00000.jsonl")
    events.finished("interrupted", {}, 1)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and line[0] not in "┌│└├"]
    assert lines[0] == "rank 1/2 | loading models"
    assert all("rank 1/2 | " in line for line in lines if line.startswith("[")), lines
    assert "os-sample generate, rank 1/2: interrupted" in err and "generate :" not in err
    assert "rank 1/2: interrupted: 1 records written this run" in err
    single = _DashboardEvents(SimpleNamespace(rank=0, world_size=1, is_main=True), tmp_path / "out", 0)
    single.note("loading models")
    single.started(total=1, done=0, limit=1, shard="shard-00000.jsonl")
    single.finished("interrupted", {}, 0)
    err = capsys.readouterr().err
    assert "rank" not in err and "os-sample generate: interrupted" in err


def test_eta_comes_from_recent_progress_not_the_pipeline_fill_or_resumed_records(monkeypatch):
    """A resumed run (1000 of 1100 done), 16 rows in flight that take 10 s each: the first record ends 10 s
    in and 16 end every 10 s after, so about 100 / 1.6 = 62 s are left, not 100 x 10 s."""
    import io

    from rich.console import Console

    from os_cli.cli import dashboard

    clock = [0.0]
    monkeypatch.setattr(dashboard.time, "monotonic", lambda: clock[0])
    dash = dashboard.Dashboard(total=1100, done=1000, console=Console(file=io.StringIO()), live=False)
    dash.start()
    clock[0] = 10.0
    dash.batch_done(1, 20)
    assert dash.eta_s is None  # one record is no rate (the old estimate: 99 x 10 s = 16m30s)
    for i in range(1, 48):  # 16 records every 10 s, evenly
        clock[0] = 10.0 + i * 10 / 16
        dash.batch_done(1, 20)
    left = (1100 - dash.done) / 1.6
    assert 0.8 * left < dash.eta_s < 1.25 * left, (dash.eta_s, left)
    clock[0] += 60  # nothing ends for a minute: the estimate grows instead of standing still
    assert dash.eta_s > 2 * left
