"""Command-line habits shared with peer tools, and the one place that silences progress bars."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from os_cli import __version__

runner = CliRunner()
COMMANDS = ["generate", "validate", "recipes", "inspect", "bench", "export"]


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(cli_app, flag):
    result = runner.invoke(cli_app, [flag])
    assert result.exit_code == 0
    assert result.output.strip() == f"os-sample {__version__}"


@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS])
def test_short_help_and_flags_shown_as_flags(cli_app, command):
    short = runner.invoke(cli_app, [*command, "-h"], env={"COLUMNS": "100"})
    long = runner.invoke(cli_app, [*command, "--help"], env={"COLUMNS": "100"})
    assert short.exit_code == long.exit_code == 0, short.output
    assert short.output == long.output
    assert "Usage: os-sample" in short.output
    assert "<bool>" not in short.output
    assert "-h" in short.output and "--debug" in short.output or not command


def test_flags_still_work_as_flags(cli_app, tmp_path):
    """Hiding the type changes only the help: --json still takes no value."""
    result = runner.invoke(cli_app, ["inspect", str(tmp_path / "none"), "--json"])
    assert result.exit_code == 2 and "no such folder" in result.output


def test_completion_is_enabled(cli_app):
    result = runner.invoke(cli_app, ["--help"], env={"COLUMNS": "100"})
    assert "--install-completion" in result.output and "--show-completion" in result.output


def test_completion_script_from_the_installed_command():
    exe = os.path.join(os.path.dirname(sys.executable), "os-sample")
    # Typer detects the parent shell (sh under make, which it does not support) unless detection is off;
    # then --show-completion takes the shell by name, the same script a bash user installs.
    env = dict(os.environ, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    proc = subprocess.run([exe, "--show-completion", "bash"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "_OS_SAMPLE_COMPLETE" in proc.stdout and "complete" in proc.stdout


def test_model_loading_shows_no_progress_bar_and_restores_the_setting(capfd):
    """The API (used by generate and bench) loads without transformers' "Loading weights" bar."""
    from transformers.utils import logging as hf_logging

    from os_cli import OptimalSamplingModel

    hf_logging.enable_progress_bar()
    OptimalSamplingModel("builtin:demo-theta", "builtin:demo-teacher", device="cpu")
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err
    assert hf_logging.is_progress_bar_enabled(), "a library user's own setting must be restored"


def test_without_quiet_loading_the_bar_would_show(capfd):
    """The check above can fail: loading directly, with bars enabled, does print the bar."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from os_cli.models.loading import resolve_model_path

    hf_logging.enable_progress_bar()
    AutoModelForCausalLM.from_pretrained(resolve_model_path("builtin:demo-theta"))
    assert "Loading weights" in capfd.readouterr().err
