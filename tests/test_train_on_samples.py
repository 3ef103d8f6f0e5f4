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
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALLEST = ["--train-prompts", "6", "--steps", "2", "--batch-size", "3", "--eval-problems", "4",
            "--eval-samples", "1", "--samplers", "theta alone,q* self-teacher (one model)"]


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
    # theta alone is on-policy: SFT only; every other sampler gets SFT, sequence-level importance
    # weighting and token-level truncated importance weighting.
    self_teacher = "q* self-teacher (one model)"
    assert [(r["sampler"], r["weighting"], r["train_seed"]) for r in rows] == [
        ("theta alone", "sft", 0), (self_teacher, "sft", 0), (self_teacher, "is", 0), (self_teacher, "tis", 0)]
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
    assert 0 < details["rows"][2]["is_ess_share"] <= 1 and 0 < details["rows"][3]["is_ess_share"] <= 1
    tis = details["rows"][3]
    assert 0 < tis["tis_token_weight_mean"] <= script.st.TIS_CLIP and 0 <= tis["tis_clipped_share"] <= 1
    assert all(math.isfinite(d["loss_last10"]) for d in details["rows"])
    # the three weightings of one data set train three different models from the same start
    assert len({d["loss_last10"] for d in details["rows"][1:]}) == 3
    assert [s["seeds"] for s in details["summary"]] == [[0]] * 4

    # Determinism: the same rows again, from a run with the self-teacher sampler alone (each
    # sampler's data depends only on the seeds, not on which other samplers ran before it).
    again = run_main(script, capsys, SMALLEST[:-1] + [self_teacher])
    assert again["rows"] == rows[1:]


def test_several_training_seeds_share_one_data_set(script, capsys, tmp_path):
    argv = SMALLEST[:-1] + ["theta alone", "--train-seed", "0,3", "--details", str(tmp_path / "d.json")]
    rows = run_main(script, capsys, argv)["rows"]
    assert [(r["weighting"], r["train_seed"]) for r in rows] == [("sft", 0), ("sft", 3)]
    assert rows[0]["train_correct"] == rows[1]["train_correct"]  # sampled once
    summary = json.loads((tmp_path / "d.json").read_text())["summary"]
    [cell] = summary
    accs = [r["accuracy_after"] for r in rows]
    assert cell["seeds"] == [0, 3] and cell["accuracy_after_mean"] == pytest.approx(sum(accs) / 2)
    assert cell["accuracy_after_seed_sd"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
    with pytest.raises(SystemExit):
        script.parse_args(["--train-seed", "0,0"])
    with pytest.raises(SystemExit):
        script.parse_args(["--weightings", "sft,bogus"])
    assert script.parse_args(["--weightings", "tis,sft"]).weightings == ["sft", "tis"]
    with pytest.raises(SystemExit):
        script.parse_args(["--train-seed", "a"])


def test_tis_weights_are_truncated_per_token_ratios(script):
    st = script.st
    s = st.Sample([1], [2, 3, 4], logp_theta=0.0, logp_q=0.0, correct=True, terse=True,
                  token_logp_theta=[-1.0, -0.5, -3.0], token_logp_q=[-1.0, -2.0, -2.5])
    [w] = st.tis_weights([s], clip=2.0)
    # ratios 1, e^1.5 = 4.48 (truncated to 2), e^-0.5
    assert w.tolist() == pytest.approx([1.0, 2.0, math.exp(-0.5)], rel=1e-6)
    assert st.TIS_CLIP == 2.0


def test_token_weights_sit_on_the_completion_targets(script):
    st = script.st
    samples = [st.Sample([5, 6, 7], [8, 9], 0.0, 0.0, True, True), st.Sample([5], [8, 9, 10, 11], 0.0, 0.0, True, True)]
    _, _, labels = st._collate(samples, pad_id=0)
    targets = labels[:, 1:]
    grid = st._token_weight_grid([torch.tensor([2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0, 7.0])], samples, targets.shape)
    assert torch.equal(grid != 0, targets != -100)
    assert targets[grid == 3.0].tolist() == [9] and targets[grid == 7.0].tolist() == [11]


def test_unit_token_weights_train_exactly_as_sft(script):
    st = script.st
    tok = st.OptimalSamplingModel(st.THETA, None, dtype=torch.float32, device="cpu").tokenizer
    samples = [st.Sample(tok("Hi", add_special_tokens=False).input_ids, [10 + i, 20, tok.eos_token_id], 0.0, 0.0,
                         True, True) for i in range(4)]
    cfg = st.TrainConfig(steps=2, batch_size=2, lr=1e-3, seed=0)
    _, sft = st.fine_tune(samples, None, cfg, tok.pad_token_id)
    _, ones = st.fine_tune(samples, None, cfg, tok.pad_token_id, [torch.ones(3)] * 4)
    _, halves = st.fine_tune(samples, None, cfg, tok.pad_token_id, [torch.full((3,), 0.5)] * 4)
    assert ones == sft
    assert halves[0] == pytest.approx(sft[0] / 2, rel=1e-5)


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
