"""User text is printed as written: no emoji codes (`:-1:`, `:smile:`), no markup (`[red]`, `[/]`).

Runs the real CLI on the tiny test models; paths, stop strings, ids and record values that look like
rich's emoji codes or markup must come out unchanged."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

STOPS = [":smile:", ":-1:", "[/]", "[red]x"]


def cli(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})


def recipe_file(tmp_path, tiny_models, **sampling):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"qid": qid, "q": f"What is {i} plus 3?", "topic": topic}) + "\n"
                            for i, (qid, topic) in enumerate([("[red]a", "[bold]x[/]"), (":smile:", ":-1:")])))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"], "device": "cpu"},
        "sampling": {"max_new_tokens": 3, "seed": 1, **sampling},
        "dataset": {"source": str(data), "id_field": "qid"},
        "prompts": {"theta": {"template": "{q}", "chat_template": False}}}))
    return path


def test_an_error_shows_the_value_as_typed(tmp_path, tiny_models, cli_app):
    result = cli(cli_app, "validate", recipe_file(tmp_path, tiny_models), "--set", "models.device=cuda:-1")
    assert result.exit_code == 2
    assert "--set models.device=cuda:-1: models.device" in result.stderr and "\U0001f44e" not in result.stderr


def test_recipe_diff_ids_paths_and_values_are_literal(tmp_path, tiny_models, cli_app):
    recipe, out = recipe_file(tmp_path, tiny_models), tmp_path / "[red]out :smile:"
    result = cli(cli_app, "generate", "--config", recipe, "--output", out)
    assert result.exit_code == 0, result.output
    assert f"output {out}" in " ".join(result.stderr.replace("│", " ").split())  # the summary table's path
    result = cli(cli_app, "generate", "--config", recipe, "--output", out, "--set", f"sampling.stop={json.dumps(STOPS)}")
    assert result.exit_code == 2
    assert 'sampling.stop: [] -> [":smile:", ":-1:", "[/]", "[red]x"]' in result.stderr, result.stderr
    result = cli(cli_app, "generate", "--config", recipe, "--output", tmp_path / "o2", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "row '[red]a': theta prompt" in result.stdout and "row ':smile:': theta prompt" in result.stdout
    result = cli(cli_app, "validate", recipe)
    assert result.exit_code == 0, result.output
    assert "row ':smile:'" in result.stdout or "row '[red]a'" in result.stdout
    result = cli(cli_app, "inspect", out, "--by", "topic")
    assert result.exit_code == 0, result.output
    assert "[bold]x[/]" in result.stdout and ":-1:" in result.stdout and str(out) in result.stdout


def test_bench_heading_shows_the_recipe_name_as_written(tmp_path, tiny_models, cli_app):
    recipe = recipe_file(tmp_path, tiny_models)
    named = recipe.rename(tmp_path / "[red]mine.yaml")
    result = cli(cli_app, "bench", "--config", named, "--batch-sizes", "1", "--prompts", "1", "--max-new-tokens", "2")
    assert result.exit_code == 0, result.output
    assert "bench [red]mine: " in result.stdout
