"""`generate --backend ray` on a local Ray cluster (CPU, the demo pair): exactly once, whatever fails.

One Ray cluster serves the module (started once: about 10 s of the module's time). Its workers
inherit OS_SAMPLE_INJECT_DELAY (a pause after each write, run/testing_hooks.py), so a kill lands
mid-run. sampling.batch_size is 1, so a record does not depend on its batch-mates and every
record must equal the single-process run's bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from os_cli.cli.generate import run_generate  # noqa: E402
from os_cli.run.ray_backend import RayLaunch  # noqa: E402
from os_cli.store.scan import scan_shards  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # Ray Data's own context settings

N_ROWS = 10
DELAY_S = 0.3
OVERRIDES = [("dataset.limit", N_ROWS), ("sampling.batch_size", 1), ("sampling.max_new_tokens", 12),
             ("models.device", "cpu"), ("output.per_token", True)]


@pytest.fixture(scope="module")
def cluster():
    saved = {k: os.environ.get(k) for k in ("OS_SAMPLE_INJECT_DELAY", "HF_HUB_OFFLINE", "OMP_NUM_THREADS")}
    os.environ.update(OS_SAMPLE_INJECT_DELAY=str(DELAY_S), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _set_args() -> list[str]:
    return [arg for key, value in OVERRIDES for arg in ("--set", f"{key}={value}")]


def records(out: Path) -> dict:
    """{(id, sample): record} of every shard line; a key written twice fails the test."""
    found: dict = {}
    for shard in sorted(out.glob("shard-*.jsonl")):
        for line in shard.read_text().splitlines():
            record = json.loads(line)
            key = (record["id"], record["sample"])
            assert key not in found, f"{key} written twice"
            found[key] = record
    return found


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: the same recipe in this process (no Ray, no delay)."""
    out = tmp_path_factory.mktemp("single") / "out"
    saved = os.environ.pop("OS_SAMPLE_INJECT_DELAY", None)
    try:
        run_generate("demo", OVERRIDES, output=out)
    finally:
        if saved is not None:
            os.environ["OS_SAMPLE_INJECT_DELAY"] = saved
    found = records(out)
    assert len(found) == N_ROWS
    return found


def check_exactly_once(out: Path, single: dict) -> None:
    assert records(out) == single  # every planned record once, each equal to one process's
    scan = scan_shards(out)
    assert not scan.bad
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["records"] == N_ROWS


def test_two_actors_write_each_record_once_as_one_process_would(cluster, single, tmp_path, cli_app):
    out = tmp_path / "out"
    run_generate("demo", OVERRIDES, output=out, ray=RayLaunch(actors=2))
    check_exactly_once(out, single)
    writers = {p.name.split("-")[1] for p in out.glob("shard-r*.jsonl")}
    assert writers == {"r01", "r02"}, "both actors wrote records"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ray"]["actors"] == 2 and manifest["ray"]["gpus_per_actor"] == 0
    shown = CliRunner().invoke(cli_app, ["inspect", str(out), "--json"])  # read as any other folder
    assert shown.exit_code == 0 and json.loads(shown.stdout)["integrity"]["clean"] is True


def _holder_pid(lock: Path) -> int | None:
    text = lock.read_text() if lock.exists() else ""
    return int(text.split()[1]) if text.startswith("pid ") else None


def test_an_actor_killed_mid_run_is_replaced_and_the_job_completes_exactly_once(cluster, single, tmp_path):
    out = tmp_path / "out"
    killed: dict = {}

    def kill_an_actor() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lock = out / ".os-sample-lock-r01"
            shard = out / "shard-r01-00000.jsonl"
            if shard.exists() and shard.read_text().count("\n") >= 1:
                pid = _holder_pid(lock)
                if pid:
                    killed["records_then"] = sum(p.read_text().count("\n") for p in out.glob("shard-*.jsonl"))
                    os.kill(pid, signal.SIGKILL)
                    killed["pid"] = pid
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_an_actor, daemon=True)
    watcher.start()
    run_generate("demo", OVERRIDES, output=out, ray=RayLaunch(actors=2))
    watcher.join(timeout=5)
    assert killed.get("pid"), "no actor was killed"
    assert killed["records_then"] < N_ROWS, "the kill came after the last record"
    check_exactly_once(out, single)
    holders = {_holder_pid(p) for p in out.glob(".os-sample-lock-r*") if p.name != ".os-sample-lock-r00"}
    assert len(holders - {killed["pid"]}) >= 2, "a new actor process took over a writer slot"


def test_the_driver_killed_then_the_command_rerun_resumes_exactly_once(cluster, single, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    log = open(tmp_path / "driver.log", "w")
    cmd = [sys.executable, "-m", "os_cli", "generate", "--config", "demo", "--output", str(out), *_set_args(),
           "--backend", "ray", "--ray-address", cluster, "--actors", "2"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if sum(p.read_text().count("\n") for p in out.glob("shard-*.jsonl")) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, (tmp_path / "driver.log").read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = len(records(out))
    assert 2 <= before < N_ROWS
    # The rerun, in this process (the same command as a function; a second interpreter costs seconds).
    # The killed driver's actors may still be finishing: the append lock keeps their rows single.
    run_generate("demo", OVERRIDES, output=out, ray=RayLaunch(address=cluster, actors=2))
    check_exactly_once(out, single)
    assert json.loads((out / "manifest.json").read_text())["attempts"] == 2
