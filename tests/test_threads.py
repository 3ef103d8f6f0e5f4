"""--threads N of generate and bench (CPU threads, one helper: cli/common.apply_threads) and bench's note
on a machine whose load exceeds its cores."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from typer.testing import CliRunner


def cli(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture
def recipe(tmp_path, tiny_models):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"q": f"What is {i} plus 3?"}) + "\n" for i in range(2)))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"], "device": "cpu"},
        "sampling": {"max_new_tokens": 2, "seed": 1}, "dataset": {"source": str(data)},
        "prompts": {"theta": {"template": "{q}", "chat_template": False},
                    "teacher": {"template": "{q} Hint: think.", "chat_template": False}}}))
    return path


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("command", ["generate", "bench"])
def test_threads_is_checked_and_documented_as_cpu_only(cli_app, recipe, tmp_path, command):
    help_text = " ".join(cli(cli_app, command, "-h").stdout.split())
    assert "--threads" in help_text and "CPU only" in help_text
    cores = os.cpu_count()
    for value in (0, -2, cores + 1):
        result = cli(cli_app, command, "--config", recipe, "--threads", value)
        assert result.exit_code == 2, result.output
        assert f"--threads {value}: give a number of CPU threads from 1 to {cores}" in result.stderr
        assert "Traceback" not in result.output


def test_generate_threads_sets_torchs_cpu_threads(cli_app, recipe, tmp_path, restore_threads):
    if os.cpu_count() < 2:
        pytest.skip("one core: nothing to change")
    torch.set_num_threads(2)
    result = cli(cli_app, "generate", "--config", recipe, "--output", tmp_path / "out", "--threads", 1)
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("load", ["busy", "idle"])
def test_bench_says_when_the_machine_is_busy(cli_app, recipe, monkeypatch, restore_threads, load):
    cores = os.cpu_count()
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 3.0, 1.0, 1.0) if load == "busy" else (0.1, 0.1, 0.1))
    result = cli(cli_app, "bench", "--config", recipe, "--batch-sizes", "1", "--prompts", "1", "--threads", 1)
    assert result.exit_code == 0, result.output
    note = f"note: this machine is busy (1-minute load average {cores + 3.0:.1f} on {cores} cores)"
    assert (note in result.stdout) == (load == "busy"), result.stdout
    assert torch.get_num_threads() == 1
