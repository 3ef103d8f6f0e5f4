"""The output folder's guarantees (issue 8): lock, complete-record check and repair, foreign folders,
dataset fingerprint, ids.txt round trip, --overwrite kept until complete, write checks before loading.

CLI runs are in process on the tiny models of conftest.py; the two that need a second process (a
lock held by a live run, a kill -9 mid --overwrite) share one subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from os_cli.cli import _register, app
from os_cli.errors import UserError
from os_cli.store.folder import FolderLock, staging_dir
from os_cli.store.record_format import REQUIRED_KEYS, encode_ids, read_ids, record_problem
from os_cli.report.summary import summarize_dir

if not any(c.name == "generate" for c in app.registered_commands):
    _register()
runner = CliRunner()

ROWS = [{"qid": f"q{i}", "question": f"What is {i} plus 3?", "hint": f"{i}+3={i + 3}"} for i in range(5)]


def cli(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


@pytest.fixture
def work(tmp_path, tiny_models):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    recipe = {
        "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"]},
        "sampling": {"max_new_tokens": 3, "batch_size": 2, "seed": 5},
        "dataset": {"source": str(data), "id_field": "qid"},
        "prompts": {"theta": {"template": "{question}"}, "teacher": {"template": "{question} Hint: {hint}"}},
        "output": {"shard_size": 2},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return {"recipe": path, "out": tmp_path / "out", "data": data, "tmp": tmp_path}


def gen(work, *args, out=None):
    return cli("generate", "--config", work["recipe"], "--output", out or work["out"], *args)


def records(out: Path) -> dict[str, dict]:
    found = {}
    for shard in sorted(out.glob("shard-*.jsonl")):
        for line in shard.read_text().split("\n"):
            if line:
                rec = json.loads(line)
                assert rec["id"] not in found
                found[rec["id"]] = rec
    return found


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------------------ A2 lock


def test_lock_is_exclusive_per_rank_and_names_the_holder(tmp_path):
    first = FolderLock(tmp_path, 0).acquire()
    with pytest.raises(UserError) as info:
        FolderLock(tmp_path, 0).acquire()  # flock conflicts between two opens, even in one process
    assert info.value.exit_code == 1
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(info.value)
    rank1 = FolderLock(tmp_path, 1).acquire()  # each rank locks its own part
    with pytest.raises(UserError):
        FolderLock(tmp_path, 1).acquire()
    first.release()
    rank1.release()
    FolderLock(tmp_path, 0).acquire().release()  # released: free again


# ------------------------------------------------------------------------------------------------ A3 torn lines


def _cut_after_nested_object(line: str) -> str:
    """A record cut right after its `alpha` object: ends in `}`, is not a complete record."""
    cut = line[: line.index('"ess_ratio"')].rstrip(", ")
    assert cut.endswith("}")
    return cut


def test_torn_last_line_is_dropped_and_regenerated(work):
    assert gen(work).exit_code == 0
    out = work["out"]
    before = records(out)
    shard = out / "shard-00001.jsonl"
    lines = shard.read_text().split("\n")[:-1]
    assert len(lines) == 2
    torn_id = json.loads(lines[1])["id"]
    shard.write_text(lines[0] + "\n" + _cut_after_nested_object(lines[1]))  # ends in "}", cut short
    assert not summarize_dir(out)["integrity"]["clean"]
    result = gen(work)
    assert result.exit_code == 0, result.output
    assert f"{shard} line 2 is not a complete record" in result.stderr and "generated again" in result.stderr
    after = records(out)
    assert sorted(after) == sorted(before) and after[torn_id]["completion"] == before[torn_id]["completion"]
    assert summarize_dir(out)["integrity"]["clean"]


@pytest.mark.parametrize("bad,at", [("reduced", 1), ("reduced", 2), ("garbage", 1), ("complete-json-cut", 2)])
def test_invalid_line_needs_repair(work, bad, at):
    """Inside a shard anything invalid, and at its end JSON that is not a complete record: exit 2."""
    assert gen(work).exit_code == 0
    out = work["out"]
    shard = out / "shard-00000.jsonl"
    lines = shard.read_bytes().split(b"\n")[:-1]
    lost = json.loads(lines[at - 1])["id"]
    bad = {"reduced": json.dumps({"id": lost}).encode(), "garbage": b"\xff\xfe garbage",
           "complete-json-cut": _cut_after_nested_object(lines[at - 1].decode()).encode() + b"}"}[bad]
    lines[at - 1] = bad
    shard.write_bytes(b"\n".join(lines) + b"\n")
    before = shard.read_bytes()
    result = gen(work)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{shard}:{at}:" in result.stderr and "--repair" in result.stderr
    assert "loading models" not in result.stderr and shard.read_bytes() == before  # nothing changed
    result = gen(work, "--repair")
    assert result.exit_code == 0, result.output
    assert lost in records(out) and summarize_dir(out)["integrity"]["clean"]


def test_record_format_is_defined_once():
    complete = {k: {"mean": 0, "min": 0, "max": 0, "theta": 0, "t": 0, "q": 0} for k in REQUIRED_KEYS}
    complete["id"] = "1"
    assert record_problem(complete) is None
    assert "missing" in record_problem({"id": "1"})
    assert "lacks" in record_problem({**complete, "alpha": {"mean": 0.5}})


# ------------------------------------------------------------------------------------------------ A4 foreign folders


@pytest.mark.parametrize("manifest", [None, {"name": "someone else's"}])
def test_foreign_folder_is_refused_even_with_overwrite(work, manifest):
    out = work["out"]
    out.mkdir()
    (out / "ids.txt").write_text("mine\n")
    (out / "errors.jsonl").write_text("{}\n")
    (out / ".errors.jsonl.tmp-1").write_text("theirs")
    if manifest is not None:
        (out / "manifest.json").write_text(json.dumps(manifest))
    before = listing(out)
    for extra in ([], ["--overwrite"]):
        result = gen(work, *extra)
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "choose another --output" in result.stderr and "loading models" not in result.stderr
        assert listing(out) == before and not staging_dir(out).exists()


# ------------------------------------------------------------------------------------------------ A6 fingerprint


def test_changed_dataset_is_refused_naming_the_row(work):
    assert gen(work, "--limit", "3").exit_code == 0
    rows = [dict(r) for r in ROWS]
    rows[1]["question"] = "What is 1 plus 4?"
    work["data"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = gen(work)
    assert result.exit_code == 2, result.output
    assert "dataset changed" in result.stderr and "id 'q1'" in result.stderr
    assert "theta's prompt differs" in result.stderr and "loading models" not in result.stderr
    work["data"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert gen(work).exit_code == 0  # the original rows, extended past the old limit: resumes
    manifest = json.loads((work["out"] / "manifest.json").read_text())
    assert manifest["dataset_fingerprint"].startswith("sha256:") and len(records(work["out"])) == 5


# ------------------------------------------------------------------------------------------------ A7 ids.txt


ODD_IDS = [" lead", "trail ", "form\x0cfeed", "line\u2028sep", "para\u2029sep", "nel\x85", "\"quoted\"", "07", "7"]


def test_ids_round_trip(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_bytes(encode_ids(ODD_IDS))
    assert read_ids(path) == ODD_IDS
    assert path.read_bytes().count(b"\n") == len(ODD_IDS)
    assert "\u2028" not in path.read_text() and "\x85" not in path.read_text()
    path.write_text('"a"\n17\n')
    with pytest.raises(UserError, match=r"ids.txt:2: not an id"):
        read_ids(path)


def test_odd_ids_make_a_clean_run(tmp_path, tiny_models):
    recipe = {
        "models": {"theta": tiny_models["theta"]},
        "sampling": {"max_new_tokens": 2, "batch_size": 4},
        "dataset": {"inline": [{"k": k, "q": f"row {i}"} for i, k in enumerate(ODD_IDS)], "id_field": "k"},
        "prompts": {"theta": {"template": "{q}"}},
    }
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML; escapes keep U+2028 intact
    out = tmp_path / "out"
    result = cli("generate", "--config", path, "--output", out)
    assert result.exit_code == 0, result.output
    assert read_ids(out / "ids.txt") == ODD_IDS
    integrity = summarize_dir(out)["integrity"]
    assert integrity["clean"] and integrity["planned"] == len(ODD_IDS), integrity


# ------------------------------------------------------------------------------------------------ A2 + A8 (one subprocess)


def _start(work, *args, delay="2"):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OS_SAMPLE_INJECT_DELAY=delay)
    log = open(work["tmp"] / "child.log", "w")
    return subprocess.Popen([sys.executable, "-m", "os_cli", "generate", "--config", str(work["recipe"]),
                             "--output", str(work["out"]), *args], stdout=log, stderr=subprocess.STDOUT, env=env)


def _wait_for_records(proc, folder: Path, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(records(folder)) >= at_least:
                return
        except (FileNotFoundError, json.JSONDecodeError):  # pragma: no cover - folders never hold torn lines
            pass
        assert proc.poll() is None, f"run ended (rc={proc.returncode})"
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no records in time")


@pytest.mark.slow
def test_overwrite_keeps_previous_run_until_complete_and_lock_holds(work):
    out = work["out"]
    assert gen(work).exit_code == 0
    old = records(out)
    (out / "notes.txt").write_text("the user's")
    proc = _start(work, "--overwrite", "--set", "sampling.temperature=0.5")
    try:
        stage = staging_dir(out)
        _wait_for_records(proc, stage, 2)
        # A2: a second writer is refused while the first holds the folder, naming its pid and host
        result = gen(work, "--overwrite", "--set", "sampling.temperature=0.5")
        assert result.exit_code == 1, result.output
        assert f"pid {proc.pid} on host {socket.gethostname()}" in result.stderr
        assert "loading models" not in result.stderr
        # A8: meanwhile the folder still holds the previous complete run
        assert records(out) == old
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = summarize_dir(out)
    assert summary["integrity"]["clean"] and summary["manifest"]["status"] == "complete"
    assert records(out) == old and stage.exists()
    result = gen(work)  # the previous recipe: complete, nothing to do; the partial overwrite is pointed out
    assert result.exit_code == 0 and "did not complete" in result.stderr and str(stage) in result.stderr
    # no stale lock; rerunning the --overwrite command starts the new run again and swaps it in
    result = gen(work, "--overwrite", "--set", "sampling.temperature=0.5")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["sampling"]["temperature"] == 0.5 and manifest["attempts"] == 1
    assert sorted(records(out)) == sorted(old) and summarize_dir(out)["integrity"]["clean"]
    assert (out / "notes.txt").read_text() == "the user's" and not stage.exists()


# ------------------------------------------------------------------------------------------------ B


def test_output_under_a_file_is_refused_before_loading(work):
    blocker = work["tmp"] / "a-file"
    blocker.write_text("x")
    result = gen(work, out=blocker / "sub" / "out")
    assert result.exit_code == 2 and "which is a file" in result.stderr and "loading models" not in result.stderr
    assert "Traceback" not in result.output


def test_full_disk_is_refused_before_loading(work, monkeypatch):
    import os_cli.store.folder as outfolder

    monkeypatch.setattr(outfolder, "free_bytes", lambda folder: 1024)
    result = gen(work)
    assert result.exit_code == 2 and "MiB free" in result.stderr and "loading models" not in result.stderr


def test_read_only_folder_is_refused_before_loading(work):
    ro = work["tmp"] / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits; an immutable folder stops root too
        if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr +i")
        undo = ["chattr", "-i", str(ro)]
    else:
        ro.chmod(0o555)
        undo = ["chmod", "755", str(ro)]
    try:
        result = gen(work, out=ro / "out")
        assert result.exit_code == 2 and "cannot write in" in result.stderr, result.output
        assert "loading models" not in result.stderr
    finally:
        subprocess.run(undo, check=True)


@pytest.mark.parametrize("change", ["counts", "ids_folder"])
def test_inspect_bad_manifest_types(work, change):
    assert gen(work, "--limit", "1").exit_code == 0
    out = work["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    if change == "counts":
        manifest["counts"] = "many"
    else:
        manifest["ids_file"] = "idsdir"
        (out / "idsdir").mkdir()
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = cli("inspect", out)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert ("'counts' must be an object" if change == "counts" else "is not a file") in result.stderr


def test_inspect_names_a_bad_ids_line(work):
    assert gen(work, "--limit", "2").exit_code == 0
    out = work["out"]
    (out / "ids.txt").write_bytes(b'"q0"\nq1\n')
    lines = summarize_dir(out)["integrity"]["invalid_lines"]["lines"]
    assert lines == [{"file": "ids.txt", "line": 2, "kind": "invalid",
                      "error": "not an id (each line of ids.txt is one JSON string); missing ids cannot be checked"}]


@pytest.mark.parametrize("exchange", [True, False])
def test_swap_in_replaces_own_files_and_keeps_the_users(tmp_path, monkeypatch, exchange):
    import os_cli.store.folder as outfolder

    if not exchange:  # a file system without renameat2(RENAME_EXCHANGE): two renames
        monkeypatch.setattr(outfolder, "_exchange", lambda a, b: False)
    out = tmp_path / "run"
    out.mkdir()
    for name, text in (("manifest.json", "old"), ("shard-00000.jsonl", "old"), ("notes.txt", "user")):
        (out / name).write_text(text)
    stage = outfolder.prepare_staging(out)
    (stage / "manifest.json").write_text("new")
    (stage / "shard-00000.jsonl").write_text("new")
    assert outfolder.swap_in(out, stage) == []
    assert listing(out) == {"manifest.json": b"new", "notes.txt": b"user", "shard-00000.jsonl": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_two_rename_swap_cut_between_renames_is_finished(tmp_path):
    from os_cli.store.folder import finish_swap, previous_dir

    out = tmp_path / "run"
    old, stage = previous_dir(out), staging_dir(out)
    old.mkdir()
    stage.mkdir()
    (old / "manifest.json").write_text("old")
    (old / "notes.txt").write_text("user")
    (stage / "manifest.json").write_text("new")
    assert finish_swap(out)
    assert listing(out) == {"manifest.json": b"new", "notes.txt": b"user"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert finish_swap(out) == []
