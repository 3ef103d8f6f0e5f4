"""`os-sample export`'s token-level truncated importance weights (`token_tis_weights`, os_cli.report.tis):
min(exp(log pi_theta - log q*), c) per token, c = 2, beside `token_log_weights`, in every format."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from os_cli.report.tis import TIS_CLIP, TIS_COLUMN, truncated_token_weights
from os_cli.store.writer import iter_records

runner = CliRunner()


def test_truncated_token_weights():
    assert TIS_CLIP == 2.0
    got = truncated_token_weights([0.0, -1.0, 0.5, math.log(2.0), 3.0, None])
    assert got[:3] == pytest.approx([1.0, math.exp(-1.0), math.exp(0.5)], rel=1e-12)
    assert got[3:5] == [2.0, 2.0] and got[5] is None  # capped at c; an unrecorded token stays null
    assert truncated_token_weights([5.0], clip=10.0) == pytest.approx([10.0])
    assert truncated_token_weights([1.0], clip=3.0) == pytest.approx([math.e])
    with pytest.raises(ValueError, match="positive"):
        truncated_token_weights([0.0], clip=0.0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from os_cli.cli import _register, app

    _register()
    out = tmp_path_factory.mktemp("export-tis") / "run"
    result = runner.invoke(app, ["generate", "--config", "demo", "--output", str(out), "--limit", "6",
                                 "--set", "output.per_token=true", "--set", "sampling.max_new_tokens=40"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("fmt", ["trl", "parquet"])
def test_export_has_truncated_token_weights(cli_app, run_dir, tmp_path, fmt):
    import datasets

    target = tmp_path / ("t.jsonl" if fmt == "trl" else "t.parquet")
    result = runner.invoke(cli_app, ["export", str(run_dir), "--format", fmt, "--to", str(target)])
    assert result.exit_code == 0, result.output
    kind = "json" if fmt == "trl" else "parquet"
    rows = list(datasets.load_dataset(kind, data_files=str(target), split="train"))
    shards = {r["id"]: r for r in iter_records(run_dir)}
    assert len(rows) == len(shards) == 6
    capped = below = 0
    for row in rows:
        toks = shards[row["id"]]["tokens"]
        ratios = [math.exp(a - b) for a, b in zip(toks["logprob_theta"], toks["logprob_q"])]
        assert len(row[TIS_COLUMN]) == len(row["token_log_weights"]) == len(ratios)
        assert row[TIS_COLUMN] == pytest.approx([min(r, 2.0) for r in ratios], rel=1e-9)
        capped += sum(r >= 2.0 for r in ratios)
        below += sum(r < 1.0 for r in ratios)
    # the demo's kl_symmetry q* leans to the teacher: some tokens are far likelier under theta (capped),
    # many less likely (kept below 1), so the test sees both sides of the cap
    assert capped > 0 and below > 0


def test_no_tis_column_without_per_token_records(cli_app, tmp_path):
    from os_cli.cli import app

    out = tmp_path / "run"
    result = runner.invoke(app, ["generate", "--config", "demo", "--output", str(out), "--limit", "2",
                                 "--set", "sampling.max_new_tokens=8"])
    assert result.exit_code == 0, result.output
    target = tmp_path / "t.jsonl"
    result = runner.invoke(cli_app, ["export", str(out), "--format", "trl", "--to", str(target)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert rows and all(TIS_COLUMN not in r and "token_log_weights" not in r for r in rows)
