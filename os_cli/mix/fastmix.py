"""Fast path of the mixing step for batches where both models give every token a finite log-probability.

Pure math, no models, no I/O. With lt = log pi_theta and r = log pi_t - log pi_theta (both finite
everywhere), every quantity of the step is a function of the tilted family

    K(s) = log sum_v exp(lt_v + s·r_v)          (K(0) = K(1) = 0 up to rounding)
    m(s) = E_s[r], v(s) = Var_s(r), mu3(s)       (moments of r under the tilt s)

computed in one "tilt" (one exp over [B, V], moments by one batched matrix-vector product):
- q_a = exp(lt + a·r - K(a)); kl_symmetry solves m(a) = 0; ess_balance solves K(2-a) = K(-a);
- KL(q_a||pi_theta) = a·m(a) - K(a), KL(q_a||pi_t) = (a-1)·m(a) - K(a);
- ESS_theta(q_a) = exp(-(K(-a) + K(a))), ESS_t(q_a) = exp(-(K(2-a) + K(a))).
So the solver's last evaluation gives q* and the KLs, and ess_balance's gives the ESS: nothing is
evaluated twice, and no [B, 2, V] tensor is built.

Solvers: Halley's method (cubic convergence: m, v and mu3 come from the same tilt) kept inside a
bisection bracket on [alpha_min, alpha_max], warm-started from `alpha_init` (each row's previous
alpha, which the refill loop carries per row; NaN = cold start at 0.5 clamped), a fixed number of
iterations with no host sync on accelerators (on a CPU, where a sync is free, one full-batch
evaluation, then only the rows still open are evaluated). Where r is identically 0 (pi_theta =
pi_t) every alpha is a root: such a row takes 0.5 clamped, whatever its start. Then one
check (one host sync): a row is accepted when its residual at the last evaluated alpha is <= tol
(the reference's scaled residual: |m(a)| / (1 + E|r|), |g| / (1 + |K(-a)| + |K(2-a)|)), or Newton's
estimate of its distance to the root |f / f'| is <= tol / 2 (in place of the reference's bracket
width <= tol: near the root f is at float32's noise floor), or its bracket has closed on an end of [alpha_min, alpha_max] (the
root lies beyond it, so the clamped answer is that end). Rows that fail are re-solved by the
reference solver of os_cli.mix.alpha (gathered, so the others pay nothing). Accepted alphas satisfy the
method's equation to the same tolerance as the reference's, clamped as `solve_alpha` clamps.

Each method's fast solver is one object in `METHODS` (keyed by the names of os_cli.mix.alpha_names):
`Fixed`, a `ClosedForm` formula, a `Root` (its evaluation, one tilt or two, and its direction), or
`Reference` (no fast solver: the reference solves every row).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from os_cli.mix import alpha as A

WARM_ITERATIONS = 2  # Halley steps from a warm start; cold starts take COLD_ITERATIONS
COLD_ITERATIONS = 4
EXTRA_ITERATIONS = 30  # then the reference solver takes over the rows still open
TOL = 1e-6
# exp() of float32 below about -87.3 lands in the subnormal range, where CPU exp is 10-20x slower.
# Weights below exp(-80) of a row's largest are raised to it: the row's total moves by at most
# V·exp(-80) ~ 3e-30 of itself, far below float32 resolution.
EXP_FLOOR = -80.0
# Var(r) at or below this under the evaluated tilt: pi_theta and pi_t agree to float32 rounding
# (r ~ 1e-7 at most), so every alpha satisfies the equations and the row takes the 0.5 convention.
SAME_VARIANCE = 1e-12
SAME_MEAN = 1e-6  # and |E(r)| (E|r| for kl_symmetry) at or below this: r is 0, not just concentrated


@dataclass
class Tilt:
    log_norm: Tensor  # [B] K(s)
    moments: Tensor  # [B, k] E_s[r^j], j = 1..k
    z: Tensor | None = None  # [B, V] lt + s·r, kept when asked (the unnormalised log q)
    mean_abs: Tensor | None = None  # [B] E_s|r|, when asked

    @property
    def variance(self) -> Tensor:
        """[B] Var_s(r) (needs two moments)."""
        return (self.moments[:, 1] - self.moments[:, 0] ** 2).clamp_min(0.0)


def tilt(lt: Tensor, r: Tensor, s: Tensor, moments: int, keep_z: bool = False, abs_r: Tensor | None = None) -> Tilt:
    """K(s) and the raw moments E_s[r^j], j = 1..moments, of r under exp(lt + s·r), s: [B]
    (and E_s|r| as `mean_abs` when `abs_r` = |r| is given)."""
    z = torch.addcmul(lt, s.unsqueeze(-1), r)
    peak = z.amax(dim=-1, keepdim=True)
    w = (torch.sub(z, peak) if keep_z else z.sub_(peak)).clamp_min_(EXP_FLOOR).exp_()
    total = w.sum(dim=-1)
    mean_abs = torch.linalg.vecdot(w, abs_r) / total if abs_r is not None else None
    sums = []
    for _ in range(moments):  # w·r, w·r², ... in place: w is not needed any more
        sums.append(w.mul_(r).sum(dim=-1))
    raw = torch.stack(sums, dim=-1) if sums else total.new_zeros(total.shape[0], 0)
    return Tilt(peak.squeeze(-1) + total.log(), raw / total.unsqueeze(-1), z if keep_z else None, mean_abs)


def _central(moments: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    m1, m2, m3 = moments[:, 0], moments[:, 1], moments[:, 2]
    var = (m2 - m1 * m1).clamp_min(0.0)
    mu3 = m3 - 3.0 * m1 * m2 + 2.0 * m1 * m1 * m1
    return m1, var, mu3


def _halley(a, f, df, d2f, lo, hi, lo_seen, hi_seen):
    """One safeguarded Halley step per row. A step that leaves (lo, hi) goes to the end it crossed
    if that end was never evaluated (a root beyond [alpha_min, alpha_max] is then confirmed in one
    evaluation), else bisects."""
    denominator = 2.0 * df * df - f * d2f
    candidate = a - 2.0 * f * df / denominator
    newton = a - f / df
    candidate = torch.where(torch.isfinite(candidate) & (denominator > 0), candidate, newton)
    candidate = torch.where(torch.isfinite(candidate), candidate, a)
    mid = 0.5 * (lo + hi)
    # Newton (which overshoots less cautiously than Halley) crossing an end never evaluated: probe it.
    to_lo = ~lo_seen & (newton <= lo)
    to_hi = ~hi_seen & (newton >= hi)
    step = torch.where(
        candidate <= lo,
        torch.where(lo_seen, mid, lo),
        torch.where(candidate >= hi, torch.where(hi_seen, mid, hi), candidate),
    )
    return torch.where(to_lo, lo, torch.where(to_hi, hi, step))


def _start(alpha_init: Tensor | None, batch: int, lo: Tensor, hi: Tensor) -> Tensor:
    # Cold start at 0.5 clamped into the bounds, not at the bounds' midpoint: where the two models
    # agree exactly every alpha is a root, and the convention (alpha.py, README) is 0.5 before clamping.
    a = torch.minimum(torch.maximum(torch.full_like(lo, 0.5), lo), hi)
    if alpha_init is not None:
        init = alpha_init.to(a.device, torch.float32)
        a = torch.where(torch.isfinite(init), torch.minimum(torch.maximum(init, lo), hi), a)
    return a


def solve(
    method: str,
    lt: Tensor,
    r: Tensor,
    *,
    alpha_min: float,
    alpha_max: float,
    fixed_alpha: float,
    alpha_init: Tensor | None,
    logp_t: Tensor,
) -> tuple[Tensor, int]:
    """Clamped alpha [B] for `method` on all-finite rows, and how many rows the reference re-solved."""
    alpha, resolved, _ = solve_with_tilts(
        method,
        lt,
        r,
        alpha_min=alpha_min,
        alpha_max=alpha_max,
        fixed_alpha=fixed_alpha,
        alpha_init=alpha_init,
        logp_t=logp_t,
    )
    return alpha, resolved


def solve_with_tilts(
    method: str,
    lt: Tensor,
    r: Tensor,
    *,
    alpha_min: float,
    alpha_max: float,
    fixed_alpha: float,
    alpha_init: Tensor | None,
    logp_t: Tensor,
) -> tuple[Tensor, int, dict[str, Tilt] | None]:
    """`solve`, plus the solver's last tilts when they were evaluated at exactly the returned alpha
    (kl_symmetry: "q", with z; ess_balance: "left" and "right"), for `mix_and_diagnose` to reuse."""
    return METHODS[method].solve(
        method,
        lt,
        r,
        alpha_min=alpha_min,
        alpha_max=alpha_max,
        fixed_alpha=fixed_alpha,
        alpha_init=alpha_init,
        logp_t=logp_t,
    )


class Fixed:
    """alpha = fixed_alpha, not clamped (as alpha.solve_alpha)."""

    def solve(self, method, lt, r, *, alpha_min, alpha_max, fixed_alpha, alpha_init, logp_t):
        return torch.full((lt.shape[0],), float(fixed_alpha), device=lt.device), 0, None


@dataclass(frozen=True)
class ClosedForm:
    """alpha = formula(lt, logp_t, r) on full supports, clamped."""

    formula: Callable[[Tensor, Tensor, Tensor], Tensor]

    def solve(self, method, lt, r, *, alpha_min, alpha_max, fixed_alpha, alpha_init, logp_t):
        return self.formula(lt, logp_t, r).clamp(alpha_min, alpha_max), 0, None


class Reference:
    """A method with no fast solver: alpha.solve_alpha solves (and counts as re-solved) every row."""

    def solve(self, method, lt, r, *, alpha_min, alpha_max, fixed_alpha, alpha_init, logp_t):
        alpha = A.solve_alpha(method, lt, logp_t, fixed_alpha=fixed_alpha, alpha_min=alpha_min, alpha_max=alpha_max)
        return alpha, lt.shape[0], None


@dataclass(frozen=True)
class Root:
    """alpha = the root of f(a) in [alpha_min, alpha_max] by safeguarded Halley steps (module docstring).

    evaluate(lt, r, a, abs_r) -> f, f', f'', the reference's scaled residual, `same` ([B] bool: r is
    identically 0, every alpha is a root) and the tilts evaluated at a. increasing: f increases in a.
    uses_abs_r: evaluate needs abs_r = |r| (else it gets None).
    """

    evaluate: Callable
    increasing: bool
    uses_abs_r: bool = False

    def solve(self, method, lt, r, *, alpha_min, alpha_max, fixed_alpha, alpha_init, logp_t):
        return _solve_root(
            self, method, lt, r, alpha_min=alpha_min, alpha_max=alpha_max, alpha_init=alpha_init, logp_t=logp_t
        )


def _solve_root(
    root: Root,
    method: str,
    lt: Tensor,
    r: Tensor,
    *,
    alpha_min: float,
    alpha_max: float,
    alpha_init: Tensor | None,
    logp_t: Tensor,
) -> tuple[Tensor, int, dict[str, Tilt] | None]:
    """Root.solve: the iterations, then the rows still open alone, then the reference for any left."""
    batch, device = lt.shape[0], lt.device
    lo = torch.full((batch,), float(alpha_min), device=device)
    hi = torch.full((batch,), float(alpha_max), device=device)
    state = _State(_start(alpha_init, batch, lo, hi), lo, hi, torch.zeros(batch, dtype=torch.bool, device=device))
    abs_r = r.abs() if root.uses_abs_r else None
    # No host sync per iteration on accelerators; on a CPU a sync is free, so stop as soon as all rows are.
    early = device.type == "cpu"
    tilts: dict[str, Tilt] = {}
    evaluated = state.a
    # On a CPU the continuation below, which evaluates only the rows still open, is cheaper than
    # full-batch iterations: one full evaluation, then rows continue alone.
    for _ in range(1 if early else COLD_ITERATIONS if alpha_init is None else WARM_ITERATIONS):
        evaluated = state.a
        state, tilts = _iterate(root, lt, r, abs_r, state)
        if early and bool(state.accepted.all()):
            break
    all_accepted, at_evaluated = torch.stack([state.accepted.all(), (state.a == evaluated).all()]).tolist()
    if all_accepted:  # the one host sync of the solve, in the common case
        return state.a, 0, (tilts if at_evaluated else None)
    failed = ~state.accepted
    # Rows still moving continue alone (gathered), one sync per iteration, as the reference does;
    # each iteration evaluates only the rows still open (rows accepted meanwhile keep the tilts of
    # the evaluation that accepted them).
    rows = failed.nonzero().squeeze(-1)
    sub = _State(*(x[rows] for x in state.tensors()))
    valid = bool(((state.a == evaluated) | failed).all())  # main-loop rows sit where their tilts were taken
    sub_tilts: dict[str, Tilt] | None = None
    open_rows = torch.arange(rows.numel(), device=device)
    for _ in range(EXTRA_ITERATIONS):
        picked = rows[open_rows]
        part = _State(*(x[open_rows] for x in sub.tensors()))
        moved, part_tilts = _iterate(root, lt[picked], r[picked], abs_r[picked] if abs_r is not None else None, part)
        valid = valid and bool(((moved.a == part.a) | ~moved.accepted).all())  # accepted where evaluated
        sub = _State(*(x.index_put((open_rows,), y) for x, y in zip(sub.tensors(), moved.tensors())))
        sub_tilts = part_tilts if sub_tilts is None else _splice(sub_tilts, part_tilts, open_rows)
        open_rows = open_rows[~moved.accepted]
        if not open_rows.numel():
            break
    sub_a = sub.a
    if open_rows.numel():  # the safeguarded reference always converges
        stuck = open_rows
        sub_a = sub_a.index_put(
            (stuck,),
            A.solve_alpha(method, lt[rows[stuck]], logp_t[rows[stuck]], alpha_min=alpha_min, alpha_max=alpha_max),
        )
        return state.a.index_put((rows,), sub_a), int(stuck.numel()), None
    # Each continued row's tilts were taken at its accepted alpha: splice them in. The loop above ran
    # (rows were open, else the stuck branch returned), so its first pass set sub_tilts.
    assert sub_tilts is not None
    return state.a.index_put((rows,), sub_a), 0, (_splice(tilts, sub_tilts, rows) if valid else None)


def _splice(tilts: dict[str, Tilt], sub_tilts: dict[str, Tilt], rows: Tensor) -> dict[str, Tilt]:
    """`tilts` with the rows `rows` replaced by `sub_tilts` (same keys, gathered rows)."""
    out = {}
    for key, t in tilts.items():
        s = sub_tilts[key]
        put = lambda x, y: None if x is None else x.index_put((rows,), y)  # noqa: E731
        out[key] = Tilt(
            t.log_norm.index_put((rows,), s.log_norm),
            t.moments.index_put((rows,), s.moments),
            put(t.z, s.z),
            put(t.mean_abs, s.mean_abs),
        )
    return out


def _entropy_closed_form(lt: Tensor, lT: Tensor, r: Tensor) -> Tensor:
    """alpha.solve_entropy on full supports."""
    p_theta = lt.clamp_min(EXP_FLOOR).exp()
    p_t = lT.clamp_min(EXP_FLOOR).exp()
    h_theta = -torch.linalg.vecdot(p_theta, lt).clamp_max(0.0)
    h_t = -torch.linalg.vecdot(p_t, lT).clamp_max(0.0)
    total = h_theta + h_t
    return torch.where(total <= TOL, 0.5, h_theta / total.clamp_min(TOL))


def _reverse_kl_closed_form(lt: Tensor, lT: Tensor, r: Tensor) -> Tensor:
    """alpha.solve_reverse_kl_symmetry on full supports (no leak rules needed)."""
    p_theta = lt.clamp_min(EXP_FLOOR).exp()
    p_t = lT.clamp_min(EXP_FLOOR).exp()
    diff = p_t.sub_(p_theta)
    numerator = -torch.linalg.vecdot(diff, lt)  # CE(pi_t, pi_theta) - H(pi_theta)
    denominator = torch.linalg.vecdot(diff, r)  # KL(theta||t) + KL(t||theta) >= 0
    solved = (numerator / denominator.clamp_min(TOL)).clamp(0.0, 1.0)
    return torch.where(denominator <= TOL, 0.5, solved)


@dataclass
class _State:
    """Per-row solver state: the point to evaluate next (or the accepted one), the bracket, flags."""

    a: Tensor
    lo: Tensor
    hi: Tensor
    accepted: Tensor
    lo_seen: Tensor | None = None  # the bracket end was set by an evaluation (not the initial bound)
    hi_seen: Tensor | None = None

    def __post_init__(self):
        if self.lo_seen is None:
            self.lo_seen = torch.zeros_like(self.accepted)
        if self.hi_seen is None:
            self.hi_seen = torch.zeros_like(self.accepted)

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(a, lo, hi, accepted, lo_seen, hi_seen), the order of the constructor."""
        assert self.lo_seen is not None and self.hi_seen is not None  # set by __post_init__
        return self.a, self.lo, self.hi, self.accepted, self.lo_seen, self.hi_seen


def _iterate(root: Root, lt: Tensor, r: Tensor, abs_r: Tensor | None, s: _State) -> tuple[_State, dict]:
    """Evaluate every row at s.a; accepted rows keep their point, the others take a Halley step.
    Also returns the tilts evaluated at s.a."""
    f, df, d2f, scaled, same, tilts = root.evaluate(lt, r, s.a, abs_r)
    root_left = (f > 0) if root.increasing else (f < 0)
    # r identically 0 (pi_theta = pi_t: one model, same prompts): every alpha is a root, and a warm
    # start would keep the previous token's. The convention (alpha.py) is 0.5, clamped into the bracket.
    same = same & ~s.accepted
    a_now = torch.where(same, torch.minimum(torch.maximum(torch.full_like(s.a, 0.5), s.lo), s.hi), s.a)
    # Newton's distance to the root, |f / f'|, stands in for the reference's bracket width: at the
    # float32 noise floor the scaled residual may not get below tol while the root is pinned.
    done = same | s.accepted | (scaled.abs() <= TOL) | ((f / df).abs() <= 0.5 * TOL)
    move_hi, move_lo = root_left & ~done, ~root_left & ~done
    hi, hi_seen = torch.where(move_hi, s.a, s.hi), s.hi_seen | move_hi
    lo, lo_seen = torch.where(move_lo, s.a, s.lo), s.lo_seen | move_lo
    closed = hi - lo <= TOL
    a = torch.where(done, a_now, torch.where(closed, lo, _halley(s.a, f, df, d2f, lo, hi, lo_seen, hi_seen)))
    return _State(a, lo, hi, done | closed, lo_seen, hi_seen), tilts


def _kl_evaluate(lt, r, a, abs_r):
    t = tilt(lt, r, a, 3, keep_z=True, abs_r=abs_r)  # z kept: at the accepted alpha it is log q*
    m1, var, mu3 = _central(t.moments)
    # Var_a(r) and E_a|r| both ~0 (a tilt onto one token has no variance but r need not be 0)
    same = (var <= SAME_VARIANCE) & (t.mean_abs <= SAME_MEAN)
    return m1, var, mu3, m1 / (1.0 + t.mean_abs), same, {"q": t}  # the reference's scaled residual


def _ess_evaluate(lt, r, a, abs_r):
    left, right = tilt(lt, r, -a, 2), tilt(lt, r, 2.0 - a, 2)
    g = right.log_norm - left.log_norm
    m_left, v_left = left.moments[:, 0], left.variance
    m_right, v_right = right.moments[:, 0], right.variance
    dg = m_left - m_right
    d2g = v_right - v_left
    same = (v_left + v_right <= SAME_VARIANCE) & (m_left.abs() + m_right.abs() <= SAME_MEAN)
    return g, dg, d2g, g / (1.0 + left.log_norm.abs() + right.log_norm.abs()), same, {"left": left, "right": right}


METHODS: dict[str, Fixed | ClosedForm | Root | Reference] = {
    "fixed": Fixed(),
    "kl_symmetry": Root(_kl_evaluate, increasing=True, uses_abs_r=True),
    "reverse_kl_symmetry": ClosedForm(_reverse_kl_closed_form),
    "ess_balance": Root(_ess_evaluate, increasing=False),
    "entropy": ClosedForm(_entropy_closed_form),
}


def mix_and_diagnose(
    lt: Tensor, r: Tensor, alpha: Tensor, logq_exact: Tensor | None = None, reuse: dict[str, Tilt] | None = None
) -> dict[str, Tensor]:
    """log q_alpha and the diagnostics of mixing.diagnostics, from three tilts.

    `logq_exact`: pass pi_t's (pi_theta's) own log-probabilities when alpha is 1 (0) everywhere, so
    q is that model exactly, not lt + r renormalised. `reuse`: tilts already evaluated at exactly
    `alpha` (from `solve_with_tilts`): "q" (with z), "left" (s = -alpha), "right" (s = 2 - alpha).
    """
    reuse = reuse or {}
    q = reuse.get("q")
    if q is None or (logq_exact is None and q.z is None):
        q = tilt(lt, r, alpha, 1, keep_z=logq_exact is None)
    left = reuse.get("left") or tilt(lt, r, -alpha, 0)
    right = reuse.get("right") or tilt(lt, r, 2.0 - alpha, 0)
    if logq_exact is not None:
        logq = logq_exact
    else:
        assert q.z is not None  # q was (re)computed above with keep_z=True unless it already had z
        logq = q.z.sub_(q.log_norm.unsqueeze(-1))
    mean_r = q.moments[:, 0]
    kl_theta = (alpha * mean_r - q.log_norm).clamp_min(0.0)
    kl_t = ((alpha - 1.0) * mean_r - q.log_norm).clamp_min(0.0)
    kl_theta = torch.where(alpha == 0.0, 0.0, kl_theta)  # q is pi_theta itself
    kl_t = torch.where(alpha == 1.0, 0.0, kl_t)  # q is pi_t itself
    log_ess_theta = -(left.log_norm + q.log_norm)
    log_ess_t = -(right.log_norm + q.log_norm)
    return {
        "logq": logq,
        "ess_theta": log_ess_theta.exp(),
        "ess_t": log_ess_t.exp(),
        "ess_ratio": torch.exp(log_ess_theta - log_ess_t),
        "kl_theta": kl_theta,
        "kl_t": kl_t,
    }
