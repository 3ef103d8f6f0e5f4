"""The fast mixing step (os_cli.mix.fastmix) against the reference pipeline (alpha.py + mixing.py)."""

from __future__ import annotations

import math

import pytest
import torch

from os_cli.mix import alpha as A
from os_cli.mix import fastmix
from os_cli.mix import mixing
from os_cli.mix.rng import row_keys
from os_cli.mix.sampler import SamplerConfig, mixture_step


def correlated_logits(batch: int, vocab: int, seed: int, scale: float = 3.0):
    """Two related models: a shared part plus per-model noise (as in benchmarks/bench_alpha.py)."""
    g = torch.Generator().manual_seed(seed)
    shared = scale * torch.randn(batch, vocab, generator=g)
    return shared + torch.randn(batch, vocab, generator=g), shared + 1.5 * torch.randn(batch, vocab, generator=g)


CASES = [  # (temperature, vocab): spread, peaked (large |r|: weights far below exp(-87)), small vocab
    (1.0, 4096), (0.2, 4096), (1.0, 7),
]


def log_probs(temperature, vocab, seed=0, batch=12):
    theta, teacher = correlated_logits(batch, vocab, seed)
    return torch.log_softmax(theta / temperature, -1), torch.log_softmax(teacher / temperature, -1)


@pytest.mark.parametrize("method", ["kl_symmetry", "ess_balance"])
@pytest.mark.parametrize("temperature, vocab", CASES)
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (0.5, 1.0), (0.3, 0.45)])
@pytest.mark.parametrize("init", ["none", "near", "far", "nan", "ends"])
def test_fast_alpha_equals_the_reference(method, temperature, vocab, bounds, init):
    lt, lT = log_probs(temperature, vocab)
    reference_raw = A.solve_alpha_raw(method, lt, lT).alpha
    reference = A.solve_alpha(method, lt, lT, alpha_min=bounds[0], alpha_max=bounds[1])
    batch = lt.shape[0]
    alpha_init = {
        "none": None,
        "near": reference_raw + 0.02 * torch.randn(batch, generator=torch.Generator().manual_seed(1)),
        "far": 1.0 - reference_raw,
        "nan": torch.full((batch,), math.nan),
        "ends": torch.tensor([0.0, 1.0] * (batch // 2)),
    }[init]
    fast, resolved = fastmix.solve(method, lt, lT - lt, alpha_min=bounds[0], alpha_max=bounds[1], fixed_alpha=0.5,
                                   alpha_init=alpha_init, logp_t=lT)
    assert resolved == 0  # the fast iterations finished every row on their own
    assert ((fast >= bounds[0]) & (fast <= bounds[1])).all()
    # Rows whose root lies outside the bounds get the bound, like the reference's clamp.
    inside = (reference_raw > bounds[0]) & (reference_raw < bounds[1])
    assert torch.equal(fast[~inside], reference[~inside])
    # Rows inside solve the method's equation to tol, checked in float64 (two points that both meet
    # the tolerance may differ by about tol·(1 + E|r|) / f', so alpha itself is compared loosely).
    # Accepted like the reference accepts: |scaled residual| <= tol, or within tol of the root.
    residual = scaled_residual64(method, lt, lT, fast)
    ok = (residual.abs() <= 1.5e-6) | ((fast.double() - root64(method, lt, lT)).abs() <= 1.5e-6)
    assert ok[inside].all(), (residual[inside], fast[inside])
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=0)


def root64(method, lt, lT):
    """Float64 bisection (60 halvings) of the method's monotone equation on [0, 1], per row."""
    lo, hi = torch.zeros(lt.shape[0], dtype=torch.float64), torch.ones(lt.shape[0], dtype=torch.float64)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        positive = scaled_residual64(method, lt, lT, mid) > 0
        root_left = positive if method == "kl_symmetry" else ~positive  # ess_balance's g decreases
        hi, lo = torch.where(root_left, mid, hi), torch.where(root_left, lo, mid)
    return 0.5 * (lo + hi)


def scaled_residual64(method, lt, lT, a):
    """The reference's scaled residual, evaluated in float64 (full supports)."""
    lt, lT, a = lt.double(), lT.double(), a.double().unsqueeze(-1)
    r = lT - lt
    if method == "kl_symmetry":
        q = torch.softmax(lt + a * r, -1)
        return (q * r).sum(-1) / (1.0 + (q * r.abs()).sum(-1))
    left, right = torch.logsumexp(lt - a * r, -1), torch.logsumexp(lt + (2.0 - a) * r, -1)
    return (right - left) / (1.0 + left.abs() + right.abs())


def test_rows_the_fast_iterations_cannot_finish_go_on_alone():
    lt, lT = log_probs(1.0, 4096)
    saved = fastmix.COLD_ITERATIONS
    try:
        fastmix.COLD_ITERATIONS = 0  # one evaluation, then the per-row continuation must finish the job
        fast, _ = fastmix.solve("kl_symmetry", lt, lT - lt, alpha_min=0.0, alpha_max=1.0, fixed_alpha=0.5,
                                alpha_init=None, logp_t=lT)
    finally:
        fastmix.COLD_ITERATIONS = saved
    torch.testing.assert_close(fast, A.solve_kl_symmetry(lt, lT).alpha, atol=2e-6, rtol=0)


@pytest.mark.parametrize("method", A.ALPHA_METHODS)
@pytest.mark.parametrize("sample_from", ["mixture", "teacher", "theta"])
@pytest.mark.parametrize("temperature", [1.0, 0.2])
def test_fast_step_equals_the_reference_step(method, sample_from, temperature):
    theta, teacher = correlated_logits(8, 2048, seed=3)
    config = SamplerConfig(alpha_method=method, temperature=temperature, alpha_min=0.0)
    keys = row_keys(torch.arange(8))
    fast = mixture_step(theta, teacher, config, row_keys=keys, step=4, sample_from=sample_from)
    ref = mixture_step(theta, teacher, config, row_keys=keys, step=4, sample_from=sample_from, solver="reference")
    assert torch.equal(fast.tokens, ref.tokens)
    # Both alphas meet the tolerance (see test_fast_alpha_equals_the_reference); given its alpha, the
    # fast step must compute exactly the reference's q* and diagnostics.
    torch.testing.assert_close(fast.alpha, ref.alpha, atol=1e-4, rtol=0)
    lt, lT = torch.log_softmax(theta / temperature, -1), torch.log_softmax(teacher / temperature, -1)
    expected_logq = mixing.geometric_mix(lt, lT, fast.alpha)
    torch.testing.assert_close(fast.logq, expected_logq, atol=5e-5, rtol=1e-5)
    expected = mixing.diagnostics(expected_logq, lt, lT)
    for name in ("ess_theta", "ess_t", "ess_ratio", "kl_theta", "kl_t"):
        torch.testing.assert_close(getattr(fast, name), expected[name], atol=1e-5, rtol=1e-4, msg=name)
    pick = lambda x: x.gather(-1, fast.tokens[:, None]).squeeze(-1)  # noqa: E731
    torch.testing.assert_close(fast.logprob_theta, pick(lt))
    torch.testing.assert_close(fast.logprob_t, pick(lT))
    torch.testing.assert_close(fast.logprob_q, pick(fast.logq))
    assert torch.equal(fast.fallback, ref.fallback)
    if sample_from == "teacher":
        assert (fast.kl_t == 0).all() and torch.equal(fast.logq, torch.log_softmax(teacher / temperature, -1))


def test_warm_start_gives_the_same_step_and_returns_the_state():
    theta, teacher = correlated_logits(6, 1024, seed=5)
    config = SamplerConfig(alpha_min=0.0)
    keys = row_keys(torch.arange(6))
    cold = mixture_step(theta, teacher, config, row_keys=keys, step=0)
    warm = mixture_step(theta, teacher, config, row_keys=keys, step=0, alpha_init=cold.alpha_solved + 0.05)
    torch.testing.assert_close(warm.alpha, cold.alpha, atol=2e-6, rtol=0)
    assert torch.equal(warm.tokens, cold.tokens)
    torch.testing.assert_close(cold.alpha_solved, cold.alpha)
    baseline = mixture_step(theta, teacher, config, row_keys=keys, step=0, sample_from="teacher")
    assert torch.isnan(baseline.alpha_solved).all()  # nothing solved: no warm start to carry


def test_batches_with_minus_inf_logits_take_the_reference_path_and_agree():
    theta, teacher = correlated_logits(4, 512, seed=7)
    theta[1, :100] = -math.inf  # a masked vocabulary in one row
    config = SamplerConfig(alpha_min=0.0)
    keys = row_keys(torch.arange(4))
    out = mixture_step(theta, teacher, config, row_keys=keys, step=1, alpha_init=torch.full((4,), 0.5))
    ref = mixture_step(theta, teacher, config, row_keys=keys, step=1, solver="reference")
    assert torch.equal(out.tokens, ref.tokens) and torch.equal(out.alpha, ref.alpha)


def test_bad_solver_and_alpha_init_shape_raise():
    theta, teacher = correlated_logits(3, 16, seed=0)
    with pytest.raises(ValueError, match="solver must be one of fast, reference"):
        mixture_step(theta, teacher, SamplerConfig(), solver="quick")
    with pytest.raises(ValueError, match=r"alpha_init must be \[3\]"):
        mixture_step(theta, teacher, SamplerConfig(), alpha_init=torch.zeros(2))


@pytest.mark.parametrize("method", ["kl_symmetry", "ess_balance"])
def test_tilts_handed_back_by_the_per_row_continuation_give_the_right_step(method, monkeypatch):
    # One main-loop evaluation only: most rows finish in the continuation, whose tilts are spliced in.
    monkeypatch.setattr(fastmix, "COLD_ITERATIONS", 1)
    theta, teacher = correlated_logits(8, 2048, seed=11)
    lt, lT = torch.log_softmax(theta, -1), torch.log_softmax(teacher, -1)
    alpha, _, reuse = fastmix.solve_with_tilts(method, lt, lT - lt, alpha_min=0.0, alpha_max=1.0, fixed_alpha=0.5,
                                               alpha_init=None, logp_t=lT)
    assert reuse  # handed back
    out = mixture_step(theta, teacher, SamplerConfig(alpha_method=method, alpha_min=0.0))
    expected_logq = mixing.geometric_mix(lt, lT, out.alpha)
    torch.testing.assert_close(out.logq, expected_logq, atol=5e-5, rtol=1e-5)
    expected = mixing.diagnostics(expected_logq, lt, lT)
    for name in ("ess_theta", "ess_t", "ess_ratio", "kl_theta", "kl_t"):
        torch.testing.assert_close(getattr(out, name), expected[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("method", ["kl_symmetry", "ess_balance", "reverse_kl_symmetry", "entropy"])
@pytest.mark.parametrize("bounds", [(0.5, 1.0), (0.0, 1.0), (0.6, 1.0), (0.2, 0.4)])
def test_identical_models_give_the_conventional_half_clamped(method, bounds):
    """Where pi_theta = pi_t every alpha solves the equations; both solvers must report 0.5, clamped."""
    logits = correlated_logits(4, 512, seed=7)[0]
    config = SamplerConfig(alpha_method=method, alpha_min=bounds[0], alpha_max=bounds[1])
    keys = row_keys(torch.arange(4))
    expected = torch.full((4,), min(max(0.5, bounds[0]), bounds[1]))
    for solver in ("fast", "reference"):
        out = mixture_step(logits, logits.clone(), config, row_keys=keys, step=0, solver=solver)
        torch.testing.assert_close(out.alpha, expected, atol=1e-6, rtol=0, msg=solver)
