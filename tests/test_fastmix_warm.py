"""The fast solver's warm start on rows where pi_theta = pi_t, and its guarded exponentials."""

from __future__ import annotations

import pytest
import torch

from os_cli.mix.rng import row_keys
from os_cli.mix.sampler import SamplerConfig, mixture_step


def correlated_logits(batch: int, vocab: int, seed: int, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(batch, vocab, generator=g)
    theta = scale * (shared + 0.5 * torch.randn(batch, vocab, generator=g))
    teacher = scale * (shared + 0.8 * torch.randn(batch, vocab, generator=g))
    return theta, teacher


@pytest.mark.parametrize("method", ["kl_symmetry", "ess_balance"])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (0.5, 1.0), (0.6, 0.9), (0.2, 0.4)])
def test_a_warm_start_on_identical_rows_gives_the_half_not_the_previous_alpha(method, bounds):
    """Every alpha is a root where the models agree; the warm start (0.83 / 0.61 / ...) must not stick:
    the row reports 0.5 clamped, as a cold start and the reference do. Other rows are solved as usual."""
    theta, teacher = correlated_logits(4, 512, seed=11)
    teacher[1] = theta[1]  # row 1: identical distributions
    teacher[3] = theta[3]
    config = SamplerConfig(alpha_method=method, alpha_min=bounds[0], alpha_max=bounds[1])
    keys = row_keys(torch.arange(4))
    cold = mixture_step(theta, teacher, config, row_keys=keys, step=2)
    reference = mixture_step(theta, teacher, config, row_keys=keys, step=2, solver="reference")
    lo, hi = bounds
    init = torch.tensor([lo + 0.3 * (hi - lo), lo + 0.83 * (hi - lo), float("nan"), hi])
    warm = mixture_step(theta, teacher, config, row_keys=keys, step=2, alpha_init=init)
    half = min(max(0.5, lo), hi)
    for out in (cold, warm, reference):
        assert out.alpha[1].item() == pytest.approx(half, abs=1e-6)
        assert out.alpha[3].item() == pytest.approx(half, abs=1e-6)
    torch.testing.assert_close(warm.alpha, reference.alpha, atol=1e-4, rtol=0)
    torch.testing.assert_close(warm.alpha, cold.alpha, atol=2e-6, rtol=0)
    assert torch.equal(warm.tokens, cold.tokens)


@pytest.mark.parametrize("method", ["kl_symmetry", "ess_balance"])
@pytest.mark.parametrize("alpha_min", [0.0, 0.5])
def test_nearly_disjoint_rows_are_solved_not_taken_for_identical(method, alpha_min):
    """Where the two models put their mass on different tokens, each tilt is nearly a point mass
    (variance ~0) although r is far from 0: the r = 0 rule must not fire there (it gave 0.5 instead
    of ess_balance's root), and the exponentials must not underflow. The step equals the reference."""
    from os_cli.mix import mixing

    vocab = 300
    g = torch.Generator().manual_seed(5)
    theta = torch.randn(4, vocab, generator=g)
    teacher = torch.randn(4, vocab, generator=g)
    theta[:2] -= 220.0  # rows 0, 1: theta's mass on token 3 alone, the teacher's on token 7 alone
    teacher[:2] -= 220.0
    theta[:2, 3], teacher[:2, 7] = 0.0, 0.0
    theta[1, 7] = -4.0  # row 1: theta gives the teacher's token a little mass (a root near 0)
    config = SamplerConfig(alpha_method=method, alpha_min=alpha_min)
    keys = row_keys(torch.arange(4))
    init = torch.tensor([0.9, 0.7, float("nan"), 0.95])
    for alpha_init in (None, init):
        fast = mixture_step(theta, teacher, config, row_keys=keys, step=1, alpha_init=alpha_init)
        ref = mixture_step(theta, teacher, config, row_keys=keys, step=1, solver="reference")
        assert torch.isfinite(fast.alpha).all() and torch.isfinite(fast.logq).all()
        torch.testing.assert_close(fast.alpha, ref.alpha, atol=1e-4, rtol=0)
        lt, lT = torch.log_softmax(theta, -1), torch.log_softmax(teacher, -1)
        expected = mixing.geometric_mix(lt, lT, fast.alpha)
        torch.testing.assert_close(fast.logq, expected, atol=5e-5, rtol=1e-5)
        diagnostics = mixing.diagnostics(expected, lt, lT)
        for name in ("kl_theta", "kl_t", "ess_theta", "ess_t"):
            torch.testing.assert_close(getattr(fast, name), diagnostics[name], atol=1e-5, rtol=1e-4, msg=name)
