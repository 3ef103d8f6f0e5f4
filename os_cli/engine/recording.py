"""What a decoding step leaves per row, and the rows it ends: the batching loop's (engine/scheduler.py)
recording of tokens, traces, distributions and top-K into the slot buffers, and each ended row's RowResult."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from os_cli.engine.group import RowGroup
from os_cli.engine.requests import RowResult, SchedulerStats
from os_cli.engine.settings import DecodeSettings
from os_cli.engine.slot_buffers import SlotBuffers
from os_cli.engine.streams import TRACE_FIELDS
from os_cli.mix.sampler import StepOutput
from os_cli.mix.topk import topk_columns


class RowRecorder:
    """The loop's recording state: its settings, slot buffers, end-of-sequence ids and stats, and its list of
    free slots (an ended row's slot goes back to it). `emit` records a step's tokens and ends rows."""

    def __init__(
        self,
        settings: DecodeSettings,
        buffers: SlotBuffers,
        eos: Tensor,
        stats: SchedulerStats,
        free: list[int],
        device,
    ):
        self.settings, self.buffers, self.eos, self.stats = settings, buffers, eos, stats
        self.free, self.device = free, device  # the loop's own list: ended rows' slots go back to it

    @staticmethod
    def carry_alpha(g: RowGroup, out: StepOutput) -> None:
        if out.alpha_solved is not None:
            g.alphas = out.alpha_solved.to(g.alphas.device, g.alphas.dtype)

    def keep_distributions(self, g: RowGroup, logits_theta, logits_t, logq, counts=None) -> None:
        if not (self.settings.keep_logits or self.settings.keep_q_star):
            return  # nothing kept: not even q* = exp(log q*) is computed
        q_star = logq.exp() if self.settings.keep_q_star else None
        counts = [1] * len(g) if counts is None else counts.tolist()
        for i, row in enumerate(g.rows):
            for j in range(counts[i]):
                if self.settings.keep_logits:
                    row.logits_theta.append(logits_theta[i, j].float().cpu())
                    row.logits_t.append(logits_t[i, j].float().cpu())
                if self.settings.keep_q_star:
                    assert q_star is not None  # computed above when keep_q_star
                    row.q_star.append(q_star[i, j].float().cpu())

    def keep_topk(self, g: RowGroup, logits_theta, logits_t, logq, fallback) -> None:
        """Write the top-K of m positions per row [B, m, ...] at the rows' slots and steps (before `emit`)."""
        if self.settings.topk is None:
            return
        ids, values = topk_columns(
            self.settings.topk, self.settings.config.temperature, logits_theta, logits_t, logq, fallback
        )
        self.buffers.write_topk(g.slots, g.steps[:, None] + torch.arange(ids.shape[1], device=self.device), ids, values)

    def emit(self, g: RowGroup, emitted: Tensor, counts: Tensor, traces: Tensor) -> Iterator[RowResult]:
        """Record up to counts[r] tokens per row, end rows (EOS, cap, stop), drop them, set `pending`."""
        m = emitted.shape[1]
        pos = torch.arange(m, device=self.device)
        columns = g.steps[:, None] + pos
        self.buffers.write(g.slots, columns, emitted, traces)
        is_eos = torch.isin(emitted, self.eos) & (pos < counts[:, None])
        first_eos = torch.where(is_eos.any(1), is_eos.to(torch.long).argmax(1), m)
        room = g.caps - g.steps
        n = torch.minimum(torch.minimum(counts, first_eos + 1), room)
        ended = (first_eos < n) | (n >= room)
        g.pending = emitted.gather(1, (counts - 1)[:, None]).squeeze(1)
        if self.settings.stop_fn is None and not bool(ended.any()):  # the one host sync of a quiet step
            g.steps = g.steps + n
            self.stats.tokens += int(n.sum()) if m > 1 else len(g)
            return iter(())
        n_list, first_eos_list, room_list = n.tolist(), first_eos.tolist(), room.tolist()
        reasons: list[str | None] = [None] * len(g)
        rows_tokens = emitted.tolist() if self.settings.stop_fn is not None else None
        for r, row in enumerate(g.rows):
            if rows_tokens is not None:
                assert self.settings.stop_fn is not None  # rows_tokens are read only for it
                for i in range(n_list[r]):
                    row.history.append(rows_tokens[r][i])
                    if i == first_eos_list[r]:
                        break
                    if self.settings.stop_fn(row.request.index, row.history):
                        n_list[r], reasons[r] = i + 1, "stop"
                        break
            if reasons[r] is None and first_eos_list[r] < n_list[r]:
                reasons[r] = "eos"
            elif reasons[r] is None and n_list[r] >= room_list[r]:
                reasons[r] = "length"
        self.stats.tokens += sum(n_list)
        g.steps = g.steps + torch.tensor(n_list, dtype=torch.long, device=self.device)
        done = [r for r, reason in enumerate(reasons) if reason is not None]
        if not done:
            return iter(())
        results = self.results(g, done, reasons)
        g.keep([r for r, reason in enumerate(reasons) if reason is None])
        return iter(results)

    def results(self, g: RowGroup, done: list[int], reasons: list) -> list[RowResult]:
        idx = torch.tensor(done, dtype=torch.long, device=self.device)
        slots = g.slots[idx]
        lengths = g.steps[idx].tolist()
        read = self.buffers.read(slots)
        tokens, traces = read["tokens"], read["traces"]
        results = []
        for j, r in enumerate(done):
            row, n = g.rows[r], lengths[j]
            result = RowResult(
                row.request.index,
                tokens[j, :n].clone(),
                reasons[r],
                {name: traces[f, j, :n].clone() for f, name in enumerate(TRACE_FIELDS)},
            )
            if self.settings.keep_logits:
                result.logits = {"theta": torch.stack(row.logits_theta[:n]), "t": torch.stack(row.logits_t[:n])}
            if self.settings.keep_q_star:
                result.q_star = torch.stack(row.q_star[:n])
            if self.settings.topk is not None:
                result.topk_ids = read["topk_ids"][j, :n].long()
                result.topk_logprobs = {
                    name: read["topk_values"][d, j, :n].clone() for d, name in enumerate(self.settings.topk.of)
                }
            results.append(result)
            self.free.append(row.slot)
        return results
