"""Writers that may be handed the same row (`generate --backend ray`), without Ray: slots, dedup on append,
the incremental shard index; and the CLI's answer when Ray is not installed. Ray itself: test_ray_backend.py."""

from __future__ import annotations

import sys

import pytest

from os_cli.errors import UserError
from os_cli.recipe import load_recipe
from os_cli.run.ray_backend import RayLaunch, actor_resources, check_fits, require_ray
from os_cli.store.folder import APPEND_LOCK, is_own_file
from os_cli.store.record_format import token_spec
from os_cli.store.scan import scan_shards
from os_cli.store.shared_writers import WRITER_SLOTS, DedupWriter, ShardIndex, alive_writers, take_writer_slot
from os_cli.store.writer import RunWriter, check_output, iter_records
from tests.test_writer import rec, recipe


def writer_in(folder, r, ids):
    slot, lock = take_writer_slot(folder)
    writer = RunWriter(folder, r, rank=slot, world_size=WRITER_SLOTS)
    writer.start(ids, [])
    return slot, lock, DedupWriter(writer, ShardIndex(folder, token_spec(r)))


def test_two_writers_given_the_same_rows_write_each_once(tmp_path):
    r = recipe()
    ids = [str(i) for i in range(6)]
    main = RunWriter(tmp_path, r)
    main.start(ids, [])
    slot_a, lock_a, a = writer_in(tmp_path, r, ids)
    slot_b, lock_b, b = writer_in(tmp_path, r, ids)
    assert (slot_a, slot_b) == (1, 2)  # two live writers never share a slot
    a.append([rec(0), rec(1)])
    b.append([rec(1), rec(2)])  # row 1 reached both (a task re-run): written once
    a.append([rec(2), rec(3), rec(4)])
    assert [a.next_fate() for _ in range(5)] == [True, True, False, True, True]
    assert [b.next_fate() for _ in range(2)] == [False, True]
    assert sorted(x["id"] for x in iter_records(tmp_path)) == ["0", "1", "2", "3", "4"]
    assert a.duplicates == 1 and b.duplicates == 1
    assert not scan_shards(tmp_path).bad  # scan_shards raises on a record written twice
    assert alive_writers(tmp_path) == 2
    lock_a.release()  # the writer died: its slot is free for the next one, which continues its shard
    assert alive_writers(tmp_path) == 1
    slot_c, lock_c, c = writer_in(tmp_path, r, ids)
    assert slot_c == 1 and c.current_shard == a.current_shard
    c.append([rec(4), rec(5)])
    assert sorted(x["id"] for x in iter_records(tmp_path)) == [str(i) for i in range(6)]
    assert (tmp_path / APPEND_LOCK).exists() and is_own_file(APPEND_LOCK)
    assert check_output(tmp_path, r) == "resume"  # the append lock is one of ours, not a foreign file
    for lock in (lock_b, lock_c):
        lock.release()


def test_shard_index_reads_only_what_was_appended_and_rereads_a_replaced_shard(tmp_path):
    r = recipe()
    ids = [str(i) for i in range(6)]
    RunWriter(tmp_path, r).start(ids, [])
    slot, lock, w = writer_in(tmp_path, r, ids)
    index = ShardIndex(tmp_path, token_spec(r))
    w.writer.append([rec(0), rec(1)])
    assert index.refresh() == {("0", 0), ("1", 0)}
    w.writer.append([rec(2)])
    assert index.refresh() == {("0", 0), ("1", 0), ("2", 0)}
    shard = tmp_path / w.current_shard
    shard.write_bytes(shard.read_bytes() + b'{"id": "torn')  # a torn tail is not a record
    assert ("torn", 0) not in index.refresh() and len(index.keys) == 3
    shard.write_bytes(b"")  # replaced by something shorter: read again whole
    index.refresh()
    assert len(index.keys) == 3  # keys once seen stay known (a shard never loses a complete record)
    lock.release()


def test_backend_ray_without_ray_exits_2_with_the_install_line(monkeypatch, cli_app):
    from typer.testing import CliRunner

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(UserError, match=r"pip install 'os-sample\[ray\]'"):
        require_ray()
    result = CliRunner().invoke(cli_app, ["generate", "--config", "demo", "--backend", "ray", "--actors", "2"])
    assert result.exit_code == 2
    assert "pip install 'os-sample[ray]'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--backend", "spark"], "--backend 'spark': allowed: local, ray"),
    (["--actors", "2"], "--ray-address and --actors go with --backend ray"),
])
def test_backend_options_are_checked(cli_app, args, message):
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli_app, ["generate", "--config", "demo", *args])
    assert result.exit_code == 2
    assert message in result.output


def placed(**models):
    return load_recipe(data={"models": {"theta": "org/a", "teacher": "org/b", **models},
                             "dataset": {"inline": [{"q": "x"}]}, "prompts": {"theta": {"template": "{q}"}}})


def test_actor_resources_follow_the_recipes_placement():
    gpus = {"CPU": 16, "GPU": 4}
    assert actor_resources(placed(device="cpu"), gpus, 2) == (7.0, 0.0)  # CPU actors share the CPUs beside the driver's
    assert actor_resources(placed(), gpus, 2) == (1.0, 1.0)  # auto on a GPU cluster: one GPU
    assert actor_resources(placed(), {"CPU": 4}, 3) == (1.0, 0.0)  # auto on CPUs only
    two = placed(device="cuda:0", per_model={"teacher": {"device": "cuda:1"}})
    assert actor_resources(two, gpus, 2) == (1.0, 2.0)  # theta on one GPU, the teacher on another
    spread = placed(device="cuda:0", per_model={"teacher": {"device_map": "auto", "max_memory": {0: "10GiB", 1: "70GiB", 2: "70GiB"}}})
    assert actor_resources(spread, gpus, 1) == (1.0, 3.0)


def test_a_pool_the_cluster_cannot_hold_is_refused_before_ray_waits_forever():
    with pytest.raises(UserError, match=r"3 CPUs .* but the Ray cluster at here has 2 CPUs"):
        check_fits({"CPU": 2}, 2, 1.0, 0.0, "here")  # two 1-CPU actors and Ray Data's own task
    check_fits({"CPU": 3}, 2, 1.0, 0.0, "here")
    with pytest.raises(UserError, match="4 GPUs"):
        check_fits({"CPU": 16, "GPU": 2}, 2, 1.0, 2.0, "here")
    assert RayLaunch().address is None


def test_an_actor_whose_models_cannot_load_reports_the_user_error_as_data(tmp_path, monkeypatch):
    """A UserError does not survive Ray's exception wrapping: the actor returns it, the driver raises it."""
    from os_cli.run.ray_backend import SampleActor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = recipe()  # theta "org/model": not on this machine, and the hub is offline
    RunWriter(tmp_path, r).start(["0"], [])
    actor = SampleActor(r, str(tmp_path))
    assert isinstance(actor.error, UserError) and actor.slot == 1
    result = actor({"unit": []})
    assert list(result["written"]) == [0] and str(actor.error) == result["error"][0]
    assert result["exit_code"][0] == actor.error.exit_code


def test_the_append_lock_is_a_lock_file_like_the_others(tmp_path):
    """Never deleted (two runs would lock two files), never taken for someone else's file."""
    from os_cli.store.writer import clear_outputs

    (tmp_path / APPEND_LOCK).write_text("")
    (tmp_path / ".os-sample-lock-r01").write_text("pid 1 on host h\n")
    assert check_output(tmp_path, recipe()) == "new"  # only what a run killed before its first write leaves
    clear_outputs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [APPEND_LOCK, ".os-sample-lock-r01"]
