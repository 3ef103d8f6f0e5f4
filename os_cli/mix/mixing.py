"""q* from two log-probability tensors, support constraints, top-k/top-p, exact draws, diagnostics.

Pure math on [batch, vocab] float32 log-probabilities; entries may be -inf (zero probability).
Every function works on the whole batch at once; none prints or syncs with the host.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _normalise(logits: Tensor) -> Tensor:
    """log-softmax that leaves a row with no finite entry all -inf instead of NaN."""
    log_total = logits.logsumexp(dim=-1, keepdim=True)
    return logits - torch.where(torch.isfinite(log_total), log_total, 0.0)


def geometric_mix(logp_theta: Tensor, logp_t: Tensor, alpha: Tensor, force_teacher: Tensor | None = None) -> Tensor:
    """Normalised log q*, q* ∝ pi_theta^(1-a) · pi_t^a per row, [B, V].

    alpha: [B]. force_teacher: optional bool mask [V] or [B, V]; those entries take log pi_t
    (a = 1 there) before normalising. At a = 0 (a = 1) the row is exactly pi_theta (pi_t), with
    0 · log 0 = 0; for 0 < a < 1 an entry missing from either model is -inf. A row with no finite
    entry left is a caller error; it comes back all -inf (never NaN).
    """
    a = alpha.to(torch.float32).unsqueeze(-1)
    mixed = (1.0 - a) * logp_theta + a * logp_t
    # The ends need their own branch: 0 · (-inf) is NaN in IEEE arithmetic.
    mixed = torch.where(a == 1.0, logp_t, torch.where(a == 0.0, logp_theta, mixed))
    if force_teacher is not None:
        mixed = torch.where(force_teacher.to(torch.bool), logp_t, mixed)
    return _normalise(mixed)


def _top_k_top_p_mask(logp: Tensor, top_k: int, top_p: float) -> Tensor:
    """bool [B, V]: the top-k ∩ top-p set of exp(logp), always holding the argmax.

    top-p keeps the smallest prefix of the sorted distribution whose mass reaches top_p (a token
    is kept when the mass strictly before it is < top_p). The sort is stable, so ties go to the
    lower token id: the set is deterministic. Zero-probability entries are never kept (except an
    all -inf row's first entry, a caller error).
    """
    sorted_logp, order = torch.sort(logp, dim=-1, descending=True, stable=True)
    rank = torch.arange(logp.shape[-1], device=logp.device)
    keep = torch.isfinite(sorted_logp)
    if top_k > 0:
        keep = keep & (rank < top_k)
    if top_p < 1.0:
        cumulative = torch.cumsum(sorted_logp.exp(), dim=-1)
        mass_before = torch.nn.functional.pad(cumulative[..., :-1], (1, 0))  # exclusive cumsum
        keep = keep & (mass_before < top_p)
    keep = keep | (rank == 0)  # the argmax always stays
    return torch.zeros_like(keep).scatter(-1, order, keep)


def target_support_mask(logp_t: Tensor, top_k: int = -1, top_p: float = 1.0) -> Tensor:
    """bool [B, V]: pi_t's top-k ∩ top-p set (top_k <= 0 and top_p >= 1 disable each filter).

    With both disabled it is pi_t's support (finite entries). The argmax of pi_t is always in.
    """
    if top_k <= 0 and top_p >= 1.0:
        return torch.isfinite(logp_t)
    return _top_k_top_p_mask(logp_t, top_k, top_p)


def restrict(logq: Tensor, mask: Tensor) -> Tensor:
    """logq with -inf outside mask ([V] or [B, V]), renormalised. No mass leaks outside the mask.

    A row left with no finite entry comes back all -inf (the caller decides what to do).
    """
    return _normalise(torch.where(mask, logq, -math.inf))


def top_k_top_p(logq: Tensor, top_k: int = -1, top_p: float = 1.0) -> Tensor:
    """The user's top-k / top-p filter on q (after any support constraint), renormalised.

    top_k <= 0 and top_p >= 1 disable each filter; ties go to the lower token id.
    """
    if top_k <= 0 and top_p >= 1.0:
        return logq
    return restrict(logq, _top_k_top_p_mask(logq, top_k, top_p))


def sample(logq: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One exact draw per row from exp(logq): LongTensor [B].

    Exponential race: argmax_v q_v / E_v with E_v ~ Exp(1) i.i.d. picks v with probability q_v.
    The noise is float64 so that tokens with tiny probability are neither dropped nor inflated by
    float32's 2^-24 resolution. -inf entries are never picked while the row has a finite entry.
    Reproducible for a given `generator` (on the tensor's device).
    """
    noise = torch.empty(logq.shape, dtype=torch.float64, device=logq.device).exponential_(generator=generator)
    scores = logq.double() - noise.log()
    scores = torch.where(torch.isfinite(logq), scores, -math.inf)
    return scores.argmax(dim=-1)


def diagnostics(logq: Tensor, logp_theta: Tensor, logp_t: Tensor) -> dict[str, Tensor]:
    """Per-row diagnostics of the distribution q actually sampled from; each value is [B] float32.

    ess_theta = 1 / sum_{q>0} pi_theta²/q  (1 / E_q[w²] for the importance weights w = pi_theta/q
      of tokens drawn from q; entries q never draws carry no weight), likewise ess_t;
      computed as exp(-logsumexp(2 log p - log q)). +inf when the model has no mass on q's support.
    ess_ratio = ess_theta / ess_t, computed in log space (1 where both are infinite).
    kl_theta = KL(q || pi_theta), kl_t = KL(q || pi_t): +inf when q puts mass where that model has
      none (e.g. forced-teacher tokens), otherwise finite and >= 0.
    Never NaN. An all -inf q row (caller error) gives ess = inf, ratio 1, KL 0.
    """
    in_q = torch.isfinite(logq)
    q = logq.exp()

    def log_ess(logp: Tensor) -> Tensor:
        return -torch.where(in_q, 2.0 * logp - logq, -math.inf).logsumexp(dim=-1)

    def kl_from_q(logp: Tensor) -> Tensor:
        in_p = torch.isfinite(logp)
        finite_part = torch.where(in_q & in_p, q * (logq - logp), 0.0).sum(dim=-1).clamp_min(0.0)
        leaks = (in_q & ~in_p).any(dim=-1)
        return torch.where(leaks, math.inf, finite_part)

    log_ess_theta, log_ess_t = log_ess(logp_theta), log_ess(logp_t)
    ess_ratio = torch.exp(log_ess_theta - log_ess_t)
    return {
        "ess_theta": log_ess_theta.exp(),
        "ess_t": log_ess_t.exp(),
        "ess_ratio": torch.where(torch.isnan(ess_ratio), 1.0, ess_ratio),
        "kl_theta": kl_from_q(logp_theta),
        "kl_t": kl_from_q(logp_t),
    }
