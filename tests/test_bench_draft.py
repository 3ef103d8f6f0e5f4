"""os-sample bench --draft-tokens and os_cli.bench.draft_costs on CPU with the tiny models. Nothing here
asserts a speed: the runs are timed (that is what bench does), the assertions are about what is
reported and how it is derived."""

from __future__ import annotations

import json
import math
import time

import pytest
import yaml
from rich_tables import table_lines
from typer.testing import CliRunner

from os_cli.bench import draft_costs as D
from os_cli.bench.sweep import BenchSettings
from os_cli.bench.measure import BenchRow
from os_cli.engine.speculative import expected_tokens_per_round

ROW_NUMBERS = ("acceptance", "expected_tokens", "ideal", "ideal_plus", "speedup", "speedup_min", "speedup_max",
               "speedup_spread")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _recipe(root, models: dict, prompts: dict, name: str, max_new_tokens: int = 6) -> str:
    data = root / "data.jsonl"
    data.write_text("".join(
        json.dumps({"question": f"What is {i} plus {i + 3}?", "answer": str(2 * i + 3)}) + "\n" for i in range(4)
    ))
    recipe = {"description": "bench draft test", "models": {**models, "device": "cpu"},
              "alpha": {"method": "kl_symmetry"}, "sampling": {"max_new_tokens": max_new_tokens, "seed": 0},
              "dataset": {"source": str(data)}, "prompts": prompts}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


THETA_PROMPT = {"template": "Question: {question}", "chat_template": True}
HINT_PROMPT = {"template": "Question: {question} Answer: {answer}", "chat_template": True}


@pytest.fixture(scope="module")
def recipes(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("bench_draft")
    two = {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"]}
    one = {"theta": tiny_models["theta"], "teacher": tiny_models["theta"]}
    return {
        "two": _recipe(root, two, {"theta": THETA_PROMPT, "teacher": HINT_PROMPT}, "two"),
        "one": _recipe(root, one, {"theta": THETA_PROMPT}, "one"),
        "one_same_prompt": _recipe(root, one, {"theta": THETA_PROMPT, "teacher": THETA_PROMPT}, "one_same"),
    }


def invoke(app, *args, columns=200):
    return CliRunner().invoke(app, ["bench", *map(str, args)], env={"COLUMNS": str(columns)})


def test_draft_tokens_table_json_and_recommendation(cli_app, recipes, tmp_path):
    out = tmp_path / "draft.json"
    result = invoke(cli_app, "--config", recipes["two"], "--batch-sizes", "1", "--prompts", "2",
                    "--draft-tokens", "1,2,2", "--json", out, columns=80)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["settings"]["draft_tokens"] == [1, 2]  # duplicates dropped
    spec = doc["speculative"]
    assert spec["batch_size"] == 1 and spec["ks"] == [1, 2]
    assert set(spec["forward_costs_ms"]) == {"theta", "draft", "teacher", "teacher_2", "teacher_3", "q_step", "q_step_2",
                                             "q_step_3"}
    assert all(math.isfinite(v) and v > 0 for v in spec["forward_costs_ms"].values())
    rows = spec["rows"]
    assert [r["k"] for r in rows] == [0, 1, 2]
    plain = rows[0]
    assert plain["acceptance"] is None and plain["speedup"] == pytest.approx(1.0) and plain["drafted"] == 0
    for r in rows:
        t = r["timing"]
        assert t["mode"] == "speculative" and t["error"] is None and t["repeats"] == 3, r
        assert t["new_tokens"] == 2 * 6  # same work for every k: every row runs to its cap, EOS ignored
        assert r["speedup_min"] <= r["speedup"] <= r["speedup_max"]
        numbers = [r[key] for key in ROW_NUMBERS if r["k"] or key != "acceptance"]
        assert all(isinstance(x, float) and math.isfinite(x) for x in numbers), r
    for r in rows[1:]:
        assert 0 < r["drafted"] and 0 <= r["accepted"] <= r["drafted"]
        assert 0.0 <= r["acceptance"] <= 1.0 and r["acceptance"] == pytest.approx(r["accepted"] / r["drafted"])
        assert r["expected_tokens"] == pytest.approx(expected_tokens_per_round(r["acceptance"], r["k"]))
        assert 1.0 <= r["expected_tokens"] <= r["k"] + 1
        assert r["ideal"] == pytest.approx(D.ideal_speedup(r["acceptance"], r["k"], spec["forward_costs_ms"]))
        assert r["ideal_plus"] == pytest.approx(D.ideal_plus_speedup(r["acceptance"], r["k"], spec["forward_costs_ms"]))
        assert r["teacher_forwards"] == r["rounds_per_run"] > 0  # one teacher forward per round
        assert r["theta_forwards"] > r["teacher_forwards"]  # k + 1 theta forwards per round
    pick = spec["recommendation"]
    assert pick["draft_tokens"] in (0, 1, 2)
    assert pick["set"] == f"--set sampling.draft_tokens={pick['draft_tokens']}"
    assert f"Recommended draft_tokens: {pick['draft_tokens']}" in result.stdout
    assert "--set sampling.draft_tokens=" in result.stdout
    lines = table_lines(result.stdout, ("Batch-size sweep", "Speculative at"))
    assert len(lines) >= 6
    for line in lines:
        assert len(line) <= 80, line
    notes = result.stdout[result.stdout.index("Speculative at"):].splitlines()  # the table, then its notes
    assert "forward costs" in result.stdout and len(notes) > len(table_lines("\n".join(notes), ("Speculative",)))
    for line in notes:
        assert len(line) <= 80, line
    assert "…" not in result.stdout
    for label in ("accept", "ideal", "ideal+", "× plain", "min-max", "EOS and stop strings ignored"):
        assert label in result.stdout, label


def test_bench_without_draft_tokens_has_no_speculative_section(cli_app, recipes, tmp_path):
    out = tmp_path / "plain.json"
    result = invoke(cli_app, "--config", recipes["two"], "--batch-sizes", "1", "--prompts", "1", "--json", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["speculative"] is None and doc["settings"]["draft_tokens"] == []
    assert "Speculative at" not in result.stdout


def test_acceptance_is_the_engines_counter_on_the_same_rows(tiny_models):
    """The bench's acceptance is what the scheduler counts for the same rows, seeds and k (run directly)."""
    from os_cli.api import arguments
    from os_cli.api.model import OptimalSamplingModel, SchedulerStats, StreamRow

    model = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu")
    prompts = ["Question: What is 1 plus 4?", "Question: What is 2 plus 5?", "Hi"]
    settings = BenchSettings(max_new_tokens=5, num_prompts=3, repeats=3, seed=7)
    rows, costs = D.measure_draft_tokens(model, prompts, None, 2, [2], settings, cost_repeats=1)
    stats = SchedulerStats()
    seeds = arguments.row_seeds(7, 3).tolist()
    direct = list(model.generate_stream([StreamRow(p, seed=s) for p, s in zip(prompts, seeds)], max_new_tokens=5,
                                        draft_tokens=2, limit=2, stats=stats, ignore_eos=True, skip_decode=True))
    assert sum(len(r.token_ids) for r in direct) == 15 == rows[1].timing.new_tokens
    assert rows[1].drafted == 3 * stats.drafted and rows[1].accepted == 3 * stats.accepted  # three timed runs
    assert rows[1].acceptance == pytest.approx(stats.acceptance)
    assert rows[1].rounds_per_run == stats.steps
    assert set(costs) >= {"theta", "teacher", "teacher_3", "q_step", "q_step_3"}


def test_a_failed_cost_timing_is_recorded_not_raised(tiny_models, monkeypatch):
    """The speed-ups stand without the costs; the ideals are left out and the failure is on the plain row."""
    from os_cli.api.model import OptimalSamplingModel

    def boom(*_args, **_kw):
        raise RuntimeError("injected failure\nsecond line")

    monkeypatch.setattr(D, "forward_costs", boom)
    model = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu")
    rows, costs = D.measure_draft_tokens(model, ["Hello there"], None, 1, [1], BenchSettings(max_new_tokens=3,
                                                                                              num_prompts=1))
    assert costs == {} and rows[0].timing.error == "forward costs: RuntimeError: injected failure"
    assert rows[1].ok and rows[1].speedup is not None and rows[1].acceptance is not None
    assert rows[1].ideal is None and rows[1].ideal_plus is None
    json.dumps(D.report(rows, costs, D.recommend_draft_tokens(rows), 1), allow_nan=False)


def test_forward_costs_are_timed_in_interleaved_rounds(tiny_models, monkeypatch):
    """A busy spell over the first 40% of the timing (each call in it reads a second longer on the clock the
    module times with) must not inflate any cost: every cost is timed once per round, so each sees the spell
    in 4 of its 10 calls and its median is clean. Timed one cost after another, the first ones (theta,
    teacher) took the whole spell: a 1-token teacher forward came out dearer than 2 tokens."""
    from types import SimpleNamespace

    from os_cli.api.model import OptimalSamplingModel

    model = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu")
    repeats, names = 10, 6  # theta, draft, teacher, teacher_2, q_step, q_step_2
    busy_readings = 2 * repeats * names * 2 // 5  # two clock readings per timed call
    state = {"readings": 0, "extra": 0.0}

    def clock():
        state["readings"] += 1
        if state["readings"] % 2 == 0 and state["readings"] <= busy_readings:
            state["extra"] += 1.0
        return time.perf_counter() + state["extra"]

    monkeypatch.setattr(D, "time", SimpleNamespace(perf_counter=clock))
    costs = D.forward_costs(model, "Question: What is 1 plus 4?", 12, [1], repeats=repeats)
    assert state["readings"] == 2 * repeats * names
    assert set(costs) == {"theta", "draft", "teacher", "teacher_2", "q_step", "q_step_2"}
    assert all(0 < ms < 500 for ms in costs.values()), costs


def test_ideal_formulas():
    costs = {"theta": 10.0, "teacher": 30.0, "teacher_3": 36.0, "q_step": 5.0, "q_step_3": 6.0}
    # a = 0.5, k = 2: E = (1 - 0.125) / 0.5 = 1.75
    assert D.ideal_speedup(0.5, 2, costs) == pytest.approx(1.75 * 40 / (20 + 36))
    assert D.ideal_plus_speedup(0.5, 2, costs) == pytest.approx(1.75 * 45 / (30 + 36 + 6))
    assert D.ideal_speedup(1.0, 2, costs) == pytest.approx(3 * 40 / 56)  # every draft accepted: k + 1 tokens
    assert D.ideal_speedup(0.0, 2, costs) == pytest.approx(40 / 56)  # none accepted: one token per round
    # Issue 9's example: a = 0.69, theta 22 ms, teacher 64 ms / 108 ms over k + 1 = 3 positions.
    e = (1 - 0.69 ** 3) / (1 - 0.69)
    assert D.ideal_speedup(0.69, 2, {"theta": 22, "teacher": 64, "teacher_3": 108}) == pytest.approx(
        e * 86 / (44 + 108))


def _row(k, speedup=None, lo=None, hi=None, error=None):
    timing = BenchRow(mode="speculative", label=f"k={k}", batch_size=1, new_tokens=10, seconds=1.0,
                      tokens_per_s=None if error else 10.0, error=error)
    row = D.DraftRow(k=k, timing=timing, speedup=speedup, speedup_min=lo, speedup_max=hi)
    if speedup is not None:
        row.speedup_spread = (hi - lo) / speedup
    return row


def test_recommendation_needs_a_gain_beyond_the_spread():
    plain = _row(0, 1.0, 1.0, 1.0)
    pick = D.recommend_draft_tokens([plain, _row(1, 1.30, 1.25, 1.35), _row(2, 1.40, 1.38, 1.45)])
    assert pick["draft_tokens"] == 2 and pick["set"] == "--set sampling.draft_tokens=2"
    assert pick["speedup"] == pytest.approx(1.40)
    # k=2 is best by median but slower than the plain loop in one round: k=1 is recommended.
    pick = D.recommend_draft_tokens([plain, _row(1, 1.30, 1.25, 1.35), _row(2, 1.50, 0.95, 1.60)])
    assert pick["draft_tokens"] == 1
    # Faster in every round, but the gain (10%) is smaller than the spread (about 18%): not trusted.
    pick = D.recommend_draft_tokens([plain, _row(1, 1.10, 1.02, 1.22)])
    assert pick["draft_tokens"] == 0 and pick["set"] == "--set sampling.draft_tokens=0"
    assert "k=1" in pick["reason"]
    # Slower: 0. A failed row is never recommended.
    assert D.recommend_draft_tokens([plain, _row(1, 0.8, 0.78, 0.82)])["draft_tokens"] == 0
    assert D.recommend_draft_tokens([plain, _row(1, error="out of memory: x")])["draft_tokens"] == 0


def test_report_writes_no_nan():
    plain, k1 = _row(0, 1.0, 1.0, 1.0), _row(1, 1.2, 1.15, 1.25)
    k1.acceptance = float("nan")
    doc = D.report([plain, k1], {"theta": 1.0}, {"draft_tokens": 0}, 1)
    json.dumps(doc, allow_nan=False)
    assert doc["rows"][1]["acceptance"] is None and doc["ks"] == [1]


@pytest.mark.parametrize("value, message", [
    ("0", "always runs as the baseline"),
    ("-1", "'-1' is not allowed"),
    ("1,x", "'x' is not allowed"),
    ("1,,2", "'' is not allowed"),
    ("7", "longer than the 6 new tokens per row"),  # the recipe's max_new_tokens is 6
    (str(D.MAX_BENCH_DRAFT_TOKENS + 1), "a typo"),
])
def test_bad_draft_tokens_are_refused(cli_app, recipes, value, message):
    args = ["--config", recipes["two"], "--draft-tokens", value]
    if value == str(D.MAX_BENCH_DRAFT_TOKENS + 1):
        args += ["--max-new-tokens", "64"]
    result = invoke(cli_app, *args)
    assert result.exit_code == 2, result.output
    assert "--draft-tokens" in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.output and "Batch-size sweep" not in result.stdout


def test_one_model_without_a_teacher_prompt_is_refused(cli_app, recipes):
    result = invoke(cli_app, "--config", recipes["one"], "--draft-tokens", "2")
    assert result.exit_code == 2, result.output
    assert "differs from theta" in result.stderr and "Drop --draft-tokens" in result.stderr
    assert "Traceback" not in result.output and "loading models" not in result.stdout
    # The same teacher prompt as theta's renders identical prompts: refused once rendered, before any run.
    result = invoke(cli_app, "--config", recipes["one_same_prompt"], "--draft-tokens", "2")
    assert result.exit_code == 2, result.output
    assert "differs from theta" in result.stderr and "Batch-size sweep" not in result.stdout
    assert "Traceback" not in result.output


@pytest.mark.parametrize("compile_value", ["true", "static"])
def test_compile_is_refused(cli_app, recipes, compile_value):
    result = invoke(cli_app, "--config", recipes["two"], "--set", f"models.compile={compile_value}",
                    "--draft-tokens", "1")
    assert result.exit_code == 2, result.output
    assert "models.compile" in result.stderr and "--draft-tokens" in result.stderr
    assert "Traceback" not in result.output and "Batch-size sweep" not in result.stdout


def test_draft_points_run_num_samples_rows_as_the_sweep_does(tiny_models):
    """With sampling.num_samples = 3 the k=0 and k rows run what the sweep's points run: each prompt 3 times,
    prompt-major, sample k seeded sample_seed(prompt seed, k); the rows say so (prompts, num_samples, rows)."""
    from os_cli.api import arguments
    from os_cli.api.model import OptimalSamplingModel, SchedulerStats, StreamRow
    from os_cli.api.samples import repeat_samples, sample_seeds

    model = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu")
    prompts = ["Question: What is 1 plus 4?", "Question: What is 2 plus 5?"]
    settings = BenchSettings(max_new_tokens=4, num_prompts=2, num_samples=3, repeats=3, seed=7)
    rows, _ = D.measure_draft_tokens(model, prompts, None, 2, [2], settings, cost_repeats=1)
    for r in rows:
        assert (r.timing.prompts, r.timing.num_samples, r.timing.rows) == (2, 3, 6)
        assert r.timing.new_tokens == 6 * 4  # every row to its cap
    stats = SchedulerStats()
    seeds = sample_seeds(arguments.row_seeds(7, 2).tolist(), 3)
    direct = [StreamRow(p, seed=s) for p, s in zip(repeat_samples(prompts, 3), seeds)]
    list(model.generate_stream(direct, max_new_tokens=4, draft_tokens=2, limit=2, stats=stats, ignore_eos=True,
                               skip_decode=True))
    assert rows[1].drafted == 3 * stats.drafted and rows[1].accepted == 3 * stats.accepted  # three timed runs
