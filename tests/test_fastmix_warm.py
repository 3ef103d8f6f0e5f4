"""The fast solver's warm start on rows where pi_theta = pi_t, and its guarded exponentials."""

from __future__ import annotations

import pytest
import torch

from os_cli.rng import row_keys
from os_cli.sampler import SamplerConfig, mixture_step


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
