"""Counter-based randomness: the noise for row r at step t depends only on (row key, t, token id).

Why not a torch.Generator: a generator's stream is shared by the whole batch, so a row's draws
change with its batch-mates, its position in the batch and the batch size. Keyed noise makes a
row's sample a pure function of its key, so batched == unbatched, an OOM back-off that halves the
batch changes nothing, and a resumed run reproduces the records a fresh run would have written.

The hash is Wellons' `lowbias32` evaluated in int64 arithmetic that never overflows (32-bit
values, multiplications split into 16-bit halves), so CPU and CUDA produce the same bits.
"""

from __future__ import annotations

import torch

from os_cli.limits import MAX_SEED

_MASK32 = 0xFFFFFFFF
# Row r of a call with one int seed s gets the seed row_seed(s, r); the CLI seeds dataset row i the same way.
ROW_SEED_STRIDE = 1_000_003
# Sample k of a row with seed r gets the seed sample_seed(r, k) = r + k * SAMPLE_SEED_STRIDE (mod 2**63).
SAMPLE_SEED_STRIDE = 1 << 40
_GOLDEN = 0x9E3779B9


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for 0 <= x < 2**32, without int64 overflow."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32: a well-mixed bijection on 32-bit integers (held in int64)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_seed(seed: int, index: int) -> int:
    """The seed of row `index` under one user seed: seed * ROW_SEED_STRIDE + index, wrapped into 0..MAX_SEED."""
    return (int(seed) * ROW_SEED_STRIDE + int(index)) % (MAX_SEED + 1)


def sample_seed(seed_of_row: int, sample: int) -> int:
    """The seed of sample `sample` (0-based) of a row whose own seed is `seed_of_row`.

    Sample 0 keeps the row's seed, so a run with one sample per row is unchanged. Within one run
    (row seeds r0 + i, r0 = row_seed(seed, 0), dataset index i < 2**40) the seeds of all (row,
    sample) pairs with sample < 2**23 are distinct: r0 + i + k * 2**40 determines i (the low 40 bits
    of the offset) and k (the rest). Sample seeds differ from a row's seed only above bit 40, so the
    low 32 bits agree and the high words differ: `row_keys` gives the samples of one row distinct
    32-bit keys (its inner hash of the low word is XORed with distinct high words, then a bijection).
    """
    return (int(seed_of_row) + int(sample) * SAMPLE_SEED_STRIDE) % (MAX_SEED + 1)


def row_keys(seeds: torch.Tensor) -> torch.Tensor:
    """Spread user seeds (any int64) into well-mixed 32-bit row keys."""
    seeds = seeds.to(torch.int64)
    return hash32(hash32(seeds & _MASK32) ^ ((seeds >> 32) & _MASK32))


def keyed_uniform(keys: torch.Tensor, step: int | torch.Tensor, stream: int = 0) -> torch.Tensor:
    """One Uniform(0, 1) float64 per row, strictly inside (0, 1), fixed by (key, step, stream).

    `step` is one int for every row or an int64 tensor of per-row steps (rows in flight under
    continuous batching are at different steps); both give the same bits for the same step.
    `stream` separates independent uses at the same step (e.g. draft and verify in speculative sampling).
    """
    if isinstance(step, torch.Tensor):
        counter = ((step.to(device=keys.device, dtype=torch.int64) + 1) * 0x10001 + stream).expand_as(keys)
    else:
        counter = torch.full_like(keys, (step + 1) * 0x10001 + stream)
    first = hash32(keys ^ hash32(counter))
    second = hash32(first + _GOLDEN)
    # 53 random bits fill a float64 mantissa; the half offset keeps both ends out of reach.
    bits53 = ((first >> 11) << 32) | second  # 21 + 32 bits
    return (bits53.to(torch.float64) + 0.5) * (1.0 / (1 << 53))


def keyed_categorical(
    logq: torch.Tensor, keys: torch.Tensor, step: int | torch.Tensor, stream: int = 0
) -> torch.Tensor:
    """Exact draws from softmax(logq) per row by inverting the float64 CDF at a keyed uniform.

    One uniform per row (not one per token, as Gumbel-max would need) keeps the cost at a softmax
    and a cumsum over the vocabulary. A zero-probability entry is never chosen: it adds a flat step
    to the CDF, and the search returns the first index whose CDF reaches the target.
    """
    cdf = torch.softmax(logq.to(torch.float64), dim=-1).cumsum(dim=-1)
    target = keyed_uniform(keys, step, stream) * cdf[:, -1]
    return torch.searchsorted(cdf, target[:, None]).squeeze(-1).clamp_(max=logq.shape[-1] - 1)
