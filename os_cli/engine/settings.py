"""What the decode loops read of one call, as one frozen object built once per call.

The Python API (api/model.py) validates `generate` / `generate_stream`'s arguments and builds a
`DecodeSettings`; the refill loop (`scheduler.decode_rows`) and the reference loop (`streams.decode`)
read their settings from it, under the same names all the way down. What changes while a call runs
(the in-flight limit, the counters) and what belongs to the models (the streams, fixed slots, the
q* step function) travel beside it. What only the API needs (stop strings to cut from the text,
`sample_from`, whether the teacher has a stream of its own) is not here: api/arguments.CallSettings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from os_cli.engine.admission import ADMISSIONS
from os_cli.mix.sampler import SamplerConfig
from os_cli.mix.topk import TopK

StopFn = Callable[[object, list[int]], bool]  # (row index, token ids so far) -> stop now?


@dataclass(frozen=True)
class DecodeSettings:
    """One call's decode settings (defaults: those of a call that sets nothing).

    `config` is the call's SamplerConfig, from which the caller builds the q* step; the loops read its
    `temperature` (drafts come from the temperature-scaled pi_theta, top-K log-probs are recorded
    under it), so it must be the step's. `max_new_tokens` caps a row that has no cap of its own
    (RowRequest.max_new_tokens) and sizes the output buffers. `eos_ids` end a row (empty with
    ignore_eos); `stop_fn(row index, ids so far)` may end one early (stop strings, stop_strings.py).
    `keep_logits` / `keep_q_star` keep each token's raw logits / q* on the CPU; `draft_tokens=k > 0`
    decodes by exact speculative rounds (speculative.py); `oom_backoff` halves the in-flight limit on
    an out-of-memory error instead of failing; `topk` records the teacher's top-K per token (topk.py).
    Refill loop only: `admission` / `lookahead` (admission.py) and `admit_min` (waiting rows are
    prefilled once that many slots are free; None: a quarter of the limit, at least 1). `share_prompts`:
    rows with the same prompt ids share one prefill (engine/prefix.py; False: one prefill per row, for comparison).
    `stack_one_model`: when theta is also the teacher (the same model object, its own prompts), one forward of
    2B stacked rows per step instead of two streams (engine/stacked.py; False: two streams, for comparison).
    """

    max_new_tokens: int
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    config: SamplerConfig = field(default_factory=SamplerConfig)
    stop_fn: StopFn | None = None
    keep_logits: bool = False
    keep_q_star: bool = False
    draft_tokens: int | str = 0  # k, or "auto" (limits.DRAFT_TOKENS_AUTO: k chosen as it runs, draft_policy.py)
    oom_backoff: bool = False
    topk: TopK | None = None
    admission: str = ADMISSIONS[0]
    lookahead: int | None = None
    admit_min: int | None = None
    share_prompts: bool = True
    stack_one_model: bool = True
