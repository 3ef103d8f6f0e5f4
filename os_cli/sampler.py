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

from os_cli import mixing, rng
from os_cli.alpha import solve_alpha, validate_alpha_bounds, validate_alpha_method
from os_cli.limits import MIN_TEMPERATURE

SAMPLE_FROM = ("mixture", "teacher", "theta")

# StepOutput.fallback codes (int8).
FALLBACK_NONE = 0
FALLBACK_TEACHER_ONLY = 1  # theta's logits were NaN / +inf / all -inf in this row: teacher alone
FALLBACK_THETA_ONLY = 2  # the teacher's were: theta alone
FALLBACK_NO_OVERLAP = 3  # q* had no mass left (disjoint supports, or none inside the target constraint): teacher alone


@dataclass
class SamplerConfig:
    """How q* is built and filtered. `validate()` raises ValueError with a message per bad field."""

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

    def validate(self) -> None:
        validate_alpha_method(self.alpha_method)
        validate_alpha_bounds(self.alpha_min, self.alpha_max, self.fixed_alpha)
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or not (
            math.isfinite(self.temperature) and self.temperature >= MIN_TEMPERATURE
        ):
            raise ValueError(f"temperature must be a finite number >= {MIN_TEMPERATURE:g}, got {self.temperature!r} "
                             f"(the bound keeps logits / temperature finite; temperature 0 / greedy is not supported)")
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


def _unusable_rows(scaled_logits: Tensor) -> Tensor:
    """bool [B]: rows with a NaN or +inf logit, or no finite logit at all."""
    return (torch.isnan(scaled_logits) | torch.isposinf(scaled_logits)).any(dim=-1) | ~torch.isfinite(
        scaled_logits
    ).any(dim=-1)


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
    step: int | None = None,
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

    Raises ValueError for a bad config, bad shapes, or a row where both models' logits are
    unusable (NaN, +inf or all -inf), naming the first such row and the step.
    Host syncs: one `.any()` for that check; the iterative alpha solvers sync once per iteration.
    """
    config.validate()
    if sample_from not in SAMPLE_FROM:
        raise ValueError(f"sample_from must be one of {', '.join(SAMPLE_FROM)}, got {sample_from!r}")
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

    scaled_theta = logits_theta.float() / config.temperature
    scaled_t = logits_t.float() / config.temperature
    bad_theta, bad_t = _unusable_rows(scaled_theta), _unusable_rows(scaled_t)
    both_bad = bad_theta & bad_t
    if bool(both_bad.any()):  # the one host sync of this function
        rows = both_bad.nonzero().flatten().tolist()
        raise ValueError(
            f"step {step}: row {rows[0]} has non-finite logits (NaN, +inf or all -inf) in both models "
            f"(rows {rows})"
        )

    # A row unusable in one model continues with the other model's distribution in its place.
    logp_theta = torch.log_softmax(scaled_theta, dim=-1)
    logp_t = torch.log_softmax(scaled_t, dim=-1)
    logp_theta, logp_t = (
        torch.where(bad_theta.unsqueeze(-1), logp_t, logp_theta),
        torch.where(bad_t.unsqueeze(-1), logp_theta, logp_t),
    )
    fallback = torch.where(bad_theta, FALLBACK_TEACHER_ONLY, torch.where(bad_t, FALLBACK_THETA_ONLY, FALLBACK_NONE))

    if sample_from == "mixture":
        alpha = solve_alpha(
            config.alpha_method, logp_theta, logp_t,
            fixed_alpha=config.fixed_alpha, alpha_min=config.alpha_min, alpha_max=config.alpha_max,
        )
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
    else:
        logq, alpha = logp_theta, torch.zeros(logp_t.shape[0], device=logp_t.device)

    # Report the model actually used in fallback rows.
    alpha = torch.where(bad_theta, 1.0, torch.where(bad_t, 0.0, alpha)).float()

    logq = mixing.top_k_top_p(logq, config.top_k, config.top_p)
    if row_keys is not None:
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
    )
