"""Checking the Python API's arguments (pure: no model): prompts, per-row token caps and seeds, and
`CallSettings`, what one call of `generate` / `generate_stream` decodes with, built once per call.

Python and numpy integers are accepted wherever an int is (not bool); bounds come from limits.py.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from os_cli.engine.settings import DecodeSettings
from os_cli.limits import DRAFT_TOKENS_AUTO, MAX_DRAFT_TOKENS, MAX_NEW_TOKENS, MAX_SEED
from os_cli.mix import rng
from os_cli.mix.sampler import SAMPLE_FROM


@dataclass(frozen=True)
class CallSettings:
    """One call's settings: what the engine reads (`decode`, engine/settings.py) and what only the API
    does: `sample_from` (which distribution the q* step draws from), `stop` (the stop strings, cut from
    the texts; `decode.stop_fn` ends rows at them) and `two_streams` (the teacher runs a stream of its
    own: another model, or teacher prompts of its own; otherwise theta's logits play both parts)."""

    decode: DecodeSettings
    sample_from: str = "mixture"
    stop: tuple[str, ...] = ()
    two_streams: bool = True


def check_sample_from(sample_from) -> None:
    if sample_from not in SAMPLE_FROM:
        raise ValueError(f"sample_from must be one of {', '.join(SAMPLE_FROM)}, got {sample_from!r}")


def check_draft_tokens(draft_tokens, two_streams: bool) -> None:
    checked_draft_tokens(draft_tokens)
    if draft_tokens and not two_streams:
        raise ValueError(
            "draft_tokens needs a teacher that differs from theta (another model, or teacher prompts "
            "of its own): with one model on the same prompts q* is pi_theta, nothing to draft"
        )


def is_int(value) -> bool:
    """Python and numpy integers (not bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def checked_seed(value, name: str) -> int:
    if not is_int(value):
        raise ValueError(f"{name} must be an integer in 0..{MAX_SEED}, got {type(value).__name__} {value!r}")
    value = int(value)
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be an integer in 0..{MAX_SEED}, got {value}")
    return value


def check_prompts(prompts, prompts_t) -> tuple[list[str], list[str]]:
    """Both prompt lists, paired row by row (prompts_t defaults to prompts), every one a non-empty string."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts_t, str):
        prompts_t = [prompts_t]
    prompts = list(prompts or [])
    if not prompts:
        raise ValueError("prompts is empty: pass a list of at least one prompt string")
    prompts_t = prompts if prompts_t is None else list(prompts_t)
    if len(prompts_t) != len(prompts):
        raise ValueError(
            f"prompts_t has {len(prompts_t)} prompts but prompts has {len(prompts)}; they pair up row by row"
        )
    for name, batch in (("prompts", prompts), ("prompts_t", prompts_t)):
        for i, text in enumerate(batch):
            if not isinstance(text, str) or not text:
                raise ValueError(f"{name}[{i}] must be a non-empty string, got {text!r}")
    return prompts, prompts_t


def checked_cap(value, name: str = "max_new_tokens") -> int:
    """One token cap: an integer in 1..MAX_NEW_TOKENS (not bool, not float)."""
    if not is_int(value) or not 1 <= value <= MAX_NEW_TOKENS:
        raise ValueError(f"{name} must be an integer in 1..{MAX_NEW_TOKENS}, got {type(value).__name__} {value!r}")
    return int(value)


def checked_draft_tokens(value) -> int | str:
    """draft_tokens: an integer in 0..MAX_DRAFT_TOKENS (0 = off; not bool, not float), or "auto"."""
    if value == DRAFT_TOKENS_AUTO:
        return DRAFT_TOKENS_AUTO
    if not is_int(value) or not 0 <= value <= MAX_DRAFT_TOKENS:
        raise ValueError(
            f"draft_tokens must be an integer in 0..{MAX_DRAFT_TOKENS} (0 = off; a round runs k + 1 theta "
            f"forwards and late drafts are rarely accepted) or {DRAFT_TOKENS_AUTO!r}, got "
            f"{type(value).__name__} {value!r}"
        )
    return int(value)


def check_caps(max_new_tokens, count: int) -> list[int]:
    """One token cap per row, from an int or a list of `count` ints."""
    listed = isinstance(max_new_tokens, (list, tuple)) or (
        not is_int(max_new_tokens)
        and hasattr(max_new_tokens, "__iter__")
        and getattr(max_new_tokens, "ndim", 1) > 0
        and not isinstance(max_new_tokens, (str, bytes, dict))
    )
    caps = list(max_new_tokens) if listed else [max_new_tokens] * count
    if len(caps) != count or not all(is_int(c) and 1 <= c <= MAX_NEW_TOKENS for c in caps):
        raise ValueError(
            f"max_new_tokens must be an integer in 1..{MAX_NEW_TOKENS} or a list of {count} such "
            f"integers, got {type(max_new_tokens).__name__} {max_new_tokens!r}"
        )
    return [int(c) for c in caps]


def row_seeds(seed, count: int) -> torch.Tensor:
    """int64 [count] row seeds from an int (rng.row_seed of each row), a list of ints, or None."""
    if seed is None:  # follow torch's global RNG, so torch.manual_seed still reproduces a run
        base = int(torch.randint(0, 2**62, (1,)))
        return base + torch.arange(count, dtype=torch.int64)
    if getattr(seed, "ndim", None) == 0 and hasattr(seed, "item"):  # a 0-d numpy array or tensor
        seed = seed.item()
    if is_int(seed):
        base = checked_seed(seed, "seed")
        return torch.tensor([rng.row_seed(base, i) for i in range(count)], dtype=torch.int64)
    if isinstance(seed, (str, bytes, float)) or not hasattr(seed, "__iter__"):
        raise ValueError(
            f"seed must be an integer in 0..{MAX_SEED} (or a list of {count}, one per prompt), "
            f"got {type(seed).__name__} {seed!r}"
        )
    seeds = list(seed)
    if len(seeds) != count:
        raise ValueError(f"seed must be an int or a list of {count} ints (one per prompt), got {len(seeds)}")
    return torch.tensor([checked_seed(s, f"seed[{i}]") for i, s in enumerate(seeds)], dtype=torch.int64)
