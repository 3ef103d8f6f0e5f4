"""Exact speculative q* sampling: theta drafts, q* verifies (pure math; the round itself is in scheduler.py).

One round for a row at step s with pending token c (emitted, not yet fed):
  theta feeds c, d_1, ..., d_{k-1} one at a time and drafts d_{i+1} ~ p_i, where p_i is the draft
  distribution actually sampled from: the temperature-scaled pi_theta (uniform where theta's
  logits are unusable). The teacher feeds [c, d_1..d_k] in one forward. At position i, q*_i is
  built exactly as the plain loop builds it (the same `mixture_step`, user top-k/top-p and
  constraints included). d_i is accepted with probability min(1, q*_i(d_i) / p_i(d_i)); the first
  rejected position draws from normalise(max(0, q*_i - p_i)) and ends the round; when all k are
  accepted, theta feeds d_k and a bonus token comes from q*_k. Every emitted token is then
  distributed exactly as q* at its position, whatever p is (Leviathan et al. 2023, Chen et al. 2023).

Randomness is keyed per row and position (rng.py): the draft, the acceptance test and the
residual draw at the row's token index t use streams DRAFT, ACCEPT and RESIDUAL. A position is
emitted by exactly one round, so its uniforms are used once: the output is reproducible for a
seed and k, and independent of batch-mates.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import rng

DRAFT, ACCEPT, RESIDUAL = 1, 2, 3  # keyed-randomness streams (0 is the plain loop's draw)


def draft_logprobs(logits: Tensor, temperature: float) -> Tensor:
    """log p [B, V]: the draft distribution, temperature-scaled pi_theta as q* sees it; a row with
    unusable logits (NaN, +inf, no finite entry) drafts uniformly instead (still exact: p is only
    a proposal)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    bad = torch.isnan(logp).any(dim=-1) | ~torch.isfinite(logp).any(dim=-1)
    return torch.where(bad[:, None], torch.full_like(logp, -math.log(logp.shape[-1])), logp)


def draft(logp: Tensor, keys: Tensor, steps: Tensor) -> Tensor:
    """One draft token per row from exp(logp), keyed by (row key, step)."""
    return rng.keyed_categorical(logp, keys, steps, stream=DRAFT)


def accepted_prefix(logq: Tensor, logp: Tensor, drafts: Tensor, keys: Tensor, steps: Tensor) -> Tensor:
    """Number of leading drafts accepted per row, [B] in 0..k.

    logq, logp: [B, k, V] q* and the draft distribution at each drafted position; drafts [B, k];
    steps [B]: the token index of the first drafted position. d_i is accepted iff u_i < q(d_i)/p(d_i).
    """
    batch, k = drafts.shape
    lq = logq.gather(-1, drafts[..., None]).squeeze(-1).double()
    lp = logp.gather(-1, drafts[..., None]).squeeze(-1).double()
    positions = steps[:, None] + torch.arange(k, device=steps.device)
    u = rng.keyed_uniform(keys[:, None].expand(batch, k).reshape(-1), positions.reshape(-1), stream=ACCEPT)
    accept = u.view(batch, k).log() < (lq - lp)
    return accept.to(torch.long).cumprod(dim=-1).sum(dim=-1)


def residual_draw(logq: Tensor, logp: Tensor, keys: Tensor, steps: Tensor) -> Tensor:
    """A token per row from normalise(max(0, q - p)) [B, V] inputs, keyed at `steps` [B].

    Where q <= p everywhere in float64 (q == p up to rounding, so a rejection had probability ~0),
    the draw falls back to q itself.
    """
    residual = (logq.double().exp() - logp.double().exp()).clamp_min_(0.0)
    usable = residual.sum(dim=-1, keepdim=True) > 0
    log_residual = torch.where(usable, residual.log(), logq.double())
    return rng.keyed_categorical(log_residual, keys, steps, stream=RESIDUAL)


def expected_tokens_per_round(acceptance: float, k: int) -> float:
    """(1 - a^(k+1)) / (1 - a): tokens one round emits when each draft is accepted with probability a."""
    if acceptance >= 1.0:
        return float(k + 1)
    return (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)
