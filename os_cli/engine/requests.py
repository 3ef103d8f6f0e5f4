"""What flows through the decode loop (scheduler.py): requests in, results out, the in-flight limit a
caller may lower while it runs, and the counters benchmarks read. Plain data; the loop owns the logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from torch import Tensor

from os_cli.engine.phase_clock import PhaseClock


@dataclass
class RowRequest:
    """One row to decode: prompt token ids per model (ids_t None when one stream serves both),
    its key from `rng.row_keys`, and an optional token cap below the run's `max_new_tokens`."""

    index: int  # the row's position in the caller's input, returned as RowResult.index
    ids_theta: Sequence[int]
    ids_t: Sequence[int] | None
    key: int
    max_new_tokens: int | None = None

    def teacher_ids(self) -> Sequence[int]:
        """`ids_t`, in a two-stream run (where the scheduler requires them)."""
        assert self.ids_t is not None
        return self.ids_t


@dataclass
class RowResult:
    """A finished row, on the CPU. `traces[name]` is [n] float32 for each name in TRACE_FIELDS."""

    index: int  # RowRequest.index
    tokens: Tensor  # [n] long, EOS included
    finish_reason: str  # "eos" | "length" | "stop"
    traces: dict[str, Tensor]
    logits: dict[str, Tensor] | None = None  # "theta" / "t": [n, V] raw logits each token was drawn from
    q_star: Tensor | None = None  # [n, V] the distribution each token was drawn from
    topk_ids: Tensor | None = None  # [n, K] the teacher's top-K ids per token (decode_rows(topk=...), topk.py)
    topk_logprobs: dict[str, Tensor] | None = None  # [n, K] per name in topk.of, at topk_ids


class InFlightLimit:
    """How many rows may decode at once. `lower(n)` takes effect before the next step."""

    def __init__(self, value: int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"the in-flight limit must be a positive integer, got {value!r}")
        self.value = value
        self.backoffs: list[tuple[int, int, str]] = []  # (rows in flight, new limit, error) per OOM back-off

    def lower(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"the in-flight limit must be a positive integer, got {value!r}")
        self.value = min(self.value, value)


@dataclass
class SchedulerStats:
    """Counters for benchmarks: occupancy = row_steps / (steps * limit)."""

    steps: int = 0  # decode iterations (plain steps or speculative rounds)
    row_steps: int = 0  # sum over iterations of rows in flight
    prefills: int = 0
    prompt_tokens_theta: int = 0  # prompt tokens run through theta's prefills (each distinct prompt once)
    prompt_tokens_t: int = 0  # ... through the teacher's (0 when one stream serves both)
    theta_forwards: int = 0  # decode forwards (prefills not counted)
    teacher_forwards: int = 0
    drafted: int = 0  # draft positions verified
    accepted: int = 0  # drafts accepted
    tokens: int = 0  # tokens emitted (after truncation at EOS / cap / stop)
    draft_lengths: dict[int, int] = field(default_factory=dict)  # iterations per draft length k (0: plain steps)
    cost_probes: int = 0  # forward-cost probes of draft_tokens="auto" (engine/auto_draft.py)
    clock: PhaseClock | None = None  # the call's wall time split by phase (benchmarks)

    def occupancy(self, limit: int) -> float:
        return self.row_steps / (self.steps * limit) if self.steps else 0.0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else float("nan")
