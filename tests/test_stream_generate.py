"""`generate` feeds the engine's continuous batching one stream of rows and writes records as rows
finish: the records do not depend on the batch size (the in-flight limit), on OOM back-off or on a
kill and resume; `sampling.draft_tokens` reaches the engine and is refused early where it cannot work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from os_cli import OptimalSamplingModel
from os_cli.cli import _register, app
from os_cli.store.record_format import encode_record

if not any(c.name == "generate" for c in app.registered_commands):
    _register()

N_ROWS = 9


def cli(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


@pytest.fixture
def recipe(tmp_path, tiny_models):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus {i + 3}?", "hint": str(2 * i + 3)}) + "\n"
                            for i in range(N_ROWS)))
    spec = {
        "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"]},
        "sampling": {"max_new_tokens": 12, "batch_size": 2, "seed": 5, "stop": ["a", "e"]},
        "dataset": {"source": str(data)},
        "prompts": {"theta": {"template": "{question}"}, "teacher": {"template": "{question} ({hint})"}},
        "output": {"shard_size": 4, "per_token": True},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def lines(out: Path) -> list[bytes]:
    """Every record line of the folder, sorted (records are written in finishing order)."""
    return sorted(line + b"\n" for shard in sorted(out.glob("shard-*.jsonl")) for line in shard.read_bytes().splitlines())


def same_records(got: list[bytes], want: list[bytes]) -> None:
    """Same records: tokens, texts, ids and every non-float field exactly; float diagnostics to float32
    rounding (a row's logits may move in the last digit with the rows it is batched with, never its tokens)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        _close(json.loads(g), json.loads(w), "record")


def _close(got, want, path):
    if isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5), path
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), path
        for key in want:
            _close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{path}[{i}]")
    else:
        assert got == want, path


def run(recipe: Path, out: Path, *sets: str, env=None) -> list[bytes]:
    args = [a for s in sets for a in ("--set", s)]
    result = cli("generate", "--config", recipe, "--output", out, *args, env=env)
    assert result.exit_code == 0, result.output
    return lines(out)


def test_batch_size_and_kill_resume_write_the_same_records(recipe, tmp_path):
    two = run(recipe, tmp_path / "b2", "sampling.batch_size=2")
    five = run(recipe, tmp_path / "b5", "sampling.batch_size=5")
    assert len(two) == N_ROWS
    same_records(five, two)
    lengths = {json.loads(line)["num_tokens"] for line in two}
    assert len(lengths) > 1  # rows end at different steps, so refill really reorders them
    # killed (SIGKILL) after two records, then resumed in process with another batch size
    out = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OS_SAMPLE_INJECT_DELAY="0.5")
    proc = subprocess.Popen([sys.executable, "-m", "os_cli", "generate", "--config", str(recipe), "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(lines(out) if out.exists() else []) < 2:
            assert proc.poll() is None, "the run ended before it was killed"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 2 <= len(lines(out)) < N_ROWS
    same_records(run(recipe, out, "sampling.batch_size=3"), two)


def test_records_are_what_generate_draws_for_the_row_seeds(recipe, tmp_path, tiny_models):
    from os_cli.mix.rng import row_seed

    records = [json.loads(line) for line in run(recipe, tmp_path / "out")]
    model = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu", dtype=torch.float32)
    model.alpha_method = records[0]["alpha_method"]
    by_index = {int(r["id"]): r for r in records}
    order = sorted(by_index)
    out = model.generate([by_index[i]["prompt"] for i in order], prompts_t=[by_index[i]["prompt_t"] for i in order],
                         max_new_tokens=12, seed=[row_seed(5, i) for i in order], batch_size=len(order),
                         stop=["a", "e"])
    for j, i in enumerate(order):
        n = int(out.lengths[j])
        assert by_index[i]["tokens"]["ids"] == out.generated_ids[j, :n].tolist()
        assert by_index[i]["completion"] == out.generated_texts[j]


def test_injected_oom_halves_the_in_flight_limit_and_keeps_the_records(recipe, tmp_path):
    plain = run(recipe, tmp_path / "plain", "sampling.batch_size=4")
    result = cli("generate", "--config", recipe, "--output", tmp_path / "oom", "--set", "sampling.batch_size=4",
                 env={"OS_SAMPLE_INJECT_OOM": "4"})
    assert result.exit_code == 0, result.output
    assert "out of memory at batch size 4: retrying with batch size 2" in result.stderr
    same_records(lines(tmp_path / "oom"), plain)


def test_oom_back_off_lowers_the_engine_limit(tiny_models, monkeypatch):
    """The library path the CLI uses: the InFlightLimit object halves, the rows come out unchanged."""
    from os_cli.run import testing_hooks
    from os_cli.api.rows import StreamRow
    from os_cli.engine.scheduler import InFlightLimit

    model = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu", dtype=torch.float32)
    rows = [StreamRow(f"What is {i} plus 1?", seed=100 + i, id=i) for i in range(6)]
    reference = {o.id: o.token_ids.tolist() for o in model.generate_stream(rows, max_new_tokens=8, limit=4)}
    monkeypatch.setenv(testing_hooks.INJECT_OOM, "4")
    testing_hooks.install_model_hooks(model)
    limit = InFlightLimit(4)
    got = {o.id: o.token_ids.tolist() for o in model.generate_stream(rows, max_new_tokens=8, limit=limit,
                                                                     oom_backoff=True)}
    assert limit.value == 2 and [b[:2] for b in limit.backoffs] == [(4, 2)]
    assert got == reference


def test_draft_tokens_reach_the_engine_and_are_refused_without_a_teacher(recipe, tmp_path, tiny_models):
    plain = run(recipe, tmp_path / "plain")
    two = run(recipe, tmp_path / "k2-b2", "sampling.draft_tokens=2")
    assert len(two) == N_ROWS and two != plain  # speculative rounds draw other (equally distributed) tokens
    same_records(run(recipe, tmp_path / "k2-b5", "sampling.draft_tokens=2", "sampling.batch_size=5"), two)
    # one model on the same prompts: refused before any model loads, naming the key
    out = tmp_path / "one"
    result = cli("generate", "--config", recipe, "--output", out, "--set", "sampling.draft_tokens=2",
                 "--set", "models.teacher=null", "--set", "prompts.teacher=null")
    assert result.exit_code == 2, result.output
    assert "sampling.draft_tokens" in result.stderr and "Traceback" not in result.output
    assert "loading models" not in result.stderr and not out.exists()
    result = cli("validate", recipe, "--set", "sampling.draft_tokens=2", "--set", "models.teacher=null",
                 "--set", "prompts.teacher=null")
    assert result.exit_code == 2 and "sampling.draft_tokens" in result.stderr
    # one model with a teacher prompt of its own is a different teacher: drafting works
    assert len(run(recipe, tmp_path / "hint", "sampling.draft_tokens=2", "models.teacher=null")) == N_ROWS


def test_draft_tokens_default_keeps_old_recipe_hashes(recipe):
    from os_cli.recipe import load_recipe, recipe_hash

    assert recipe_hash(load_recipe(str(recipe), [])) == recipe_hash(load_recipe(str(recipe), [("sampling.draft_tokens", 0)]))
    assert recipe_hash(load_recipe(str(recipe), [])) != recipe_hash(load_recipe(str(recipe), [("sampling.draft_tokens", 1)]))


def test_record_lines_encode_the_same_way(recipe, tmp_path):
    """Records pass through encode_record unchanged (the writer's one format)."""
    for line in run(recipe, tmp_path / "out"):
        assert encode_record(json.loads(line)) == line
