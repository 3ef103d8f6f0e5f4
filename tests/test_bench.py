"""os-sample bench and os_cli.bench.sweep on CPU with the tiny models."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from rich_tables import table_lines
from typer.testing import CliRunner

from os_cli.bench import sweep as B
from os_cli.bench import measure
from os_cli import memory as M

ALL_METHODS = ("fixed", "kl_symmetry", "reverse_kl_symmetry", "ess_balance", "entropy")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("bench")
    data = root / "data.jsonl"
    data.write_text("".join(
        json.dumps({"question": f"What is {i} plus {i + 3}?", "answer": str(2 * i + 3)}) + "\n" for i in range(6)
    ))
    recipe = {
        "description": "bench test",
        "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"], "device": "cpu"},
        "alpha": {"method": "kl_symmetry"},
        "sampling": {"max_new_tokens": 6, "seed": 0},
        "dataset": {"source": str(data)},
        "prompts": {"theta": {"template": "Question: {question}", "chat_template": True},
                    "teacher": {"template": "Question: {question} Answer: {answer}", "chat_template": True}},
    }
    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def runner_app(cli_app):
    return cli_app


@pytest.fixture
def inject_oom(monkeypatch):
    """Batch sizes (add to the returned set) at which every engine point raises OutOfMemoryError before
    it runs, warm-up included: the engine's points are wrapped, the benchmark itself runs unchanged."""
    import torch

    sizes: set[int] = set()
    real = B.engine_point

    def point(model, prompts, prompts_t, batch_size, settings, **kw):
        p = real(model, prompts, prompts_t, batch_size, settings, **kw)
        if batch_size in sizes:
            def boom(*_args, **_kw):
                raise torch.OutOfMemoryError(f"CUDA out of memory (injected at batch size {batch_size})")

            p.run = p.warmup = boom
        return p

    monkeypatch.setattr(B, "engine_point", point)
    return sizes


def invoke(app, *args, env=None):
    return CliRunner().invoke(app, ["bench", *map(str, args)], env={"COLUMNS": "200", **(env or {})})


def test_sweep_rows_and_json(runner_app, recipe_file, tmp_path):
    out = tmp_path / "bench.json"
    result = invoke(runner_app, "--config", recipe_file, "--batch-sizes", "1,2,4", "--prompts", "4",
                    "--json", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["kind"] == "os-sample-bench" and doc["format"] == B.BENCH_FORMAT
    assert doc["machine"]["cpu_count"] >= 1 and doc["machine"]["platform"]
    assert doc["device"]["type"] == "cpu" and doc["device"]["name"]
    assert doc["versions"]["torch"] and doc["versions"]["transformers"]
    assert doc["settings"]["max_new_tokens"] == 6 and doc["settings"]["batch_sizes"] == [1, 2, 4]
    assert [r["batch_size"] for r in doc["rows"]] == [1, 2, 4]
    for r in doc["rows"]:
        assert r["mode"] == "sweep" and r["alpha_method"] == "kl_symmetry" and not r["oom"] and r["error"] is None
        assert r["prompts"] == 4
        assert 4 <= r["new_tokens"] <= 4 * 6
        assert r["tokens_per_s"] > 0 and r["s_per_step"] > 0 and r["seconds"] > 0
        assert r["steps"] >= -(-4 // r["batch_size"])  # at least one step per micro-batch
        assert r["steps"] <= -(-4 // r["batch_size"]) * 6
        assert r["peak_memory"] > 0 and r["memory_metric"].startswith("cpu_")
    best = max(doc["rows"], key=lambda r: r["tokens_per_s"])
    rec = doc["recommendation"]
    assert rec["fastest"] == best["batch_size"]
    if rec["batch_size"] is None:  # timing noise: no measurable difference between the best and another point
        assert best["batch_size"] in rec["tied"] and len(rec["tied"]) > 1 and "--set sampling" not in result.stdout
    else:
        assert rec["batch_size"] == best["batch_size"] and rec["tied"] == []
        assert rec["set"] == f"--set sampling.batch_size={best['batch_size']}" and rec["set"] in result.stdout
    assert doc["compare"] is None


def test_injected_oom_is_recorded_and_ends_the_sweep(runner_app, recipe_file, tmp_path, inject_oom):
    out = tmp_path / "oom.json"
    inject_oom.add(2)
    result = invoke(runner_app, "--config", recipe_file, "--batch-sizes", "1,2,4", "--prompts", "2",
                    "--json", out)
    assert result.exit_code == 0, result.output
    assert "OOM" in result.stdout and "Traceback" not in result.output
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch_size"], r["oom"]) for r in rows] == [(1, False), (2, True)]  # 4 never ran
    assert "injected" in rows[1]["error"] and rows[1]["tokens_per_s"] is None
    assert json.loads(out.read_text())["recommendation"]["batch_size"] == 1


def test_oom_on_the_first_point_during_warmup(recipe_file, tiny_models, inject_oom):
    model = _model(tiny_models)
    inject_oom.add(1)
    rows = B.sweep(model, ["Hello"], None, [1, 2], B.BenchSettings(max_new_tokens=3, num_prompts=1))
    assert len(rows) == 1 and rows[0].oom
    assert B.recommend(rows, 0.1, None)["batch_size"] is None


def test_real_oom_error_message_counts_as_oom():
    assert measure.is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert measure.is_oom(B.torch.OutOfMemoryError("x"))
    assert not measure.is_oom(RuntimeError("shape mismatch"))


def test_compare_lists_hf_floor_and_every_method(runner_app, recipe_file, tmp_path):
    out = tmp_path / "cmp.json"
    result = invoke(runner_app, "--config", recipe_file, "--batch-sizes", "2", "--prompts", "2", "--compare",
                    "--json", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    rows = doc["compare"]
    assert [r["mode"] for r in rows] == ["hf_generate", "floor"] + ["method"] * len(ALL_METHODS)
    assert [r["alpha_method"] for r in rows[2:]] == list(ALL_METHODS)
    assert rows[1]["sample_from"] == "teacher" and rows[1]["ratio_to_floor"] == pytest.approx(1.0)
    for r in rows:
        assert r["batch_size"] == 2 and r["tokens_per_s"] > 0 and r["ratio_to_floor"] > 0, r
    for label in ("HF generate", "floor", *ALL_METHODS, "× floor"):
        assert label in result.stdout, label


def test_auto_doubles_until_throughput_stops_improving_twice(monkeypatch):
    injected: set[int] = set()
    speeds = {1: 100.0, 2: 180.0, 4: 185.0, 8: 400.0, 16: 390.0, 32: 415.0, 64: 900.0}
    seen = []

    def fake_run_engine(model, prompts, prompts_t, b, settings, **kw):
        seen.append((b, kw.get("warmup")))
        row = B.BenchRow(mode="sweep", label="m", batch_size=b, new_tokens=1, steps=1, seconds=1.0, peak_memory=b)
        if b in injected:
            row.oom, row.error = True, "out of memory: injected"
        else:
            row.tokens_per_s = speeds[b]
        return row

    monkeypatch.setattr(B, "run_engine", fake_run_engine)
    rows = B.sweep(None, ["Hi"], None, "auto", B.BenchSettings())
    # 4 is within 5% of 180 (once: go on), 8 improves, 16 drops and 32 is within 5% of 400: stop.
    assert [r.batch_size for r in rows] == [1, 2, 4, 8, 16, 32]
    assert seen[0] == (1, True) and all(w is False for _, w in seen[1:])  # one warm-up, before the first

    speeds.update({4: 300.0, 8: 500.0, 16: 900.0})
    injected.add(16)
    rows = B.sweep(None, ["Hi"], None, "auto", B.BenchSettings())
    assert [(r.batch_size, r.oom) for r in rows] == [(1, False), (2, False), (4, False), (8, False), (16, True)]
    assert B.recommend(rows, 0.1, None)["batch_size"] == 8
    assert B.auto_batch_sizes(8) == [1, 2, 4, 8]

    injected.clear()
    rows = B.sweep(None, ["Hi"], None, "auto", B.BenchSettings(), memory_limit=3)  # peak_memory = b here
    assert [r.batch_size for r in rows] == [1, 2, 4]  # 4 passed the memory limit: no larger point


def test_recommend_respects_cuda_headroom():
    def row(b, tps, reserved):
        return B.BenchRow(mode="sweep", label="m", batch_size=b, tokens_per_s=tps, new_tokens=1, steps=1,
                          seconds=1.0, peak_memory=reserved, peak_reserved=reserved)

    rows = [row(1, 10, 10), row(2, 20, 50), row(4, 30, 95)]
    assert B.recommend(rows, 0.1, {"cuda:0": 100})["batch_size"] == 2
    assert B.recommend(rows, 0.0, {"cuda:0": 100})["batch_size"] == 4
    assert B.recommend(rows, 0.95, {"cuda:0": 100})["batch_size"] is None
    assert B.recommend(rows, 0.1, None)["batch_size"] == 4


def test_bad_batch_sizes_is_a_clear_error(runner_app, recipe_file):
    result = invoke(runner_app, "--config", recipe_file, "--batch-sizes", "1,x")
    assert result.exit_code == 2 and "--batch-sizes" in result.stderr and "Traceback" not in result.output


def _model(tiny_models):
    from os_cli.api.model import OptimalSamplingModel

    return OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu")


def test_cuda_memory_path_with_a_fake_device(monkeypatch):
    """The CUDA branch of PeakMemory (no GPU here): reset before, allocator peaks after, per device."""
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: calls.append(("sync", str(d))))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: calls.append(("reset", str(d))))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: {"cuda:0": 5, "cuda:1": 7}[str(d)])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d=None: {"cuda:0": 8, "cuda:1": 9}[str(d)])
    devices = [torch.device("cuda", 0), torch.device("cuda", 1)]
    with M.PeakMemory(devices) as mem:
        pass
    assert ("reset", "cuda:0") in calls and ("reset", "cuda:1") in calls
    assert mem.metric == "cuda_max_memory_allocated"
    assert mem.read() == (7, 9, {"cuda:0": 5, "cuda:1": 7})


def test_cpu_peak_memory_is_per_point():
    with M.PeakMemory([B.torch.device("cpu")]) as mem:
        block = bytearray(64 * 2**20)
        block[::4096] = b"x" * len(block[::4096])  # touch the pages
    big = mem.read()[0]
    del block
    with M.PeakMemory([B.torch.device("cpu")]) as mem2:
        pass
    small = mem2.read()[0]
    assert big > 0 and small > 0
    if mem.metric == "cpu_peak_rss":  # Linux with a resettable VmHWM: the second point does not see the first
        assert big - small > 32 * 2**20


def test_points_are_timed_repeatedly_with_median_and_spread(recipe_file, tiny_models):
    model = _model(tiny_models)
    row = B.run_engine(model, ["Hello", "Hi there"], None, 2, B.BenchSettings(max_new_tokens=4, num_prompts=2,
                                                                              repeats=3), warmup=True)
    assert row.ok and row.repeats == 3 and len(row.seconds_all) == 3
    assert row.seconds == sorted(row.seconds_all)[1]  # the median
    assert row.tokens_per_s == pytest.approx(row.new_tokens / row.seconds)
    assert row.spread == pytest.approx((max(row.seconds_all) - min(row.seconds_all)) / row.seconds)
    assert row.noisy == (row.spread > measure.NOISY_SPREAD)


def test_compare_runs_every_row_at_the_same_length_and_fits_80_columns(runner_app, recipe_file, tmp_path):
    out = tmp_path / "cmp80.json"
    result = invoke(runner_app, "--config", recipe_file, "--batch-sizes", "2", "--prompts", "4", "--compare",
                    "--json", out, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["compare"]
    for r in rows:  # EOS ignored: every engine row and HF generate make exactly 4 prompts x 6 tokens
        assert r["new_tokens"] == 4 * 6 and r["repeats"] == 3 and len(r["seconds_all"]) == 3, r
        assert r["ratio_min"] <= r["ratio_to_floor"] <= r["ratio_max"]
    assert "EOS and stop strings ignored" in rows[1]["lengths"]
    assert "EOS and stop strings ignored" in result.stdout
    tables = table_lines(result.stdout, ("Batch-size sweep", "Comparison at"))
    assert len(tables) >= 8
    for line in tables:
        assert len(line) <= 80, line
    assert "…" not in result.stdout  # nothing was cut to fit
    for label in ("floor", *ALL_METHODS, "× floor", "spread"):
        assert label in result.stdout, label


def test_long_tail_caps_are_deterministic_and_long_tailed():
    caps = B.long_tail_caps(2000, 256, seed=3)
    assert caps == B.long_tail_caps(2000, 256, seed=3) and caps != B.long_tail_caps(2000, 256, seed=4)
    assert min(caps) >= 32 // 1 and max(caps) == 256  # scale 256 // 8 = 32; some rows reach the cap
    below = sum(c < 64 for c in caps) / len(caps)
    assert 0.55 < below < 0.75  # Pareto(1.5): P(cap < 2·scale) = 1 - 2^-1.5 ~ 0.65
    assert B.long_tail_caps(5, 4) == [c for c in B.long_tail_caps(5, 4)] and all(1 <= c <= 4 for c in
                                                                                  B.long_tail_caps(5, 4))


def test_per_row_caps_in_generate_and_long_tail_bench(runner_app, recipe_file, tiny_models, tmp_path):
    model = _model(tiny_models)
    saved = model.eos_token_ids
    model.eos_token_ids = []  # no EOS: every row must stop exactly at its own cap
    try:
        out = model.generate(["a", "b", "c"], max_new_tokens=[1, 4, 2], seed=0, batch_size=2)
    finally:
        model.eos_token_ids = saved
    assert out.lengths.tolist() == [1, 4, 2] and out.finish_reasons == ["length"] * 3
    with pytest.raises(ValueError, match="a list of 2 such integers"):
        model.generate(["a", "b"], max_new_tokens=[1])
    path = tmp_path / "lt.json"
    result = invoke(runner_app, "--config", recipe_file, "--batch-sizes", "2", "--prompts", "4", "--lengths",
                    "long-tail", "--json", path)
    assert result.exit_code == 0, result.output
    doc = json.loads(path.read_text())
    assert doc["settings"]["lengths"] == "long-tail" and "long-tail" in doc["rows"][0]["lengths"]
    assert doc["rows"][0]["new_tokens"] <= sum(B.long_tail_caps(4, 6, 0))
    split = doc["rows"][0]["time_split"]  # where the time went (engine/phase_clock.py), printed with occupancy
    assert set(split) == {"decode", "mixing", "prefill/join", "host"} and sum(split.values()) == pytest.approx(1.0)
    assert split["decode"] > 0 and 0 < doc["rows"][0]["slot_occupancy"] <= 1
    assert "occupancy (mean rows in flight / batch) and time split" in result.output
    assert re.search(r"batch 2: occupancy [01]\.\d\d; decode \d+%, mixing \d+%, prefill/join \d+%, host \d+%",
                     result.output), result.output
    bad = invoke(runner_app, "--config", recipe_file, "--lengths", "short")
    assert bad.exit_code == 2 and "--lengths" in bad.stderr


def _timed(b: int, tokens: int, seconds: list[float]) -> B.BenchRow:
    """A sweep row as measure() leaves it after timed runs of `seconds`."""
    import statistics

    row = B.BenchRow(mode="sweep", label="kl_symmetry", batch_size=b, prompts=tokens, new_tokens=tokens,
                     steps=max(1, tokens // b), seconds_all=list(seconds), repeats=len(seconds),
                     peak_memory=2**29, memory_metric="cpu_peak_rss")
    row.seconds = statistics.median(seconds)
    row.tokens_per_s, row.s_per_step = tokens / row.seconds, row.seconds / row.steps
    row.spread = (max(seconds) - min(seconds)) / row.seconds
    row.noisy = row.spread > measure.NOISY_SPREAD
    return row


# Every point noisy (39-69% spread): tokens/s ranges 71-107, 97-160, 107-213, 128-267. Batch size 8 has the
# best median but overlaps 2 and 4; 1 is measurably slower than 8.
NOISY = [(1, 32, [0.30, 0.35, 0.45]), (2, 32, [0.20, 0.25, 0.33]), (4, 32, [0.15, 0.20, 0.30]),
         (8, 32, [0.12, 0.18, 0.25])]


def test_recommend_needs_a_measurable_difference():
    rows = [_timed(*spec) for spec in NOISY]
    assert all(r.noisy for r in rows)
    rec = B.recommend(rows, 0.1, None)
    assert rec["batch_size"] is None and rec["set"] is None and rec["tokens_per_s"] is None
    assert rec["tied"] == [2, 4, 8] and rec["fastest"] == 8
    assert "no measurable difference between batch sizes 2, 4 and 8" in rec["reason"]
    assert measure.overlaps(rows[3], rows[1]) and not measure.overlaps(rows[3], rows[0])

    clear = [_timed(1, 32, [0.30, 0.31, 0.32]), _timed(2, 32, [0.20, 0.21, 0.22]), _timed(4, 32, [0.12, 0.13, 0.14])]
    rec = B.recommend(clear, 0.1, None)
    assert rec["batch_size"] == 4 and rec["set"] == "--set sampling.batch_size=4" and rec["tied"] == []
    assert "slowest timed run beats every other" in rec["reason"]
    # Only the points that fit the memory headroom compete: 4 and 8 tie, 8 does not fit, 4 is recommended.
    fits = [_timed(*spec) for spec in NOISY[2:]]
    fits[1].peak_reserved = 95
    fits[0].peak_reserved = 10
    assert B.recommend(fits, 0.1, {"cuda:0": 100})["batch_size"] == 4


def test_no_measurable_difference_is_said_and_notes_wrap_at_80(runner_app, recipe_file, tmp_path, monkeypatch):
    """The sweep's rows are given (noisy, overlapping); everything else is the real command."""
    monkeypatch.setattr(B, "sweep", lambda *a, **kw: [_timed(*spec) for spec in NOISY])
    out = tmp_path / "tie.json"
    result = invoke(runner_app, "--config", recipe_file, "--batch-sizes", "1,2,4,8", "--prompts", "1",
                    "--json", out)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "No recommendation: no measurable difference between batch sizes 2, 4 and 8" in text
    assert "Recommended batch size" not in text and "--set sampling.batch_size" not in text
    rec = json.loads(out.read_text())["recommendation"]
    assert rec["batch_size"] is None and rec["tied"] == [2, 4, 8] and rec["fastest"] == 8
    notes = result.stdout[result.stdout.index("lengths:"):].splitlines()
    assert len(notes) >= 4
    for line in notes:
        assert len(line) <= 80, line


def test_default_sweep_includes_the_recipes_batch_size(runner_app, recipe_file, tmp_path):
    out = tmp_path / "default.json"
    result = invoke(runner_app, "--config", recipe_file, "--set", "sampling.batch_size=3", "--prompts", "1",
                    "--max-new-tokens", "2", "--json", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["settings"]["batch_sizes"] == [1, 2, 3, 4, 8]
    assert [r["batch_size"] for r in doc["rows"]] == [1, 2, 3, 4, 8]
    assert B.default_batch_sizes(8) == [1, 2, 4, 8] and B.default_batch_sizes(32) == [1, 2, 4, 8, 32]
