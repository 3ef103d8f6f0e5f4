"""Output folder: atomic shard appends and rotation, manifest, resume checks, refusal, clearing."""

from __future__ import annotations

import json

import pytest

from os_cli.errors import UserError
from os_cli.recipe import load_recipe
from os_cli.store.writer import (
    ERRORS_FILE, IDS_FILE, REQUIRED_KEYS, RunWriter, atomic_write, check_output, clear_outputs, iter_records,
    list_shards, read_ids, read_manifest, scan_records, shard_name,
)


def recipe(*overrides):
    return load_recipe(data={
        "models": {"theta": "org/model"},
        "dataset": {"inline": [{"q": "x"}]},
        "prompts": {"theta": {"template": "{q}"}},
        "output": {"shard_size": 3},
    }, overrides=overrides)


def rec(i):
    """A complete record of the current format (every key in REQUIRED_KEYS)."""
    stats = {"mean": 0.5, "min": 0.5, "max": 0.5}
    return {"id": str(i), "alpha_method": "fixed", "prompt": f"p{i}", "prompt_t": f"p{i}", "completion": f"c{i}",
            "num_tokens": 1, "finish_reason": "eos", "alpha": stats, "ess_ratio": stats, "kl_theta": stats,
            "kl_t": stats, "logprob": {"theta": -1.0, "t": -1.0, "q": -1.0}, "row": {}}


def test_atomic_write_leaves_no_temporaries(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write(target, "one")
    atomic_write(target, b"two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_append_rotates_shards_and_manifest_counts(tmp_path):
    r = recipe()
    w = RunWriter(tmp_path, r)
    ids = [str(i) for i in range(8)]
    done = w.start(ids, [{"id": "7", "reason": "bad", "row": {}}], models={"theta": "m"}, device="cpu")
    assert done == set()
    w.append([rec(0), rec(1)])
    assert w.current_shard == "shard-00000.jsonl"
    w.append([rec(2), rec(3), rec(4), rec(5)])   # crosses a boundary: fills shard 0, continues in shard 1
    assert [p.name for p in list_shards(tmp_path)] == ["shard-00000.jsonl", "shard-00001.jsonl"]
    assert [len(p.read_text().splitlines()) for p in list_shards(tmp_path)] == [3, 3]
    assert [r_["id"] for r_ in iter_records(tmp_path)] == ["0", "1", "2", "3", "4", "5"]
    manifest = read_manifest(tmp_path)
    assert manifest["status"] == "running" and manifest["counts"] == {"planned": 8, "records": 6, "errors": 1}
    assert read_ids(tmp_path / IDS_FILE) == ids
    assert json.loads((tmp_path / ERRORS_FILE).read_text())["id"] == "7"
    w.finish("complete")
    manifest = read_manifest(tmp_path)
    assert manifest["status"] == "complete" and manifest["finished_at"]
    assert manifest["recipe_hash"].startswith("sha256:") and "_meta" not in manifest["recipe"]
    for key in ("format", "recipe", "versions", "models", "seed", "device", "world_size", "started_at",
                "updated_at", "ids_file"):
        assert key in manifest
    # the first line of each record is its id (resume scans only read that)
    assert (tmp_path / "shard-00000.jsonl").read_text().startswith('{"id": "0"')


def test_resume_continues_current_shard(tmp_path):
    r = recipe()
    ids = [str(i) for i in range(6)]
    w = RunWriter(tmp_path, r)
    w.start(ids, [])
    w.append([rec(0), rec(1)])
    started = read_manifest(tmp_path)["started_at"]
    assert check_output(tmp_path, r) == "resume"
    w2 = RunWriter(tmp_path, r)
    assert w2.start(ids, []) == {("0", 0), ("1", 0)}  # (id, sample) keys
    w2.append([rec(2), rec(3)])
    assert [len(p.read_text().splitlines()) for p in list_shards(tmp_path)] == [3, 1]
    manifest = read_manifest(tmp_path)
    assert manifest["attempts"] == 2 and manifest["started_at"] == started
    assert manifest["counts"]["records"] == 4


def test_changed_recipe_is_refused_with_keys(tmp_path):
    r = recipe()
    RunWriter(tmp_path, r).start(["0"], [])
    changed = recipe("sampling.temperature=0.5", "alpha.max=0.9")
    with pytest.raises(UserError) as info:
        check_output(tmp_path, changed)
    assert "sampling.temperature: 1.0 -> 0.5" in str(info.value) and "alpha.max" in str(info.value)
    assert "--overwrite" in str(info.value) and info.value.exit_code == 2
    assert check_output(tmp_path, changed, overwrite=True) == "overwrite"
    assert check_output(tmp_path, recipe("sampling.batch_size=2", "output.shard_size=5")) == "resume"


def test_shards_without_manifest_are_refused(tmp_path):
    (tmp_path / "shard-00000.jsonl").write_text(json.dumps(rec(0)) + "\n")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="no manifest.json") as info:
            check_output(tmp_path, recipe(), overwrite=overwrite)
        assert info.value.exit_code == 2
    assert check_output(tmp_path / "fresh", recipe()) == "new"


def test_clear_outputs_only_removes_own_files(tmp_path):
    w = RunWriter(tmp_path, recipe())
    w.start(["0"], [])
    w.append([rec(0)])
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / ".shard-00000.jsonl.tmp-123").write_text("stale")
    clear_outputs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_records_outside_plan_are_refused(tmp_path):
    w = RunWriter(tmp_path, recipe())
    w.start(["0", "1", "2"], [])
    w.append([rec(0), rec(1), rec(2)])
    with pytest.raises(UserError, match="outside this run's plan"):
        RunWriter(tmp_path, recipe()).start(["0", "1"], [])


def test_scan_detects_duplicates_and_bad_lines(tmp_path):
    (tmp_path / "shard-00000.jsonl").write_text(json.dumps(rec(0)) + "\n")
    (tmp_path / "shard-00001.jsonl").write_text(json.dumps(rec(0)) + "\n")
    with pytest.raises(UserError, match="already written"):
        scan_records(tmp_path)
    (tmp_path / "shard-00001.jsonl").write_text('not json\n{"id": "1", "torn')
    with pytest.raises(UserError, match="shard-00001.jsonl:1: not valid JSON") as info:
        scan_records(tmp_path, repair=False)
    assert info.value.exit_code == 2 and "--repair" in str(info.value)


def test_multi_rank_names_and_scan(tmp_path):
    assert shard_name(3) == "shard-00003.jsonl"
    assert shard_name(3, rank=1, world_size=2) == "shard-r01-00003.jsonl"
    r = recipe()
    ids = [str(i) for i in range(4)]
    w0 = RunWriter(tmp_path, r, rank=0, world_size=2)
    w1 = RunWriter(tmp_path, r, rank=1, world_size=2)
    w0.start(ids, [])
    w1.start(ids, [])
    w0.append([rec(0), rec(2)])
    w1.append([rec(1), rec(3)])
    assert sorted(i for i, _ in scan_records(tmp_path)) == ids
    assert [p.name for p in list_shards(tmp_path)] == ["shard-r00-00000.jsonl", "shard-r01-00000.jsonl"]
    assert w0.finish("complete", rescan=True)["counts"]["records"] == 4


def test_each_rank_drops_only_its_own_torn_tail(tmp_path):
    r = recipe()
    ids = [str(i) for i in range(4)]
    w0 = RunWriter(tmp_path, r, rank=0, world_size=2)
    w1 = RunWriter(tmp_path, r, rank=1, world_size=2)
    w0.start(ids, [])
    w1.start(ids, [])
    w0.append([rec(0), rec(2)])
    w1.append([rec(1), rec(3)])
    for name in ("shard-r00-00000.jsonl", "shard-r01-00000.jsonl"):
        path = tmp_path / name
        path.write_bytes(path.read_bytes()[:-20])  # the last record cut short
    w1 = RunWriter(tmp_path, r, rank=1, world_size=2)
    assert w1.start(ids, []) == {("0", 0), ("1", 0)}
    assert len(w1.notes) == 1 and "shard-r01-00000.jsonl line 2" in w1.notes[0]
    assert (tmp_path / "shard-r00-00000.jsonl").read_bytes().count(b"\n") == 1  # rank 0's shard untouched
    w0 = RunWriter(tmp_path, r, rank=0, world_size=2)
    assert w0.start(ids, []) == {("0", 0), ("1", 0)} and "shard-r00-00000.jsonl line 2" in w0.notes[0]
    w0.append([rec(2)])
    w1.append([rec(3)])
    assert sorted(i for i, _ in scan_records(tmp_path, repair=False)) == ids
