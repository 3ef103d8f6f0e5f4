"""Where a decoding row's per-token outputs accumulate: one device buffer per output, indexed by slot.

The decode loop (scheduler.py) gives each row in flight a slot in 0..capacity-1 for its whole life.
Every iteration writes the tokens it emitted, their traces (engine.TRACE_FIELDS) and, when recorded,
the teacher's top-K (topk.py) at the rows' slots and their own steps: one indexed write per output
for the whole batch, no per-row work and no host sync. A row's outputs are read back to the CPU
once, when it ends, and its slot is then reused (stale columns beyond the new row's length are
never read).
"""

from __future__ import annotations

import torch
from torch import Tensor

from os_cli.engine.streams import TRACE_FIELDS
from os_cli.mix.topk import TopK


class SlotBuffers:
    """[capacity, width] token ids, [fields, capacity, width] traces, and the top-K when `topk` is set:
    [capacity, width, K] ids and [len(topk.of), capacity, width, K] log-probabilities."""

    def __init__(self, capacity: int, width: int, pad_id: int, device, topk: TopK | None = None):
        self.tokens = torch.full((capacity, width), pad_id, dtype=torch.long, device=device)
        self.traces = torch.full((len(TRACE_FIELDS), capacity, width), float("nan"), device=device)
        self.topk = topk
        if topk is not None:
            shape = (capacity, width, topk.k)
            self.topk_ids = torch.full(shape, -1, dtype=torch.int32, device=device)
            self.topk_values = torch.full((len(topk.of),) + shape, float("nan"), device=device)

    def write(self, slots: Tensor, columns: Tensor, emitted: Tensor, traces: Tensor) -> None:
        """Tokens [B, m] and traces [fields, B, m] at rows `slots` [B] and their steps `columns` [B, m]."""
        self.tokens[slots[:, None], columns] = emitted
        self.traces[:, slots[:, None], columns] = traces

    def write_topk(self, slots: Tensor, columns: Tensor, ids: Tensor, values: Tensor) -> None:
        """Top-K ids [B, m, K] and values [names, B, m, K], placed as `write` places tokens."""
        self.topk_ids[slots[:, None], columns] = ids.to(torch.int32)
        self.topk_values[:, slots[:, None], columns] = values

    def read(self, slots: Tensor) -> dict[str, Tensor]:
        """The rows at `slots`, on the CPU: "tokens" [n, width], "traces" [fields, n, width] and, when
        recorded, "topk_ids" [n, width, K] and "topk_values" [names, n, width, K]."""
        out = {"tokens": self.tokens[slots].cpu(), "traces": self.traces[:, slots].cpu()}
        if self.topk is not None:
            out["topk_ids"], out["topk_values"] = self.topk_ids[slots].cpu(), self.topk_values[:, slots].cpu()
        return out
