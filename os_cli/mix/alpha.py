"""Per-row mixing weight alpha for q_a(y) ∝ pi_theta(y)^(1-a) · pi_t(y)^a.

Pure math on [batch, vocab] float32 log-probabilities (entries may be -inf). No models, no I/O,
no Python loop over rows: every solver works on the whole batch at once and keeps a per-row state.

Conventions shared by every method
----------------------------------
* An entry is *present* in a distribution when its log-probability is finite. Entries absent from
  both models are ignored. The *common support* C is the set of entries present in both.
* For 0 < a < 1, q_a lives on C (0 · log 0 counts as 0 only at the ends a = 0 and a = 1).
* Where a model puts mass outside the other's support ("leaks"), divergences become infinite. Every
  rule below is the limit of the finite problem in which log 0 is replaced by a large negative -L,
  as L -> infinity. In particular disjoint supports give a = 0.5 for the three equation-based
  methods (the sampler then has no mixture strictly between the models and draws from the
  teacher instead); `entropy` does not look at supports.
* Identical distributions give a = 0.5 (every a is a root; 0.5 is the symmetric choice).
* A root is searched in [0, 1]. Where the defining function keeps one sign on all of (0, 1), the
  answer is the end where its sign changes, which is the end with the smaller |residual|.
* `solve_alpha` clamps adaptive methods to [alpha_min, alpha_max]; `fixed` returns fixed_alpha as is.
* Nothing returns NaN.

Each method is one `AlphaMethod` in `METHODS` (keyed by the names of os_cli.mix.alpha_names, in that
order); `solve_alpha` and `solve_alpha_raw` look the method up there.

`passes` counts sweeps over the [B, V] inputs: one per evaluation of a method's fused quantity
(plus one set-up sweep for the iterative solvers). In eager PyTorch one such sweep is a handful of
kernels (elementwise, max, exp, sums); a fused kernel would read the inputs once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from os_cli.mix.alpha_names import ALPHA_METHODS, INFO, AlphaMethodInfo  # noqa: F401 - alpha.ALPHA_METHODS is public

# Cap on solver iterations. The safeguarded Newton step halves its step at least every second
# iteration, so tol = 1e-6 needs at most ~40; bisection needs 20.
MAX_ITERATIONS = 100


@dataclass
class SolveResult:
    """What a raw (unclamped) solver returns, for tests and the benchmark.

    alpha: [B] float32 unclamped. passes: sweeps over [B, V] made (see module docstring).
    residual: [B] float32, the method's scaled equation residual at alpha (for the iterative
    solvers: at the last point evaluated, which is alpha unless the row was moved to an end;
    0 for rows decided by a support rule or by the "identical" rule).
    bracket_width: [B] final root bracket of the iterative solvers (None for closed forms).
    """

    alpha: Tensor
    passes: int
    residual: Tensor
    bracket_width: Tensor | None = None


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _check_inputs(logp_theta: Tensor, logp_t: Tensor) -> tuple[Tensor, Tensor]:
    if logp_theta.dim() != 2 or logp_theta.shape != logp_t.shape:
        raise ValueError(
            f"log-probabilities must both be [batch, vocab] of the same shape, "
            f"got {tuple(logp_theta.shape)} and {tuple(logp_t.shape)}"
        )
    return logp_theta.float(), logp_t.float()


def _log_ratio_on_common_support(logp_theta: Tensor, logp_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """base = log pi_theta on C (-inf elsewhere), r = log pi_t - log pi_theta on C (0 elsewhere).

    With these, log q_a = base + a·r up to normalisation, for every a in (0, 1). Rows with an
    empty C get base = 0, r = 0: a flat problem whose residual is 0 everywhere, so they stop at
    the starting point a = 0.5 (the disjoint-support rule).
    """
    common = torch.isfinite(logp_theta + logp_t)  # log-probs are never +inf: finite sum <=> both finite
    empty = ~common.any(dim=-1, keepdim=True)
    base = torch.where(common, logp_theta, -math.inf)
    base = torch.where(empty, 0.0, base)
    r = torch.where(common, logp_t - logp_theta, 0.0)
    return base, r, empty.squeeze(-1)


def _safeguarded_root(evaluate, batch: int, device, tol: float, *, increasing: bool, newton: bool):
    """Per-row root of a monotone f on [0, 1]: Newton kept inside a bisection bracket.

    `evaluate(a) -> (f, df, scaled_residual)` does one sweep over the vocabulary. The Newton step
    is taken when it lands strictly inside the bracket and shrinks at least twice as fast as the
    step before the last (Numerical Recipes' rtsafe rule); otherwise we bisect. A row stops when
    its bracket is <= tol or |scaled_residual| <= tol; the loop stops when every row has.
    Returns alpha, residual, bracket width (float32 [B]) and the number of sweeps.
    State is float64 ([B] only) so a tight tol is representable; evaluations run in float32.
    """
    f64 = dict(dtype=torch.float64, device=device)
    lo, hi = torch.zeros(batch, **f64), torch.ones(batch, **f64)
    a = torch.full((batch,), 0.5, **f64)
    step, step_before = torch.ones(batch, **f64), torch.ones(batch, **f64)
    residual = torch.zeros(batch, **f64)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    sweeps = 0
    for _ in range(MAX_ITERATIONS):
        f, df, scaled = (x.double() for x in evaluate(a.float()))
        sweeps += 1
        active = ~done
        root_is_left = (f > 0) if increasing else (f < 0)
        hi = torch.where(active & root_is_left, a, hi)
        lo = torch.where(active & ~root_is_left, a, lo)
        residual = torch.where(active, scaled, residual)
        done = done | (scaled.abs() <= tol) | (hi - lo <= tol)
        if bool(done.all()):  # one host sync per iteration: the price of stopping early
            break
        bisect_step = 0.5 * (hi - lo)
        if newton:
            newton_step = f / df  # df == 0 gives ±inf/nan, rejected below
            candidate = a - newton_step
            ok = (
                torch.isfinite(candidate)
                & (candidate > lo)
                & (candidate < hi)
                & (newton_step.abs() <= 0.5 * step_before)
            )
            next_a = torch.where(ok, candidate, lo + bisect_step)
            next_step = torch.where(ok, newton_step.abs(), bisect_step)
        else:
            next_a, next_step = lo + bisect_step, bisect_step
        step_before = torch.where(done, step_before, step)
        step = torch.where(done, step, next_step)
        a = torch.where(done, a, next_a)
    # A bracket that still touches an end was never crossed: f kept one sign on (0, 1), so the
    # sign change (and the smaller |residual|) is at that end.
    width = hi - lo
    narrow = width <= tol
    a = torch.where(narrow & (hi == 1.0), torch.ones_like(a), a)
    a = torch.where(narrow & (lo == 0.0), torch.zeros_like(a), a)
    return a.float(), residual.float(), width.float(), sweeps


# --------------------------------------------------------------------------------------------
# fixed
# --------------------------------------------------------------------------------------------


def solve_fixed(logp_theta: Tensor, logp_t: Tensor, fixed_alpha: float = 0.5) -> SolveResult:
    """a = fixed_alpha for every row. No sweep over the vocabulary."""
    batch, device = logp_theta.shape[0], logp_theta.device
    alpha = torch.full((batch,), float(fixed_alpha), dtype=torch.float32, device=device)
    return SolveResult(alpha, 0, torch.zeros_like(alpha))


# --------------------------------------------------------------------------------------------
# kl_symmetry
# --------------------------------------------------------------------------------------------


def _kl_symmetry_evaluate(base: Tensor, r: Tensor, a: Tensor):
    """One fused sweep: D(a) = E_q[r], D'(a) = Var_q(r), scaled residual D / (1 + E_q|r|)."""
    z = torch.addcmul(base, a.unsqueeze(-1), r)  # log q_a up to a constant; -inf off C
    weights = z.sub_(z.amax(dim=-1, keepdim=True)).exp_()
    total = weights.sum(dim=-1)
    weighted_r = weights.mul_(r)  # w is not needed any more: reuse its memory
    mean_r = weighted_r.sum(dim=-1) / total
    mean_r2 = torch.linalg.vecdot(weighted_r, r) / total
    mean_abs_r = weighted_r.abs_().sum(dim=-1) / total
    variance = (mean_r2 - mean_r * mean_r).clamp_min(0.0)
    return mean_r, variance, mean_r / (1.0 + mean_abs_r)


def solve_kl_symmetry(logp_theta: Tensor, logp_t: Tensor, tol: float = 1e-6, *, newton: bool = True) -> SolveResult:
    """Root of D(a) = E_{q_a}[r], r = log pi_t - log pi_theta  (i.e. KL(q||pi_theta) = KL(q||pi_t)).

    D(0) = -KL(pi_theta||pi_t) <= 0, D(1) = KL(pi_t||pi_theta) >= 0 and D'(a) = Var_{q_a}(r) >= 0,
    so a root lies in [0, 1]. Each iteration evaluates D and Var in one fused sweep and takes a
    safeguarded Newton step (bisection when Newton leaves the bracket or stalls). A row stops when
    its bracket is <= tol or |D(a)| / (1 + E_{q_a}|r|) <= tol. `newton=False` is plain bisection
    (the benchmark's baseline).

    Supports: D is evaluated on the common support C (q_a is zero elsewhere for 0 < a < 1). Since
    D(0) <= 0 <= D(1) even when a leak makes an end infinite, the bracket [0, 1] stays valid; if D
    has one sign on all of (0, 1) the answer is the end where it changes sign. Empty C (disjoint
    supports) gives 0.5, as do identical distributions (r = 0, D = 0 at the start a = 0.5).
    """
    logp_theta, logp_t = _check_inputs(logp_theta, logp_t)
    base, r, _ = _log_ratio_on_common_support(logp_theta, logp_t)
    alpha, residual, width, sweeps = _safeguarded_root(
        lambda a: _kl_symmetry_evaluate(base, r, a),
        logp_theta.shape[0],
        logp_theta.device,
        tol,
        increasing=True,
        newton=newton,
    )
    return SolveResult(alpha, 1 + sweeps, residual, width)


# --------------------------------------------------------------------------------------------
# ess_balance
# --------------------------------------------------------------------------------------------


def _leaks(logp_theta: Tensor, logp_t: Tensor) -> tuple[Tensor, Tensor]:
    """Per row: does pi_t have mass where pi_theta has none, and vice versa."""
    in_theta, in_t = torch.isfinite(logp_theta), torch.isfinite(logp_t)
    return (in_t & ~in_theta).any(dim=-1), (in_theta & ~in_t).any(dim=-1)


def _ess_balance_evaluate(base: Tensor, r: Tensor, a: Tensor):
    """One fused sweep at the two tilts s = -a and s = 2 - a of K(s) = log E_theta[exp(s·r)].

    g(a) = K(2-a) - K(-a) = log sum pi_t²/q_a - log sum pi_theta²/q_a (the normaliser of q_a
    cancels), g'(a) = K'(-a) - K'(2-a) <= 0 where K'(s) is the mean of r under pi_theta tilted
    by exp(s·r). Scaled residual: g / (1 + |K(-a)| + |K(2-a)|).
    """
    tilts = torch.stack([-a, 2.0 - a], dim=1).unsqueeze(-1)  # [B, 2, 1]
    z = base.unsqueeze(1) + tilts * r.unsqueeze(1)  # [B, 2, V]
    peak = z.amax(dim=-1, keepdim=True)
    weights = (z - peak).exp_()
    total = weights.sum(dim=-1)
    tilted_mean = (weights * r.unsqueeze(1)).sum(dim=-1) / total
    log_m = peak.squeeze(-1) + total.log()  # [B, 2]: K(-a), K(2-a)
    g = log_m[:, 1] - log_m[:, 0]
    dg = tilted_mean[:, 0] - tilted_mean[:, 1]
    return g, dg, g / (1.0 + log_m.abs().sum(dim=-1))


def solve_ess_balance(logp_theta: Tensor, logp_t: Tensor, tol: float = 1e-6, *, newton: bool = True) -> SolveResult:
    """Root of sum pi_theta²/q_a = sum pi_t²/q_a  (ESS_theta(q_a) = ESS_t(q_a)).

    With M(s) = E_{pi_theta}[exp(s·r)] the equation is log M(-a) = log M(2-a). log M is convex
    with log M(0) = log M(1) = 0, so g(a) = log M(2-a) - log M(-a) falls from g(0) >= 0 to
    g(1) <= 0: a root lies in [0, 1]. Solved in log space (logsumexp) with the same safeguarded
    Newton/bisection as kl_symmetry, one fused sweep per iteration; stops when the bracket is
    <= tol or |g| / (1 + |log M(-a)| + |log M(2-a)|) <= tol.

    Supports: if pi_t leaks (mass where pi_theta has none) sum pi_t²/q_a is infinite for every
    a < 1, so a = 1; if pi_theta leaks, a = 0 by symmetry; if both leak (including disjoint
    supports) both sums grow at the same rate in the -L limit and a = 0.5. Identical
    distributions give g = 0 at the start, a = 0.5.
    """
    logp_theta, logp_t = _check_inputs(logp_theta, logp_t)
    t_leaks, theta_leaks = _leaks(logp_theta, logp_t)
    base, r, _ = _log_ratio_on_common_support(logp_theta, logp_t)
    alpha, residual, width, sweeps = _safeguarded_root(
        lambda a: _ess_balance_evaluate(base, r, a),
        logp_theta.shape[0],
        logp_theta.device,
        tol,
        increasing=False,
        newton=newton,
    )
    # Leak rows are decided by the support rule (they were solved on C for nothing, but skipping
    # them would need a host sync or a gather; the batch costs the same).
    by_rule = t_leaks | theta_leaks
    rule_alpha = torch.where(t_leaks & theta_leaks, 0.5, torch.where(t_leaks, 1.0, 0.0))
    alpha = torch.where(by_rule, rule_alpha, alpha)
    residual = torch.where(by_rule, 0.0, residual)
    return SolveResult(alpha, 1 + sweeps, residual, torch.where(by_rule, 0.0, width))


# --------------------------------------------------------------------------------------------
# reverse_kl_symmetry
# --------------------------------------------------------------------------------------------


def solve_reverse_kl_symmetry(logp_theta: Tensor, logp_t: Tensor, tol: float = 1e-6) -> SolveResult:
    """Root of sum (pi_theta - pi_t) · log q_a = 0, i.e. CE(pi_theta, q_a) = CE(pi_t, q_a).

    The normaliser of q_a cancels (the weights sum to 0), so the equation is linear in a:
        a = (CE(pi_t, pi_theta) - H(pi_theta)) / (KL(pi_theta||pi_t) + KL(pi_t||pi_theta)),
    with CE(p, q) = -sum p log q; one sweep. The answer is clipped to [0, 1] (for a linear
    residual that is the end with the smaller |residual|). A symmetric KL <= tol counts as
    identical: a = 0.5.

    Supports: if either model leaks, the KLs are infinite; in the -L limit the terms of order L
    dominate and a = A / (A + B), with A = pi_t's mass outside pi_theta's support and B =
    pi_theta's mass outside pi_t's. So only pi_t leaking gives 1, only pi_theta leaking gives 0,
    disjoint supports give 0.5. Computed as sigmoid(log A - log B) so tiny masses still count.
    """
    logp_theta, logp_t = _check_inputs(logp_theta, logp_t)
    common = torch.isfinite(logp_theta + logp_t)
    p_theta, p_t = logp_theta.exp(), logp_t.exp()  # exp(-inf) = 0
    # Off C, a finite log pi_t is pi_t mass where pi_theta has none (and vice versa).
    log_t_leak = torch.where(common, -math.inf, logp_t).logsumexp(dim=-1)  # log A
    log_theta_leak = torch.where(common, -math.inf, logp_theta).logsumexp(dim=-1)  # log B
    diff = p_t - p_theta
    numerator = -torch.where(common, diff * logp_theta, 0.0).sum(dim=-1)  # CE(t, theta) - H(theta)
    denominator = torch.where(common, diff * (logp_t - logp_theta), 0.0).sum(dim=-1)  # both KLs: terms >= 0

    solved = (numerator / denominator.clamp_min(tol)).clamp(0.0, 1.0)
    alpha = torch.where(denominator <= tol, 0.5, solved)
    residual = (alpha * denominator - numerator) / (1.0 + numerator.abs() + denominator)
    residual = torch.where(denominator <= tol, 0.0, residual)

    leaks = torch.isfinite(log_t_leak) | torch.isfinite(log_theta_leak)
    # sigmoid(log A - log B) = A / (A + B); with one side -inf it is exactly 0 or 1.
    leak_alpha = torch.sigmoid(torch.nan_to_num(log_t_leak - log_theta_leak, nan=0.0))
    alpha = torch.where(leaks, leak_alpha, alpha)
    residual = torch.where(leaks, 0.0, residual)
    return SolveResult(alpha, 1, residual)


# --------------------------------------------------------------------------------------------
# entropy
# --------------------------------------------------------------------------------------------


def _entropy(logp: Tensor) -> Tensor:
    present = torch.isfinite(logp)
    return (-torch.where(present, logp.exp() * logp, 0.0).sum(dim=-1)).clamp_min(0.0)


def solve_entropy(logp_theta: Tensor, logp_t: Tensor, tol: float = 1e-6) -> SolveResult:
    """a = H(pi_theta) / (H(pi_theta) + H(pi_t)): the more uncertain the policy, the more teacher.

    Entropies use 0·log 0 = 0, so they are finite whatever the supports. When
    H(pi_theta) + H(pi_t) <= tol (both essentially one-hot, e.g. both zero) the ratio is float
    noise and a = 0.5. One sweep. residual = a·H(pi_t) - (1 - a)·H(pi_theta), scaled.
    """
    logp_theta, logp_t = _check_inputs(logp_theta, logp_t)
    h_theta, h_t = _entropy(logp_theta), _entropy(logp_t)
    total = h_theta + h_t
    degenerate = total <= tol
    alpha = torch.where(degenerate, 0.5, h_theta / total.clamp_min(tol))
    residual = torch.where(degenerate, 0.0, (alpha * h_t - (1.0 - alpha) * h_theta) / (1.0 + total))
    return SolveResult(alpha, 1, residual)


# --------------------------------------------------------------------------------------------
# The table of methods
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlphaMethod:
    """A method's reference solver: `solve_raw(logp_theta, logp_t, fixed_alpha=..., tol=...)` returns
    the unclamped SolveResult. `clamped`: solve_alpha clamps the alpha to [alpha_min, alpha_max]."""

    info: AlphaMethodInfo
    solve_raw: Callable[..., SolveResult]
    clamped: bool = True

    @property
    def name(self) -> str:
        return self.info.name


def _fixed(logp_theta: Tensor, logp_t: Tensor, *, fixed_alpha: float, tol: float) -> SolveResult:
    return solve_fixed(logp_theta, logp_t, fixed_alpha)


def _tol_only(solver: Callable[[Tensor, Tensor, float], SolveResult]) -> Callable[..., SolveResult]:
    """`solver(logp_theta, logp_t, tol)` as a solve_raw (fixed_alpha is not used)."""
    return lambda logp_theta, logp_t, *, fixed_alpha, tol: solver(logp_theta, logp_t, tol)


METHODS: dict[str, AlphaMethod] = {
    m.name: m
    for m in (
        AlphaMethod(INFO["fixed"], _fixed, clamped=False),
        AlphaMethod(INFO["kl_symmetry"], _tol_only(solve_kl_symmetry)),
        AlphaMethod(INFO["reverse_kl_symmetry"], _tol_only(solve_reverse_kl_symmetry)),
        AlphaMethod(INFO["ess_balance"], _tol_only(solve_ess_balance)),
        AlphaMethod(INFO["entropy"], _tol_only(solve_entropy)),
    )
}


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def solve_alpha_raw(
    method: str, logp_theta: Tensor, logp_t: Tensor, *, fixed_alpha: float = 0.5, tol: float = 1e-6
) -> SolveResult:
    """The raw (unclamped) solver of `method`, from METHODS."""
    validate_alpha_method(method)
    return METHODS[method].solve_raw(logp_theta, logp_t, fixed_alpha=fixed_alpha, tol=tol)


def solve_alpha(
    method: str,
    logp_theta: Tensor,
    logp_t: Tensor,
    *,
    fixed_alpha: float = 0.5,
    alpha_min: float = 0.5,
    alpha_max: float = 1.0,
    tol: float = 1e-6,
) -> Tensor:
    """Per-row alpha [B] (float32) for q ∝ pi_theta^(1-a) · pi_t^a.

    Adaptive methods are clamped to [alpha_min, alpha_max]; `fixed` returns fixed_alpha as given
    (an explicit value is not silently moved by bounds meant for the adaptive methods).
    Raises ValueError for an unknown method, bounds outside [0, 1] or min > max, a fixed_alpha
    outside [0, 1], or tol <= 0.
    """
    validate_alpha_method(method)
    validate_alpha_bounds(alpha_min, alpha_max, fixed_alpha)
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive number, got {tol}")
    alpha = solve_alpha_raw(method, logp_theta, logp_t, fixed_alpha=fixed_alpha, tol=tol).alpha
    if METHODS[method].clamped:
        # The solvers never make NaN from log-probabilities; NaN *inputs* (a caller error the
        # sampler screens out) must not reach the mixture either.
        alpha = torch.nan_to_num(alpha, nan=0.5).clamp(alpha_min, alpha_max)
    return alpha.float()


def validate_alpha_method(method: str) -> None:
    """ValueError naming the allowed methods unless `method` is registered in METHODS."""
    if not isinstance(method, str) or method not in METHODS:  # a list is unhashable: ValueError too
        raise ValueError(f"unknown alpha method {method!r}; expected one of: {', '.join(METHODS)}")


def validate_alpha_bounds(alpha_min: float, alpha_max: float, fixed_alpha: float = 0.5) -> None:
    """ValueError unless 0 <= alpha_min <= alpha_max <= 1 and 0 <= fixed_alpha <= 1."""
    for name, value in (("alpha_min", alpha_min), ("alpha_max", alpha_max), ("fixed_alpha", fixed_alpha)):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if alpha_min > alpha_max:
        raise ValueError(f"alpha_min ({alpha_min}) must not exceed alpha_max ({alpha_max})")
