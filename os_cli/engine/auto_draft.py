"""`draft_tokens: auto` in the refill loop: measure the forward costs on the rows in flight, ask the pure
policy (draft_policy.AutoDraft) for k before each iteration, tell it what the round accepted.

Costs are timed on the group's own streams (a step, or a forward of m positions, then rolled back, so
the caches are as before: nothing emitted depends on a probe) and with the call's q* step on the probe's
logits, every cost PROBE_REPEATS times interleaved, the minimum kept (a busy spell only ever adds time).
Each probe runs about a theta forward and ten teacher positions' worth of forwards (draft_policy.PROBE_POSITIONS).
A probe runs when the policy asks (the first iteration, then when the rows in flight or the cache width
changed by a factor of two): a few forwards' worth of work each time, logarithmically many times per call.
"""

from __future__ import annotations

import functools
import time

import torch

from os_cli.engine import speculative
from os_cli.engine.draft_policy import PROBE_POSITIONS, AutoDraft
from os_cli.engine.streams import ModelStream
from os_cli.memory import sync

PROBE_REPEATS = 1  # each cost timed once per probe (costs are made monotone in positions)


def probe_costs(
    theta: ModelStream,
    teacher: ModelStream,
    pending: torch.Tensor,
    keys: torch.Tensor,
    steps: torch.Tensor,
    step_fn,
    positions=PROBE_POSITIONS,
    repeats: int = PROBE_REPEATS,
    temperature: float = 1.0,
) -> dict[str, float]:
    """Milliseconds, keyed as draft_policy names them: "theta" (one position), "draft" (drawing one draft token
    from theta's logits), "teacher" / "teacher_{m}" and "q_step" / "q_step_{m}" for each m in `positions`, at
    the streams' batch and cache."""
    devices = list({torch.device(d) for d in (theta.input_device, teacher.input_device, teacher.output_device)})
    batch = pending.shape[0]
    logits: dict[str, torch.Tensor] = {}

    def theta_step():
        logits["theta"] = theta.step(pending)
        theta.rollback(1)

    def draw_draft():  # what each drafted position adds to theta's forward (speculative.run_round)
        speculative.draft(speculative.draft_logprobs(logits["theta"], temperature), keys, steps)

    def teacher_forward(m):
        block = pending[:, None].expand(batch, m)
        out = teacher.step(pending) if m == 1 else teacher.extend(block)[:, -1]
        teacher.rollback(m)
        logits["t"] = out

    def q_step(m):
        lt, lq = logits["theta"].repeat_interleave(m, 0), logits["t"].repeat_interleave(m, 0)
        step_fn(lt, lq, keys.repeat_interleave(m), (steps[:, None] + torch.arange(m, device=steps.device)).reshape(-1))

    calls = {"theta": theta_step, "draft": draw_draft}
    for m in positions:
        calls["teacher" if m == 1 else f"teacher_{m}"] = functools.partial(teacher_forward, m)
    for m in positions:  # after the forwards, whose logits they reuse
        calls["q_step" if m == 1 else f"q_step_{m}"] = functools.partial(q_step, m)
    best: dict[str, float] = {}
    for _ in range(max(1, repeats)):
        for name, fn in calls.items():
            sync(devices)
            start = time.perf_counter()
            fn()
            sync(devices)
            ms = (time.perf_counter() - start) * 1e3
            best[name] = min(best.get(name, ms), ms)
    return best


def choose(
    policy: AutoDraft, theta: ModelStream, teacher: ModelStream, pending, keys, steps, step_fn, stats, temperature=1.0
) -> int:
    """k for the next iteration of these rows, probing the costs first when the policy needs them. Without a
    teacher stream of its own (one model's stacked pairs, engine/stacked.py) every drafting step already runs
    the teacher rows, so a round of k costs about k + 1 plain steps and never pays: 0."""
    if teacher is None:
        return 0
    width = int(theta.attention_mask.shape[1])
    if policy.needs_costs(len(keys), width):
        costs = probe_costs(theta, teacher, pending, keys, steps, step_fn, temperature=temperature)
        policy.set_costs(costs, len(keys), width)
        stats.cost_probes += 1
    return policy.choose()
