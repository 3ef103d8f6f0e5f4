"""Fixed-slot decoding: a static KV cache the decode step can be compiled over (`compile=True`).

`SlotStream` speaks the part of `engine.ModelStream`'s interface the scheduler's plain loop uses
(`step`, `keep_rows`, `join`, `compact`, `checkpoint`, `restore`), over preallocated per-layer K/V
tensors `[slots, heads, width, head_dim]`, a `[slots, width]` attention mask and per-slot positions.
Every step runs all `slots` rows with the same shapes (a free slot decodes a dummy token, its result
ignored), and every slot writes its new K/V at one shared column, so the step is one fixed graph:
`torch.compile(mode="reduce-overhead")` (CUDA graphs) on CUDA, inductor's default mode on the CPU.

- A joining row is prefilled eagerly (a `ModelStream` with its own DynamicCache) and copied into a
  free slot, right-aligned to end just before the write column (the column moves right first when a
  prompt is longer than the columns before it).
- When the write column reaches the last column, every slot's window moves left in place (the
  tensors keep their addresses, so a captured graph stays valid); `width` leaves room for the longest
  prompt seen plus `max_new_tokens` plus a margin, so moves are rare. A longer prompt than any seen
  reallocates the cache (and the compiled step recompiles once).
- A leaving row frees its slot. Columns a row does not own are masked; they hold finite values (zeros,
  an old row's K/V, or a free slot's dummy tokens), so masked attention weights of 0 keep them out exactly.

Logits equal `ModelStream`'s up to float rounding (attention sums over more, masked, columns), as a
row's logits already vary in the last bit with its batch-mates; sampled tokens are the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from os_cli.models.loading import cache_kwarg, input_device
from os_cli.recipe.schema import COMPILE_CHOICES  # False (dynamic caches), True (compiled step), "static" (eager step)

if TYPE_CHECKING:
    from transformers.cache_utils import DummyLayer, LinearAttentionCacheLayerMixin

    from os_cli.engine.streams import ModelStream

ATTENTION = ("sdpa", "eager")  # implementations whose masks this module builds


def check_compile(
    value, *, draft_tokens: int | str = 0, oom_backoff: bool = False, attn_implementation: str | None = None
) -> None:
    """A ValueError naming what `compile` does not combine with (before anything runs)."""
    if not isinstance(value, (bool, str)) or value not in COMPILE_CHOICES:
        raise ValueError(f"compile must be False, True or 'static', got {value!r}")
    if not value:
        return
    if draft_tokens:
        raise ValueError(
            "compile needs draft_tokens=0: speculative rounds feed several tokens per row and roll "
            "caches back, which the fixed-slot decode step does not do"
        )
    if oom_backoff:
        raise ValueError(
            "compile fixes the decode step's memory at `limit` slots, so an out-of-memory back-off "
            "cannot lower it: pass oom_backoff=False and a limit that fits"
        )
    if attn_implementation is not None and attn_implementation not in ATTENTION:
        raise ValueError(f"compile needs attn_implementation sdpa or eager, got {attn_implementation!r}")


class _SlotLayer(CacheLayerMixin):
    """One layer's K/V `[slots, heads, width, dim]`; `update` writes the new column at `column`."""

    is_compileable = True
    is_sliding = False
    keys: torch.Tensor  # allocated up front (the base class allows None)
    values: torch.Tensor

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, column: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.column = keys, values, column
        self.is_initialized = True
        self.device = keys.device

    def lazy_initialization(self, key_states, value_states) -> None:  # allocated up front
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys.index_copy_(2, self.column, key_states)
        self.values.index_copy_(2, self.column, value_states)
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return self.keys.shape[-2], 0

    def get_seq_length(self, *args) -> int:
        return self.keys.shape[-2]

    def get_max_length(self) -> int:
        return self.keys.shape[-2]


class SlotStream:
    """One model's rows in `slots` fixed cache slots; rows are kept in the caller's (batch) order."""

    def __init__(
        self,
        model,
        vocab_size: int,
        slots: int,
        max_new_tokens: int,
        *,
        pad_id: int = 0,
        output_device: torch.device | str | None = None,
        compiled: bool = False,
    ):
        self.model, self.vocab_size, self.slots, self.max_new_tokens = model, vocab_size, slots, max_new_tokens
        self.input_device = input_device(model)
        self.output_device = torch.device(output_device) if output_device is not None else self.input_device
        self._cache_kwarg = cache_kwarg(model)
        attn = getattr(model.config, "_attn_implementation", None) or "sdpa"
        if attn not in ATTENTION:
            raise ValueError(f"compile needs attn_implementation sdpa or eager, this model runs {attn!r}")
        self._additive_mask = attn == "eager"
        self.pad_id = pad_id
        self._cache: Cache | None = None
        self.width = 0  # columns per slot
        self.column = 0  # where the next step writes, shared by every slot
        self.row_slots: list[int] = []  # batch order -> slot
        self.rows = torch.empty(0, dtype=torch.long, device=self.input_device)
        # [slots, width] bool, [slots] next position, first column; allocated with the cache (`_allocate`)
        self._mask: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._start: torch.Tensor | None = None
        self._columns: dict[torch.device, torch.Tensor] = {}
        self.compiled = compiled
        self._step = self._decode
        if compiled:
            # Each stream's buffers are a new graph of the one `_decode`: theta and teacher, per batch size.
            # Past dynamo's default of 8 per function it would fall back to eager without a word.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            mode = "reduce-overhead" if self.input_device.type == "cuda" else None
            self._step = torch.compile(self._decode, mode=mode, dynamic=False)

    @property
    def batch_size(self) -> int:
        return len(self.row_slots)

    # The buffers exist from the first `join` on (`_allocate`); nothing reads them before.
    @property
    def cache(self) -> Cache:
        assert self._cache is not None
        return self._cache

    @property
    def slot_layers(self) -> list[_SlotLayer]:
        return cast("list[_SlotLayer]", self.cache.layers)  # `_allocate` builds the cache from _SlotLayers

    @property
    def mask(self) -> torch.Tensor:
        assert self._mask is not None
        return self._mask

    @mask.setter
    def mask(self, value: torch.Tensor) -> None:
        self._mask = value

    @property
    def positions(self) -> torch.Tensor:
        assert self._positions is not None
        return self._positions

    @positions.setter
    def positions(self, value: torch.Tensor) -> None:
        self._positions = value

    @property
    def start(self) -> torch.Tensor:
        assert self._start is not None
        return self._start

    @start.setter
    def start(self, value: torch.Tensor) -> None:
        self._start = value

    # ------------------------------------------------------------------ rows in and out

    def clear(self) -> None:
        """No rows in flight (the buffers and the compiled step stay)."""
        self.row_slots = []
        self.rows = self.rows[:0]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep the rows at `rows` (indices into the batch order); the others' slots become free."""
        self.row_slots = [self.row_slots[i] for i in rows.tolist()]
        self.rows = torch.tensor(self.row_slots, dtype=torch.long, device=self.input_device)

    def join(self, other: ModelStream) -> None:
        """Append the rows of a freshly prefilled `engine.ModelStream` (left-padded) to free slots."""
        new, width = other.batch_size, other.attention_mask.shape[1]
        free = sorted(set(range(self.slots)) - set(self.row_slots))[:new]
        if len(free) < new:
            raise ValueError(f"{new} rows join {self.batch_size} in flight, but there are only {self.slots} slots")
        if self._cache is None or width + self.max_new_tokens > self.width:
            self._allocate(other, width + self.max_new_tokens)
        if self.column < width:
            self._move(width)
        c = self.column
        slots = torch.tensor(free, dtype=torch.long, device=self.input_device)
        counts = other.attention_mask.sum(-1).to(self.input_device)
        self.mask[slots] = False
        self.mask[slots, c - width : c] = other.attention_mask.to(self.input_device).bool()
        self.positions[slots] = counts
        self.start[slots] = c - counts
        for mine, theirs in zip(self.slot_layers, other.kv_layers):
            index = slots.to(mine.keys.device)
            mine.keys[index, :, c - width : c] = theirs.keys.to(mine.keys.device)
            mine.values[index, :, c - width : c] = theirs.values.to(mine.keys.device)
        self.row_slots += free
        self.rows = torch.tensor(self.row_slots, dtype=torch.long, device=self.input_device)

    def compact(self, min_waste: int = 1) -> None:
        """Nothing to trim: the shapes are fixed (moves happen in `step` when the columns run out)."""

    def checkpoint(self) -> int:
        return self.column

    def restore(self, column: int) -> None:
        """After a failed step: nothing was committed (position and column advance after the forward)."""
        self._set_column(column)

    # ------------------------------------------------------------------ decoding

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (batch order); return the next-token logits [rows, vocab_size]."""
        if self.column >= self.width:  # out of columns: every window moves left by the free prefix
            self._move(self.column - int(self.start[self.rows].min()))
        ids = torch.full((self.slots, 1), self.pad_id, dtype=torch.long, device=self.input_device)
        ids[self.rows, 0] = tokens.to(self.input_device)
        self.mask[:, self.column] = True  # free slots attend to their own dummy token: finite, ignored
        logits = self._step(ids, self.mask, self.positions[:, None])
        self.positions[self.rows] += 1
        self._set_column(self.column + 1)
        return logits[self.rows.to(logits.device)].to(self.output_device)

    def _decode(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        mask4 = mask[:, None, None, :]
        if self._additive_mask:
            dtype = self.slot_layers[0].keys.dtype
            mask4 = torch.where(mask4, 0.0, torch.finfo(dtype).min).to(dtype)
        out = self.model(
            input_ids=ids,
            attention_mask=mask4,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kwarg: self.cache},
        )
        return out.logits[:, -1, : self.vocab_size]

    # ------------------------------------------------------------------ buffers

    def _allocate(self, like: ModelStream, needed: int) -> None:
        """(Re)allocate `needed` columns plus a margin; live rows keep their columns."""
        width = -(-(needed + max(16, needed // 4)) // 8) * 8
        old = self.slot_layers if self._cache is not None else None
        layers: list[CacheLayerMixin | LinearAttentionCacheLayerMixin | DummyLayer] = []
        self._columns = {}
        for i, theirs in enumerate(like.kv_layers):
            if getattr(theirs, "is_sliding", False):
                raise NotImplementedError("compile does not support sliding-window attention layers")
            device = theirs.keys.device
            column = self._columns.setdefault(device, torch.zeros(1, dtype=torch.long, device=device))
            shape = lambda t: (self.slots, t.shape[1], width, t.shape[-1])  # noqa: E731
            keys = torch.zeros(shape(theirs.keys), dtype=theirs.keys.dtype, device=device)
            values = torch.zeros(shape(theirs.values), dtype=theirs.values.dtype, device=device)
            if old is not None:
                keys[:, :, : self.width] = old[i].keys
                values[:, :, : self.width] = old[i].values
            for t in (keys, values, column):
                torch._dynamo.mark_static_address(t)
            layers.append(_SlotLayer(keys, values, column))
        mask = torch.zeros(self.slots, width, dtype=torch.bool, device=self.input_device)
        if old is not None:
            mask[:, : self.width] = self.mask
        else:
            self.positions = torch.zeros(self.slots, dtype=torch.long, device=self.input_device)
            self.start = torch.zeros(self.slots, dtype=torch.long, device=self.input_device)
        self._cache, self.mask, self.width = Cache(layers=layers), mask, width
        self._set_column(self.column)

    def _move(self, column: int) -> None:
        """Shift every slot's columns by `column - self.column`, in place, so the write column is `column`."""
        if not 0 <= column < self.width:  # the sizing in `join` rules this out for rows within max_new_tokens
            raise RuntimeError(f"the fixed-slot cache has {self.width} columns, its rows need {column + 1}")
        shift = column - self.column
        if shift == 0:
            return
        n = self.width - abs(shift)
        src, dst = (slice(-shift, None), slice(0, n)) if shift < 0 else (slice(0, n), slice(shift, None))
        for layer in self.slot_layers:
            for t in (layer.keys, layer.values):
                t[:, :, dst] = t[:, :, src].clone()
        self.mask[:, dst] = self.mask[:, src].clone()
        if shift < 0:
            self.mask[:, n:] = False
        else:
            self.mask[:, :shift] = False
        self.start += shift
        self._set_column(column)

    def _set_column(self, column: int) -> None:
        self.column = column
        for tensor in self._columns.values():
            tensor.fill_(column)


class FixedSlots:
    """The fixed-slot streams of one model (and its teacher), kept across calls so that the compiled
    step is built once per model and slot count (see `streams`)."""

    def __init__(self, theta: SlotStream, teacher: SlotStream | None):
        self.theta, self.teacher = theta, teacher
        self.in_use = False  # a decode loop holds them (two interleaved streams must not share slots)

    def adopt(self, theta: ModelStream, teacher: ModelStream | None) -> tuple[SlotStream, SlotStream | None]:
        """A group starting with no rows in flight: its prefilled streams move into the slots."""
        self.theta.clear()
        self.theta.join(theta)
        if self.teacher is not None:
            self.teacher.clear()
            assert teacher is not None  # slots for a teacher are made for a group with one (`fixed_slots`)
            self.teacher.join(teacher)
        return self.theta, self.teacher


def fixed_slots(
    pool: dict, model_theta, model_t, vocab_size: int, slots: int, max_new_tokens: int, pad_id: int, compiled: bool
) -> FixedSlots:
    """The fixed slots of this model pair and slot count, from `pool` (a dict the caller keeps, e.g. per
    `OptimalSamplingModel`) when an earlier call built them: new buffers would give the compiled step
    new addresses, i.e. a recompile per call. The caller sets `in_use = False` when its loop ends; only
    the latest shape is kept (each holds a whole static cache). `model_t` the same model as theta (its own
    teacher prompts): one stream of 2 x `slots` slots, the scheduler's stacked pairs (stacked.py)."""
    if model_t is model_theta:
        model_t, slots = None, 2 * slots
    key = (model_t is not None, slots, compiled)
    found = pool.get(key)
    if found is None or found.in_use:
        for other in [k for k, v in pool.items() if not v.in_use]:
            del pool[other]
        theta = SlotStream(model_theta, vocab_size, slots, max_new_tokens, pad_id=pad_id, compiled=compiled)
        teacher = (
            None
            if model_t is None
            else SlotStream(
                model_t,
                vocab_size,
                slots,
                max_new_tokens,
                pad_id=pad_id,
                output_device=theta.input_device,
                compiled=compiled,
            )
        )
        found = pool[key] = FixedSlots(theta, teacher)
    for stream in (found.theta, found.teacher):
        if stream is not None:
            stream.max_new_tokens = max_new_tokens  # a larger cap than before grows the buffers at the next join
            stream.clear()
    found.in_use = True
    return found
