"""Token-level truncated importance weights (TIS) for training pi_theta on samples drawn from q*.

For token i of a completion, w_i = min(exp(log pi_theta(y_i) - log q*(y_i)), c): the per-token ratio
of the model being trained to the distribution the token was drawn from, truncated at c. A loss
sum_i w_i * (-log pi_theta_new(y_i | prefix)), normalised as the SFT loss is (by the number of
tokens), is the truncated importance sampling correction current RL trainers apply per token
(TIS; ICE-POP-style corrections mask instead of truncating).

c = TIS_CLIP = 2.0 by default: the cap of truncated importance sampling as introduced for
rollout/trainer mismatch (Yao et al., 2025, "Your efficient RL framework secretly brings you
off-policy RL training") and verl's default. Tokens q* drew less often than theta would have
(ratio > 1) count at most twice; tokens q* favoured keep their ratio, below 1.

Used by `os-sample export` (the `token_tis_weights` column) and benchmarks/sample_training.py.
"""

from __future__ import annotations

import math
from typing import Sequence

TIS_CLIP = 2.0
TIS_COLUMN = "token_tis_weights"


def truncated_token_weights(token_log_weights: Sequence[float | None], clip: float = TIS_CLIP) -> list[float | None]:
    """min(exp(lw), clip) per token log weight lw = log pi_theta - log q*; None stays None (a token
    whose log-probabilities were not recorded)."""
    if not clip > 0:
        raise ValueError(f"clip must be positive, got {clip}")
    log_clip = math.log(clip)
    return [None if lw is None else (clip if lw >= log_clip else math.exp(lw)) for lw in token_log_weights]
