"""Bounds on what a run or a `generate` call may ask for: defined once, used by the recipe schema, the
sampler's and the API's argument checks and the CLI. No imports, so anything may import it cheaply."""

# Temperature divides the logits; below this bound float32 logits / temperature can overflow to inf.
# There is no greedy mode: temperature 0 is refused (MIN_TEMPERATURE samples nearly greedily).
MIN_TEMPERATURE = 1e-3
# Seeds are non-negative int64 values.
MAX_SEED = (1 << 63) - 1
# The engine preallocates per row and per new token: larger values are typos, not plans.
MAX_NEW_TOKENS = 1 << 20
MAX_BATCH_SIZE = 1 << 16
# YAML aliases (*name) may repeat anchored values at most this many extra values in all
# (a "billion laughs" file of nested aliases is refused before it is expanded).
MAX_ALIAS_EXPANSION = 100_000
# Samples per prompt (sampling.num_samples, generate(num_samples=)): far below the 2**23 up to which
# rng.sample_seed keeps every (row, sample) seed of a run distinct.
MAX_NUM_SAMPLES = 1 << 16
# Speculative draft length (sampling.draft_tokens, generate(draft_tokens=)): a round runs k + 1 theta forwards
# and a draft is accepted only if every one before it was, so past a few dozen the late drafts are pure cost;
# larger values are typos, not plans.
MAX_DRAFT_TOKENS = 64
# sampling.draft_tokens / generate(draft_tokens=): this value instead of an integer k lets the engine pick
# k as it runs (engine/draft_policy.py).
DRAFT_TOKENS_AUTO = "auto"
# The largest k `auto` considers (engine/draft_policy.py); the context check counts it for `auto`.
AUTO_MAX_DRAFT_TOKENS = 8
