"""The alpha methods (`alpha.method` in a recipe): one entry each, name and defining equation.

Torch-free so the recipe schema can import the names. The solvers are registered under these names
in `alpha.METHODS` (reference) and `fastmix.METHODS` (fast path); tests/test_alpha_registry.py checks
that both tables cover exactly these names. Adding a method: one entry here, one in each table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AlphaMethodInfo:
    name: str
    equation: str  # one line: what the method's alpha satisfies, for q_a ∝ pi_theta^(1-a) · pi_t^a


METHOD_INFO = (
    AlphaMethodInfo("fixed", "a = fixed_alpha (not clamped to [alpha_min, alpha_max])"),
    AlphaMethodInfo("kl_symmetry", "KL(q_a||pi_theta) = KL(q_a||pi_t), i.e. E_{q_a}[log pi_t - log pi_theta] = 0"),
    AlphaMethodInfo(
        "reverse_kl_symmetry", "CE(pi_theta, q_a) = CE(pi_t, q_a), i.e. sum (pi_theta - pi_t) · log q_a = 0"
    ),
    AlphaMethodInfo("ess_balance", "sum pi_theta²/q_a = sum pi_t²/q_a, i.e. ESS_theta(q_a) = ESS_t(q_a)"),
    AlphaMethodInfo("entropy", "a = H(pi_theta) / (H(pi_theta) + H(pi_t))"),
)
INFO = {m.name: m for m in METHOD_INFO}
ALPHA_METHODS = tuple(INFO)
