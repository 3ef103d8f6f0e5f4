"""Every bad input is caught before the models load, with a message a user can act on (issue 8: A5, A9, B, C).

Runs the real `os-sample` commands on the tiny test models (see conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

LONG = "Question 7: 7 plus 10 equals 17. " * 120  # far beyond the tiny models' 1024 positions
ROWS = [{"qid": f"q{i}", "question": f"What is {i} plus 3?", "hint": f"{i}+3={i + 3}"} for i in range(4)]


def cli(app, *args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def write_recipe(tmp_path, tiny_models, rows=ROWS, **changes) -> Path:
    data = tmp_path / "rows.jsonl"
    if isinstance(rows, str):
        data.write_text(rows)
    else:
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"], "device": "cpu"},
        "sampling": {"max_new_tokens": 3, "batch_size": 4, "seed": 1},
        "dataset": {"source": str(data), "id_field": "qid"},
        "prompts": {"theta": {"template": "{question}", "chat_template": False},
                    "teacher": {"template": "{question} Hint: {hint}", "chat_template": False}},
    }
    for key, value in changes.items():
        node = recipe
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def records(out: Path) -> list[dict]:
    return [json.loads(line) for s in sorted(out.glob("shard-*.jsonl")) for line in s.read_text().splitlines()]


def errors(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]


def test_ids_are_written_and_resumed_exactly_as_the_dataset_writes_them(tmp_path, tiny_models, cli_app):
    lines = ['{"qid": 1, "question": "a"}', '{"qid": 2, "question": "b"}', '{"qid": 3.5, "question": "c"}',
             '{"qid": "07", "question": "d"}', '{"qid": 123456789012345678901234567890, "question": "e"}']
    recipe = write_recipe(tmp_path, tiny_models, rows="\n".join(lines) + "\n",
                          prompts={"theta": {"template": "{question}", "chat_template": False}})
    out = tmp_path / "out"
    result = cli(cli_app, "generate", "--config", recipe, "--output", out)
    assert result.exit_code == 0, result.output
    expected = ["1", "2", "3.5", "07", "123456789012345678901234567890"]
    assert [r["id"] for r in records(out)] == expected
    ids_file = (out / "ids.txt").read_text().splitlines()
    assert [json.loads(i) if i.startswith('"') else i for i in ids_file] == expected
    result = cli(cli_app, "generate", "--config", recipe, "--output", out)  # resume: nothing left, no duplicate
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in records(out)] == expected


def test_prompt_beyond_the_context_exits_2_or_goes_to_errors(tmp_path, tiny_models, cli_app):
    rows = ROWS[:2] + [{"qid": "long", "question": LONG, "hint": "x"}, {"qid": "hinted", "question": "q",
                                                                          "hint": LONG}]
    recipe = write_recipe(tmp_path, tiny_models, rows=rows)
    out = tmp_path / "out"
    result = cli(cli_app, "generate", "--config", recipe, "--output", out)
    assert result.exit_code == 2, result.output
    assert "row 'long'" in result.stderr and "prompts.theta" in result.stderr
    assert "with 3 new tokens that is" in result.stderr and "> 1024" in result.stderr
    assert "Traceback" not in result.output and not out.exists()
    result = cli(cli_app, "generate", "--config", recipe, "--output", out, "--set", "prompts.on_bad_row=skip")
    assert result.exit_code == 0, result.output
    errs = errors(out)
    assert [e["id"] for e in errs] == ["long", "hinted"]
    assert "prompts.theta" in errs[0]["reason"] and "prompts.teacher" in errs[1]["reason"]
    assert [r["id"] for r in records(out)] == ["q0", "q1"]
    # max_new_tokens alone beyond the context: refused whatever on_bad_row says
    result = cli(cli_app, "generate", "--config", recipe, "--output", tmp_path / "o2", "--set",
                 "sampling.max_new_tokens=5000", "--set", "prompts.on_bad_row=skip")
    assert result.exit_code == 2 and "no prompt fits" in result.stderr and "1024" in result.stderr
    # speculative drafts take positions too (up to min(draft_tokens, max_new_tokens) past a row's last token)
    result = cli(cli_app, "generate", "--config", recipe, "--output", tmp_path / "o3", "--set",
                 "sampling.max_new_tokens=1000", "--set", "sampling.draft_tokens=30", "--set", "prompts.on_bad_row=skip")
    assert result.exit_code == 2 and "no prompt fits" in result.stderr, result.output
    assert "draft 30 past it (sampling.draft_tokens: 30)" in result.stderr and "or sampling.draft_tokens" in result.stderr


def test_empty_prompt_is_skipped_and_the_run_completes(tmp_path, tiny_models, cli_app):
    rows = ROWS[:2] + [{"qid": "empty", "question": "", "hint": "h"}]
    recipe = write_recipe(tmp_path, tiny_models, rows=rows, prompts__on_bad_row="skip")
    out = tmp_path / "out"
    result = cli(cli_app, "generate", "--config", recipe, "--output", out)
    assert result.exit_code == 0, result.output
    assert [e["id"] for e in errors(out)] == ["empty"] and "empty" in errors(out)[0]["reason"]
    assert [r["id"] for r in records(out)] == ["q0", "q1"]


@pytest.mark.parametrize("args,rows,expect", [
    (["--limit", "0"], ROWS, "nothing to generate"),
    (["--set", "dataset.skip=10"], ROWS, "nothing to generate"),
    ([], "\n", "has no rows"),
    ([], '{"qid": "a", "question": "x"}\n{"qid": "b", "question": \n', "rows.jsonl, line 2: not valid JSON"),
    (["--set", "sampling.seed=9223372036854775808"], ROWS, "sampling.seed: must be in [0, 9223372036854775807]"),
    (["--set", "sampling.max_new_tokens=99999999999"], ROWS, "sampling.max_new_tokens: must be in [1, 1048576]"),
    (["--set", "sampling.temperature=1e-40"], ROWS, "temperature 0 / greedy is not supported"),
])
def test_bad_plans_exit_2_before_models_load(tmp_path, tiny_models, cli_app, args, rows, expect):
    recipe = write_recipe(tmp_path, tiny_models, rows=rows)
    result = cli(cli_app, "generate", "--config", recipe, "--output", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert expect in result.stderr and "Traceback" not in result.output
    assert "loading models" not in result.stderr and not (tmp_path / "out").exists()


def test_largest_seed_runs(tmp_path, tiny_models, cli_app):
    recipe = write_recipe(tmp_path, tiny_models, rows=ROWS[:1])
    result = cli(cli_app, "generate", "--config", recipe, "--output", tmp_path / "out",
                 "--set", f"sampling.seed={2**63 - 1}")
    assert result.exit_code == 0, result.output


def test_validate_renders_the_first_rows(tmp_path, tiny_models, cli_app):
    recipe = write_recipe(tmp_path, tiny_models)
    result = cli(cli_app, "validate", recipe)
    assert result.exit_code == 0, result.output
    assert "What is 0 plus 3? Hint: 0+3=3" in result.stdout
    result = cli(cli_app, "validate", recipe, "--set", "prompts.teacher.template={question} Hint: {hnit}")
    assert result.exit_code == 2, result.output
    assert "missing field 'hnit'" in result.stderr and "prompts.teacher.template" in result.stderr
    # with on_bad_row: skip, a typo that no row can fill still fails validate
    result = cli(cli_app, "validate", recipe, "--set", "prompts.theta.template={questoin}",
                 "--set", "prompts.on_bad_row=skip")
    assert result.exit_code == 2 and "none of the first 3 rows" in result.stderr


def test_revision_on_local_models_warns(tmp_path, tiny_models, cli_app):
    recipe = write_recipe(tmp_path, tiny_models, models__revision="v2")
    result = cli(cli_app, "generate", "--config", recipe, "--output", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "warning: models.revision 'v2' is ignored for models.theta" in result.stderr
    assert "ignored for models.teacher" in result.stderr


def test_unreachable_hub_without_offline_flag_fails_fast(tmp_path, tiny_models, cli_app):
    recipe = write_recipe(tmp_path, tiny_models, models__teacher="some-org/not-cached-model")
    env = {"HF_HUB_OFFLINE": None, "HF_DATASETS_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"}
    start = time.monotonic()
    result = cli(cli_app, "generate", "--config", recipe, "--output", tmp_path / "out", env=env)
    assert time.monotonic() - start < 20
    assert result.exit_code == 1, result.output
    assert "unreachable from here: running offline" in result.stderr
    assert "models.teacher" in result.stderr and "not in the Hugging Face cache" in result.stderr


def test_inspect_by_unknown_field_lists_fields(tmp_path, cli_app):
    out = tmp_path / "run"
    out.mkdir()
    stat = {"mean": 0.5, "min": 0.5, "max": 0.5}
    rec = {"id": "1", "alpha_method": "fixed", "prompt": "p", "prompt_t": "p", "completion": "x", "num_tokens": 1,
           "finish_reason": "eos", "alpha": stat, "ess_ratio": stat, "kl_theta": stat, "kl_t": stat,
           "logprob": {"theta": -1.0, "t": -1.0, "q": -1.0}, "row": {"topic": "math"}}
    (out / "shard-00000.jsonl").write_text(json.dumps(rec) + "\n")
    result = cli(cli_app, "inspect", out, "--by", "tpoic")
    assert result.exit_code == 2, result.output
    assert "--by tpoic: no record has this field" in result.stderr
    assert "alpha_method" in result.stderr and "topic" in result.stderr
    assert cli(cli_app, "inspect", out, "--by", "topic").exit_code == 0


def test_bench_batch_size_bound(tmp_path, tiny_models, cli_app):
    recipe = write_recipe(tmp_path, tiny_models)
    result = cli(cli_app, "bench", "--config", recipe, "--batch-sizes", "99999999999999999999")
    assert result.exit_code == 2, result.output
    assert "largest batch size, 65536" in result.stderr and "Traceback" not in result.output


def test_sigterm_stops_a_run_stuck_in_a_model_call_and_it_resumes(tmp_path, tiny_models, cli_app):
    recipe = write_recipe(tmp_path, tiny_models)
    out, marker = tmp_path / "out", tmp_path / "busy"
    cmd = [sys.executable, "-m", "os_cli", "generate", "--config", str(recipe), "--output", str(out)]
    env = {**os.environ, "OS_SAMPLE_INJECT_BUSY": str(marker)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate()[1]
        time.sleep(0.3)  # inside the C loop now
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert time.monotonic() - sent < 8, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "stopped by a signal" in stderr
    result = cli(cli_app, *cmd[3:])  # resume in this process: the folder the killed run left is resumable
    assert result.exit_code == 0, result.output
    assert sorted(r["id"] for r in records(out)) == [r["qid"] for r in ROWS]


def test_an_empty_id_cell_is_named_as_empty_not_missing(tmp_path, tiny_models, cli_app):
    csv = tmp_path / "rows.csv"
    csv.write_text("qid,question,hint\n1,What is 2 plus 3?,5\n,What is 1 plus 1?,2\n")
    recipe = write_recipe(tmp_path, tiny_models, dataset__source=str(csv))
    result = cli(cli_app, "generate", "--config", recipe, "--output", tmp_path / "out", "--dry-run")
    assert result.exit_code == 2, result.output
    assert "dataset row 1: its id ('qid', dataset.id_field) is empty or null" in result.stderr
