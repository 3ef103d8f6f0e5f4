"""The rows in flight in the batching loop (engine/scheduler.py): each row's bookkeeping (InFlightRow) and
the group of rows that decode together (RowGroup): their streams, per-row keys, steps, caps, slots and warm
starts, kept aligned as rows leave (`keep`) and join (`join`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from os_cli.engine.requests import RowRequest
from os_cli.engine.stacked import StackedPair
from os_cli.engine.streams import DecodeStream, ModelStream


@dataclass
class InFlightRow:
    request: RowRequest
    slot: int
    position: int  # in the caller's iterator (ties in admission; evicted rows keep it)
    history: list[int] = field(default_factory=list)  # emitted ids, kept only for stop strings
    logits_theta: list[Tensor] = field(default_factory=list)
    logits_t: list[Tensor] = field(default_factory=list)
    q_star: list[Tensor] = field(default_factory=list)


class RowGroup:
    """Rows decoding together: their streams and per-row state tensors, in batch order.
    `alphas`: each row's last solved alpha (NaN: none yet), the solver's warm start."""

    def __init__(
        self,
        rows: list[InFlightRow],
        theta: DecodeStream | StackedPair,
        teacher: DecodeStream | None,
        keys: Tensor,
        steps: Tensor,
        caps: Tensor,
        slots: Tensor,
        alphas: Tensor,
    ):
        self.rows: list[InFlightRow] = rows
        self.theta: DecodeStream | StackedPair = (
            theta  # a ModelStream, a SlotStream once adopted (compile), or a stacked pair
        )
        self.teacher: DecodeStream | None = teacher
        self.keys, self.steps, self.caps, self.slots, self.alphas = keys, steps, caps, slots, alphas
        self.pending: Tensor | None = None

    def state(self) -> tuple[Tensor, ...]:
        return self.keys, self.steps, self.caps, self.slots, self.alphas

    def __len__(self) -> int:
        return len(self.rows)

    def streams(self) -> list[DecodeStream | StackedPair]:
        return [self.theta] + ([self.teacher] if self.teacher is not None else [])

    def prefilled(self) -> tuple[ModelStream | StackedPair, ModelStream | None]:
        """theta (or a stacked pair) and teacher where they are ModelStreams: a fresh prefill's, or any group's
        without fixed slots."""
        theta, teacher = self.theta, self.teacher
        assert isinstance(theta, (ModelStream, StackedPair)) and (teacher is None or isinstance(teacher, ModelStream))
        return theta, teacher

    def model_streams(self) -> list[ModelStream | StackedPair]:
        theta, teacher = self.prefilled()
        return [theta] + ([teacher] if teacher is not None else [])

    def step(self) -> tuple[Tensor, Tensor]:
        """Feed the pending tokens: (theta's logits, the teacher's), one forward when the pair is stacked."""
        assert self.pending is not None  # set by _emit for every row in flight
        if isinstance(self.theta, StackedPair):
            return self.theta.step_both(self.pending)
        logits_theta = self.theta.step(self.pending)
        return logits_theta, self.teacher.step(self.pending) if self.teacher is not None else logits_theta

    def keep(self, index: list[int]) -> None:
        if not index:  # every row ended: the streams go
            self.rows = []
            return
        idx = torch.tensor(index, dtype=torch.long, device=self.keys.device)
        for stream in self.streams():
            stream.keep_rows(idx)
            stream.compact()  # rows left: trim the pad columns only they needed
        self.rows = [self.rows[i] for i in index]
        self.keys, self.steps, self.caps, self.slots, self.alphas = (t[idx] for t in self.state())
        if self.pending is not None:
            self.pending = self.pending[idx]

    def join(self, other: RowGroup) -> None:
        assert self.pending is not None and other.pending is not None  # both have emitted (_emit)
        for mine, theirs in zip(self.streams(), other.model_streams()):  # joining rows: a fresh prefill
            mine.join(theirs)
            mine.compact()
        self.rows += other.rows
        self.keys, self.steps, self.caps, self.slots, self.alphas, self.pending = (
            torch.cat([a, b]) for a, b in zip(self.state() + (self.pending,), other.state() + (other.pending,))
        )
