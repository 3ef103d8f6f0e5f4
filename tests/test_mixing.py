"""q* construction, support constraints, filters, exact draws and diagnostics against float64 formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from os_cli.mix import mixing

NEG_INF = -math.inf


def log_probs(logits) -> torch.Tensor:
    return torch.log_softmax(torch.as_tensor(logits, dtype=torch.float32), dim=-1)


def random_pair(batch=3, vocab=12, seed=0, holes=True):
    g = torch.Generator().manual_seed(seed)
    theta, teacher = 2 * torch.randn(batch, vocab, generator=g), 2 * torch.randn(batch, vocab, generator=g)
    if holes:
        theta[:, 0] = NEG_INF  # pi_t leaks on token 0
        teacher[:, 1] = NEG_INF  # pi_theta leaks on token 1
        theta[:, 2] = teacher[:, 2] = NEG_INF  # absent from both
    return log_probs(theta), log_probs(teacher)


def mix64(lt: np.ndarray, lT: np.ndarray, a: float, forced: np.ndarray | None = None) -> np.ndarray:
    """Normalised log q from the formula, float64, with 0 · log 0 = 0 at the ends."""
    with np.errstate(invalid="ignore"):
        z = lT.copy() if a == 1 else lt.copy() if a == 0 else (1 - a) * lt + a * lT
    if forced is not None:
        z = np.where(forced, lT, z)
    m = np.max(z)
    return z - (m + math.log(np.sum(np.exp(z - m))))


def assert_log_close(actual: torch.Tensor, expected: np.ndarray, atol=1e-5):
    actual = actual.double().numpy()
    assert np.array_equal(np.isneginf(actual), np.isneginf(expected)), (actual, expected)
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------
# geometric_mix
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_geometric_mix_equals_formula(alpha):
    lt, lT = random_pair()
    logq = mixing.geometric_mix(lt, lT, torch.full((3,), alpha))
    assert not torch.isnan(logq).any()
    torch.testing.assert_close(logq.logsumexp(-1), torch.zeros(3), atol=1e-6, rtol=0)
    for row in range(3):
        assert_log_close(logq[row], mix64(lt[row].double().numpy(), lT[row].double().numpy(), alpha))


def test_geometric_mix_ends_are_the_models_exactly():
    lt, lT = random_pair()
    torch.testing.assert_close(mixing.geometric_mix(lt, lT, torch.zeros(3)), lt, atol=1e-6, rtol=0)
    torch.testing.assert_close(mixing.geometric_mix(lt, lT, torch.ones(3)), lT, atol=1e-6, rtol=0)


def test_geometric_mix_per_row_alpha():
    lt, lT = random_pair()
    alpha = torch.tensor([0.0, 0.4, 1.0])
    logq = mixing.geometric_mix(lt, lT, alpha)
    for row, a in enumerate(alpha.tolist()):
        assert_log_close(logq[row], mix64(lt[row].double().numpy(), lT[row].double().numpy(), a))


@pytest.mark.parametrize("mask_shape", ["vocab", "batch_vocab"])
def test_geometric_mix_force_teacher_entries_take_teacher_log_prob(mask_shape):
    lt, lT = random_pair(holes=False)
    forced = torch.zeros(12, dtype=torch.bool)
    forced[[4, 9]] = True
    mask = forced if mask_shape == "vocab" else forced.expand(3, 12).clone()
    if mask_shape == "batch_vocab":
        mask[1] = False  # row 1 forces nothing
    logq = mixing.geometric_mix(lt, lT, torch.full((3,), 0.3), force_teacher=mask)
    per_row = mask.expand(3, 12)
    for row in range(3):
        expected = mix64(lt[row].double().numpy(), lT[row].double().numpy(), 0.3, per_row[row].numpy())
        assert_log_close(logq[row], expected)
    # Forced entries keep pi_t's ratio between them.
    torch.testing.assert_close(logq[0, 4] - logq[0, 9], lT[0, 4] - lT[0, 9], atol=1e-5, rtol=0)


def test_geometric_mix_forced_token_can_exist_only_in_teacher():
    lt = log_probs([[NEG_INF, 0.0, 1.0]])
    lT = log_probs([[2.0, 0.0, 1.0]])
    logq = mixing.geometric_mix(lt, lT, torch.tensor([0.5]), force_teacher=torch.tensor([True, False, False]))
    assert torch.isfinite(logq).all()
    unforced = mixing.geometric_mix(lt, lT, torch.tensor([0.5]))
    assert torch.isneginf(unforced[0, 0])


def test_geometric_mix_empty_row_is_all_neg_inf_not_nan():
    lt = log_probs([[0.0, NEG_INF]])
    lT = log_probs([[NEG_INF, 0.0]])
    logq = mixing.geometric_mix(lt, lT, torch.tensor([0.5]))
    assert torch.isneginf(logq).all()


# ------------------------------------------------------------------------------------------
# Support constraint and user filters
# ------------------------------------------------------------------------------------------


def test_target_support_mask_top_k_top_p_and_intersection():
    probs = torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15, 0.0]])
    lT = probs.log()
    kept = lambda **kw: mixing.target_support_mask(lT, **kw)[0].nonzero().flatten().tolist()  # noqa: E731
    assert kept(top_k=2) == [1, 3]
    assert kept(top_p=0.7) == [1, 3]  # 0.4 + 0.3 reaches 0.7
    assert kept(top_p=0.71) == [1, 3, 4]  # needs the next token
    assert kept(top_k=2, top_p=0.9) == [1, 3]
    assert kept(top_k=5, top_p=0.8) == [1, 3, 4]
    assert kept(top_p=1e-9) == [1]  # the argmax always stays
    assert kept() == [0, 1, 2, 3, 4]  # disabled: pi_t's support (zero-probability token out)
    assert kept(top_k=100) == [0, 1, 2, 3, 4]


def test_target_support_mask_ties_go_to_lower_index():
    lT = torch.log(torch.tensor([[0.1, 0.3, 0.3, 0.3]]))
    for _ in range(3):
        assert mixing.target_support_mask(lT, top_k=2)[0].tolist() == [False, True, True, False]
        assert mixing.target_support_mask(lT, top_p=0.5)[0].tolist() == [False, True, True, False]


def test_restrict_renormalises_and_never_leaks():
    lt, lT = random_pair(holes=False)
    logq = mixing.geometric_mix(lt, lT, torch.full((3,), 0.6))
    mask = mixing.target_support_mask(lT, top_k=4, top_p=0.9)
    restricted = mixing.restrict(logq, mask)
    assert torch.isneginf(restricted[~mask]).all()
    torch.testing.assert_close(restricted.logsumexp(-1), torch.zeros(3), atol=1e-6, rtol=0)
    # Inside the mask the ratios are unchanged.
    inside = restricted - logq
    for row in range(3):
        values = inside[row][mask[row]]
        torch.testing.assert_close(values, values[:1].expand_as(values), atol=1e-5, rtol=0)


def test_top_k_top_p_filters_q_and_disabled_is_identity():
    logq = log_probs([[3.0, 1.0, 2.0, 0.0, NEG_INF]])
    assert mixing.top_k_top_p(logq) is logq
    top2 = mixing.top_k_top_p(logq, top_k=2)
    assert torch.isfinite(top2[0]).tolist() == [True, False, True, False, False]
    torch.testing.assert_close(top2.logsumexp(-1), torch.zeros(1), atol=1e-6, rtol=0)
    p = logq.exp()[0]
    nucleus = mixing.top_k_top_p(logq, top_p=float(p[0] + p[2]) + 1e-3)
    assert torch.isfinite(nucleus[0]).tolist() == [True, True, True, False, False]


# ------------------------------------------------------------------------------------------
# Exact draws
# ------------------------------------------------------------------------------------------


def chi_square_p(tokens: torch.Tensor, probs: np.ndarray) -> float:
    """Goodness of fit of draws to probs, over the categories with positive probability."""
    counts = np.bincount(tokens.numpy(), minlength=len(probs))
    assert counts[probs == 0].sum() == 0, "drew a zero-probability token"
    support = probs > 0
    expected = probs[support] / probs[support].sum() * counts.sum()
    return float(chisquare(counts[support], expected).pvalue)


def test_sample_is_exact_chi_square():
    logq = log_probs([[0.0, 1.0, -2.0, 2.5, NEG_INF, -0.5, 1.5, -6.0]])
    draws = 100_000
    tokens = mixing.sample(logq.expand(draws, -1), torch.Generator().manual_seed(1234))
    assert chi_square_p(tokens, logq[0].double().exp().numpy()) > 1e-3


def test_sample_detects_a_wrong_distribution():
    # The chi-square check has power: draws from q fail against a slightly different q.
    logq = log_probs([[0.0, 1.0, -2.0, 2.5, NEG_INF, -0.5, 1.5, -6.0]])
    tokens = mixing.sample(logq.expand(100_000, -1), torch.Generator().manual_seed(1234))
    other = log_probs([[0.0, 1.05, -2.0, 2.5, NEG_INF, -0.5, 1.5, -6.0]])
    assert chi_square_p(tokens, other[0].double().exp().numpy()) < 1e-3


def test_sample_never_picks_neg_inf_and_is_reproducible():
    logq = torch.full((500, 1000), NEG_INF)
    logq[:, 17] = math.log(1e-3)
    logq[:, 900] = math.log(1 - 1e-3)
    first = mixing.sample(logq, torch.Generator().manual_seed(7))
    second = mixing.sample(logq, torch.Generator().manual_seed(7))
    assert set(first.tolist()) <= {17, 900}
    assert first.dtype == torch.long and torch.equal(first, second)


# ------------------------------------------------------------------------------------------
# Diagnostics
# ------------------------------------------------------------------------------------------


def diagnostics64(logq: np.ndarray, lt: np.ndarray, lT: np.ndarray) -> dict[str, float]:
    q = np.exp(logq)
    on_q = q > 0

    def ess(lp):
        return 1.0 / np.sum(np.exp(2 * lp[on_q]) / q[on_q])

    def kl(lp):
        if np.any(np.isneginf(lp[on_q])):
            return math.inf
        return float(np.sum(q[on_q] * (logq[on_q] - lp[on_q])))

    return {"ess_theta": ess(lt), "ess_t": ess(lT), "ess_ratio": ess(lt) / ess(lT), "kl_theta": kl(lt), "kl_t": kl(lT)}


@pytest.mark.parametrize("constrained", [False, True])
def test_diagnostics_match_float64(constrained):
    lt, lT = random_pair(holes=False, seed=4)
    logq = mixing.geometric_mix(lt, lT, torch.tensor([0.2, 0.5, 0.8]))
    if constrained:
        logq = mixing.restrict(logq, mixing.target_support_mask(lT, top_k=5))
    stats = mixing.diagnostics(logq, lt, lT)
    for row in range(3):
        expected = diagnostics64(*(x[row].double().numpy() for x in (logq, lt, lT)))
        for name, value in expected.items():
            assert stats[name][row].item() == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert (stats["kl_theta"] >= 0).all() and (stats["kl_t"] >= 0).all()


def test_diagnostics_when_q_leaves_a_models_support():
    lt = log_probs([[NEG_INF, 0.0, 1.0], [NEG_INF, NEG_INF, 0.0]])
    lT = log_probs([[2.0, 0.0, 1.0], [0.0, NEG_INF, NEG_INF]])
    logq = lT.clone()  # q = pi_t: mass on token 0 where pi_theta has none
    stats = mixing.diagnostics(logq, lt, lT)
    for value in stats.values():
        assert not torch.isnan(value).any()
    assert math.isinf(stats["kl_theta"][0].item()) and stats["kl_t"][0].item() == pytest.approx(0, abs=1e-6)
    # Row 1: pi_theta has no mass on q's support -> ESS_theta = inf, ratio inf, never NaN.
    assert math.isinf(stats["ess_theta"][1].item()) and math.isinf(stats["ess_ratio"][1].item())
    assert stats["ess_t"][1].item() == pytest.approx(1.0)
