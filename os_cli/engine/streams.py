"""Model streams and the reference decode loop.

`ModelStream` is one model's state for the rows in flight. Rows can leave it (`keep_rows`, used
when a row finishes so it costs no more forward work), join it (`join`, for refilling finished
slots), take several tokens at once (`extend`, speculative verification), forget a per-row tail
(`drop_tail`, rejected drafts) and be compacted (`compact`: drop the columns no row needs any more).

`decode` is the plain static loop: one micro-batch, one token per row per step, until its last
row ends. It is kept as the reference implementation the continuous scheduler
(os_cli/scheduler.py) and speculative sampling (os_cli/speculative.py) are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, cast

import torch

from os_cli.engine.settings import DecodeSettings, StopFn
from os_cli.mix.sampler import StepOutput

if TYPE_CHECKING:
    from transformers import DynamicCache

# Per-token float traces recorded for every row (NaN after the row ended).
TRACE_FIELDS = (
    "alpha",
    "ess_theta",
    "ess_t",
    "ess_ratio",
    "kl_theta",
    "kl_t",
    "logprob_theta",
    "logprob_t",
    "logprob_q",
    "fallback",
)


def trace_columns(out: StepOutput) -> torch.Tensor:
    """[F, n] float32: a StepOutput's per-token fields in TRACE_FIELDS order, for one write per step."""
    return torch.stack([getattr(out, name).to(torch.float32) for name in TRACE_FIELDS])


class KVLayer(Protocol):
    """A cache layer as the streams use it. transformers types a layer's keys/values Optional (None before
    its first update) and its layers may be linear-attention ones; a prefilled DynamicCache of the models
    these streams run (full or sliding attention) holds keys and values in every layer."""

    keys: torch.Tensor
    values: torch.Tensor
    is_sliding: bool
    is_initialized: bool


class DecodeStream(Protocol):
    """What the scheduler's plain loop asks of a stream: a ModelStream, or a SlotStream (fixed_slots.py) under
    compile. Rows join from a fresh prefill's ModelStream. `checkpoint()` returns an opaque state that only the
    same stream's `restore` reads (a ModelStream's and a SlotStream's differ)."""

    def step(self, tokens: torch.Tensor) -> torch.Tensor: ...
    def keep_rows(self, rows: torch.Tensor) -> None: ...
    def join(self, other: Any) -> None: ...  # a fresh stream of the same kind (ModelStream or StackedPair)
    def compact(self, min_waste: int = 1) -> None: ...
    def checkpoint(self) -> Any: ...
    def restore(self, saved: Any) -> None: ...


class ModelStream:
    """One causal LM decoding a left-padded batch: cache, attention mask and next positions.

    Inputs (prompt ids, tokens, row indices) may come from another device: they move to the model's
    input device. Logits come back on `output_device` (default: the input device), so a teacher on
    another device (or spread by a device_map) hands theta's device its [B, V] logits; the cache stays put.
    """

    def __init__(self, model, vocab_size: int, output_device: torch.device | str | None = None):
        self.model = model
        self.vocab_size = vocab_size
        from os_cli.models.loading import cache_kwarg, input_device

        self.input_device = input_device(model)
        self.output_device = torch.device(output_device) if output_device is not None else self.input_device
        # Cache layers on several devices (a device_map) are indexed with row indices on the CPU.
        self._rows_device = self.input_device if len(_devices(model)) <= 1 else torch.device("cpu")
        self._cache_kwarg = cache_kwarg(model)
        self._cache: DynamicCache | None = None
        self._attention_mask: torch.Tensor | None = None

    @property
    def cache(self) -> DynamicCache:
        assert self._cache is not None, "prefill() first"
        return self._cache

    @cache.setter
    def cache(self, cache: DynamicCache) -> None:
        self._cache = cache

    @property
    def kv_layers(self) -> list[KVLayer]:
        return cast("list[KVLayer]", self.cache.layers)  # see KVLayer

    @property
    def attention_mask(self) -> torch.Tensor:
        assert self._attention_mask is not None, "prefill() first"
        return self._attention_mask

    @attention_mask.setter
    def attention_mask(self, mask: torch.Tensor) -> None:
        self._attention_mask = mask

    @property
    def batch_size(self) -> int:
        return 0 if self._attention_mask is None else self._attention_mask.shape[0]

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the prompts; return next-token logits [B, vocab_size] of the last position."""
        from transformers import DynamicCache

        self._cache = DynamicCache(config=self.model.config)
        input_ids, attention_mask = input_ids.to(self.input_device), attention_mask.to(self.input_device)
        self.attention_mask = attention_mask
        # Left padding: real tokens are numbered from 0 whatever the pad count, as in an unpadded run.
        positions = (attention_mask.cumsum(-1) - 1).clamp_(min=0)
        return self._forward(input_ids, positions)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one new token per row; return the next-token logits [B, vocab_size]."""
        ones = self.attention_mask.new_ones(self.batch_size, 1)
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=-1)
        positions = self.attention_mask.sum(-1, keepdim=True) - 1
        return self._forward(tokens.to(self.input_device)[:, None], positions)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop every row not in `rows` (indices into the current batch), cache included."""
        self.cache.batch_select_indices(rows.to(self._rows_device))
        self.attention_mask = self.attention_mask[rows.to(self.input_device)]

    def join(self, other: ModelStream) -> None:
        """Append `other`'s rows (prefilled separately) to this batch: the primitive for refilling
        finished slots. The shorter side is left-padded with masked, zeroed cache entries."""
        width = max(self.attention_mask.shape[1], other.attention_mask.shape[1])
        pad_mask = lambda m: torch.nn.functional.pad(m, (width - m.shape[1], 0))  # noqa: E731
        self.attention_mask = torch.cat([pad_mask(self.attention_mask), pad_mask(other.attention_mask)])
        for mine, theirs in zip(self.kv_layers, other.kv_layers):
            if mine.is_sliding or theirs.is_sliding:
                raise NotImplementedError("joining sliding-window caches is not supported")
            pad_kv = lambda t: torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0))  # noqa: E731
            mine.keys = torch.cat([pad_kv(mine.keys), pad_kv(theirs.keys)])
            mine.values = torch.cat([pad_kv(mine.values), pad_kv(theirs.values)])

    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed `tokens` [B, m] per row in one forward; return the logits after each [B, m, vocab_size]."""
        tokens = tokens.to(self.input_device)
        count = self.attention_mask.sum(-1, keepdim=True)
        m = tokens.shape[1]
        self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones(self.batch_size, m)], dim=-1)
        positions = count + torch.arange(m, device=tokens.device)
        return self._forward(tokens, positions, keep=m)

    def drop_tail(self, keep: torch.Tensor, added: int) -> None:
        """Of the last `added` columns, row r keeps its first `keep[r]`; the rest are masked out, and
        the columns no row keeps are cropped. Positions count real tokens, so they stay exact."""
        width = self.attention_mask.shape[1]
        keep = keep.to(self.input_device)
        kept = torch.arange(added, device=keep.device)[None, :] < keep[:, None]
        self.attention_mask[:, width - added :] *= kept.to(self.attention_mask.dtype)
        self.rollback(added - int(keep.max()))

    def compact(self, min_waste: int = 1) -> None:
        """Drop the columns no row needs: leading pad columns by slicing; holes left by rejected
        drafts by repacking each row's real tokens to the right end (only when `min_waste` columns
        or more would go, since repacking copies the cache). One host sync."""
        width = self.attention_mask.shape[1]
        dead = width - int(self.attention_mask.sum(-1).max())
        if dead == 0:
            return
        if not self.attention_mask[:, :dead].any():  # leading pad columns only: a slice, no copy
            self.attention_mask = self.attention_mask[:, dead:]
            for layer in self.kv_layers:
                layer.keys, layer.values = layer.keys[:, :, dead:], layer.values[:, :, dead:]
            return
        if dead < min_waste:
            return
        needed = width - dead
        # Stable sort puts each row's pad columns first and its real tokens after, in order.
        order = torch.argsort(self.attention_mask, dim=-1, stable=True)[:, width - needed :]
        self.attention_mask = self.attention_mask.gather(1, order)
        for layer in self.kv_layers:
            index = order.to(layer.keys.device)[:, None, :, None].expand(
                -1, layer.keys.shape[1], -1, layer.keys.shape[-1]
            )
            layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)

    def checkpoint(self) -> tuple[torch.Tensor, int]:
        """What `restore` needs to undo forwards that only appended columns (e.g. after an OOM)."""
        return self.attention_mask.clone(), self.attention_mask.shape[1]

    def restore(self, saved: tuple[torch.Tensor, int]) -> None:
        mask, width = saved
        self.attention_mask = mask
        for layer in self.kv_layers:  # layers an interrupted forward already extended
            if layer.is_initialized and layer.keys.shape[-2] > width:
                layer.keys, layer.values = layer.keys[:, :, :width], layer.values[:, :, :width]

    def rollback(self, num_tokens: int) -> None:
        """Forget the last `num_tokens` positions of every row."""
        if num_tokens > 0:
            self.cache.crop(-num_tokens)
            self.attention_mask = self.attention_mask[:, :-num_tokens]

    @torch.inference_mode()
    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=self.attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=keep or 1,
            **{self._cache_kwarg: self.cache},  # updated in place
        )
        # Embeddings may be padded past the tokenizer (151936 vs 152064 rows): keep the shared ids.
        if keep is None:
            return out.logits[:, -1, : self.vocab_size].to(self.output_device)
        return out.logits[:, -keep:, : self.vocab_size].to(self.output_device)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> left-padded ids [B, L] and attention mask [B, L] on `device`."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _devices(model) -> set[str]:
    """The devices a model's weights sit on (more than one under a device_map)."""
    device_map = getattr(model, "hf_device_map", None)
    return set(map(str, device_map.values())) if device_map else {str(model.device)}


@dataclass
class DecodeTrace:
    """What one micro-batch produced, per row, on the decode device. Column t is the t-th new token."""

    tokens: torch.Tensor  # [B, T] long, pad id after the end
    lengths: torch.Tensor  # [B] long, tokens generated (EOS included)
    finish_reasons: list[str]
    traces: dict[str, torch.Tensor]  # TRACE_FIELDS -> [B, T] float32, NaN after the end
    logits: dict[str, list] = field(default_factory=dict)  # "theta"/"t" -> per step (rows, [n, V])
    q_star: list = field(default_factory=list)  # per step (rows, [n, V] probabilities)


StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], StepOutput]


def decode(
    theta: ModelStream,
    teacher: ModelStream | None,
    prompt_theta: tuple[torch.Tensor, torch.Tensor],
    prompt_t: tuple[torch.Tensor, torch.Tensor] | None,
    step_fn: StepFn,
    settings: DecodeSettings,
) -> DecodeTrace:
    """Generate up to `settings.max_new_tokens` per row.

    `step_fn(logits_theta, logits_t, rows, step)` samples the next token of the active `rows`
    (indices into the original batch). With `teacher=None` one model plays both parts, one forward
    per step. Of the call's `settings` (engine/settings.py) this loop reads max_new_tokens, eos_ids,
    pad_id, keep_logits, keep_q_star and stop_fn: `stop_fn(row, token_ids_so_far)` may end a row
    early (stop strings); it costs a host copy of the new tokens per step, so it is only called when given.
    """
    max_new_tokens, stop_fn = settings.max_new_tokens, settings.stop_fn
    keep_logits, keep_q_star = settings.keep_logits, settings.keep_q_star
    device = prompt_theta[0].device
    batch = prompt_theta[0].shape[0]
    tokens = torch.full((batch, max_new_tokens), settings.pad_id, dtype=torch.long, device=device)
    # One buffer for every per-token field, so each step records them with a single write.
    trace_values = torch.full((len(TRACE_FIELDS), batch, max_new_tokens), float("nan"), device=device)
    traces = dict(zip(TRACE_FIELDS, trace_values.unbind(0)))
    lengths = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)
    reasons = ["length"] * batch
    eos = torch.tensor(sorted(set(settings.eos_ids)), dtype=torch.long, device=device)
    trace = DecodeTrace(tokens, lengths, reasons, traces, {"theta": [], "t": []} if keep_logits else {})
    history: list[list[int]] = [[] for _ in range(batch)] if stop_fn else []

    active = torch.arange(batch, device=device)
    logits_theta = theta.prefill(*prompt_theta)
    logits_t = logits_theta
    if teacher is not None:
        assert prompt_t is not None  # a teacher comes with its prompts
        logits_t = teacher.prefill(*prompt_t)
    for step in range(max_new_tokens):
        out = step_fn(logits_theta, logits_t, active, step)
        tokens[active, step] = out.tokens
        trace_values[:, active, step] = trace_columns(out)
        if keep_logits:
            trace.logits["theta"].append((active, logits_theta))
            trace.logits["t"].append((active, logits_t))
        if keep_q_star:
            trace.q_star.append((active, out.logq.exp()))

        finished = torch.isin(out.tokens, eos)
        stopped = _stopped_rows(stop_fn, history, active, out.tokens) if stop_fn else None
        if step == max_new_tokens - 1:
            _mark_finished(trace, active, finished, stopped, step)
            break
        ended = finished if stopped is None else finished | stopped
        if bool(ended.any()):  # the one host sync per step
            _mark_finished(trace, active, finished, stopped, step)
            keep = torch.nonzero(~ended).squeeze(-1)
            if keep.numel() == 0:
                break
            active = active[keep]
            theta.keep_rows(keep)
            if teacher is not None:
                teacher.keep_rows(keep)
            next_tokens = out.tokens[keep]
        else:
            next_tokens = out.tokens
        logits_theta = theta.step(next_tokens)
        logits_t = teacher.step(next_tokens) if teacher is not None else logits_theta
    return trace


def _stopped_rows(stop_fn: StopFn, history: list[list[int]], active: torch.Tensor, new_tokens: torch.Tensor):
    stopped = []
    for row, token in zip(active.tolist(), new_tokens.tolist()):
        history[row].append(token)
        stopped.append(stop_fn(row, history[row]))
    return torch.tensor(stopped, dtype=torch.bool, device=new_tokens.device)


def _mark_finished(trace: DecodeTrace, active: torch.Tensor, finished: torch.Tensor, stopped, step: int) -> None:
    ended_rows = finished if stopped is None else finished | stopped
    trace.lengths[active[ended_rows]] = step + 1
    for row, is_eos, is_stop in zip(
        active.tolist(), finished.tolist(), (stopped.tolist() if stopped is not None else [False] * len(finished))
    ):
        if is_eos:
            trace.finish_reasons[row] = "eos"
        elif is_stop:
            trace.finish_reasons[row] = "stop"
