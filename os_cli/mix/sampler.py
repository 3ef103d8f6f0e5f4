"""One decoding step: two logits tensors in, one token per row out (composes alpha.py and mixing.py).

Pure: no models, no I/O. The pipeline, per row and all rows at once:

    temperature (float32) -> log_softmax -> non-finite check (fall back to the good model)
    -> alpha -> geometric mix (+ forced teacher tokens / rows) -> support constraint on pi_t
    -> user top-k / top-p -> exact draw -> diagnostics -> log-probs of the drawn token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from os_cli.limits import MIN_TEMPERATURE
from os_cli.mix import fastmix, mixing, rng
from os_cli.mix.alpha import solve_alpha, validate_alpha_bounds, validate_alpha_method

SAMPLE_FROM = ("mixture", "teacher", "theta")
# "fast": os_cli.mix.fastmix (warm-started Halley, q* and diagnostics from the solver's own tilts) where a
# batch qualifies, else the reference; "reference": the original pipeline (alpha.py + mixing.py) always.
SOLVERS = ("fast", "reference")

# StepOutput.fallback codes (int8).
FALLBACK_NONE = 0
FALLBACK_TEACHER_ONLY = 1  # theta's logits were NaN / +inf / all -inf in this row: teacher alone
FALLBACK_THETA_ONLY = 2  # the teacher's were: theta alone
FALLBACK_NO_OVERLAP = 3  # q* had no mass left (disjoint supports, or none inside the target constraint): teacher alone


@dataclass(frozen=True)
class SamplerConfig:
    """How q* is built and filtered. Frozen and validated once, at construction: a bad field raises
    ValueError with a message naming it, so the decode step never re-checks the settings."""

    alpha_method: str = "kl_symmetry"
    fixed_alpha: float = 0.5
    alpha_min: float = 0.5
    alpha_max: float = 1.0
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    constraint_to_target: bool = False
    target_top_k: int = -1
    target_top_p: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        validate_alpha_method(self.alpha_method)
        validate_alpha_bounds(self.alpha_min, self.alpha_max, self.fixed_alpha)
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, (int, float))
            or not (math.isfinite(self.temperature) and self.temperature >= MIN_TEMPERATURE)
        ):
            raise ValueError(
                f"temperature must be a finite number >= {MIN_TEMPERATURE:g}, got {self.temperature!r} "
                f"(the bound keeps logits / temperature finite; temperature 0 / greedy is not supported)"
            )
        for name in ("top_k", "target_top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
                raise ValueError(f"{name} must be an integer: -1 (off) or a positive number of tokens, got {value!r}")
        for name in ("top_p", "target_top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < value <= 1.0):
                raise ValueError(f"{name} must be a number in (0, 1] (1 disables it), got {value!r}")
        if not isinstance(self.constraint_to_target, bool):
            raise ValueError(f"constraint_to_target must be true or false, got {self.constraint_to_target!r}")


@dataclass
class StepOutput:
    """One step's result. Every field is [B] except logq [B, V] (the distribution sampled from).

    alpha: the weight actually used (1 for forced rows and teacher fallbacks, 0 for theta ones).
    logprob_*: log-probability of the drawn token under the temperature-scaled pi_theta, pi_t, q.
    fallback: int8, see FALLBACK_* (0 none, 1 teacher alone, 2 theta alone, 3 no overlap -> teacher).
    In a fallback-1 (2) row the bad model's distribution is replaced by the good one's, so its
    logprob and diagnostic columns repeat the good model's values; filter on `fallback`.
    """

    tokens: Tensor
    alpha: Tensor
    ess_theta: Tensor
    ess_t: Tensor
    ess_ratio: Tensor
    kl_theta: Tensor
    kl_t: Tensor
    logprob_theta: Tensor
    logprob_t: Tensor
    logprob_q: Tensor
    fallback: Tensor
    logq: Tensor
    alpha_solved: Tensor | None = None  # [B] the method's (clamped) alpha before forcing/fallbacks: warm start


def _row_extremes(scaled_logits: Tensor) -> tuple[Tensor, Tensor]:
    """bool [B] pair: (unusable, complete). Unusable: a NaN or +inf logit, or no finite logit at all
    (the row maximum is then NaN, +inf or -inf: NaN propagates through amax). Complete: every logit
    finite. Two reductions, no [B, V] temporary."""
    unusable = ~torch.isfinite(scaled_logits.amax(dim=-1))
    return unusable, ~unusable & torch.isfinite(scaled_logits.amin(dim=-1))


def _check_shapes(logits_theta: Tensor, logits_t: Tensor, force_tokens: Tensor | None, force_rows: Tensor | None):
    if logits_theta.dim() != 2 or logits_theta.shape != logits_t.shape:
        raise ValueError(
            f"logits must both be [batch, vocab] of the same shape (slice a padded vocabulary first), "
            f"got {tuple(logits_theta.shape)} and {tuple(logits_t.shape)}"
        )
    batch, vocab = logits_theta.shape
    if force_tokens is not None and force_tokens.shape not in ((vocab,), (batch, vocab)):
        raise ValueError(
            f"force_teacher_tokens must be bool [{vocab}] or [{batch}, {vocab}], got {tuple(force_tokens.shape)}"
        )
    if force_rows is not None and force_rows.shape != (batch,):
        raise ValueError(f"force_teacher_rows must be bool [{batch}], got {tuple(force_rows.shape)}")


def mixture_step(
    logits_theta: Tensor,
    logits_t: Tensor,
    config: SamplerConfig,
    *,
    generator: torch.Generator | None = None,
    row_keys: Tensor | None = None,
    force_teacher_tokens: Tensor | None = None,
    force_teacher_rows: Tensor | None = None,
    sample_from: str = "mixture",
    step: int | Tensor | None = None,
    solver: str = "fast",
    alpha_init: Tensor | None = None,
) -> StepOutput:
    """Draw one token per row from q* ∝ pi_theta^(1-a) · pi_t^a built from two [B, V] logits.

    generator: draws with `mixing.sample` (exponential race) from this generator's stream.
    row_keys: int64 [B] keys from `rng.row_keys`; when given, each row's draw is a pure function of
    (key, step) via `rng.keyed_categorical`, independent of its batch-mates (needs an int `step`;
    do not pass a generator too).
    force_teacher_tokens: bool [V] (or [B, V]) entries that take pi_t's log-prob (a = 1 there).
    force_teacher_rows: bool [B] rows drawn from pi_t alone (a = 1), e.g. the first token.
    sample_from: "mixture" (default), or "teacher" / "theta" to skip the alpha solve and the mix
    and draw from one model (alpha reported 1 / 0); baselines keep temperature, the user's
    top-k/top-p and the fallbacks, and ignore the target constraint and the force masks.
    step: the decoding step (an int, or int64 [B] per-row steps with row_keys): names the step in
    error messages and indexes keyed draws.
    solver: "fast" (default) or "reference" (see SOLVERS). The fast path applies when every logit of
    both models is finite, nothing is forced, and there is no target constraint and no user
    top-k/top-p; otherwise the reference pipeline runs. Both give alpha to the method's tolerance.
    alpha_init: optional float [B], each row's previous `alpha_solved` (NaN: none yet), the warm start
    of the fast iterative solvers. Pass it along per row and the solve usually takes 2-3 tilts.

    `config` was validated when it was built (SamplerConfig is frozen).
    Raises ValueError for bad arguments or shapes, or a row where both models' logits are
    unusable (NaN, +inf or all -inf), naming the first such row and the step.
    Host syncs: one for that check; the fast solvers one more; the reference solvers one per iteration.
    """
    if sample_from not in SAMPLE_FROM:
        raise ValueError(f"sample_from must be one of {', '.join(SAMPLE_FROM)}, got {sample_from!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if alpha_init is not None and alpha_init.shape != (logits_theta.shape[0],):
        raise ValueError(f"alpha_init must be [{logits_theta.shape[0]}], got {tuple(alpha_init.shape)}")
    _check_shapes(logits_theta, logits_t, force_teacher_tokens, force_teacher_rows)
    if row_keys is not None:
        if generator is not None:
            raise ValueError("pass either generator or row_keys, not both")
        if row_keys.shape != (logits_theta.shape[0],) or not (
            isinstance(step, int) or (isinstance(step, Tensor) and step.shape == row_keys.shape)
        ):
            raise ValueError(
                f"row_keys must be [{logits_theta.shape[0]}] with an int step or [{logits_theta.shape[0]}] steps, "
                f"got {tuple(row_keys.shape)} and step={step!r}"
            )

    # x / 1.0 == x exactly: skip the division (two passes over [B, V]) at the default temperature.
    scale = (lambda x: x.float()) if config.temperature == 1.0 else (lambda x: x.float() / config.temperature)
    scaled_theta, scaled_t = scale(logits_theta), scale(logits_t)  # read only below (may alias the inputs)
    (bad_theta, full_theta), (bad_t, full_t) = _row_extremes(scaled_theta), _row_extremes(scaled_t)
    both_bad = bad_theta & bad_t
    any_bad, any_both_bad, all_full = torch.stack(
        [(bad_theta | bad_t).any(), both_bad.any(), (full_theta & full_t).all()]
    ).tolist()  # the one host sync of the checks
    if any_both_bad:
        rows = both_bad.nonzero().flatten().tolist()
        raise ValueError(
            f"step {step}: row {rows[0]} has non-finite logits (NaN, +inf or all -inf) in both models (rows {rows})"
        )

    logp_theta = torch.log_softmax(scaled_theta, dim=-1)
    logp_t = torch.log_softmax(scaled_t, dim=-1)
    fast = (
        solver == "fast"
        and all_full
        and force_teacher_tokens is None
        and force_teacher_rows is None
        and not config.constraint_to_target
        and config.top_k <= 0
        and config.top_p >= 1.0
    )
    if fast:
        return _fast_step(logp_theta, logp_t, config, sample_from, alpha_init, generator, row_keys, step)
    if any_bad:  # a row unusable in one model continues with the other model's distribution in its place
        logp_theta, logp_t = (
            torch.where(bad_theta.unsqueeze(-1), logp_t, logp_theta),
            torch.where(bad_t.unsqueeze(-1), logp_theta, logp_t),
        )
    fallback = torch.where(bad_theta, FALLBACK_TEACHER_ONLY, torch.where(bad_t, FALLBACK_THETA_ONLY, FALLBACK_NONE))

    if sample_from == "mixture":
        alpha = solve_alpha(
            config.alpha_method,
            logp_theta,
            logp_t,
            fixed_alpha=config.fixed_alpha,
            alpha_min=config.alpha_min,
            alpha_max=config.alpha_max,
        )
        alpha_solved = alpha
        if force_teacher_rows is not None:
            alpha = torch.where(force_teacher_rows.to(alpha.device, torch.bool), 1.0, alpha)
        logq = mixing.geometric_mix(logp_theta, logp_t, alpha, force_teacher=force_teacher_tokens)
        teacher_alone = logp_t
        if config.constraint_to_target:
            target = mixing.target_support_mask(logp_t, config.target_top_k, config.target_top_p)
            logq = mixing.restrict(logq, target)
            teacher_alone = mixing.restrict(logp_t, target)  # never empty: holds pi_t's argmax
        # No mass left (disjoint supports at 0 < a < 1, or none inside the target set): teacher alone.
        no_overlap = ~torch.isfinite(logq).any(dim=-1)
        logq = torch.where(no_overlap.unsqueeze(-1), teacher_alone, logq)
        alpha = torch.where(no_overlap, 1.0, alpha)
        fallback = torch.where(no_overlap & (fallback == FALLBACK_NONE), FALLBACK_NO_OVERLAP, fallback)
    elif sample_from == "teacher":
        logq, alpha = logp_t, torch.ones(logp_t.shape[0], device=logp_t.device)
        alpha_solved = torch.full_like(alpha, math.nan)
    else:
        logq, alpha = logp_theta, torch.zeros(logp_t.shape[0], device=logp_t.device)
        alpha_solved = torch.full_like(alpha, math.nan)

    # Report the model actually used in fallback rows.
    alpha = torch.where(bad_theta, 1.0, torch.where(bad_t, 0.0, alpha)).float()

    logq = mixing.top_k_top_p(logq, config.top_k, config.top_p)
    if row_keys is not None:
        assert step is not None  # checked with row_keys at the top of mixture_step
        tokens = rng.keyed_categorical(logq, row_keys.to(logq.device), step)
    else:
        tokens = mixing.sample(logq, generator)
    stats = mixing.diagnostics(logq, logp_theta, logp_t)

    def logprob_of_token(logp: Tensor) -> Tensor:
        return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    return StepOutput(
        tokens=tokens,
        alpha=alpha,
        ess_theta=stats["ess_theta"],
        ess_t=stats["ess_t"],
        ess_ratio=stats["ess_ratio"],
        kl_theta=stats["kl_theta"],
        kl_t=stats["kl_t"],
        logprob_theta=logprob_of_token(logp_theta),
        logprob_t=logprob_of_token(logp_t),
        logprob_q=logprob_of_token(logq),
        fallback=fallback.to(torch.int8),
        logq=logq,
        alpha_solved=alpha_solved,
    )


def _fast_step(
    logp_theta: Tensor,
    logp_t: Tensor,
    config: SamplerConfig,
    sample_from: str,
    alpha_init: Tensor | None,
    generator,
    row_keys: Tensor | None,
    step: int | Tensor | None,
) -> StepOutput:
    """The step on a batch where every log-probability is finite (see os_cli.mix.fastmix)."""
    batch, device = logp_theta.shape[0], logp_theta.device
    r = logp_t - logp_theta
    exact, reuse = None, None
    if sample_from == "mixture":
        alpha, _, reuse = fastmix.solve_with_tilts(
            config.alpha_method,
            logp_theta,
            r,
            alpha_min=config.alpha_min,
            alpha_max=config.alpha_max,
            fixed_alpha=config.fixed_alpha,
            alpha_init=alpha_init,
            logp_t=logp_t,
        )
        alpha = alpha.float()
        alpha_solved = alpha
    else:
        value = 1.0 if sample_from == "teacher" else 0.0
        alpha = torch.full((batch,), value, device=device)
        alpha_solved = torch.full((batch,), math.nan, device=device)
        exact = logp_t if sample_from == "teacher" else logp_theta
    stats = fastmix.mix_and_diagnose(logp_theta, r, alpha, logq_exact=exact, reuse=reuse)
    logq = stats.pop("logq")
    if exact is None:
        ends = (alpha == 1.0) | (alpha == 0.0)
        if bool(ends.any()):  # the ends are the models exactly, as in mixing.geometric_mix
            logq = torch.where(
                (alpha == 1.0).unsqueeze(-1), logp_t, torch.where((alpha == 0.0).unsqueeze(-1), logp_theta, logq)
            )
    if row_keys is not None:
        assert step is not None  # checked with row_keys in mixture_step
        tokens = rng.keyed_categorical(logq, row_keys.to(device), step)
    else:
        tokens = mixing.sample(logq, generator)
    pick = lambda logp: logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    return StepOutput(
        tokens=tokens,
        alpha=alpha,
        **stats,
        logprob_theta=pick(logp_theta),
        logprob_t=pick(logp_t),
        logprob_q=pick(logq),
        fallback=torch.zeros(batch, dtype=torch.int8, device=device),
        logq=logq,
        alpha_solved=alpha_solved,
    )
