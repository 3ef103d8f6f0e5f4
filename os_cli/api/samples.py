"""Several samples per prompt in the Python API: `OptimalSamplingModel.generate(..., num_samples=n)`.

A thin layer over `generate` itself, which it calls once with every prompt repeated n times
(prompt-major: prompt 0's n samples, then prompt 1's, ...) and one seed per repeated row: sample k
of prompt i gets `rng.sample_seed(seed_i, k)`, where seed_i is the seed prompt i gets without
`num_samples` (from the int seed, the per-prompt list, or torch's global RNG). Sample 0 is therefore
exactly what a call without `num_samples` draws, and the CLI's `sampling.num_samples` seeds its
(row, sample) pairs the same way. The output gains `prompt_indices` and `sample_indices` ([batch]
int64) saying which prompt and sample each row is. Each prompt is prefilled once (engine/prefix.py):
its n samples decode as n rows on copies of its KV cache, and `batch_size` splits the repeated rows.
"""

from __future__ import annotations

import numbers

import torch

from os_cli.api.arguments import row_seeds
from os_cli.limits import MAX_NUM_SAMPLES
from os_cli.mix.rng import sample_seed


def check_num_samples(value) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 1 <= int(value) <= MAX_NUM_SAMPLES:
        raise ValueError(f"num_samples must be an integer in 1..{MAX_NUM_SAMPLES}, got {value!r}")
    return int(value)


def _as_list(prompts):
    if prompts is None:
        return None
    return [prompts] if isinstance(prompts, str) else list(prompts)


def repeat_samples(items: list, n: int) -> list:
    """Each item n times, prompt-major (item 0's n copies first), as `generate(num_samples=n)` orders rows."""
    return [item for item in items for _ in range(n)]


def sample_seeds(seeds: list[int], n: int) -> list[int]:
    """The seed of every repeated row, prompt-major: sample k of the prompt seeded s gets `sample_seed(s, k)`."""
    return [sample_seed(int(s), k) for s in seeds for k in range(n)]


def generate_samples(model, num_samples, args: dict):
    """`model.generate(**args)` with every prompt sampled `num_samples` times (see the module doc)."""
    n = check_num_samples(num_samples)
    prompts, prompts_t = _as_list(args["prompts"]), _as_list(args.get("prompts_t"))
    if not prompts or (prompts_t is not None and len(prompts_t) != len(prompts)):
        return model.generate(**args)  # its own error for these prompts
    seeds = row_seeds(args.get("seed"), len(prompts))  # validated; None follows torch's global RNG
    repeated = dict(args)
    repeated["prompts"] = repeat_samples(prompts, n)
    if prompts_t is not None:
        repeated["prompts_t"] = repeat_samples(prompts_t, n)
    repeated["seed"] = sample_seeds(seeds.tolist(), n)
    caps = args.get("max_new_tokens")
    if isinstance(caps, (list, tuple)) and len(caps) == len(prompts):  # one cap per prompt: per repeated row
        repeated["max_new_tokens"] = repeat_samples(list(caps), n)
    out = model.generate(**repeated)
    out.prompt_indices = torch.arange(len(prompts), dtype=torch.int64).repeat_interleave(n)
    out.sample_indices = torch.arange(n, dtype=torch.int64).repeat(len(prompts))
    return out
