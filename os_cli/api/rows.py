"""Rows in and out of the API: `StreamRow` / `RowOutput` for `generate_stream`, and `SamplingOutput`
assembled from per-row results (whichever loop produced them)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from os_cli.engine.requests import RowResult
from os_cli.engine.streams import TRACE_FIELDS, DecodeTrace


@dataclass
class StreamRow:
    """One row for `generate_stream`: prompts, the row's seed (as `generate(seed=[...])` takes it),
    an optional token cap and any id of the caller's (returned on the result)."""

    prompt: str
    prompt_t: str | None = None
    seed: int = 0
    max_new_tokens: int | None = None
    id: object = None


@dataclass
class RowOutput:
    """One finished row from `generate_stream`: tensors [n] on the CPU (n = tokens, EOS included)."""

    index: int  # position in the input stream
    id: object
    text: str | None
    token_ids: torch.Tensor
    finish_reason: str
    traces: dict[str, torch.Tensor]  # engine.TRACE_FIELDS: alpha, ess_*, kl_*, logprob_theta/t/q, fallback
    logits: dict[str, torch.Tensor] | None = None
    q_star_probs: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None  # [n, K] the teacher's top-K ids per token (topk_logprobs=K)
    topk_logprobs: dict[str, torch.Tensor] | None = None  # "t" / "theta" / "q" (topk_of): [n, K] at topk_ids


@dataclass
class SamplingOutput:
    """Results in input order. Float tensors hold NaN, and `generated_ids` the pad id, after a row ended.

    Averages over real tokens: `x[out.mask].mean()` or `x.nanmean()`.
    """

    generated_texts: list[str] | None
    generated_ids: torch.Tensor  # [batch, len]
    alpha_values: torch.Tensor  # [batch, len]
    ess_ratios: torch.Tensor  # [batch, len]
    diagnostics: dict[str, torch.Tensor] | None  # alpha, ess_theta, ess_t, ess_ratio, kl_theta, kl_t, fallback
    lengths: torch.Tensor  # [batch] tokens generated per row, EOS included
    finish_reasons: list[str]  # "eos" | "length" | "stop"
    mask: torch.Tensor  # [batch, len] bool, True on real positions
    logprobs: dict[str, torch.Tensor]  # "theta", "t", "q": log-prob of each sampled token, [batch, len]
    logits: dict[str, torch.Tensor] | None = None  # "theta", "t": raw logits before temperature, [batch, len, vocab]
    q_star_probs: torch.Tensor | None = None  # [batch, len, vocab], the distribution each token was drawn from
    slot_occupancy: float | None = None  # mean rows in flight / batch_size over the decode (refill loop)
    # Prompt tokens each model's prefills ran (refill loop): {"theta": n, "t": m}; each distinct prompt of rows
    # admitted together (or one after another) runs once (engine/prefix.py); "t" is 0 when one stream serves both
    prompt_tokens: dict[str, int] | None = None
    # With generate(num_samples=n): row r is sample sample_indices[r] of prompt prompt_indices[r] (os_cli/samples.py)
    prompt_indices: torch.Tensor | None = None  # [batch] int64
    sample_indices: torch.Tensor | None = None  # [batch] int64
    # With generate(topk_logprobs=K) (os_cli/topk.py): the teacher's top-K ids per token, -1 after a row ended,
    # and their log-probs under each distribution in topk_of ("t", "theta", "q"), NaN after the end
    topk_ids: torch.Tensor | None = None  # [batch, len, K] int64
    topk_logprobs: dict[str, torch.Tensor] | None = None  # name -> [batch, len, K]


def assemble(
    results: list[RowResult], pad_id: int, vocab_size: int, text_of, return_diagnostics: bool, skip_decode: bool
) -> SamplingOutput:
    """Per-row results (in input order) as one SamplingOutput; `text_of(ids, finish_reason)` decodes."""
    lengths = torch.tensor([len(r.tokens) for r in results], dtype=torch.long)
    width = int(lengths.max())
    ids = torch.full((len(results), width), pad_id, dtype=torch.long)
    traces = {name: torch.full((len(results), width), float("nan")) for name in TRACE_FIELDS}
    for i, r in enumerate(results):
        ids[i, : len(r.tokens)] = r.tokens
        for name in TRACE_FIELDS:
            traces[name][i, : len(r.tokens)] = r.traces[name]
    reasons = [r.finish_reason for r in results]
    mask = torch.arange(width)[None, :] < lengths[:, None]

    texts = None
    if not skip_decode:
        texts = [text_of(ids[i, : lengths[i]].tolist(), reasons[i]) for i in range(len(reasons))]
    diagnostics = None
    if return_diagnostics:
        diagnostics = {
            name: traces[name] for name in ("alpha", "ess_theta", "ess_t", "ess_ratio", "kl_theta", "kl_t", "fallback")
        }

    def stack(values_of) -> torch.Tensor:
        out = torch.full((len(results), width, vocab_size), float("nan"))
        for i, r in enumerate(results):
            out[i, : len(r.tokens)] = values_of(r)
        return out

    logits = None
    if results[0].logits is not None:
        logits = {side: stack(lambda r, side=side: r.logits[side]) for side in ("theta", "t")}
    q_star = stack(lambda r: r.q_star) if results[0].q_star is not None else None
    topk_ids = topk = None
    if results[0].topk_ids is not None:
        k = results[0].topk_ids.shape[1]
        assert results[0].topk_logprobs is not None  # recorded with topk_ids
        topk_ids = torch.full((len(results), width, k), -1, dtype=torch.long)
        topk = {name: torch.full((len(results), width, k), float("nan")) for name in results[0].topk_logprobs}
        for i, r in enumerate(results):
            assert r.topk_ids is not None and r.topk_logprobs is not None  # every row of the call has them
            topk_ids[i, : len(r.tokens)] = r.topk_ids
            for name in topk:
                topk[name][i, : len(r.tokens)] = r.topk_logprobs[name]
    return SamplingOutput(
        generated_texts=texts,
        generated_ids=ids,
        alpha_values=traces["alpha"],
        ess_ratios=traces["ess_ratio"],
        diagnostics=diagnostics,
        lengths=lengths,
        finish_reasons=reasons,
        mask=mask,
        logprobs={"theta": traces["logprob_theta"], "t": traces["logprob_t"], "q": traces["logprob_q"]},
        logits=logits,
        q_star_probs=q_star,
        topk_ids=topk_ids,
        topk_logprobs=topk,
    )


def stops(stop) -> list[str]:
    return [s for s in (stop or []) if s]


def rows_of_trace(trace: DecodeTrace, offset: int, vocab_size: int) -> list[RowResult]:
    """The reference loop's micro-batch trace as per-row results (indices offset by the batch start)."""
    lengths = trace.lengths.tolist()
    tokens, values = trace.tokens.cpu(), {k: v.cpu() for k, v in trace.traces.items()}

    def per_row(steps) -> torch.Tensor:
        out = torch.full((len(lengths), tokens.shape[1], vocab_size), float("nan"))
        for step, (rows, step_values) in enumerate(steps):
            out[rows.cpu(), step] = step_values.float().cpu()
        return out

    logits = {side: per_row(trace.logits[side]) for side in ("theta", "t")} if trace.logits else None
    q_star = per_row(trace.q_star) if trace.q_star else None
    return [
        RowResult(
            offset + i,
            tokens[i, :n],
            trace.finish_reasons[i],
            {k: v[i, :n] for k, v in values.items()},
            {side: logits[side][i, :n] for side in logits} if logits else None,
            q_star[i, :n] if q_star is not None else None,
        )
        for i, n in enumerate(lengths)
    ]
