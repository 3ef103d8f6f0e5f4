"""benchmarks/train_on_samples.py at its smallest sizes: JSON shape, real numbers, determinism.

Runs the script's own `main` in-process on the built-in demo pair (real models, real sampler, real
fine-tuning), with a few prompts and steps: a smoke test, not the benchmark (see docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALLEST = ["--train-prompts", "6", "--steps", "2", "--batch-size", "3", "--eval-problems", "4",
            "--eval-samples", "1", "--samplers", "theta alone,q* hinted teacher"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_on_samples", REPO_ROOT / "benchmarks" / "train_on_samples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def run_main(script, capsys, argv) -> dict:
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, "stdout holds exactly one JSON line"
    return json.loads(out)


def test_smallest_run_gives_the_table_and_repeats_exactly(script, capsys, tmp_path):
    first = run_main(script, capsys, SMALLEST + ["--details", str(tmp_path / "details.json")])
    assert list(first) == ["rows"]
    rows = first["rows"]
    # theta alone is on-policy: SFT only; every other sampler gets SFT and importance weighting.
    assert [(r["sampler"], r["weighting"]) for r in rows] == [
        ("theta alone", "sft"), ("q* hinted teacher", "sft"), ("q* hinted teacher", "is")]
    for row in rows:
        assert tuple(row) == script.ROW_KEYS
        # shares of 4 held-out problems x 1 sample, and of 6 training completions
        for key, count in (("accuracy_before", 4), ("accuracy_after", 4), ("train_correct", 6)):
            assert 0 <= row[key] <= 1 and row[key] * count == pytest.approx(round(row[key] * count))
        assert math.isfinite(row["logp_theta_per_token"]) and row["logp_theta_per_token"] < 0
    assert len({r["accuracy_before"] for r in rows}) == 1, "one theta before training, scored once"
    # theta's own samples are what theta finds most likely; the mixture's are less so.
    assert rows[0]["logp_theta_per_token"] > rows[1]["logp_theta_per_token"]
    details = json.loads((tmp_path / "details.json").read_text())
    assert [d["is_ess_share"] for d in details["rows"]][:2] == [1.0, 1.0]
    assert 0 < details["rows"][2]["is_ess_share"] <= 1
    assert all(math.isfinite(d["loss_last10"]) for d in details["rows"])

    # Determinism: the same rows again, from a run with the hinted sampler alone (each sampler's
    # data depends only on the seeds, not on which other samplers ran before it).
    again = run_main(script, capsys, SMALLEST[:-1] + ["q* hinted teacher"])
    assert again["rows"] == rows[1:]


def test_importance_weights_are_self_normalised_and_clipped(script):
    st = sys.modules["sample_training"]
    samples = [st.Sample([1], [2, 3], logp_theta=-1.0 - d, logp_q=-1.0, correct=True, terse=True)
               for d in (0.0, 0.0, 1.0, 30.0)]
    w = st.importance_weights(samples, clip=10.0)
    assert w.mean().item() == pytest.approx(1.0)
    # log w = 0, 0, -1, -30: proportional to 1, 1, e^-1, ~0, and no clip reached.
    assert (w / w[0]).tolist() == pytest.approx([1, 1, math.exp(-1), math.exp(-30)], rel=1e-5)
    clipped = st.importance_weights(samples, clip=1.2)  # 4 / (2 + e^-1) = 1.69 > 1.2: both top rows clip
    assert clipped[0].item() == pytest.approx(clipped[1].item()) and clipped.mean().item() == pytest.approx(1.0)
    assert clipped.max().item() < w.max().item()


def test_training_prompts_are_disjoint_from_the_held_out_problems(script):
    st = sys.modules["sample_training"]
    heldout = st.heldout_problems()
    prompts = st.training_prompts(3000, script.TRAIN_PROMPT_SEED, heldout)
    assert len(prompts) == 3000 and len({p["question"] for p in prompts}) == 3000
    assert not {p["question"] for p in prompts} & {p["question"] for p in heldout}
    with pytest.raises(ValueError, match="held-out"):
        st.training_prompts(10, st.train_demo.HELDOUT_SEED, heldout)
