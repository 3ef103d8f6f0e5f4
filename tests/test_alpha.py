"""Alpha solvers: each method's defining equation, edge-case rules, clamping, and no NaN anywhere.

References are independent float64 NumPy computations of the equations (brute-force bisection to
1e-12 for the two root-finding methods), fed the same float32 inputs as the solvers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from os_cli.mix import alpha as A

NEG_INF = -math.inf
ADAPTIVE = ("kl_symmetry", "reverse_kl_symmetry", "ess_balance", "entropy")


# ------------------------------------------------------------------------------------------
# Test inputs
# ------------------------------------------------------------------------------------------


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


def one_hot(batch: int, vocab: int, index: int) -> torch.Tensor:
    logits = torch.full((batch, vocab), NEG_INF)
    logits[:, index] = 0.0
    return logits


def make_pair(kind: str, batch: int = 4, vocab: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi_theta, log pi_t) float32 [batch, vocab] of a named kind."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(batch, vocab, generator=g) * 3
    theta = shared + torch.randn(batch, vocab, generator=g)
    teacher = shared + 1.5 * torch.randn(batch, vocab, generator=g)
    if kind == "random":
        return log_probs(theta), log_probs(teacher)
    if kind == "independent":
        first, second = 3 * torch.randn(2, batch, vocab, generator=g)
        return log_probs(first), log_probs(second)
    if kind == "peaked":  # temperature 0.05
        return log_probs(theta / 0.05), log_probs(teacher / 0.05)
    if kind == "identical":
        return log_probs(theta), log_probs(theta)
    if kind == "one_hot_same":
        return log_probs(one_hot(batch, vocab, 3)), log_probs(one_hot(batch, vocab, 3))
    if kind == "one_hot_different":
        return log_probs(one_hot(batch, vocab, 3)), log_probs(one_hot(batch, vocab, 7))
    if kind == "disjoint":
        theta[:, vocab // 2 :] = NEG_INF
        teacher[:, : vocab // 2] = NEG_INF
        return log_probs(theta), log_probs(teacher)
    if kind == "teacher_leaks":  # pi_t has mass where pi_theta has none
        theta[:, :5] = NEG_INF
        return log_probs(theta), log_probs(teacher)
    if kind == "theta_leaks":
        teacher[:, :5] = NEG_INF
        return log_probs(theta), log_probs(teacher)
    if kind == "both_leak":
        theta[:, :5] = NEG_INF
        teacher[:, 5:8] = NEG_INF
        return log_probs(theta), log_probs(teacher)
    raise AssertionError(kind)


KINDS = ("random", "independent", "peaked", "identical", "one_hot_same", "one_hot_different", "disjoint",
         "teacher_leaks", "theta_leaks", "both_leak")


# ------------------------------------------------------------------------------------------
# float64 references
# ------------------------------------------------------------------------------------------


def lse(x: np.ndarray) -> float:
    m = np.max(x)
    return -math.inf if m == -math.inf else m + math.log(np.sum(np.exp(x - m)))


def common_support(lt: np.ndarray, lT: np.ndarray):
    c = np.isfinite(lt) & np.isfinite(lT)
    return lt[c], lT[c]


def kl_D(lt: np.ndarray, lT: np.ndarray, a: float) -> tuple[float, float]:
    """D(a) = E_{q_a}[r] on the common support, and E_{q_a}|r|."""
    t, T = common_support(lt, lT)
    r = T - t
    z = t + a * r
    q = np.exp(z - lse(z))
    return float(np.sum(q * r)), float(np.sum(q * np.abs(r)))


def bisect(f, increasing: bool, tol: float = 1e-12) -> float:
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        value = f(mid)
        if value == 0:
            return mid
        if (value > 0) == increasing:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


def kl_reference(lt: np.ndarray, lT: np.ndarray) -> float:
    t, T = common_support(lt, lT)
    if t.size == 0 or np.all(T == t):
        return 0.5
    return bisect(lambda a: kl_D(lt, lT, a)[0], increasing=True)


def ess_g(lt: np.ndarray, lT: np.ndarray, a: float) -> tuple[float, float]:
    """g(a) = log sum pi_t²/q_a - log sum pi_theta²/q_a (unnormalised q_a: the constant cancels), and its scale."""
    t, T = common_support(lt, lT)
    log_q = (1 - a) * t + a * T
    left, right = lse(2 * t - log_q), lse(2 * T - log_q)
    return right - left, 1 + abs(left) + abs(right)


def leaks(lt: np.ndarray, lT: np.ndarray) -> tuple[bool, bool]:
    return bool(np.any(np.isfinite(lT) & ~np.isfinite(lt))), bool(np.any(np.isfinite(lt) & ~np.isfinite(lT)))


def ess_reference(lt: np.ndarray, lT: np.ndarray) -> float:
    t_leaks, theta_leaks = leaks(lt, lT)
    if t_leaks or theta_leaks:
        return 0.5 if (t_leaks and theta_leaks) else (1.0 if t_leaks else 0.0)
    t, T = common_support(lt, lT)
    if np.all(T == t):
        return 0.5
    return bisect(lambda a: ess_g(lt, lT, a)[0], increasing=False)


def reverse_kl_reference(lt: np.ndarray, lT: np.ndarray, tol: float = 1e-6) -> float:
    in_t, in_th = np.isfinite(lT), np.isfinite(lt)
    leak_t = np.sum(np.exp(lT[in_t & ~in_th]))
    leak_theta = np.sum(np.exp(lt[in_th & ~in_t]))
    if leak_t + leak_theta > 0:
        return leak_t / (leak_t + leak_theta)
    t, T = common_support(lt, lT)
    pt, pT = np.exp(t), np.exp(T)
    ce_t_theta, h_theta = -np.sum(pT * t), -np.sum(pt * t)
    sym_kl = np.sum(pt * (t - T)) + np.sum(pT * (T - t))
    if sym_kl <= tol:
        return 0.5
    return float(np.clip((ce_t_theta - h_theta) / sym_kl, 0.0, 1.0))


def reverse_kl_f(lt: np.ndarray, lT: np.ndarray, a: float) -> float:
    """sum (pi_theta - pi_t) log q_a on the common support (q_a normalised there)."""
    t, T = common_support(lt, lT)
    z = (1 - a) * t + a * T
    return float(np.sum((np.exp(t) - np.exp(T)) * (z - lse(z))))


def entropy_reference(lt: np.ndarray, lT: np.ndarray) -> float:
    def h(x):
        x = x[np.isfinite(x)]
        return -float(np.sum(np.exp(x) * x))

    total = h(lt) + h(lT)
    return 0.5 if total <= 1e-6 else h(lt) / total


def rows(t: torch.Tensor) -> list[np.ndarray]:
    return list(t.double().numpy())


def assert_finite_unit(x: torch.Tensor) -> None:
    assert x.dtype == torch.float32
    assert not torch.isnan(x).any(), x
    assert ((x >= 0) & (x <= 1)).all(), x


# ------------------------------------------------------------------------------------------
# kl_symmetry
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_kl_symmetry_exit_rule_and_float64_bisection(kind):
    lt, lT = make_pair(kind)
    result = A.solve_kl_symmetry(lt, lT, tol=1e-6)
    assert_finite_unit(result.alpha)
    met = (result.residual.abs() <= 1e-6) | (result.bracket_width <= 1e-6)
    assert met.all(), (result.residual, result.bracket_width)
    for a, t, T in zip(result.alpha.tolist(), rows(lt), rows(lT)):
        assert kl_matches_reference(a, t, T), (kind, a, kl_reference(t, T))


def kl_matches_reference(a: float, t: np.ndarray, T: np.ndarray) -> bool:
    """a is the float64 root, or D is so flat there that the exit rule holds in float64 too.

    (Two nearly identical one-hot rows have |D| ~ 1e-20 on all of [0, 1]: any a meets the rule.)
    """
    if a == pytest.approx(kl_reference(t, T), abs=1e-4):
        return True
    if not common_support(t, T)[0].size:
        return False
    d, mean_abs = kl_D(t, T, a)
    return abs(d) / (1 + mean_abs) <= 2e-6


def test_kl_symmetry_newton_needs_fewer_passes_than_bisection():
    lt, lT = make_pair("random", batch=8, vocab=2000, seed=3)
    newton = A.solve_kl_symmetry(lt, lT)
    plain = A.solve_kl_symmetry(lt, lT, newton=False)
    assert newton.passes <= 8, newton.passes
    assert plain.passes >= 20
    torch.testing.assert_close(newton.alpha, plain.alpha, atol=2e-6, rtol=0)


def test_kl_symmetry_one_sided_rows_go_to_the_sign_change_end():
    # pi_theta one-hot on a token pi_t dislikes, pi_t full support: on C = {that token} D = r < 0 for
    # every a in (0, 1) while D(1) = +inf, so the answer is exactly 1.
    lt = log_probs(one_hot(1, 6, 0))
    lT = log_probs(torch.tensor([[-3.0, 1, 1, 1, 1, 1]]))
    assert A.solve_kl_symmetry(lt, lT).alpha.item() == 1.0
    # Mirror: the teacher one-hot on a token theta dislikes -> 0.
    assert A.solve_kl_symmetry(lT, lt).alpha.item() == 0.0


# ------------------------------------------------------------------------------------------
# ess_balance
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_ess_balance_equation_and_float64_bisection(kind):
    lt, lT = make_pair(kind)
    result = A.solve_ess_balance(lt, lT, tol=1e-6)
    assert_finite_unit(result.alpha)
    assert ((result.residual.abs() <= 1e-6) | (result.bracket_width <= 1e-6)).all()
    for a, t, T in zip(result.alpha.tolist(), rows(lt), rows(lT)):
        assert ess_matches_reference(a, t, T), (kind, a, ess_reference(t, T))


def ess_matches_reference(a: float, t: np.ndarray, T: np.ndarray) -> bool:
    """a is the float64 root, or g is flat enough there that the exit rule holds in float64."""
    if a == pytest.approx(ess_reference(t, T), abs=1e-4):
        return True
    if any(leaks(t, T)):
        return False
    g, scale = ess_g(t, T, a)
    return abs(g) / scale <= 2e-6


def test_ess_balance_leak_rules():
    for kind, expected in (("teacher_leaks", 1.0), ("theta_leaks", 0.0), ("both_leak", 0.5), ("disjoint", 0.5)):
        lt, lT = make_pair(kind)
        assert A.solve_ess_balance(lt, lT).alpha.tolist() == [expected] * 4, kind


def test_ess_balance_near_disjoint_is_finite_and_correct():
    # Finite but extreme log-probs: the linear-space sums would overflow float32.
    lt = log_probs(torch.tensor([[0.0, -400.0, -800.0], [0.0, -60.0, -5.0]]))
    lT = log_probs(torch.tensor([[-800.0, -400.0, 0.0], [-70.0, 0.0, -3.0]]))
    result = A.solve_ess_balance(lt, lT)
    assert_finite_unit(result.alpha)
    for a, t, T in zip(result.alpha.tolist(), rows(lt), rows(lT)):
        assert a == pytest.approx(ess_reference(t, T), abs=1e-4)


# ------------------------------------------------------------------------------------------
# reverse_kl_symmetry and entropy
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_reverse_kl_symmetry_matches_formula(kind):
    lt, lT = make_pair(kind)
    result = A.solve_reverse_kl_symmetry(lt, lT)
    assert result.passes == 1
    assert_finite_unit(result.alpha)
    for a, t, T in zip(result.alpha.tolist(), rows(lt), rows(lT)):
        reference = reverse_kl_reference(t, T)
        assert a == pytest.approx(reference, abs=1e-4), (kind, a, reference)
        if 0 < reference < 1 and not any(leaks(t, T)):  # interior root: the equation holds
            c_t, c_T = common_support(t, T)
            scale = 1 + float(np.sum(np.abs(np.exp(c_t) - np.exp(c_T)) * np.abs(c_t)))
            assert abs(reverse_kl_f(t, T, a)) / scale <= 1e-5


def test_reverse_kl_symmetry_clips_to_the_end_with_smaller_residual():
    # Row-wise: whenever the answer is an end, |f| there is <= |f| at the other end.
    lt, lT = make_pair("random", batch=16, vocab=50, seed=1)
    result = A.solve_reverse_kl_symmetry(lt, lT)
    ends = 0
    for a, t, T in zip(result.alpha.tolist(), rows(lt), rows(lT)):
        if a in (0.0, 1.0):
            ends += 1
            assert abs(reverse_kl_f(t, T, a)) <= abs(reverse_kl_f(t, T, 1.0 - a))
    assert ends > 0  # this data does exercise the clipping


def test_reverse_kl_symmetry_leak_rule_is_mass_ratio():
    lt = log_probs(torch.tensor([[NEG_INF, 0.0, 0.0, 1.0]]))  # pi_t leaks on token 0
    lT = log_probs(torch.tensor([[0.0, 0.5, 0.0, NEG_INF]]))  # pi_theta leaks on token 3
    leak_t, leak_theta = lT.exp()[0, 0].item(), lt.exp()[0, 3].item()
    got = A.solve_reverse_kl_symmetry(lt, lT).alpha.item()
    assert got == pytest.approx(leak_t / (leak_t + leak_theta), abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_entropy_matches_formula(kind):
    lt, lT = make_pair(kind)
    result = A.solve_entropy(lt, lT)
    assert_finite_unit(result.alpha)
    for a, t, T in zip(result.alpha.tolist(), rows(lt), rows(lT)):
        assert a == pytest.approx(entropy_reference(t, T), abs=1e-5)


# ------------------------------------------------------------------------------------------
# Rules shared by every method
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("kind", ("identical", "one_hot_same", "one_hot_different", "disjoint"))
def test_symmetric_cases_give_one_half(method, kind):
    if method == "entropy" and kind == "disjoint":
        pytest.skip("entropy ignores supports: disjoint rows follow the formula (tested above)")
    lt, lT = make_pair(kind)
    alpha = A.solve_alpha_raw(method, lt, lT).alpha
    assert alpha.tolist() == pytest.approx([0.5] * 4, abs=1e-6), (method, kind, alpha)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_mixed_batch_equals_rows_solved_alone(method):
    pairs = [make_pair(kind, batch=1, vocab=40, seed=i) for i, kind in enumerate(KINDS)]
    lt = torch.cat([p[0] for p in pairs])
    lT = torch.cat([p[1] for p in pairs])
    together = A.solve_alpha_raw(method, lt, lT).alpha
    alone = torch.cat([A.solve_alpha_raw(method, t, T).alpha for t, T in pairs])
    assert_finite_unit(together)
    torch.testing.assert_close(together, alone, atol=2e-6, rtol=0)


def test_solve_alpha_clamps_adaptive_methods_and_not_fixed():
    lt, lT = make_pair("peaked", batch=16, seed=5)
    raw = A.solve_kl_symmetry(lt, lT).alpha
    assert (raw < 0.5).any() and (raw > 0.7).any()  # the data straddles the bounds
    clamped = A.solve_alpha("kl_symmetry", lt, lT, alpha_min=0.5, alpha_max=0.7)
    torch.testing.assert_close(clamped, raw.clamp(0.5, 0.7))
    fixed = A.solve_alpha("fixed", lt, lT, fixed_alpha=0.3, alpha_min=0.5, alpha_max=1.0)
    assert fixed.dtype == torch.float32 and fixed.tolist() == pytest.approx([0.3] * 16)


def test_solve_alpha_rejects_bad_arguments():
    lt, lT = make_pair("random")
    allowed = "fixed, kl_symmetry, reverse_kl_symmetry, ess_balance, entropy"
    with pytest.raises(ValueError, match=f"unknown alpha method 'kl'.*{allowed}"):
        A.solve_alpha("kl", lt, lT)
    with pytest.raises(ValueError, match="alpha_min"):
        A.solve_alpha("entropy", lt, lT, alpha_min=-0.1)
    with pytest.raises(ValueError, match="alpha_max"):
        A.solve_alpha("entropy", lt, lT, alpha_max=1.5)
    with pytest.raises(ValueError, match="must not exceed"):
        A.solve_alpha("entropy", lt, lT, alpha_min=0.8, alpha_max=0.6)
    with pytest.raises(ValueError, match="fixed_alpha"):
        A.solve_alpha("fixed", lt, lT, fixed_alpha=float("nan"))
    with pytest.raises(ValueError, match="tol"):
        A.solve_alpha("entropy", lt, lT, tol=0.0)
    with pytest.raises(ValueError, match="same shape"):
        A.solve_alpha("entropy", lt, lT[:, :10])


# ------------------------------------------------------------------------------------------
# Property test: random supports and temperatures, every method
# ------------------------------------------------------------------------------------------


@st.composite
def log_prob_pairs(draw):
    vocab = draw(st.integers(2, 12))
    batch = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    temperature = draw(st.sampled_from([0.02, 0.3, 1.0, 5.0]))
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(2, batch, vocab, generator=g)) / temperature
    # Random -inf masks, each row keeping at least one entry per model.
    absent = torch.rand(2, batch, vocab, generator=g) < draw(st.sampled_from([0.0, 0.3, 0.7]))
    absent.scatter_(-1, torch.randint(vocab, (2, batch, 1), generator=g), False)
    logits = logits.masked_fill(absent, NEG_INF)
    return log_probs(logits[0]), log_probs(logits[1])


@settings(max_examples=60, deadline=None)
@given(log_prob_pairs(), st.sampled_from(ADAPTIVE))
def test_property_every_method_is_finite_bounded_and_solves_its_equation(pair, method):
    lt, lT = pair
    result = A.solve_alpha_raw(method, lt, lT)
    assert_finite_unit(result.alpha)
    assert not torch.isnan(result.residual).any()
    clamped = A.solve_alpha(method, lt, lT, alpha_min=0.2, alpha_max=0.9)
    assert ((clamped >= 0.2) & (clamped <= 0.9)).all()
    references = {"kl_symmetry": kl_reference, "ess_balance": ess_reference,
                  "reverse_kl_symmetry": reverse_kl_reference, "entropy": entropy_reference}
    for a, t, T in zip(result.alpha.tolist(), rows(lt), rows(lT)):
        if method == "kl_symmetry":
            assert kl_matches_reference(a, t, T), (a, kl_reference(t, T), t, T)
        elif method == "ess_balance":
            assert ess_matches_reference(a, t, T), (a, ess_reference(t, T), t, T)
        else:
            reference = references[method](t, T)
            assert a == pytest.approx(reference, abs=1e-4), (method, a, reference, t, T)
