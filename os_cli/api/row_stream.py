"""The API's row stream (`OptimalSamplingModel.generate` and `generate_stream`): each `StreamRow` checked,
tokenized and length-checked into a RowRequest as the batching loop (engine/scheduler.py) reads it; with
compile, fixed slots from the model's pool."""

from __future__ import annotations

from typing import Iterator

import torch

from os_cli.api import arguments, call_config
from os_cli.api.arguments import CallSettings
from os_cli.api.rows import StreamRow
from os_cli.engine import fixed_slots as static_stream
from os_cli.engine import scheduler
from os_cli.engine.requests import InFlightLimit, RowResult, SchedulerStats
from os_cli.mix import rng
from os_cli.prompts import lengths


def decode_stream_rows(
    model, rows, settings: CallSettings, limit: int | InFlightLimit, stats: SchedulerStats | None
) -> Iterator[tuple[RowResult, StreamRow]]:
    """The one batching loop (os_cli/scheduler.py) on `StreamRow`s of `model` (an OptimalSamplingModel):
    (result, its row) as rows end.

    Without `settings.two_streams` (one model, no teacher prompts of its own) a row whose `prompt_t`
    differs from its prompt is an error rather than a silently ignored hint."""
    decode, two_streams = settings.decode, settings.two_streams
    drafts = lengths.draft_overrun(decode.draft_tokens, decode.max_new_tokens)
    fixed = None
    if model.compile:  # fixed slots, one per in-flight row, kept for the next call (os_cli/static_stream.py)
        static_stream.check_compile(model.compile, draft_tokens=decode.draft_tokens, oom_backoff=decode.oom_backoff)
        fixed = static_stream.fixed_slots(
            model._slot_pool,
            model.model_theta,
            model.model_t if two_streams else None,
            model.vocab_size,
            limit.value if isinstance(limit, InFlightLimit) else limit,
            decode.max_new_tokens,
            model.tokenizer.pad_token_id,
            compiled=model.compile is True,
        )
    in_flight: dict[int, StreamRow] = {}

    def requests():
        for index, row in enumerate(rows):
            if not isinstance(row, StreamRow):
                raise ValueError(f"row {index}: expected a StreamRow, got {type(row).__name__}")
            prompt_t = row.prompt if row.prompt_t is None else row.prompt_t
            for name, text in (("prompts", row.prompt), ("prompts_t", prompt_t)):
                if not isinstance(text, str) or not text:
                    raise ValueError(f"{name}[{index}] must be a non-empty string, got {text!r}")
            if not two_streams and prompt_t != row.prompt:
                raise ValueError(
                    f"row {index}: prompt_t differs from prompt, but this stream runs one model on "
                    f"theta's prompts; pass separate_teacher_prompts=True"
                )
            seed = arguments.checked_seed(row.seed, f"row {index}: seed")
            cap = (
                decode.max_new_tokens
                if row.max_new_tokens is None
                else arguments.checked_cap(row.max_new_tokens, f"row {index}: max_new_tokens")
            )
            ids = model._token_ids(row.prompt, "prompts", index)
            model._check_length("prompts", index, len(ids), cap, drafts)
            ids_t = None
            if two_streams:
                ids_t = model._token_ids(prompt_t, "prompts_t", index, teacher=True)
                model._check_length("prompts_t", index, len(ids_t), cap, drafts)
            request = scheduler.RowRequest(
                index,
                ids,
                ids_t,
                int(rng.row_keys(torch.tensor([seed]))[0]),
                None if row.max_new_tokens is None else cap,
            )
            in_flight[index] = row
            yield request

    try:
        for result in scheduler.decode_rows(
            requests(),
            model.model_theta,
            model.model_t if two_streams else None,
            model.vocab_size,
            call_config.step_fn(model, decode.config, settings.sample_from),
            decode,
            limit=limit,
            stats=stats,
            fixed_slots=fixed,
        ):
            yield result, in_flight.pop(result.index)
    finally:
        if fixed is not None:
            fixed.in_use = False
