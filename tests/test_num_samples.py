"""Several samples per prompt: seeds (rng.sample_seed), `sampling.num_samples` in generate, resume per
(row, sample), inspect's pass@k and integrity per (id, sample), export, and the API's num_samples."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from math import comb
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from os_cli.mix import rng
from os_cli.cli import _register, app
from os_cli.limits import MAX_SEED
from os_cli.report.passk import pass_at_k

if not any(c.name == "generate" for c in app.registered_commands):
    _register()
runner = CliRunner()
N_ROWS = 4


# --------------------------------------------------------------------------------------------------
# Seeds


def test_sample_zero_keeps_the_row_seed_and_samples_never_collide():
    for seed in (0, 11, MAX_SEED, MAX_SEED // rng.ROW_SEED_STRIDE + 5):
        row_seeds = [rng.row_seed(seed, i) for i in range(300)]
        assert [rng.sample_seed(r, 0) for r in row_seeds] == row_seeds
        all_seeds = [rng.sample_seed(r, k) for r in row_seeds for k in range(40)]
        assert len(set(all_seeds)) == len(all_seeds)  # no (row, sample) shares a seed with another
        assert all(0 <= s <= MAX_SEED for s in all_seeds)
    # far indices and samples (the documented bounds: index < 2**40, sample < 2**23) stay distinct too
    r0 = rng.row_seed(7, 0)
    picks = {(i, k) for i in (0, 1, 2**39, 2**40 - 1) for k in (0, 1, 2**22, 2**23 - 1)}
    seeds = {rng.sample_seed(rng.row_seed(7, i), k) for i, k in picks}
    assert len(seeds) == len(picks) and rng.sample_seed(r0, 1) != rng.row_seed(7, 1)


def test_samples_of_one_row_get_distinct_engine_keys():
    for r in (0, 12345, MAX_SEED, MAX_SEED - 3, 2**32 - 1):
        seeds = torch.tensor([rng.sample_seed(r, k) for k in range(5000)], dtype=torch.int64)
        keys = rng.row_keys(seeds)
        assert len(set(keys.tolist())) == 5000


def test_pass_at_k_matches_the_definition():
    # 1 - C(n-c, k) / C(n, k) is P(k draws without replacement include a correct one): check by counting subsets
    from itertools import combinations

    for n in range(1, 7):
        for c in range(n + 1):
            items = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(combinations(range(n), k))
                expected = sum(any(items[i] for i in s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(expected)
    assert pass_at_k(3, 1, 1) == pytest.approx(1 / 3) and comb(3, 2) == 3


# --------------------------------------------------------------------------------------------------
# generate with sampling.num_samples


@pytest.fixture
def work(tmp_path, tiny_models):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus 3?", "answer": str(i + 3)}) + "\n"
                            for i in range(N_ROWS)))

    def write(name: str, **sampling) -> Path:
        recipe = {
            "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"]},
            "sampling": {"max_new_tokens": 6, "batch_size": 3, "seed": 5, **sampling},
            "dataset": {"source": str(data)},
            "prompts": {"theta": {"template": "{question}"}, "teacher": {"template": "{question} ({answer})"}},
            "output": {"shard_size": 4, "per_token": True},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    return write, tmp_path


def gen(recipe: Path, out: Path, *extra):
    return runner.invoke(app, ["generate", "--config", str(recipe), "--output", str(out), *map(str, extra)])


def records(out: Path) -> list[dict]:
    return [json.loads(line) for s in sorted(out.glob("shard-*.jsonl")) for line in s.read_text().splitlines()]


def by_key(recs: list[dict]) -> dict:
    return {(r["id"], r["sample"]): r for r in recs}


def test_n_records_per_row_with_own_seeds_and_sample_zero_is_the_single_run(work):
    write, tmp = work
    one, three = tmp / "one", tmp / "three"
    assert gen(write("one"), one).exit_code == 0
    result = gen(write("three", num_samples=3), three)
    assert result.exit_code == 0, result.output
    recs = records(three)
    assert sorted((r["id"], r["sample"]) for r in recs) == [(str(i), k) for i in range(N_ROWS) for k in range(3)]
    single = by_key(records(one))
    assert set(single) == {(str(i), 0) for i in range(N_ROWS)}
    multi = by_key(recs)
    for (rid, _), rec in single.items():
        # sample 0 is exactly what a one-sample run writes (same seed, same tokens, same numbers)
        assert multi[(rid, 0)]["tokens"]["ids"] == rec["tokens"]["ids"]
        assert multi[(rid, 0)]["logprob"] == pytest.approx(rec["logprob"], abs=1e-5)
    # each sample draws its own randomness: the token sequences of a row's samples are not all equal
    distinct = [len({tuple(multi[(str(i), k)]["tokens"]["ids"]) for k in range(3)}) for i in range(N_ROWS)]
    assert sum(distinct) > N_ROWS, distinct
    m = json.loads((three / "manifest.json").read_text())
    assert m["counts"]["records"] == 3 * N_ROWS


def test_larger_n_extends_a_run_and_a_smaller_n_is_refused(work):
    write, tmp = work
    out, full = tmp / "out", tmp / "full"
    assert gen(write("two", num_samples=2), out).exit_code == 0
    before = by_key(records(out))
    result = gen(write("three", num_samples=3), out)  # num_samples is not in the recipe hash: resumes
    assert result.exit_code == 0, result.output
    assert "8 of 12 records" in result.stderr
    after = by_key(records(out))
    assert set(after) == {(str(i), k) for i in range(N_ROWS) for k in range(3)}
    assert all(after[key] == rec for key, rec in before.items())  # nothing rewritten
    assert gen(write("full", num_samples=3), full).exit_code == 0
    reference = by_key(records(full))
    assert {k: r["tokens"]["ids"] for k, r in after.items()} == {k: r["tokens"]["ids"] for k, r in reference.items()}
    shrunk = gen(write("shrunk", num_samples=2), out)
    text = " ".join(shrunk.output.split())
    assert shrunk.exit_code == 2 and "4 record(s) with a sample index >= sampling.num_samples = 2" in text


def _start(recipe: Path, out: Path, delay: float) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OS_SAMPLE_INJECT_DELAY=str(delay))
    log = open(out.parent / f"log-{time.monotonic_ns()}.txt", "w")
    return subprocess.Popen([sys.executable, "-m", "os_cli", "generate", "--config", str(recipe), "--output",
                             str(out)], stdout=log, stderr=subprocess.STDOUT, env=env)


@pytest.mark.slow
def test_killed_mid_run_resumes_exactly_once_per_row_and_sample(work):
    write, tmp = work
    recipe = write("three", num_samples=3, batch_size=2)
    out, ref = tmp / "out", tmp / "ref"
    proc = _start(recipe, out, delay=0.6)
    deadline = time.monotonic() + 120
    while len(records(out)) < 4 and time.monotonic() < deadline:  # two batches written: row 1 is half done
        assert proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    written = len(records(out))
    assert 4 <= written < 3 * N_ROWS
    result = gen(recipe, out)
    assert result.exit_code == 0, result.output
    assert f"{written} of 12 records" in result.stderr
    recs = records(out)
    keys = [(r["id"], r["sample"]) for r in recs]
    assert sorted(keys) == [(str(i), k) for i in range(N_ROWS) for k in range(3)]  # each exactly once
    assert gen(recipe, ref).exit_code == 0
    assert {k: r["tokens"]["ids"] for k, r in by_key(recs).items()} == \
        {k: r["tokens"]["ids"] for k, r in by_key(records(ref)).items()}


def test_inspect_counts_missing_and_duplicated_pairs_and_reports_pass_at_k(work):
    from os_cli.report.summary import summarize_dir

    write, tmp = work
    out = tmp / "out"
    assert gen(write("three", num_samples=3), out).exit_code == 0
    # Give the completions known answers: row 0 right once, row 1 never, rows 2 and 3 always.
    correct = {0: {1}, 1: set(), 2: {0, 1, 2}, 3: {0, 1, 2}}
    shard_lines = {}
    for shard in sorted(out.glob("shard-*.jsonl")):
        lines = []
        for line in shard.read_text().splitlines():
            rec = json.loads(line)
            i, k = int(rec["id"]), rec["sample"]
            rec["completion"] = f"\\boxed{{{i + 3 if k in correct[i] else 99}}}"
            lines.append(json.dumps(rec))
        shard_lines[shard] = lines
    for shard, lines in shard_lines.items():
        shard.write_text("".join(line + "\n" for line in lines))
    s = summarize_dir(out)
    per_row = s["overall"]["answers"]["per_row"]
    assert per_row["samples_per_row"] == {"min": 3, "max": 3} and per_row["rows"] == 4
    assert per_row["pass_at"]["1"]["value"] == pytest.approx((1 / 3 + 0 + 1 + 1) / 4)
    assert per_row["pass_at"]["2"]["value"] == pytest.approx((2 / 3 + 0 + 1 + 1) / 4)
    assert per_row["pass_at"]["3"]["value"] == pytest.approx(3 / 4)
    assert per_row["mean_accuracy"] == pytest.approx(s["overall"]["answers"]["accuracy"])  # all rows have 3
    assert per_row["rows_all_correct"] == 2 and per_row["rows_none_correct"] == 1
    assert s["integrity"]["clean"] and s["integrity"]["num_samples"] == 3

    # Drop sample 2 of row 1 and duplicate sample 0 of row 3: counted per (id, sample)
    lines = [line for shard in sorted(out.glob("shard-*.jsonl")) for line in shard.read_text().splitlines()]
    kept = [line for line in lines if (json.loads(line)["id"], json.loads(line)["sample"]) != ("1", 2)]
    dup = next(line for line in lines if (json.loads(line)["id"], json.loads(line)["sample"]) == ("3", 0))
    for shard in out.glob("shard-*.jsonl"):
        shard.unlink()
    (out / "shard-00000.jsonl").write_text("".join(line + "\n" for line in kept + [dup]))
    it = summarize_dir(out)["integrity"]
    assert it["missing"]["count"] == 1 and it["missing"]["samples"] == [["1", 2]]
    assert it["duplicates"]["count"] == 1 and it["duplicates"]["ids"][0]["sample"] == 0
    assert it["duplicates"]["ids"][0]["id"] == "3" and not it["clean"]
    shown = runner.invoke(app, ["inspect", str(out)], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    assert "pass@3" in shown.output and "missing (id, sample)" in shown.output and "1#2" in shown.output
    assert max(len(line.rstrip()) for line in shown.output.splitlines()) <= 80
    # resume refuses the duplicated pair before loading models
    again = gen(write("three", num_samples=3), out)
    assert again.exit_code == 1 and "id '3' was already written" in again.output


def test_export_keeps_every_sample_and_refuses_a_duplicated_pair(work):
    from datasets import load_dataset

    write, tmp = work
    out = tmp / "out"
    assert gen(write("two", num_samples=2), out).exit_code == 0
    to = tmp / "train.jsonl"
    result = runner.invoke(app, ["export", str(out), "--format", "trl", "--to", str(to)])
    assert result.exit_code == 0, result.output
    ds = load_dataset("json", data_files=str(to), split="train")
    assert sorted(zip(ds["id"], ds["sample"])) == [(str(i), k) for i in range(N_ROWS) for k in range(2)]
    assert sum(ds["weight"]) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------
# The API


def test_api_num_samples_repeats_prompts_with_sample_seeds(tiny_models):
    from os_cli import OptimalSamplingModel

    model = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu")
    prompts = ["What is 2 plus 3?", "The quick brown fox"]
    plain = model.generate(prompts, max_new_tokens=6, seed=9)
    out = model.generate(prompts, max_new_tokens=6, seed=9, num_samples=3, batch_size=2)
    assert out.generated_ids.shape[0] == 6 and len(out.generated_texts) == 6
    assert out.prompt_indices.tolist() == [0, 0, 0, 1, 1, 1] and out.sample_indices.tolist() == [0, 1, 2] * 2
    for i in range(2):
        row = 3 * i
        n = int(plain.lengths[i])
        assert out.generated_ids[row, :n].tolist() == plain.generated_ids[i, :n].tolist()  # sample 0 == plain
    # sample k of prompt i is the plain call with seed sample_seed(row_seed(9, i), k)
    seeds = [rng.sample_seed(rng.row_seed(9, i), 2) for i in range(2)]
    direct = model.generate(prompts, max_new_tokens=6, seed=seeds)
    for i in range(2):
        n = int(direct.lengths[i])
        assert out.generated_ids[3 * i + 2, :n].tolist() == direct.generated_ids[i, :n].tolist()
    assert len({tuple(out.generated_ids[r].tolist()) for r in range(3)}) > 1
    single = model.generate(prompts, max_new_tokens=6, seed=9, num_samples=1)
    assert single.generated_ids.tolist() == plain.generated_ids.tolist() and single.sample_indices.tolist() == [0, 0]
    for bad in (0, -1, 2.0, True, 1 << 20):
        with pytest.raises(ValueError, match="num_samples"):
            model.generate(prompts, max_new_tokens=2, seed=1, num_samples=bad)
