"""What one bench point runs: the settings every measured run shares (BenchSettings), its rows (prompts cycled
to the point's count, each num_samples times), the long-tail per-row token caps, and the prompt tokens its
distinct prompts hold (what the engine's prefill counts are compared with). No timing, no printing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch


@dataclass
class BenchSettings:
    """What every measured run uses (the recipe's sampling settings unless the CLI overrides them)."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    num_prompts: int = 16  # distinct prompts per point: max(num_prompts, ceil(batch_size / num_samples))
    num_samples: int = 1  # rows per prompt (the recipe's sampling.num_samples), prompt-major as generate orders them
    repeats: int = 3  # timed runs per point after the warm-up (median and spread reported)
    lengths: str = "natural"  # "natural" | "long-tail" (per-row caps, see long_tail_caps)
    fixed_length: bool = False  # every row runs exactly max_new_tokens (EOS and stop strings ignored)

    def generate_kwargs(self) -> dict:
        return dict(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=None if self.fixed_length else (list(self.stop) or None),
        )


LENGTHS = ("natural", "long-tail")
LONG_TAIL_SHAPE = 1.5  # Pareto tail index of the per-row caps: heavy (infinite variance), finite mean


def long_tail_caps(count: int, max_new_tokens: int, seed: int = 0) -> list[int]:
    """Per-row token caps for `--lengths long-tail`: deterministic (from `seed`), long-tailed.

    cap = min(max_new_tokens, ceil(m · U^(-1/1.5))) with U uniform on (0, 1] from a seeded generator
    and m = max(1, max_new_tokens // 8): a Pareto(1.5) tail, so most rows stop within a few times m,
    a few run to max_new_tokens (mean about 3m before the cap), as stop strings cut real completions.
    """
    import math

    g = torch.Generator().manual_seed(seed)
    u = 1.0 - torch.rand(count, generator=g, dtype=torch.float64)  # (0, 1]
    scale = max(1, max_new_tokens // 8)
    return [min(max_new_tokens, max(1, math.ceil(scale * x ** (-1.0 / LONG_TAIL_SHAPE)))) for x in u.tolist()]


# --------------------------------------------------------------------------------------------------
# One measured run


def cycle_order(items: Sequence[str], n: int) -> list[str]:
    return [items[i % len(items)] for i in range(n)]


def point_prompt_count(settings: BenchSettings, batch_size: int) -> int:
    """Prompts a point runs: at least `num_prompts`, and enough that their samples fill one batch."""
    return max(settings.num_prompts, -(-batch_size // max(1, settings.num_samples)))


def point_rows(settings: BenchSettings, batch_size: int) -> int:
    """Rows a point runs: its prompts x num_samples."""
    return point_prompt_count(settings, batch_size) * max(1, settings.num_samples)


def distinct_prompt_tokens(
    model, prompts: Sequence[str], prompts_t: Sequence[str] | None
) -> tuple[int, int | None, bool]:
    """Prompt tokens the distinct prompts hold, per model, as the engine tokenizes them: (theta's, the teacher's,
    stacked); the teacher's is None when one stream serves both (one model, the teacher's prompts theta's). With
    one model and teacher prompts of its own (stacked: one stream runs both sides' rows), which side a prompt
    shared by both sides is counted on depends on the rows prefilled together, so only the total is compared:
    the first value is then the distinct prompts of both sides together and the teacher's is 0."""
    from os_cli.prompts.lengths import prompt_token_ids

    theta = set(map(tuple, prompt_token_ids(model.tokenizer, list(prompts))))
    two_streams = not model.same_model or (prompts_t is not None and list(prompts_t) != list(prompts))
    if not two_streams:
        return sum(map(len, theta)), None, False
    teacher = set(
        map(tuple, prompt_token_ids(model.tokenizer_t, list(prompts_t if prompts_t is not None else prompts)))
    )
    if model.same_model:
        return sum(map(len, theta | teacher)), 0, True
    return sum(map(len, theta)), sum(map(len, teacher)), False


def lengths_label(settings: BenchSettings) -> str:
    if settings.lengths == "long-tail":
        return f"long-tail per-row caps (max {settings.max_new_tokens}, seed {settings.seed})"
    if settings.fixed_length:
        return f"fixed: {settings.max_new_tokens} tokens per row, EOS and stop strings ignored"
    return "natural (EOS, stop strings, max_new_tokens)"
