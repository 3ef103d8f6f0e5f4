"""Where `export --to` and `bench --json` may write (os_cli/store/targets.py), records outside the plan,
the hf --overwrite swap, exact ids and floats, and the errors export used to leak as tracebacks.

Two small runs are written by the real `generate` (built-in demo pair) once for the module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from os_cli.store.writer import list_shards

runner = CliRunner()
BIG_IDS = ("123456789012345678901234567890", "123456789012345678901234567891")


def _generate(cli_app, out: Path, *extra: str) -> Path:
    result = runner.invoke(cli_app, ["generate", "--config", "demo", "--output", str(out), "--limit", "4",
                                     "--set", "sampling.max_new_tokens=8", *extra])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def run_dir(cli_app, tmp_path_factory):
    return _generate(cli_app, tmp_path_factory.mktemp("targets") / "run", "--set", "output.per_token=true")


@pytest.fixture(scope="module")
def big_id_run(cli_app, tmp_path_factory):
    root = tmp_path_factory.mktemp("bigids")
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps({"id": int(i), "question": f"What is {k} plus 3?", "answer": str(k + 3)})
                            + "\n" for k, i in enumerate(BIG_IDS)))
    return _generate(cli_app, root / "run", "--set", f"dataset.source={data}")


def export(cli_app, *args):
    return runner.invoke(cli_app, ["export", *map(str, args)])


def snapshot(folder: Path) -> dict:
    """Every entry of the folder (hidden ones included) with its bytes' digest."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.iterdir())}


def text(result) -> str:
    return " ".join(result.output.split())


# ------------------------------------------------------------------------------------------ run files


def test_export_never_writes_over_a_runs_files(cli_app, run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    (run_dir / "notes.txt").write_text("mine\n")
    (tmp_path / "link.jsonl").symlink_to(run_dir / "plan.jsonl")
    (tmp_path / "linkdir").symlink_to(run_dir)
    before, before_other = snapshot(run_dir), snapshot(other)
    cases = [
        ("trl", run_dir / "plan.jsonl", "is a name os-sample uses"),
        ("trl", run_dir / ".os-sample-lock-r00", "is a name os-sample uses"),
        ("trl", run_dir / "ids.txt", "is a name os-sample uses"),
        ("trl", run_dir / "errors.jsonl", "is a name os-sample uses"),
        ("trl", run_dir / "shard-00003.jsonl", "is a name os-sample uses"),       # a new shard name
        ("trl", run_dir / ".os-sample-lock-r01", "is a name os-sample uses"),     # another rank's lock
        ("trl", other / "shard-00000.jsonl", "is a name os-sample uses"),         # another run's shard
        ("trl", other / "manifest.json", "is a name os-sample uses"),
        ("trl", run_dir / "notes.txt", "exists inside the run folder"),            # the user's, but existing
        ("hf", run_dir, "is the output folder of a run"),
        ("hf", tmp_path / "linkdir", "is the output folder of a run"),
        ("trl", tmp_path / "link.jsonl", "is a name os-sample uses"),             # a link into the run
        ("trl", tmp_path / "linkdir" / "manifest.json", "is a name os-sample uses"),
        # `..` after a link goes up from where the link points (run_dir.parent), as open() would
        ("trl", f"{os.path.relpath(tmp_path / 'linkdir')}/../{run_dir.name}/plan.jsonl", "is a name os-sample uses"),
        ("trl", f"{os.path.relpath(run_dir)}/../{run_dir.name}/ids.txt", "is a name os-sample uses"),
        ("hf", run_dir / "shard-00009.jsonl" / "ds", "is a name os-sample uses"),  # under a new owned name
        ("hf", run_dir.parent / f".{run_dir.name}.overwrite", "is kept for the --overwrite of the run"),
        ("trl", run_dir.parent / f".{run_dir.name}.previous" / "x.jsonl", "is kept for the --overwrite of the run"),
    ]
    for fmt, target, message in cases:
        result = export(cli_app, run_dir, "-f", fmt, "--to", target, "--overwrite")
        assert result.exit_code == 2, (target, result.output)
        assert message in text(result), (target, result.output)
        assert "Traceback" not in result.output
    assert snapshot(run_dir) == before and snapshot(other) == before_other
    assert not (run_dir.parent / f".{run_dir.name}.overwrite").exists()
    assert not (run_dir.parent / f".{run_dir.name}.previous").exists()

    # a new file of the user's inside the run folder is fine, and the run still resumes
    result = export(cli_app, run_dir, "-f", "trl", "--to", run_dir / "exports" / "train.jsonl")
    assert result.exit_code == 0, result.output
    resumed = runner.invoke(cli_app, ["generate", "--config", "demo", "--output", str(run_dir), "--limit", "4",
                                      "--set", "sampling.max_new_tokens=8", "--set", "output.per_token=true"])
    assert resumed.exit_code == 0, resumed.output
    shutil.rmtree(run_dir / "exports")
    (run_dir / "notes.txt").unlink()


def test_export_refuses_what_is_not_a_regular_file(cli_app, run_dir, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "to-pipe.jsonl").symlink_to(fifo)
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "nowhere" / "x.jsonl")
    for target, message in ((fifo, "is a FIFO"), (tmp_path / "to-pipe.jsonl", "is a FIFO"),
                            (tmp_path / "dangling.jsonl", "broken symbolic link")):
        for fmt in ("trl", "hf"):
            result = export(cli_app, run_dir, "-f", fmt, "--to", target, "--overwrite")
            assert result.exit_code == 2 and message in text(result), (target, fmt, result.output)
    assert fifo.is_fifo() and (tmp_path / "to-pipe.jsonl").is_symlink()
    assert not (tmp_path / "nowhere").exists()


def test_bench_json_is_held_to_the_same_rules(cli_app, run_dir, tmp_path):
    """Refused before the models load; an existing file needs --overwrite."""
    before = snapshot(run_dir)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    existing = tmp_path / "old.json"
    existing.write_text("{}\n")
    cases = [
        ([run_dir / "manifest.json", "--overwrite"], "is a name os-sample uses"),
        ([run_dir / "new.json", "--overwrite"], None),  # allowed: reaches the recipe (a bad --set below)
        ([fifo, "--overwrite"], "is a FIFO"),
        ([existing], "exists; pass --overwrite"),
        ([existing / "x.json"], "is a file, not a folder"),
    ]
    for args, message in cases:
        result = runner.invoke(cli_app, ["bench", "--config", "demo", "--set", "no_such_section.x=1",
                                         "--json", *map(str, args)])
        assert result.exit_code == 2, (args, result.output)
        if message:
            assert message in text(result), (args, result.output)
        else:
            assert "no_such_section" in result.output, result.output
    assert snapshot(run_dir) == before and existing.read_text() == "{}\n" and fifo.is_fifo()


# ------------------------------------------------------------------------------------------ records


def _append_line(folder: Path, **changes) -> None:
    shard = list_shards(folder)[-1]
    record = json.loads(shard.read_text().splitlines()[0])
    record.update(changes)
    shard.write_text(shard.read_text() + json.dumps(record) + "\n")


@pytest.mark.parametrize("changes, why", [({"sample": 7}, "sample 7 is beyond sampling.num_samples = 1"),
                                          ({"id": "not-planned"}, "id 'not-planned' is not in ids.txt")])
def test_records_outside_the_plan_are_refused(cli_app, run_dir, tmp_path, changes, why):
    from os_cli.report.summary import summarize_dir

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    _append_line(copy, **changes)
    assert summarize_dir(copy)["integrity"]["unexpected"]["count"] == 1  # inspect flags it too
    shard = list_shards(copy)[-1]
    lines = len(shard.read_text().splitlines())
    result = export(cli_app, copy, "-f", "trl", "--to", tmp_path / "x.jsonl")
    assert result.exit_code == 1, result.output
    assert f"{shard}:{lines}: a record outside the run's plan ({why})" in text(result)
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_thirty_digit_ids_stay_exact_text(cli_app, big_id_run, tmp_path, fmt):
    import datasets

    target = tmp_path / ("x.parquet" if fmt == "parquet" else "ds")
    result = export(cli_app, big_id_run, "-f", fmt, "--to", target)
    assert result.exit_code == 0, result.output
    ds = (datasets.load_dataset("parquet", data_files=str(target), split="train") if fmt == "parquet"
          else datasets.load_from_disk(str(target)))
    assert sorted(ds["id"]) == sorted(ds["row_id"]) == list(BIG_IDS)


def test_log_weights_are_the_records_numbers_without_binary_noise(cli_app, run_dir, tmp_path):
    from os_cli.store.writer import iter_records

    records = {r["id"]: r for r in iter_records(run_dir)}
    target = tmp_path / "new" / "sub" / "t.jsonl"  # missing parents are created, as generate does
    assert export(cli_app, run_dir, "-f", "trl", "--to", target).exit_code == 0
    exact = lambda a, b: Decimal(repr(a)) - Decimal(repr(b))  # noqa: E731
    for line in target.read_text().splitlines():
        row, rec = json.loads(line), records[json.loads(line)["id"]]
        # the JSON text is the exact decimal difference of the two numbers the record holds
        assert Decimal(repr(row["log_weight"])) == exact(rec["logprob"]["theta"], rec["logprob"]["q"])
        for got, a, b in zip(row["token_log_weights"], rec["tokens"]["logprob_theta"], rec["tokens"]["logprob_q"]):
            assert Decimal(repr(got)) == exact(a, b)


# ------------------------------------------------------------------------------------------ writing


def test_hf_overwrite_keeps_a_whole_dataset_through_a_crash(cli_app, run_dir, tmp_path, monkeypatch):
    """A crash while the old export is removed: the folder still holds a complete dataset."""
    import datasets

    target = tmp_path / "ds"
    assert export(cli_app, run_dir, "-f", "hf", "--to", target).exit_code == 0
    real_rmtree = shutil.rmtree

    def crash_after(path, *args, **kwargs):
        real_rmtree(path, *args, **kwargs)
        if Path(path).parent == tmp_path:
            raise RuntimeError("power cut")

    monkeypatch.setattr(shutil, "rmtree", crash_after)
    result = export(cli_app, run_dir, "-f", "hf", "--to", target, "--overwrite", "--finish-reason", "length")
    monkeypatch.undo()
    assert result.exit_code == 1 and "power cut" in result.output
    assert datasets.load_from_disk(str(target)).num_rows >= 1


def test_hf_overwrite_through_a_symbolic_link(cli_app, run_dir, tmp_path):
    import datasets

    real = tmp_path / "datasets" / "v1"
    assert export(cli_app, run_dir, "-f", "hf", "--to", real).exit_code == 0  # parents are created
    link = tmp_path / "current"
    link.symlink_to(real)
    result = export(cli_app, run_dir, "-f", "hf", "--to", link, "--overwrite", "--finish-reason", "length")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == real
    n = sum(json.loads(line)["finish_reason"] == "length"
            for shard in list_shards(run_dir) for line in shard.read_text().splitlines())
    assert datasets.load_from_disk(str(real)).num_rows == n
    assert sorted(p.name for p in real.parent.iterdir()) == ["v1"]  # no temporary or old copy left


def test_a_failed_push_says_the_file_was_written(cli_app, run_dir, tmp_path, monkeypatch):
    import datasets

    def offline(self, *args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets.Dataset, "push_to_hub", offline)
    target = tmp_path / "t.jsonl"
    result = export(cli_app, run_dir, "-f", "trl", "--to", target, "--push-to-hub", "me/data")
    assert result.exit_code == 1
    assert "the upload failed (ConnectionError: no network)" in text(result)
    assert f"--to {target} was written" in text(result)
    assert len(target.read_text().splitlines()) == 4


def test_hf_overwrite_without_rename_exchange(cli_app, run_dir, tmp_path, monkeypatch):
    """Where the OS has no RENAME_EXCHANGE: two renames, and the previous export is removed after."""
    import datasets

    from os_cli.store import folder as outfolder

    target = tmp_path / "ds"
    assert export(cli_app, run_dir, "-f", "hf", "--to", target).exit_code == 0
    monkeypatch.setattr(outfolder, "_exchange", lambda a, b: False)
    result = export(cli_app, run_dir, "-f", "hf", "--to", target, "--overwrite")
    assert result.exit_code == 0, result.output
    assert datasets.load_from_disk(str(target)).num_rows == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_hf_overwrite_never_replaces_a_folder_holding_a_run(cli_app, run_dir, tmp_path):
    saved = tmp_path / "ds"
    assert export(cli_app, run_dir, "-f", "hf", "--to", saved).exit_code == 0
    shutil.copytree(run_dir, saved / "inner" / "run")
    before = snapshot(saved / "inner" / "run")
    result = export(cli_app, run_dir, "-f", "hf", "--to", saved, "--overwrite")
    assert result.exit_code == 2 and "holds the output folder of a run" in text(result), result.output
    assert snapshot(saved / "inner" / "run") == before


def test_the_wrong_kind_is_named_before_overwrite_is_asked_for(cli_app, run_dir, tmp_path):
    (tmp_path / "f.jsonl").write_text("x\n")
    for fmt, target, message in (("trl", tmp_path, "is a folder; --format trl writes one file"),
                                 ("hf", tmp_path / "f.jsonl", "is a file; --format hf writes a folder")):
        result = export(cli_app, run_dir, "-f", fmt, "--to", target)
        assert result.exit_code == 2 and message in text(result), result.output
