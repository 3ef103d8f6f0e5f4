"""Importance weights of exported records, from the log-probabilities the records hold (q* sampled,
pi_theta the model being trained): `log_weight` = log pi_theta(y) - log q*(y) of a completion, the
self-normalised `weight` over the exported records, their effective sample size, and per token
`token_log_weights` = log pi_theta - log q* of each token. Pure: records in, numbers out."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Sequence

from os_cli.errors import UserError

WEIGHT_COLUMNS = ("log_weight", "weight")
TOKEN_WEIGHT_COLUMN = "token_log_weights"


def difference(a: float, b: float) -> float:
    """a - b of two numbers as the record wrote them (float32 precision, `record_format.short_float`),
    exact in decimal: -25.12345 - -23.86753 is -1.25592, not binary noise such as -1.2559197000000002."""
    return float(Decimal(repr(float(a))) - Decimal(repr(float(b))))


def log_weight(record: dict) -> float:
    """log pi_theta(y) - log q*(y) of the record's completion."""
    lp = value if isinstance(value := record.get("logprob"), dict) else {}
    theta, q = lp.get("theta"), lp.get("q")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (theta, q)):
        raise UserError(
            f"record {record.get('id')!r} has no logprob.theta / logprob.q, so it has no importance "
            f"weight; was it written by os-sample generate?",
            exit_code=1,
        )
    assert theta is not None and q is not None  # numbers, checked above
    return difference(theta, q)


def normalized_weights(log_weights: Sequence[float]) -> list[float]:
    """exp(lw_i) / sum_j exp(lw_j), computed stably (max subtracted)."""
    if not log_weights:
        return []
    top = max(log_weights)
    w = [math.exp(x - top) for x in log_weights]
    total = math.fsum(w)
    return [x / total for x in w]


def ess_fraction(weights: Sequence[float]) -> float | None:
    """Kish effective sample size of normalised weights, divided by their number."""
    if not weights:
        return None
    return 1.0 / (math.fsum(w * w for w in weights) * len(weights))


def token_log_weights(record: dict) -> list[float | None] | None:
    toks = record.get("tokens")
    if not isinstance(toks, dict):
        return None
    theta, q = toks.get("logprob_theta"), toks.get("logprob_q")
    if not (isinstance(theta, list) and isinstance(q, list) and len(theta) == len(q)):
        return None
    return [None if a is None or b is None else difference(a, b) for a, b in zip(theta, q)]
