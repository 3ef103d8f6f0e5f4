"""The bundled `self-distill` recipe: one model (builtin:demo-theta) as theta and as its own teacher,
the teacher side shown the reference solution as a hint, run end to end through the CLI on a few rows."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from os_cli.store.writer import iter_records

REPO_ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _train_demo():
    spec = importlib.util.spec_from_file_location("_self_distill_train_demo", REPO_ROOT / "scripts" / "train_demo.py")
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_recipe_uses_the_hint_form_the_demo_pair_was_trained_on():
    raw = yaml.safe_load((REPO_ROOT / "recipes" / "self-distill.yaml").read_text())
    assert raw["models"]["theta"] == "builtin:demo-theta" and raw["models"]["teacher"] is None
    assert raw["prompts"]["teacher"]["template"] == _train_demo().HINT_TEMPLATE
    assert raw["prompts"]["theta"]["template"] == "{question}"


def test_self_distill_runs_end_to_end(cli_app, tmp_path):
    listed = runner.invoke(cli_app, ["recipes"])
    assert listed.exit_code == 0 and "self-distill" in listed.stdout
    out = tmp_path / "run"
    result = runner.invoke(cli_app, ["generate", "--config", "self-distill", "--output", str(out),
                                     "--set", "dataset.limit=4", "--set", "sampling.max_new_tokens=40"])
    assert result.exit_code == 0, result.output
    records = sorted(iter_records(out), key=lambda r: r["id"])
    problems = [json.loads(line) for line in
                (REPO_ROOT / "os_cli" / "builtin" / "demo-problems.jsonl").read_text().splitlines()[:4]]
    assert [r["id"] for r in records] == [p["id"] for p in problems]
    for record, problem in zip(records, problems):
        # theta sees the bare question; its teacher side, the same weights, the reference solution too
        assert f"{problem['question']} Solution: {problem['solution']}" in record["prompt_t"]
        assert "Solution:" not in record["prompt"] and problem["question"] in record["prompt"]
        assert record["tokens"]["ids"] and len(record["tokens"]["logprob_t"]) == len(record["tokens"]["ids"])
    # one model, two prompts: the hinted side is a different distribution, so q* is not theta
    assert any(abs(r["logprob"]["theta"] - r["logprob"]["q"]) > 1e-3 for r in records)
    target = tmp_path / "train.jsonl"
    exported = runner.invoke(cli_app, ["export", str(out), "--format", "trl", "--to", str(target)])
    assert exported.exit_code == 0, exported.output
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["token_tis_weights"]) == len(r["token_log_weights"]) for r in rows)
