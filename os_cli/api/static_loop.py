"""`generate(loop="static")`: the reference loop the batching loop is tested against. Fixed micro-batches
of `limit` rows, each decoded until its last row ends (engine/streams.decode), one token per step."""

from __future__ import annotations

import torch

from os_cli.api.rows import rows_of_trace
from os_cli.engine import streams
from os_cli.engine.requests import RowResult
from os_cli.engine.settings import DecodeSettings
from os_cli.mix import rng


def decode_static(model, prompts, prompts_t, seeds, limit: int, settings: DecodeSettings, step_fn) -> list[RowResult]:
    """Per-row results of `model` (an OptimalSamplingModel) on `prompts`, with the draws of `step_fn` (q* for
    [n, V] logits of rows at per-row steps, exactly as the batching loop draws it). `prompts_t` None: one
    model on theta's prompts, one stream serves both parts."""
    two_streams = prompts_t is not None
    keys = rng.row_keys(torch.tensor(seeds, dtype=torch.int64)).to(model.device)
    results = []
    for start in range(0, len(prompts), limit):
        part_keys = keys[start : start + limit]
        theta = streams.ModelStream(model.model_theta, model.vocab_size)
        teacher = (
            streams.ModelStream(model.model_t, model.vocab_size, output_device=model.device) if two_streams else None
        )
        trace = streams.decode(
            theta,
            teacher,
            model.encode(prompts[start : start + limit]),
            model.encode(prompts_t[start : start + limit], teacher=True) if two_streams else None,
            _keyed(step_fn, part_keys),
            settings,
        )
        results += rows_of_trace(trace, start, model.vocab_size)
    return results


def _keyed(step_fn, keys: torch.Tensor):
    """The reference loop's step function (logits, rows, one step for all) over the batching loop's
    (logits, per-row keys, per-row steps)."""
    return lambda lt, lt_t, rows, step: step_fn(lt, lt_t, keys[rows], torch.full_like(rows, step))
