"""Exact speculative q* sampling: theta drafts, q* verifies. `run_round` drives two streams; the
functions above it are pure math on [B, V] tensors.

One round for a row at step s with pending token c (emitted, not yet fed):
  theta feeds c, d_1, ..., d_{k-1} one at a time and drafts d_{i+1} ~ p_i, where p_i is the draft
  distribution actually sampled from: the temperature-scaled pi_theta (uniform where theta's
  logits are unusable). The teacher feeds [c, d_1..d_k] in one forward. At position i, q*_i is
  built exactly as the plain loop builds it (the same `mixture_step`, user top-k/top-p and
  constraints included). d_i is accepted with probability min(1, q*_i(d_i) / p_i(d_i)); the first
  rejected position draws from normalise(max(0, q*_i - p_i)) and ends the round; when all k are
  accepted, a bonus token comes from q*_k. Every emitted token is then distributed exactly as q*
  at its position, whatever p is (Leviathan et al. 2023, Chen et al. 2023).
q*_k needs theta's logits after d_k, so theta always feeds d_k too (k + 1 theta forwards) and all
k + 1 positions go through one q* step: a theta forward is wasted in rounds that reject a draft,
but no round runs a second q* step, and whether a bonus is due needs no host sync.

Randomness is keyed per row and position (rng.py): the draft, the acceptance test and the
residual draw at the row's token index t use streams DRAFT, ACCEPT and RESIDUAL. A position is
emitted by exactly one round, so its uniforms are used once: the output is reproducible for a
seed and k, and independent of batch-mates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from os_cli.engine.draft_policy import expected_tokens_per_round  # noqa: F401  (one formula: draft_policy.py)
from os_cli.engine.streams import TRACE_FIELDS, ModelStream, trace_columns
from os_cli.mix import rng

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


@dataclass
class Round:
    """What one round emitted: row r's tokens are emitted[r, :counts[r]] (accepted drafts, then the
    correction or bonus). traces [F, B, k+1] per position in TRACE_FIELDS order; logits_theta,
    logits_t [B, k+1, V] and logq [B, k+1, V] the distributions at each position (the last
    position holds filler where no row reached it)."""

    emitted: Tensor
    counts: Tensor
    traces: Tensor
    logits_theta: Tensor
    logits_t: Tensor
    logq: Tensor


def run_round(
    theta: ModelStream,
    teacher: ModelStream,
    pending: Tensor,
    keys: Tensor,
    steps: Tensor,
    k: int,
    temperature: float,
    step_fn,
    stats,
) -> Round:
    """One round for every row (module docstring). The streams hold every emitted token but `pending`;
    afterwards they hold `pending` and the accepted drafts (rejected ones masked out or cropped)."""
    batch, device = pending.shape[0], pending.device
    ar = torch.arange(batch, device=device)
    positions = steps[:, None] + torch.arange(k + 1, device=device)  # token index of each position
    theta_logits, draft_logp, drafts = [], [], []
    token = pending
    for i in range(k):  # theta feeds c, d_1..d_{k-1}, drafting d_1..d_k
        logits = theta.step(token)
        logp = draft_logprobs(logits, temperature)
        token = draft(logp, keys, positions[:, i])
        theta_logits.append(logits)
        draft_logp.append(logp)
        drafts.append(token)
    drafts_t = torch.stack(drafts, 1)  # [B, k]
    theta_logits.append(theta.step(token))  # after d_k: the bonus position's q* needs it
    teacher_logits = teacher.extend(torch.cat([pending[:, None], drafts_t], 1))  # [B, k+1, V]
    stats.theta_forwards += k + 1
    stats.teacher_forwards += 1

    theta_logits_t, logp_draft = torch.stack(theta_logits, 1), torch.stack(draft_logp, 1)  # [B, k+1, V], [B, k, V]
    flat = lambda x: x.reshape(batch * (k + 1), *x.shape[2:])  # noqa: E731
    # Every position's q* in one step; its own draw at position k (stream 0) is the bonus token.
    out = step_fn(flat(theta_logits_t), flat(teacher_logits), keys.repeat_interleave(k + 1), flat(positions))
    logq = out.logq.view(batch, k + 1, -1)
    accepted = accepted_prefix(logq[:, :k], logp_draft, drafts_t, keys, steps)
    at = accepted.clamp(max=k - 1)
    correction = residual_draw(logq[ar, at], logp_draft[ar, at], keys, positions[ar, at])
    bonus_rows = accepted == k
    correction = torch.where(bonus_rows, out.tokens.view(batch, k + 1)[:, k], correction)
    emitted = torch.cat([drafts_t, drafts_t[:, -1:]], 1)
    traces = trace_columns(out).reshape(len(TRACE_FIELDS), batch, k + 1)
    emitted[ar, accepted] = correction
    # Log-probs of the emitted tokens under their position's distributions, with the plain loop's
    # fallbacks (a model with unusable logits is replaced by the other one).
    fallback = out.fallback.view(batch, k + 1)[:, :k].long()
    logp_t = torch.log_softmax(teacher_logits[:, :k].float() / temperature, -1)
    logp_theta = torch.where((fallback == 1)[..., None], logp_t, logp_draft)
    logp_t = torch.where((fallback == 2)[..., None], logp_draft, logp_t)
    ids = emitted[:, :k, None]
    for name, logp in (("logprob_theta", logp_theta), ("logprob_t", logp_t), ("logprob_q", logq[:, :k])):
        traces[TRACE_FIELDS.index(name), :, :k] = logp.gather(-1, ids).squeeze(-1)

    stats.drafted += int(torch.where(bonus_rows, k, accepted + 1).sum())
    stats.accepted += int(accepted.sum())
    counts = accepted + 1  # c plus the accepted drafts stay in the caches; as many tokens are emitted
    theta.drop_tail(counts, k + 1)
    teacher.drop_tail(counts, k + 1)
    return Round(emitted, counts, traces, theta_logits_t, teacher_logits, logq)
