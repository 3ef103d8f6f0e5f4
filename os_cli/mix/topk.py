"""Teacher top-k log-probabilities per token, for offline distillation (`output.topk_logprobs: K`).

Pure: no models, no I/O. At every emitted position the K most likely token ids of the teacher's
temperature-scaled distribution (log_softmax(logits_t / temperature) over the full vocabulary: the
distribution `logprob_t` is recorded under; the user's top-k/top-p and the target support
constraint do not enter it) and their log-probabilities under the distributions named in `of`:

- "theta": pi_theta's (temperature-scaled, full vocabulary) at the teacher's top-k ids;
- "q": q*'s, the distribution the token was drawn from (after constraints and the user's
  top-k/top-p, so -inf where those removed an id), at the teacher's top-k ids;
- "t": the teacher's, at its own top-k (sorted, largest first).

The names are those of `logprob` in a record (record_format.LOGPROB_KEYS). As for `logprob_t`
and `logprob_theta`, a row whose teacher (theta) logits were unusable at that step (fallback 2
(1), see sampler.py) uses the other model's distribution in its place.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from os_cli.mix.distributions import DISTRIBUTIONS as SIDES  # theta, t, q; ("t",)
from os_cli.mix.distributions import TOPK_OF_DEFAULT as DEFAULT_OF
from os_cli.mix.sampler import FALLBACK_TEACHER_ONLY, FALLBACK_THETA_ONLY


@dataclass(frozen=True)
class TopK:
    """K and the distributions stored (a subset of SIDES, in SIDES order)."""

    k: int
    of: tuple[str, ...] = DEFAULT_OF


def topk_spec(k: object, of: Sequence[str] | str | None = DEFAULT_OF, vocab_size: int | None = None) -> TopK | None:
    """The checked setting, or None when `k` is 0 / None (off). Raises ValueError naming what is allowed."""
    if k is None or (isinstance(k, numbers.Integral) and not isinstance(k, bool) and k == 0):
        return None
    upper = f"1..{vocab_size} (the vocabulary)" if vocab_size is not None else "a positive integer"
    too_large = vocab_size is not None and isinstance(k, numbers.Integral) and int(k) > vocab_size
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0 or too_large:
        raise ValueError(f"topk_logprobs must be 0 (off) or {upper}, got {k!r}")
    of = [of] if isinstance(of, str) else DEFAULT_OF if of is None else of
    if not isinstance(of, (list, tuple)) or not of or any(s not in SIDES for s in of) or len(set(of)) != len(of):
        raise ValueError(
            f"topk_of must be a non-empty list of distinct names among {', '.join(SIDES)} (t = the teacher), got {of!r}"
        )
    return TopK(int(k), tuple(s for s in SIDES if s in of))


def topk_columns(
    spec: TopK, temperature: float, logits_theta: Tensor, logits_t: Tensor, logq: Tensor, fallback: Tensor
) -> tuple[Tensor, Tensor]:
    """(ids [B, m, K] int64, values [len(spec.of), B, m, K] float32) at m positions per row.

    logits_theta, logits_t: raw logits [B, m, V]; logq: q* [B, m, V] (log-probabilities); fallback:
    [B, m] the step's fallback codes (any dtype; NaN where a position holds filler).
    """
    theta_only = (fallback == FALLBACK_THETA_ONLY)[..., None]
    scaled_t = torch.where(theta_only, logits_theta, logits_t).float() / temperature
    lse_t = torch.logsumexp(scaled_t, dim=-1, keepdim=True)
    top, ids = scaled_t.topk(spec.k, dim=-1)
    values = []
    for side in spec.of:
        if side == "t":
            values.append(top - lse_t)
        elif side == "theta":
            theta = torch.where(
                (fallback == FALLBACK_TEACHER_ONLY)[..., None], scaled_t, logits_theta.float() / temperature
            )
            values.append(theta.gather(-1, ids) - torch.logsumexp(theta, dim=-1, keepdim=True))
        else:
            values.append(logq.float().gather(-1, ids))
    return ids, torch.stack(values)
