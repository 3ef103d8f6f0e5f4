"""One model with teacher prompts of its own (self-distillation with a hint): one stacked forward per step.

When theta is also the teacher but the teacher sees other prompts, each row needs two KV caches over
the same weights. Two streams would run two forwards of B rows per step, reading the weights twice;
`StackedPair` keeps both caches in one stream of 2B rows, interleaved (row r's theta prompt at 2r, its
teacher prompt at 2r + 1, each with its own KV, positions and mask), so a step is one forward of 2B
rows. On a GPU, where a decode step is bound by reading the weights, that is close to half the time.

The scheduler (scheduler.py) uses a pair as its theta stream with no teacher stream: rows leave
(`keep_rows`), join (`join`: the other group's pairs come after, still interleaved), are compacted,
checkpointed and restored as in a `ModelStream` or a fixed-slot `SlotStream` (compile: 2 x limit slots),
which the pair wraps. A speculative round drives the pair through `round_views`: each of theta's k + 1
drafting steps also feeds the teacher rows the same token, so the verification needs no forward of its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def pairs(rows: Tensor) -> Tensor:
    """Inner row indices of pairs `rows`: [2r, 2r + 1] per r, in order."""
    return torch.stack([2 * rows, 2 * rows + 1], 1).reshape(-1)


class StackedPair:
    """Theta's rows and the teacher-prompt rows of one model, interleaved in one inner stream."""

    def __init__(self, inner):
        self.inner = inner

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size // 2

    @property
    def attention_mask(self) -> Tensor:
        return self.inner.attention_mask

    def step_both(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Feed each row's token to both of its caches in one forward; (theta's logits, the teacher's) [B, V]."""
        logits = self.inner.step(tokens.repeat_interleave(2))
        return logits[0::2], logits[1::2]

    def keep_rows(self, rows: Tensor) -> None:
        self.inner.keep_rows(pairs(rows))

    def join(self, other: Any) -> None:  # a fresh StackedPair (DecodeStream.join)
        self.inner.join(other.inner)

    def compact(self, min_waste: int = 1) -> None:
        self.inner.compact(min_waste)

    def drop_tail(self, keep: Tensor, added: int) -> None:
        self.inner.drop_tail(keep.repeat_interleave(2), added)

    def checkpoint(self):
        return self.inner.checkpoint()

    def restore(self, saved) -> None:
        self.inner.restore(saved)

    def round_views(self) -> tuple[_ThetaView, _TeacherView]:
        """The (theta, teacher) streams `speculative.run_round` drives, over this pair's stacked forwards."""
        teacher = _TeacherView()
        return _ThetaView(self, teacher), teacher


class _TeacherView:
    """The teacher side of a round: it already saw every token theta fed; `extend` hands back its logits."""

    def __init__(self) -> None:
        self.fed: list[Tensor] = []
        self.logits: list[Tensor] = []

    def extend(self, tokens: Tensor) -> Tensor:
        if len(self.fed) != tokens.shape[1]:  # a bug, not an input: verification sees what theta fed, in order
            raise RuntimeError(f"a stacked round fed {len(self.fed)} tokens per row, verifies {tokens.shape[1]}")
        return torch.stack(self.logits, 1)

    def drop_tail(self, keep: Tensor, added: int) -> None:
        """Nothing: theta's `drop_tail` drops both sides' columns."""


class _ThetaView:
    def __init__(self, pair: StackedPair, teacher: _TeacherView):
        self.pair, self.teacher = pair, teacher

    def step(self, tokens: Tensor) -> Tensor:
        logits_theta, logits_t = self.pair.step_both(tokens)
        self.teacher.fed.append(tokens)
        self.teacher.logits.append(logits_t)
        return logits_theta

    def drop_tail(self, keep: Tensor, added: int) -> None:
        self.pair.drop_tail(keep, added)
