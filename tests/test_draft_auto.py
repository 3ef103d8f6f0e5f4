"""draft_tokens="auto": the pure choice of k (engine/draft_policy.py), the loop running it on real tiny models
(probes leave the caches as they were, rounds of changing k stay exact), and the recipe / API values."""

from __future__ import annotations

import pytest
import torch

from os_cli import OptimalSamplingModel
from os_cli.api.model import StreamRow
from os_cli.engine import draft_policy, speculative
from os_cli.engine.draft_policy import AutoDraft, choose_draft_tokens, expected_speedup, interpolate_costs
from os_cli.engine.requests import SchedulerStats

from test_speculative import PROMPTS, PROMPTS_T, _two_sample_p_values


def _costs(theta, teacher, slope, q=0.0):
    """Costs with a teacher forward of m positions = teacher + slope (m - 1), for m up to 9."""
    out = {"theta": theta, "teacher": teacher, "q_step": q}
    for m in range(2, 10):
        out[f"teacher_{m}"], out[f"q_step_{m}"] = teacher + slope * (m - 1), q * m
    return out


def test_expected_speedup_is_bench_ideal_plus():
    from os_cli.bench.draft_costs import ideal_plus_speedup

    costs = _costs(1.0, 6.0, 0.5, q=0.2)
    for a in (0.0, 0.5, 0.9):
        for k in (1, 3, 8):
            assert ideal_plus_speedup(a, k, costs) == pytest.approx(expected_speedup(a, k, costs))
    # by hand: a = 0.5, k = 1: E = 1.5; plain 1 + 6 + 0.2; spec 2 + 6.5 + 0.4
    assert expected_speedup(0.5, 1, costs) == pytest.approx(1.5 * 7.2 / 8.9)


def test_each_drafted_token_pays_its_draw():
    # by hand: a = 0.5, k = 1, a draw costing 0.5: spec 2 + 0.5 + 6.5 + 0.4; plain steps draw nothing
    costs = {**_costs(1.0, 6.0, 0.5, q=0.2), "draft": 0.5}
    assert expected_speedup(0.5, 1, costs) == pytest.approx(1.5 * 7.2 / 9.4)
    # a costly draw shortens the chosen drafts (what made auto overrate k = 6-8 on small models)
    cheap = {**_costs(1.0, 10.0, 0.3), "draft": 0.0}
    assert choose_draft_tokens(0.9, {**cheap, "draft": 1.0}) < choose_draft_tokens(0.9, cheap)


def test_probes_time_the_draft_draw(pair):
    from os_cli.engine import auto_draft
    from os_cli.engine.streams import ModelStream, left_pad

    theta, teacher = ModelStream(pair.model_theta, pair.vocab_size), ModelStream(pair.model_t, pair.vocab_size)
    ids = [pair._token_ids(p, "prompts", 0) for p in PROMPTS[:2]]
    ids_t = [pair._token_ids(p, "prompts_t", 0, teacher=True) for p in PROMPTS_T[:2]]
    pad = pair.tokenizer.pad_token_id
    last_theta = theta.prefill(*left_pad(ids, pad, "cpu"))
    teacher.prefill(*left_pad(ids_t, pad, "cpu"))
    pending = last_theta.argmax(-1)
    keys, steps = torch.tensor([1, 2]), torch.tensor([0, 0])
    step_fn = pair._step_fn(pair._sampler_config(1.0, -1, 1.0), "mixture")
    costs = auto_draft.probe_costs(theta, teacher, pending, keys, steps, step_fn, temperature=0.7)
    assert {"theta", "draft", "teacher", "q_step"} <= set(costs) and costs["draft"] > 0
    assert teacher.attention_mask.shape[1] == max(map(len, ids_t))  # probes roll their positions back


def test_choice_follows_the_costs():
    # memory-bound teacher (m positions cost about one), cheap theta, good acceptance: long drafts pay
    assert choose_draft_tokens(0.9, _costs(1.0, 10.0, 0.05)) >= 4
    # compute-bound (each position costs a full forward): no k pays, whatever the acceptance
    assert choose_draft_tokens(0.9, _costs(1.0, 10.0, 10.0)) == 0
    assert choose_draft_tokens(0.0, _costs(1.0, 10.0, 0.05)) == 0  # nothing accepted: never draft
    # the argmax: no k in 0..8 beats the chosen one
    costs = _costs(1.0, 4.0, 0.8)
    k = choose_draft_tokens(0.7, costs)
    assert all(expected_speedup(0.7, k, costs) >= expected_speedup(0.7, j, costs) for j in range(9))


def test_interpolated_costs_are_piecewise_linear():
    measured = {"theta": 1.0, "teacher": 2.0, "teacher_3": 4.0, "teacher_5": 5.0, "q_step": 1.0, "q_step_9": 9.0}
    out = interpolate_costs(measured, 8)
    assert out["teacher_2"] == pytest.approx(3.0) and out["teacher_4"] == pytest.approx(4.5)
    assert out["teacher_9"] == pytest.approx(7.0)  # the last slope carried on
    noisy = interpolate_costs({"theta": 1.0, "teacher": 9.0, "teacher_3": 4.0, "q_step": 1.0}, 3)
    assert noisy["teacher"] == 4.0 and noisy["teacher_2"] == 4.0 and noisy["teacher_4"] == 4.0
    assert out["q_step_5"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="'teacher' at one position"):
        interpolate_costs({"theta": 1.0, "teacher_2": 1.0, "q_step": 1.0}, 8)


def test_policy_probes_again_when_the_batch_changes_and_forgets_old_rounds():
    policy = AutoDraft()
    assert policy.needs_costs(16, 40) and policy.choose() == 0  # no costs yet: plain
    policy.set_costs(_costs(1.0, 10.0, 0.05), 16, 40)
    assert not policy.needs_costs(8, 40)  # not within PROBE_GAP iterations of the last probe
    assert policy.choose() > 0  # the prior says drafts pay here
    for _ in range(draft_policy.PROBE_GAP):
        policy.choose()
    assert not policy.needs_costs(9, 551) and policy.needs_costs(8, 40) and policy.needs_costs(16, 552)
    policy.record(0, 200)  # nothing accepted: drafting stops
    assert policy.choose() == 0
    for _ in range(10 * draft_policy.HALF_LIFE):  # plain steps: the evidence fades, the prior tries again
        policy.record(0, 0)
    assert policy.choose() > 0


@pytest.fixture(scope="module")
def pair(tiny_models):
    return OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu", dtype=torch.float32)


def test_auto_rounds_record_the_plain_loops_quantities(pair, monkeypatch):
    """With k changing every iteration (0, 3, 1, 2, ...: the choice forced, the probes real), each row's
    logits equal a forward without a cache over its emitted tokens: probes and rounds left the caches right."""
    ks = iter([0, 3, 1, 2] * 100)
    monkeypatch.setattr(draft_policy, "choose_draft_tokens", lambda a, costs, k_max: next(ks))
    stats = SchedulerStats()
    caps = [14, 3, 9, 14, 1, 6]
    rows = [StreamRow(p, pt, seed=20 + i, max_new_tokens=c) for i, (p, pt, c) in enumerate(zip(PROMPTS, PROMPTS_T, caps))]
    outs = list(pair.generate_stream(rows, max_new_tokens=14, draft_tokens="auto", limit=3, return_logits=True,
                                     stats=stats, temperature=0.8))
    assert stats.cost_probes >= 1 and set(stats.draft_lengths) == {0, 1, 2, 3}
    assert stats.tokens == sum(len(o.token_ids) for o in outs) and len(outs) == len(PROMPTS)
    for out in outs:
        i, ids = out.index, out.token_ids.tolist()
        assert len(ids) == caps[i] or out.finish_reason == "eos"
        for side, model, prompt in (("theta", pair.model_theta, PROMPTS[i]), ("t", pair.model_t, PROMPTS_T[i])):
            prompt_ids = pair.tokenizer(prompt).input_ids
            with torch.no_grad():
                logits = model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1: -1, : pair.vocab_size]
            torch.testing.assert_close(out.logits[side], logits, atol=2e-4, rtol=1e-4)


def test_auto_output_distribution_equals_the_plain_loops(tiny_models, monkeypatch):
    """As test_speculative's chi-square test, with k cycling through 0..3 per round: the same per-position
    token frequencies as the plain loop; the mutation control (rejected positions drawn from q*) is caught."""
    model = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu", dtype=torch.float32,
                                 alpha_method="fixed", fixed_alpha=0.2, alpha_min=0.0)
    n, prompt, prompt_t = 2000, "The quick brown fox", "Tom has 4 apples"
    kwargs = dict(max_new_tokens=5, top_k=4, temperature=0.5, batch_size=n, skip_decode=True)

    def cycling():
        ks = iter([2, 0, 1, 3] * 100)
        monkeypatch.setattr(draft_policy, "choose_draft_tokens", lambda a, costs, k_max: next(ks))

    cycling()
    stats = SchedulerStats()
    auto = [o.token_ids for o in model.generate_stream(
        (StreamRow(prompt, prompt_t, seed=i) for i in range(n)), draft_tokens="auto", limit=n, stats=stats,
        **{k: v for k, v in kwargs.items() if k != "batch_size"})]
    plain = model.generate([prompt] * n, [prompt_t] * n, seed=list(range(n, 2 * n)), **kwargs)
    assert len(stats.draft_lengths) >= 3 and 0.3 < stats.acceptance < 0.95
    width = min(min(map(len, auto)), int(plain.lengths.min()))
    assert width >= 4
    auto = torch.stack([t[:width] for t in auto])
    same = _two_sample_p_values(auto, plain.generated_ids[:, :width])
    assert min(same) > 1e-3, same

    cycling()
    draw = speculative.residual_draw
    monkeypatch.setattr(speculative, "residual_draw", lambda logq, logp, keys, steps: draw(logq, logp - 1e4, keys, steps))
    wrong = model.generate([prompt] * n, [prompt_t] * n, seed=list(range(n)), draft_tokens="auto", **kwargs)
    assert min(_two_sample_p_values(wrong.generated_ids[:, :width], plain.generated_ids[:, :width])) < 1e-4


def test_auto_runs_unforced_and_checks_its_value(pair, tiny_models):
    out = pair.generate(PROMPTS, PROMPTS_T, max_new_tokens=6, seed=3, draft_tokens="auto", batch_size=2)
    assert out.generated_ids.shape[0] == len(PROMPTS) and int(out.lengths.min()) >= 1
    with pytest.raises(ValueError, match=r"draft_tokens must be an integer in 0\.\.64 .* or 'auto', got str 'fast'"):
        pair.generate(PROMPTS, PROMPTS_T, max_new_tokens=2, draft_tokens="fast")
    single = OptimalSamplingModel(tiny_models["theta"], device="cpu")
    with pytest.raises(ValueError, match="draft_tokens needs a teacher that differs"):
        single.generate(["Hi"], max_new_tokens=2, draft_tokens="auto")


def test_recipe_accepts_auto_and_names_it_in_errors(tmp_path):
    import yaml

    from os_cli.errors import UserError
    from os_cli.recipe import load_recipe

    base = {"models": {"theta": "org/theta-model"}, "dataset": {"inline": [{"question": "1+1?"}]},
            "prompts": {"theta": {"template": "{question}"}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**base, "sampling": {"draft_tokens": "auto"}}))
    assert load_recipe(path).sampling.draft_tokens == "auto"
    assert load_recipe(path, ["sampling.draft_tokens=3"]).sampling.draft_tokens == 3
    path.write_text(yaml.safe_dump(base))
    assert load_recipe(path, ["sampling.draft_tokens=auto"]).sampling.draft_tokens == "auto"
    for value, expect in (("fast", "must be an integer or 'auto', got a string 'fast'"), (-1, "must be in [0,"),
                          (True, "must be an integer or 'auto'")):
        with pytest.raises(UserError) as info:
            load_recipe(path, [f"sampling.draft_tokens={str(value).lower() if value is True else value}"])
        assert "sampling.draft_tokens" in str(info.value) and expect in str(info.value), str(info.value)
        assert info.value.exit_code == 2
    with pytest.raises(UserError, match="needs sampling.draft_tokens: 0 \\(got auto\\)"):
        load_recipe(path, ["sampling.draft_tokens=auto", "models.compile=true"])


def test_phase_clock_splits_the_call_and_changes_no_token(pair):
    from os_cli.engine.phase_clock import PHASES, PhaseClock

    rows = lambda: [StreamRow(p, pt, seed=i, max_new_tokens=3 + 2 * i)  # noqa: E731
                    for i, (p, pt) in enumerate(zip(PROMPTS, PROMPTS_T))]
    plain = {o.index: o.token_ids.tolist() for o in pair.generate_stream(rows(), max_new_tokens=16, limit=2)}
    clock = PhaseClock()
    stats = SchedulerStats(clock=clock)
    timed = {o.index: o.token_ids.tolist() for o in pair.generate_stream(rows(), max_new_tokens=16, limit=2,
                                                                         stats=stats)}
    assert timed == plain
    assert set(clock.seconds) == set(PHASES) and all(clock.seconds[p] > 0 for p in PHASES)
    assert sum(clock.seconds.values()) == pytest.approx(clock.total)
    assert not pair.model_theta._forward_hooks and not pair.model_t._forward_pre_hooks  # hooks removed
