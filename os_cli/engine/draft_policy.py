"""`draft_tokens: auto`: which draft length k (0 = plain steps) a speculative round should use. Pure: no
torch, no models; engine/auto_draft.py times the forwards and feeds this module.

The one speed formula (also `os-sample bench --draft-tokens`' "ideal+", bench/draft_costs.py): with a
per-position acceptance a, one round at k emits E = (1 - a^(k+1)) / (1 - a) tokens per row
(speculative.expected_tokens_per_round) and runs k + 1 theta forwards of one position, k draft draws, one
teacher forward of k + 1 positions and one q* step over k + 1 positions per row, against one of each (and no
draw) per plain token:
    speed-up(k) = E (t_theta + t_T(1) + t_q(1)) / ((k + 1) t_theta + k t_draw + t_T(k+1) + t_q(k+1)).
Costs are keyed as bench/draft_costs.forward_costs names them: "theta", "teacher", "teacher_{m}",
"q_step", "q_step_{m}" (m > 1 positions per row), and "draft" (t_draw; 0 where not measured). On small models the draw is not negligible beside theta's forward;
leaving it out made auto prefer k = 6-8 at batch 16 where k = 3 was faster.

`AutoDraft` keeps the measured costs and the acceptance of the rounds run so far and picks, each
iteration, the k in 0..AUTO_MAX_DRAFT_TOKENS with the largest expected speed-up (ties: the smaller k).
The acceptance estimate starts at PRIOR_ACCEPTANCE (worth PRIOR_WEIGHT drafts) and forgets old rounds
(weights halve every HALF_LIFE iterations), so a batch whose composition changed is re-tried: once the
evidence that made k = 0 win has faded, the prior may make a round pay again, and that round measures
the acceptance anew. Costs are measured again when the rows in flight or the cached width change by a
factor of two (the width also by WIDTH_STEP columns; `needs_costs`), since a forward's cost depends on both,
but not within PROBE_GAP iterations of the last probe (a probe costs about ten teacher positions).
"""

from __future__ import annotations

from typing import Mapping

from os_cli.limits import AUTO_MAX_DRAFT_TOKENS  # the largest k `auto` considers; a^k vanishes long before
from os_cli.limits import DRAFT_TOKENS_AUTO as AUTO  # noqa: F401  (the draft_tokens value that asks for this policy)

# Teacher / q* positions per row timed per cost probe (k + 1 for k = 0 and 8; linear between): a probe costs
# about a theta forward and ten positions of the teacher, so few points, and few probes (PROBE_GAP).
PROBE_POSITIONS = (1, AUTO_MAX_DRAFT_TOKENS + 1)
PROBE_GAP = 32  # iterations at least between two probes of one call
PRIOR_ACCEPTANCE = 0.7
PRIOR_WEIGHT = 4.0  # drafts' worth of the prior
WIDTH_STEP = 512  # costs are measured again once the cache is twice as wide and this many columns wider
HALF_LIFE = 128  # iterations after which a round's evidence counts half
_DECAY = 0.5 ** (1.0 / HALF_LIFE)


def expected_tokens_per_round(acceptance: float, k: int) -> float:
    """(1 - a^(k+1)) / (1 - a): tokens one round emits when each draft is accepted with probability a."""
    if acceptance >= 1.0:
        return float(k + 1)
    return (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


def _cost(costs: Mapping[str, float], name: str, m: int) -> float:
    return costs[name if m == 1 else f"{name}_{m}"]


def expected_speedup(acceptance: float, k: int, costs: Mapping[str, float]) -> float:
    """Tokens/s of rounds at k over tokens/s of plain steps (the module docstring's formula); 1.0 at k = 0."""
    if k == 0:
        return 1.0
    plain = costs["theta"] + costs["teacher"] + costs["q_step"]
    spec = (k + 1) * costs["theta"] + k * costs.get("draft", 0.0)
    spec += _cost(costs, "teacher", k + 1) + _cost(costs, "q_step", k + 1)
    return expected_tokens_per_round(acceptance, k) * plain / spec


def interpolate_costs(measured: Mapping[str, float], k_max: int) -> dict[str, float]:
    """`measured` ("theta" and "teacher"/"q_step" at some positions m, at least m = 1) completed for every m in
    1..k_max + 1: piecewise linear between measured m, the last slope carried on beyond them. A measured cost
    above that of more positions is lowered to it (a forward of fewer positions does no more work; timing
    noise only ever adds time)."""
    out = dict(measured)
    for name in ("teacher", "q_step"):
        points = sorted(
            (1 if key == name else int(key.rsplit("_", 1)[1]), value)
            for key, value in measured.items()
            if key == name or (key.startswith(name + "_") and key.rsplit("_", 1)[1].isdigit())
        )
        if not points or points[0][0] != 1:
            raise ValueError(f"costs need {name!r} at one position, got {sorted(measured)}")
        for i in range(len(points) - 2, -1, -1):
            points[i] = (points[i][0], min(points[i][1], points[i + 1][1]))
        for m, value in points:
            out[name if m == 1 else f"{name}_{m}"] = value
        for m in range(2, k_max + 2):
            if f"{name}_{m}" in out:
                continue
            below = [p for p in points if p[0] <= m]
            above = [p for p in points if p[0] > m]
            if above:
                (m0, c0), (m1, c1) = below[-1], above[0]
            elif len(points) > 1:
                (m0, c0), (m1, c1) = points[-2], points[-1]
            else:  # one point: each position costs as much as the first
                (m0, c0), (m1, c1) = (0, 0.0), points[0]
            out[f"{name}_{m}"] = max(c0 + (c1 - c0) * (m - m0) / (m1 - m0), 0.0)
    return out


def choose_draft_tokens(acceptance: float, costs: Mapping[str, float], k_max: int = AUTO_MAX_DRAFT_TOKENS) -> int:
    """The k in 0..k_max with the largest expected speed-up (ties: the smaller k); `costs` must cover 1..k_max+1."""
    best, best_speedup = 0, 1.0
    for k in range(1, k_max + 1):
        speedup = expected_speedup(acceptance, k, costs)
        if speedup > best_speedup:
            best, best_speedup = k, speedup
    return best


class AutoDraft:
    """The running choice of k for one call (module docstring). The loop calls `needs_costs(rows, width)`
    and `set_costs` when it says so, `choose()` before each iteration, and `record(accepted, drafted)` after
    each (0, 0 for a plain step)."""

    def __init__(self, k_max: int = AUTO_MAX_DRAFT_TOKENS):
        self.k_max = k_max
        self.costs: dict[str, float] | None = None
        self.cost_key: tuple[int, int] | None = None  # (rows, width) the costs were measured at
        self.accepted = 0.0  # decayed counts of the rounds run so far
        self.drafted = 0.0
        self.choices: list[int] = []  # k per iteration (benchmarks, tests)
        self.probes = 0
        self.since_probe = 0  # iterations since the last probe

    def needs_costs(self, rows: int, width: int) -> bool:
        if self.cost_key is None:
            return True
        if self.since_probe < PROBE_GAP:
            return False
        rows0, width0 = self.cost_key
        return not (rows0 / 2 < rows < rows0 * 2) or width >= max(2 * width0, width0 + WIDTH_STEP)

    def set_costs(self, measured: Mapping[str, float], rows: int, width: int) -> None:
        self.costs = interpolate_costs(measured, self.k_max)
        self.cost_key = (rows, width)
        self.probes += 1
        self.since_probe = 0

    @property
    def acceptance(self) -> float:
        return (self.accepted + PRIOR_ACCEPTANCE * PRIOR_WEIGHT) / (self.drafted + PRIOR_WEIGHT)

    def choose(self) -> int:
        k = 0 if self.costs is None else choose_draft_tokens(self.acceptance, self.costs, self.k_max)
        self.choices.append(k)
        self.since_probe += 1
        return k

    def record(self, accepted: int, drafted: int) -> None:
        self.accepted = self.accepted * _DECAY + accepted
        self.drafted = self.drafted * _DECAY + drafted
