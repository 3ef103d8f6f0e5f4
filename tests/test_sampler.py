"""mixture_step end to end: config validation, exact draws from q*, constraints, forcing, fallbacks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from os_cli.mix.rng import row_keys
from os_cli.mix.sampler import SamplerConfig, mixture_step

NEG_INF = -math.inf
DRAWS = 100_000

THETA_LOGITS = [1.0, 0.2, -0.5, 2.0, -1.0, 0.7, -2.5, 0.1]
TEACHER_LOGITS = [0.3, 1.5, -0.2, 0.9, -1.5, 1.1, 0.4, -3.0]


# ------------------------------------------------------------------------------------------
# Independent float64 reference for q*
# ------------------------------------------------------------------------------------------


def log_softmax64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x)
    return x - (m + math.log(np.sum(np.exp(x - m))))


def kl_symmetry_root64(lt: np.ndarray, lT: np.ndarray) -> float:
    """Bisection to 1e-12 on D(a) = E_{q_a}[log pi_t - log pi_theta] (full supports)."""
    lo, hi = 0.0, 1.0
    while hi - lo > 1e-12:
        a = 0.5 * (lo + hi)
        q = np.exp(log_softmax64((1 - a) * lt + a * lT))
        if np.sum(q * (lT - lt)) > 0:
            hi = a
        else:
            lo = a
    return 0.5 * (lo + hi)


def keep_top(logp: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-logp, kind="stable")
    mask = np.zeros(len(logp), dtype=bool)
    mask[order[:k]] = True
    return mask


def q_star64(alpha, temperature=1.0, forced=None, target_top_k=None, top_k=None) -> np.ndarray:
    lt = log_softmax64(np.array(THETA_LOGITS) / temperature)
    lT = log_softmax64(np.array(TEACHER_LOGITS) / temperature)
    z = (1 - alpha) * lt + alpha * lT
    if forced is not None:
        z = np.where(forced, lT, z)
    logq = log_softmax64(z)
    if target_top_k is not None:
        logq = np.where(keep_top(lT, target_top_k), logq, -np.inf)
    if top_k is not None:
        logq = np.where(keep_top(logq, top_k), logq, -np.inf)
    q = np.exp(logq)
    return q / q.sum()


def replicated(batch: int = DRAWS) -> tuple[torch.Tensor, torch.Tensor]:
    """The same pair of logits in every row: one mixture_step call gives `batch` i.i.d. draws."""
    theta = torch.tensor([THETA_LOGITS]).expand(batch, -1).contiguous()
    teacher = torch.tensor([TEACHER_LOGITS]).expand(batch, -1).contiguous()
    return theta, teacher


def chi_square_p(tokens: torch.Tensor, probs: np.ndarray) -> float:
    counts = np.bincount(tokens.numpy(), minlength=len(probs))
    assert counts[probs == 0].sum() == 0, "drew a token outside q*'s support"
    support = probs > 0
    return float(chisquare(counts[support], probs[support] / probs[support].sum() * counts.sum()).pvalue)


# ------------------------------------------------------------------------------------------
# Exact sampling
# ------------------------------------------------------------------------------------------


def test_kl_symmetry_draws_follow_q_star():
    theta, teacher = replicated()
    config = SamplerConfig(alpha_min=0.0, alpha_max=1.0, temperature=0.8)
    out = mixture_step(theta, teacher, config, generator=torch.Generator().manual_seed(0))
    lt = log_softmax64(np.array(THETA_LOGITS) / 0.8)
    lT = log_softmax64(np.array(TEACHER_LOGITS) / 0.8)
    alpha = kl_symmetry_root64(lt, lT)
    assert 0.05 < alpha < 0.95  # an interior root, so the test exercises the solver
    assert out.alpha[0].item() == pytest.approx(alpha, abs=1e-5)
    assert (out.alpha == out.alpha[0]).all()
    expected = q_star64(alpha, temperature=0.8)
    np.testing.assert_allclose(out.logq[0].double().exp().numpy(), expected, atol=1e-5)
    assert chi_square_p(out.tokens, expected) > 1e-3


def test_draws_with_target_constraint_and_user_top_k_follow_q_star():
    theta, teacher = replicated()
    config = SamplerConfig(alpha_method="fixed", fixed_alpha=0.3, constraint_to_target=True, target_top_k=5, top_k=3)
    out = mixture_step(theta, teacher, config, generator=torch.Generator().manual_seed(1))
    expected = q_star64(0.3, target_top_k=5, top_k=3)
    assert (expected > 0).sum() == 3
    np.testing.assert_allclose(out.logq[0].double().exp().numpy(), expected, atol=1e-6)
    assert chi_square_p(out.tokens, expected) > 1e-3


def test_draws_with_forced_teacher_tokens_follow_q_star():
    theta, teacher = replicated()
    forced = torch.zeros(8, dtype=torch.bool)
    forced[[2, 6]] = True
    config = SamplerConfig(alpha_method="fixed", fixed_alpha=0.2)
    out = mixture_step(theta, teacher, config, generator=torch.Generator().manual_seed(2), force_teacher_tokens=forced)
    expected = q_star64(0.2, forced=forced.numpy())
    np.testing.assert_allclose(out.logq[0].double().exp().numpy(), expected, atol=1e-6)
    assert chi_square_p(out.tokens, expected) > 1e-3


def test_keyed_draws_follow_q_star_and_ignore_batch_mates():
    theta, teacher = replicated()
    config = SamplerConfig(alpha_method="fixed", fixed_alpha=0.6, constraint_to_target=True, target_top_p=0.9)
    keys = row_keys(torch.arange(DRAWS))
    out = mixture_step(theta, teacher, config, row_keys=keys, step=4)
    expected = np.exp(out.logq[0].double().numpy())
    assert (expected == 0).any()  # the constraint is active
    assert chi_square_p(out.tokens, expected) > 1e-3
    # A row's token depends only on (key, step): the same rows in another batch draw the same tokens.
    subset = torch.tensor([5, 77, 1234, 99_999])
    again = mixture_step(theta[subset], teacher[subset], config, row_keys=keys[subset], step=4)
    assert torch.equal(again.tokens, out.tokens[subset])
    with pytest.raises(ValueError, match="int step"):
        mixture_step(theta[:2], teacher[:2], config, row_keys=keys[:2])


def test_chi_square_rejects_the_wrong_alpha():
    # Power check: draws at the solved alpha do not pass as draws at alpha + 0.1.
    theta, teacher = replicated()
    config = SamplerConfig(alpha_min=0.0)
    out = mixture_step(theta, teacher, config, generator=torch.Generator().manual_seed(3))
    assert chi_square_p(out.tokens, q_star64(out.alpha[0].item())) > 1e-3
    assert chi_square_p(out.tokens, q_star64(out.alpha[0].item() + 0.1)) < 1e-3


# ------------------------------------------------------------------------------------------
# Outputs and options
# ------------------------------------------------------------------------------------------


def small_batch(seed=0, batch=4, vocab=10):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(batch, vocab, generator=g), 2 * torch.randn(batch, vocab, generator=g)


def test_step_output_fields_are_consistent():
    theta, teacher = small_batch()
    out = mixture_step(theta, teacher, SamplerConfig(temperature=0.7), generator=torch.Generator().manual_seed(0))
    lt, lT = torch.log_softmax(theta / 0.7, -1), torch.log_softmax(teacher / 0.7, -1)
    pick = lambda x: x.gather(-1, out.tokens[:, None]).squeeze(-1)  # noqa: E731
    torch.testing.assert_close(out.logprob_theta, pick(lt))
    torch.testing.assert_close(out.logprob_t, pick(lT))
    torch.testing.assert_close(out.logprob_q, pick(out.logq))
    for name in ("alpha", "ess_theta", "ess_t", "ess_ratio", "kl_theta", "kl_t", "logprob_q"):
        value = getattr(out, name)
        assert value.shape == (4,) and value.dtype == torch.float32 and torch.isfinite(value).all(), name
    assert out.tokens.dtype == torch.long and out.fallback.dtype == torch.int8
    assert ((out.alpha >= 0.5) & (out.alpha <= 1.0)).all()
    assert (out.fallback == 0).all()


def test_same_generator_seed_same_tokens():
    theta, teacher = small_batch(batch=64)
    def run(seed):
        return mixture_step(theta, teacher, SamplerConfig(), generator=torch.Generator().manual_seed(seed)).tokens

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_forced_rows_use_the_teacher():
    theta, teacher = small_batch()
    rows = torch.tensor([True, False, True, False])
    out = mixture_step(theta, teacher, SamplerConfig(), force_teacher_rows=rows)
    assert out.alpha[rows].tolist() == [1.0, 1.0]
    torch.testing.assert_close(out.logq[rows], torch.log_softmax(teacher, -1)[rows], atol=1e-6, rtol=0)
    assert (out.alpha[~rows] < 1.0).all()


@pytest.mark.parametrize("source, alpha", [("teacher", 1.0), ("theta", 0.0)])
def test_single_model_baselines(source, alpha):
    theta, teacher = small_batch()
    out = mixture_step(theta, teacher, SamplerConfig(top_k=3), sample_from=source)
    model = teacher if source == "teacher" else theta
    assert out.alpha.tolist() == [alpha] * 4
    expected = torch.log_softmax(model, -1)
    top3 = expected >= expected.topk(3, dim=-1).values[:, -1:]
    renormalised = expected - expected.masked_fill(~top3, NEG_INF).logsumexp(-1, keepdim=True)
    torch.testing.assert_close(out.logq[top3], renormalised[top3])
    assert torch.isneginf(out.logq[~top3]).all()


# ------------------------------------------------------------------------------------------
# Fallbacks and errors
# ------------------------------------------------------------------------------------------


def test_fallbacks_use_the_good_model_and_are_counted():
    theta, teacher = small_batch(batch=5)
    theta[0, 3] = float("nan")  # row 0: theta bad -> teacher alone
    teacher[1, 2] = float("inf")  # row 1: teacher bad -> theta alone
    theta[2] = NEG_INF  # row 2: theta all -inf -> teacher alone
    out = mixture_step(theta, teacher, SamplerConfig(), generator=torch.Generator().manual_seed(0))
    assert out.fallback.tolist() == [1, 2, 1, 0, 0]
    assert out.alpha[:3].tolist() == [1.0, 0.0, 1.0]
    lt, lT = torch.log_softmax(theta, -1), torch.log_softmax(teacher, -1)
    torch.testing.assert_close(out.logq[0], lT[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.logq[1], lt[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.logq[2], lT[2], atol=1e-6, rtol=0)
    fields = ("alpha", "ess_theta", "ess_t", "ess_ratio", "kl_theta", "kl_t", "logprob_theta", "logprob_t", "logprob_q")
    for name in fields:
        assert torch.isfinite(getattr(out, name)).all(), name


def test_both_models_bad_raises_naming_row_and_step():
    theta, teacher = small_batch(batch=5)
    theta[3, 0] = float("nan")
    teacher[3] = NEG_INF
    with pytest.raises(ValueError, match=r"step 17: row 3 .*both models"):
        mixture_step(theta, teacher, SamplerConfig(), step=17)


def test_teacher_only_support_rows_reach_alpha_one_without_fallback():
    # pi_theta lives on {2, 3}, where pi_t is weak: D < 0 on all of (0, 1), D(1) = +inf -> a = 1, q = pi_t.
    theta = torch.tensor([[NEG_INF, NEG_INF, 1.0, 0.0]])
    teacher = torch.tensor([[3.0, 2.5, 0.0, -1.0]])
    out = mixture_step(theta, teacher, SamplerConfig(constraint_to_target=True, target_top_k=2))
    assert out.fallback.tolist() == [0] and out.alpha.tolist() == [1.0]
    torch.testing.assert_close(out.logq, torch.log_softmax(torch.tensor([[3.0, 2.5, NEG_INF, NEG_INF]]), -1))


def test_disjoint_supports_fall_back_to_the_teacher():
    theta = torch.tensor([[0.0, 1.0, NEG_INF, NEG_INF], [0.0, 1.0, 2.0, 0.5]])
    teacher = torch.tensor([[NEG_INF, NEG_INF, 0.5, 0.0], [1.0, 0.0, 0.5, 2.0]])
    out = mixture_step(theta, teacher, SamplerConfig())
    assert out.fallback.tolist() == [3, 0]
    assert out.alpha[0].item() == 1.0
    torch.testing.assert_close(out.logq[0], torch.log_softmax(teacher[0], -1))
    assert out.tokens[0].item() in (2, 3)


def test_target_constraint_outside_q_support_falls_back_to_constrained_teacher():
    # pi_theta has no mass on pi_t's top-2 tokens, so q* restricted to them is empty.
    theta = torch.tensor([[NEG_INF, NEG_INF, 1.0, 0.0]])
    teacher = torch.tensor([[3.0, 2.5, 0.0, -1.0]])
    config = SamplerConfig(alpha_method="fixed", fixed_alpha=0.5, constraint_to_target=True, target_top_k=2)
    out = mixture_step(theta, teacher, config)
    assert out.fallback.tolist() == [3] and out.alpha.tolist() == [1.0]
    expected = torch.log_softmax(torch.tensor([[3.0, 2.5, NEG_INF, NEG_INF]]), -1)
    torch.testing.assert_close(out.logq, expected)


def test_bfloat16_logits_are_accepted():
    theta, teacher = small_batch()
    out = mixture_step(theta.bfloat16(), teacher.bfloat16(), SamplerConfig())
    assert out.logq.dtype == torch.float32 and torch.isfinite(out.alpha).all()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("alpha_method", "kl", "unknown alpha method 'kl'; expected one of: fixed, kl_symmetry"),
        ("alpha_min", -0.1, "alpha_min must be a number in"),
        ("alpha_max", 1.2, "alpha_max must be a number in"),
        ("fixed_alpha", 2.0, "fixed_alpha must be a number in"),
        ("temperature", 0.0, "temperature must be a finite number >= 0.001"),
        ("temperature", 1e-40, "temperature 0 / greedy is not supported"),
        ("temperature", float("inf"), "temperature must be a finite number >= 0.001"),
        ("top_k", 2.5, "top_k must be an integer"),
        ("top_k", 0, r"top_k must be an integer: -1 \(off\) or a positive"),
        ("top_k", -2, r"top_k must be an integer: -1 \(off\) or a positive"),
        ("target_top_k", 0, r"target_top_k must be an integer: -1 \(off\) or a positive"),
        ("target_top_k", "5", "target_top_k must be an integer"),
        ("top_p", 0.0, r"top_p must be a number in \(0, 1\]"),
        ("target_top_p", 1.5, r"target_top_p must be a number in \(0, 1\]"),
        ("constraint_to_target", "yes", "constraint_to_target must be true or false"),
    ],
)
def test_config_validation_messages(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**{field: value})  # validated once, at construction


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplerConfig().alpha_method = "fixed"


def test_config_min_above_max_and_defaults():
    SamplerConfig().validate()
    with pytest.raises(ValueError, match="alpha_min .* must not exceed alpha_max"):
        SamplerConfig(alpha_min=0.9, alpha_max=0.6).validate()


def test_bad_arguments_raise():
    theta, teacher = small_batch()
    with pytest.raises(ValueError, match="same shape"):
        mixture_step(theta, teacher[:, :8], SamplerConfig())
    with pytest.raises(ValueError, match="sample_from"):
        mixture_step(theta, teacher, SamplerConfig(), sample_from="both")
    with pytest.raises(ValueError, match="force_teacher_rows"):
        mixture_step(theta, teacher, SamplerConfig(), force_teacher_rows=torch.ones(3, dtype=torch.bool))
