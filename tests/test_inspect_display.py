"""What `inspect` shows a person: 80-column tables, builtin model names, means that agree with
generate's end-of-run summary. The run is written by the real `generate` on the built-in demo pair."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from os_cli.cli import _register, app

    _register()
    out = tmp_path_factory.mktemp("display") / "run"
    result = runner.invoke(app, ["generate", "--config", "demo", "--output", str(out), "--limit", "10",
                                 "--set", "output.per_token=true", "--set", "sampling.max_new_tokens=64"],
                           env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    return out, result.output


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _inspect(app, *args, columns=80):
    result = runner.invoke(app, ["inspect", *map(str, args)], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


def test_tables_fit_80_columns_and_keep_their_labels(cli_app, demo_run):
    out, _ = demo_run
    text = _inspect(cli_app, out, "--by", "finish_reason")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    groups = {json.loads(line)["finish_reason"] for line in (out / "shard-00000.jsonl").read_text().splitlines()}
    labels = {"all", *groups}

    def data_rows(title, end):
        section = text[text.index(title):text.index(end)].splitlines()
        return [line for line in section if _is_number(line.split()[-1] if line.split() else "")]

    # every data row of the split tables starts with its group label ("all" or a finish reason);
    # wrapped label text goes on continuation lines, numbers are never dropped
    mixture = data_rows("Mixture diagnostics", "Log-probabilities")
    assert len(mixture) == len(labels) * 8, mixture  # 4 quantities x (record means, tokens)
    weights = data_rows("Log-probabilities", "mean log w per token")
    assert len(weights) == len(labels) * 6, weights
    for line in mixture + weights:
        assert line.split()[0] in labels, line
    for label in ("alpha", "KL(q||pi", "record", "tokens", "log w per"):
        assert label in text
    assert "…" not in text, "numbers are shortened to fit, not cut"


def test_narrow_numbers_are_short_but_not_cut(cli_app, demo_run):
    out, _ = demo_run
    wide = json.loads(runner.invoke(cli_app, ["inspect", str(out), "--json"]).output)
    text = _inspect(cli_app, out)
    mean = wide["overall"]["diagnostics"]["kl_theta"]["per_token"]["mean"]
    assert f"{mean:.3g}" in text  # 3 significant digits at 80 columns


def test_builtin_model_names_are_shown(cli_app, demo_run):
    out, _ = demo_run
    text = _inspect(cli_app, out, columns=120)
    assert "theta: builtin:demo-theta, teacher: builtin:demo-teacher" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["theta"].endswith("demo-theta")  # the manifest keeps the folder
    assert manifest["models"]["theta"] not in text
    summary = json.loads(runner.invoke(cli_app, ["inspect", str(out), "--json"]).output)
    assert summary["manifest"]["models"] == {"theta": "builtin:demo-theta", "teacher": "builtin:demo-teacher"}
    assert summary["manifest"]["model_paths"]["theta"] == manifest["models"]["theta"]


def test_end_of_run_means_agree_with_inspect(cli_app, demo_run):
    """generate's "mean ... (over tokens, this run)" is inspect's mean over tokens, and is labelled so."""
    out, generate_output = demo_run
    summary = json.loads(runner.invoke(cli_app, ["inspect", str(out), "--json"]).output)
    diag = summary["overall"]["diagnostics"]
    for key, label in (("alpha", "mean alpha"), ("ess_ratio", "mean ESS ratio")):
        match = re.search(re.escape(label) + r" \(over tokens, this run\)\s*│\s*([-0-9.]+)", generate_output)
        assert match, generate_output
        shown = float(match.group(1))
        assert shown == pytest.approx(diag[key]["per_token"]["mean"], abs=5e-4)
        # the other mean inspect shows is a different population: labelled, and here really different
        assert abs(diag[key]["per_token"]["mean"] - diag[key]["per_record"]["mean"]) > 0 or key == "alpha"
    text = _inspect(cli_app, out, columns=160)
    assert re.search(r"ESS ratio\s+record means", text) and re.search(r"ESS ratio\s+tokens", text)
