"""os-sample bench with sampling.num_samples: each point runs its prompts x num_samples rows (what generate runs),
and reports the prompt tokens each model ran per prompt token its distinct prompts hold (1.00: one prefill each)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from os_cli.bench import sweep as B


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def samples_recipe(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("bench_samples")
    data = root / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"What is {i} plus {i + 3}?", "answer": str(2 * i + 3)}) + "\n" for i in range(4)
        )
    )
    recipe = {
        "description": "bench with samples",
        "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"], "device": "cpu"},
        "sampling": {"max_new_tokens": 4, "seed": 0, "num_samples": 3},
        "dataset": {"source": str(data)},
        "prompts": {
            "theta": {"template": "Question: {question}", "chat_template": True},
            "teacher": {"template": "Question: {question} Answer: {answer}", "chat_template": True},
        },
    }
    path = root / "samples.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def two_models(tiny_models):
    from os_cli.api.model import OptimalSamplingModel

    return OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu")


PROMPTS = ["What is 1 plus 4?", "What is 2 plus 5?"]
PROMPTS_T = [p + " Answer: 5" for p in PROMPTS]


def test_bench_runs_num_samples_rows_and_reports_one_prefill_per_prompt(cli_app, samples_recipe, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        cli_app,
        ["bench", "--config", str(samples_recipe), "--batch-sizes", "4", "--prompts", "2", "--json", str(out)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["settings"]["num_samples"] == 3
    (row,) = doc["rows"]
    assert row["error"] is None and not row["oom"]
    assert (row["prompts"], row["num_samples"], row["rows"]) == (2, 3, 6)
    assert 6 <= row["new_tokens"] <= 6 * 4  # 3 samples of 2 prompts, each 1..4 tokens
    # Each distinct prompt prefilled once per model: without sharing its 3 samples would run it 3 times (3.00).
    for side in ("theta", "t"):
        assert row[f"distinct_prompt_tokens_{side}"] > 0
        assert row[f"prompt_tokens_{side}"] == row[f"distinct_prompt_tokens_{side}"]
        assert row[f"prefill_ratio_{side}"] == pytest.approx(1.0)
    assert "prompts × 3 samples (sampling.num_samples) per point" in result.output
    assert "rows: 6 per point (2 prompts × 3 samples)" in result.output
    assert "prompt tokens run per distinct prompt token" in result.output
    assert "theta 1.00×" in result.output and "teacher 1.00×" in result.output


@pytest.mark.parametrize("lengths", ["natural", "long-tail"])
def test_bench_point_runs_exactly_the_rows_generate_runs(two_models, lengths):
    """Same tokens as generate(num_samples=3): the same rows, seeds and caps (long-tail: through the row stream)."""
    settings = B.BenchSettings(max_new_tokens=5, num_prompts=2, num_samples=3, repeats=1, lengths=lengths)
    row = B.run_engine(two_models, PROMPTS, PROMPTS_T, 4, settings)
    assert row.ok and (row.prompts, row.rows) == (2, 6)
    caps = 5 if lengths == "natural" else B.long_tail_caps(6, 5, 0)
    out = two_models.generate(PROMPTS, PROMPTS_T, num_samples=3, seed=0, max_new_tokens=caps, batch_size=4)
    assert row.new_tokens == int(out.lengths.sum())
    assert (row.prompt_tokens_theta, row.prompt_tokens_t) == (out.prompt_tokens["theta"], out.prompt_tokens["t"])
    if lengths == "natural":  # uniform caps keep a prompt's samples together: one prefill each
        assert row.prefill_ratio_theta == pytest.approx(1.0) and row.prefill_ratio_t == pytest.approx(1.0)
    else:
        assert row.steps > 0 and row.time_split is not None


def test_one_stream_has_no_teacher_ratio(tiny_models):
    from os_cli.api.model import OptimalSamplingModel
    from os_cli.cli.bench_tables import prefill_notes

    model = OptimalSamplingModel(tiny_models["theta"], device="cpu")
    settings = B.BenchSettings(max_new_tokens=3, num_prompts=2, num_samples=2, repeats=1)
    row = B.run_engine(model, PROMPTS, None, 2, settings)
    assert row.ok and row.prefill_ratio_theta == pytest.approx(1.0)
    assert row.prompt_tokens_t == 0 and row.distinct_prompt_tokens_t is None and row.prefill_ratio_t is None
    assert row.to_dict()["prefill_ratio_t"] is None
    (line,) = prefill_notes([row])
    assert "theta 1.00×" in line and "teacher: one stream" in line and "0.00" not in line


@pytest.mark.parametrize("batch", [1, 4])
def test_one_model_with_teacher_prompts_counts_both_sides_of_its_stacked_stream(tiny_models, batch):
    # Row 0's teacher prompt is row 1's theta prompt: which side the engine counts it on depends on the rows
    # prefilled together, so bench compares the total against both sides' distinct prompts (1.00: each once).
    from os_cli.api.model import OptimalSamplingModel
    from os_cli.cli.bench_tables import prefill_notes

    model = OptimalSamplingModel(tiny_models["theta"], device="cpu")
    prompts = ["What is 1 plus 4?", "What is 2 plus 5?", "What is 3 plus 6?"]
    teacher = [prompts[1], prompts[2] + " Answer: 9", prompts[0] + " Answer: 5"]
    settings = B.BenchSettings(max_new_tokens=3, num_prompts=3, num_samples=2, repeats=1)
    row = B.run_engine(model, prompts, teacher, batch, settings)
    assert row.ok and row.prefill_stacked and row.distinct_prompt_tokens_t == 0 and row.prefill_ratio_t is None
    ran = row.prompt_tokens_theta + row.prompt_tokens_t
    assert ran == row.distinct_prompt_tokens_theta and row.prefill_ratio_theta == pytest.approx(1.0)
    (line,) = prefill_notes([row])
    assert "one stacked stream, both sides 1.00×" in line
