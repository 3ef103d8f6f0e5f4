"""Prefill each distinct prompt once: rows with the same prompt ids share one prefill, each gets its own KV copy.

`generate(num_samples=n)` and `sampling.num_samples: n` hand the refill loop (scheduler.py) each prompt
n times, one row per sample (its own seed). A row's prefill depends only on the model and its prompt
ids, so `prefill_rows` runs each distinct prompt of the rows admitted together once, then copies
its KV columns, attention mask and next-token logits into every row that has that prompt: the
cache the loop gets is the one a prefill of all rows would give (up to float rounding, as a row's
logits already vary in the last bit with its batch-mates), and each row decodes on its own copy
from there. Samples admitted in a later batch (the batch was full) find the last admitted prompt in
a `PromptStore` (one per model stream), so a prompt's samples cost one prefill however they are
admitted, as long as they come one after another (prompt-major, as num_samples orders them).

Only full-attention caches are copied (`shareable`); a model with sliding-window layers prefills per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Sequence

import torch
from torch import Tensor

from os_cli.engine.streams import ModelStream, left_pad

Key = tuple[int, ...]


def shareable(model) -> bool:
    """Whether `model`'s cache layers are plain full-attention layers (their KV can be copied row by row)."""
    from transformers import DynamicCache

    return not any(getattr(layer, "is_sliding", True) for layer in DynamicCache(config=model.config).layers)


@dataclass
class _Entry:
    keys: list[Tensor]  # per layer [heads, length, dim]: the prompt's columns only
    values: list[Tensor]
    logits: Tensor  # [V] next-token logits after the prompt


class PromptStore:
    """Prefilled prompts kept for rows still to come: `retain` says which keys stay (the caller's policy)."""

    def __init__(self) -> None:
        self.entries: dict[Key, _Entry] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def retain(self, keys: set[Key]) -> None:
        self.entries = {k: v for k, v in self.entries.items() if k in keys}


def prefill_rows(
    model,
    vocab_size: int,
    rows: Sequence[Sequence[int]],
    pad_id: int,
    device,
    store: PromptStore | None = None,
    keep: AbstractSet[Key] = frozenset(),
    output_device=None,
) -> tuple[ModelStream, Tensor, list[Key]]:
    """A stream holding `rows` (prompt ids per row, in order) prefilled, their next-token logits [B, V], and the
    distinct prompts actually run through the model (the others came from `store` or an earlier equal row).

    Prompts in `keep` that were run are put into `store` for later rows. Without a store (a model whose cache
    is not `shareable`), or when every row's prompt is distinct and new, this is `ModelStream.prefill` on the
    left-padded rows."""
    keys = [tuple(r) for r in rows]
    known = store.entries if store is not None else {}
    distinct = list(dict.fromkeys(keys))
    missing = [k for k in distinct if k not in known]
    stream = ModelStream(model, vocab_size, output_device=output_device)
    if store is None or (len(distinct) == len(keys) and len(missing) == len(keys)):  # nothing shared
        logits = stream.prefill(*left_pad(rows, pad_id, device))
        _put(store, stream, logits, keys, keep)
        return stream, logits, keys
    fresh: ModelStream | None = None
    fresh_logits: Tensor | None = None
    source: dict[Key, int] = {}
    if missing:
        fresh = ModelStream(model, vocab_size, output_device=output_device)
        fresh_logits = fresh.prefill(*left_pad(missing, pad_id, device))
        _put(store, fresh, fresh_logits, missing, keep)
        source = {k: i for i, k in enumerate(missing)}
    entries = {k: known[k] for k in distinct if k not in missing}
    width = max(map(len, keys))
    batch = len(keys)
    from_fresh = [r for r, k in enumerate(keys) if k not in entries]
    mask = torch.zeros(batch, width, dtype=torch.long, device=stream.input_device)
    layers: list[tuple[Tensor, Tensor]] = []
    template = fresh.kv_layers if fresh is not None else None
    first = next(iter(entries.values()), None)
    first_keys = first.keys if first is not None else []
    num_layers = len(template) if template is not None else len(first_keys)  # a prompt was run now or is stored
    rows_fresh = torch.tensor(from_fresh, dtype=torch.long, device=stream.input_device)
    index_fresh = torch.tensor([source[keys[r]] for r in from_fresh], dtype=torch.long, device=stream.input_device)
    fresh_width = 0
    if fresh is not None:
        fresh_width = fresh.attention_mask.shape[1]
        mask[rows_fresh, width - fresh_width :] = fresh.attention_mask[index_fresh]
    for r, k in enumerate(keys):
        if k in entries:
            mask[r, width - len(k) :] = 1
    for i in range(num_layers):
        like = template[i].keys if template is not None else first_keys[i][None]
        shape = lambda t: (batch, t.shape[1], width, t.shape[-1])  # noqa: E731
        layer_keys = torch.zeros(shape(like), dtype=like.dtype, device=like.device)
        layer_values = torch.zeros(shape(like), dtype=like.dtype, device=like.device)
        if template is not None:
            at = rows_fresh.to(like.device)
            layer_keys[at, :, width - fresh_width :] = template[i].keys[index_fresh.to(like.device)]
            layer_values[at, :, width - fresh_width :] = template[i].values[index_fresh.to(like.device)]
        for r, k in enumerate(keys):
            if k in entries:
                layer_keys[r, :, width - len(k) :] = entries[k].keys[i]
                layer_values[r, :, width - len(k) :] = entries[k].values[i]
        layers.append((layer_keys, layer_values))
    from transformers import DynamicCache

    stream.cache = DynamicCache(ddp_cache_data=layers, config=model.config)
    stream.attention_mask = mask
    logits = torch.stack(
        [
            entries[k].logits.to(stream.output_device) if k in entries else _fresh_row(fresh_logits, source[k])
            for k in keys
        ]
    )
    return stream, logits, missing


def _put(
    store: PromptStore | None, stream: ModelStream, logits: Tensor, keys: list[Key], keep: AbstractSet[Key]
) -> None:
    """Copy the prompts of `keys` that are in `keep` (row i of `stream` holds keys[i]) into `store`."""
    if store is None:
        return
    for i, k in enumerate(keys):
        if k in keep and k not in store.entries:
            n = len(k)
            store.entries[k] = _Entry(
                [layer.keys[i, :, -n:].clone() for layer in stream.kv_layers],
                [layer.values[i, :, -n:].clone() for layer in stream.kv_layers],
                logits[i].clone(),
            )


def _fresh_row(fresh_logits: Tensor | None, index: int) -> Tensor:
    assert fresh_logits is not None  # a row not in the store was prefilled now
    return fresh_logits[index]
