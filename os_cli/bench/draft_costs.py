"""Speculative rows of `os-sample bench --draft-tokens`: per draft length k, the measured acceptance,
the ideal speed-up predicted from it and the timed forward costs, the measured speed-up over the
plain loop (k = 0), and a recommended k. No printing; cli/bench.py prints, and
benchmarks/bench_speculative.py uses the same forward costs and formulas.

Definitions (also in the CLI help and README):
- acceptance a: drafts accepted / drafts verified (scheduler.SchedulerStats), over the timed runs;
- E = (1 - a^(k+1)) / (1 - a): tokens one round emits (speculative.expected_tokens_per_round);
- ideal (issue 9): E (t_theta + t_T(1)) / (k t_theta + t_T(k+1)), with t_theta one theta forward of
  one position, t_T(m) one teacher forward of m positions;
- ideal+: what a round really runs, E (t_theta + t_T(1) + t_q(1)) / ((k + 1) t_theta + k t_draw +
  t_T(k+1) + t_q(k+1)), t_q(m) one q* step over m positions per row (speculative.py's docstring),
  t_draw drawing one draft token (engine/draft_policy.py: the formula `draft_tokens: auto` maximises);
- measured: per interleaved round, tokens/s at k over tokens/s of the plain loop in the same round;
  the median and min-max over rounds.
Forward costs are timed after the rounds, at the bench's batch size, on a cache as long as the first
prompt plus half of max_new_tokens (the middle of a completion): every cost once per round, in
COST_REPEATS interleaved rounds (the order rotating), and the median of each, so a busy spell or drift
hits all of them alike instead of inflating whichever was being timed then.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from os_cli.api import arguments
from os_cli.api.rows import StreamRow
from os_cli.bench.measure import BenchRow, Point, measure
from os_cli.engine import speculative
from os_cli.engine import streams as engine
from os_cli.engine.draft_policy import expected_speedup, expected_tokens_per_round
from os_cli.engine.requests import SchedulerStats
from os_cli.memory import model_devices, sync
from os_cli.mix import rng

if TYPE_CHECKING:
    from os_cli.bench.sweep import BenchSettings

MAX_BENCH_DRAFT_TOKENS = 16  # larger k is a typo, not a plan: a round runs k + 1 theta forwards and a^k vanishes
COST_REPEATS = 30  # interleaved rounds of forward-cost timing (each cost once per round; medians)


# --------------------------------------------------------------------------------------------------
# Forward costs


def interleaved_medians(
    calls: dict[str, Callable[[], object]], repeats: int = COST_REPEATS, devices: Sequence[torch.device] = ()
) -> dict[str, float]:
    """Median milliseconds of each call over `repeats` rounds that time every call once (after one untimed
    call each), starting one further along each round; CUDA devices synchronised around each call."""
    for fn in calls.values():
        fn()
    sync(devices)
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(max(1, repeats)):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            calls[name]()
            sync(devices)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(times[name]) for name in names}


def forward_costs(
    model,
    prompt: str,
    context: int,
    ks: Sequence[int],
    *,
    batch_size: int = 1,
    temperature: float = 1.0,
    top_k: int = -1,
    top_p: float = 1.0,
    repeats: int = COST_REPEATS,
) -> dict[str, float]:
    """Median ms at `batch_size` rows with `context` tokens cached (theta's ids of `prompt`, repeated):
    "theta" (one position), "draft" (drawing one draft token from theta's logits), "teacher" (one position),
    "teacher_{k+1}" (k + 1 positions in one forward), "q_step" (one q* step) and "q_step_{k+1}" (one q*
    step over k + 1 positions per row); all timed in the same interleaved rounds (interleaved_medians)."""
    ids = model._token_ids(prompt, "prompts", 0)
    ids = (ids * (context // len(ids) + 1))[: max(1, context)]
    devices = model_devices(model)
    calls: dict[str, Callable[[], object]] = {}
    for name, m in (("theta", model.model_theta), ("teacher", model.model_t)):
        stream = engine.ModelStream(m, model.vocab_size)  # both kept until every round is timed
        stream.prefill(*engine.left_pad([ids] * batch_size, model.tokenizer.pad_token_id, stream.input_device))
        token = torch.full((batch_size,), 5, device=stream.input_device)

        def one(stream=stream, token=token):
            stream.step(token)
            stream.rollback(1)

        calls[name] = one
        if name == "teacher":
            for k in ks:
                block = torch.full((batch_size, k + 1), 5, device=stream.input_device)

                def many(stream=stream, block=block, k=k):
                    stream.extend(block)
                    stream.rollback(k + 1)

                calls[f"teacher_{k + 1}"] = many
    step_fn = model._step_fn(model._sampler_config(temperature, top_k, top_p), "mixture")
    device = model.device
    draft_logits = torch.randn(batch_size, model.vocab_size, device=device)
    draft_keys, draft_steps = rng.row_keys(torch.arange(batch_size)).to(device), torch.full((batch_size,), context)
    calls["draft"] = lambda: speculative.draft(
        speculative.draft_logprobs(draft_logits, temperature), draft_keys, draft_steps.to(device)
    )
    for m in [1] + [k + 1 for k in ks]:  # a round's one q* step covers its k + 1 positions
        logits = torch.randn(batch_size * m, model.vocab_size, device=device)
        keys = rng.row_keys(torch.arange(batch_size * m)).to(device)
        steps = (context + torch.arange(m, device=device)).repeat(batch_size)  # not step 0 (first-token rules)
        calls["q_step" if m == 1 else f"q_step_{m}"] = functools.partial(step_fn, logits, logits, keys, steps)
    return interleaved_medians(calls, repeats, devices)


def ideal_speedup(acceptance: float, k: int, costs: dict[str, float]) -> float:
    """Issue 9's ideal: E (t_theta + t_T(1)) / (k t_theta + t_T(k+1))."""
    e = expected_tokens_per_round(acceptance, k)
    return e * (costs["theta"] + costs["teacher"]) / (k * costs["theta"] + costs[f"teacher_{k + 1}"])


def ideal_plus_speedup(acceptance: float, k: int, costs: dict[str, float]) -> float:
    """The ideal counting what a round runs: k + 1 theta forwards, k draft draws and one q* step over k + 1
    positions, against t_theta + t_T(1) + one q* step per plain token: the formula `draft_tokens: auto`
    maximises (engine/draft_policy.expected_speedup)."""
    return expected_speedup(acceptance, k, costs)


# --------------------------------------------------------------------------------------------------
# Rows and the recommendation


@dataclass
class DraftRow:
    """One k (0 = the plain loop): timing in `timing` (a BenchRow), the rest per this module's docstring."""

    k: int
    timing: BenchRow
    drafted: int = 0
    accepted: int = 0
    acceptance: float | None = None  # None for k = 0 or when no draft was verified
    expected_tokens: float | None = None  # E
    ideal: float | None = None
    ideal_plus: float | None = None
    speedup: float | None = None  # median over rounds of tokens/s over the plain loop's in the same round
    speedup_min: float | None = None
    speedup_max: float | None = None
    speedup_spread: float | None = None  # (max - min) / median of the per-round speed-ups
    rounds_per_run: int = 0  # decode iterations (plain steps or speculative rounds) of the last timed run
    theta_forwards: int = 0  # per run (prefills not counted)
    teacher_forwards: int = 0

    @property
    def ok(self) -> bool:
        return self.timing.ok

    def to_dict(self) -> dict:
        return asdict(self)


def _draft_point(model, prompts, prompts_t, batch_size: int, settings: BenchSettings, k: int) -> tuple[Point, list]:
    """A bench Point running `generate_stream` at draft length k, every row to its cap (EOS and stop
    strings ignored), and the list its timed runs append their SchedulerStats to."""
    from os_cli.api.samples import repeat_samples, sample_seeds
    from os_cli.bench.workload import cycle_order, long_tail_caps, point_prompt_count

    # The rows the sweep's points run (sweep.engine_point): each prompt num_samples times, prompt-major.
    n, samples = point_prompt_count(settings, batch_size), max(1, settings.num_samples)
    distinct, distinct_t = cycle_order(prompts, n), cycle_order(prompts_t, n) if prompts_t is not None else [None] * n
    separate = model.same_model and any(t is not None and t != p for p, t in zip(distinct, distinct_t))
    batch, batch_t = repeat_samples(distinct, samples), repeat_samples(distinct_t, samples)
    rows_total = n * samples
    if settings.lengths == "long-tail":
        caps = long_tail_caps(rows_total, settings.max_new_tokens, settings.seed)
    else:
        caps = [settings.max_new_tokens] * rows_total
    seeds = sample_seeds(arguments.row_seeds(settings.seed, n).tolist(), samples)
    label = "plain loop (k=0)" if k == 0 else f"draft_tokens={k}"
    row = BenchRow(
        mode="speculative",
        label=label,
        batch_size=batch_size,
        prompts=n,
        num_samples=samples,
        rows=rows_total,
        alpha_method=model.alpha_method,
        sample_from="mixture",
        lengths=lengths_label(settings),
    )
    runs: list[SchedulerStats] = []

    def go(count: int, cap_limit: int | None, stats: SchedulerStats) -> int:
        rows = [
            StreamRow(p, t, seed=s, max_new_tokens=c if cap_limit is None else min(c, cap_limit))
            for p, t, s, c in zip(batch[:count], batch_t[:count], seeds[:count], caps[:count])
        ]
        tokens = 0
        for out in model.generate_stream(
            rows,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            draft_tokens=k,
            limit=batch_size,
            skip_decode=True,
            stats=stats,
            separate_teacher_prompts=separate,
            ignore_eos=True,
        ):
            tokens += len(out.token_ids)
        return tokens

    def run() -> tuple:
        stats = SchedulerStats()
        tokens = go(rows_total, None, stats)
        runs.append(stats)
        return tokens, stats.steps, stats.occupancy(batch_size)

    def warm() -> None:
        from os_cli.bench.sweep import WARMUP_MAX_NEW_TOKENS

        go(batch_size, min(settings.max_new_tokens, WARMUP_MAX_NEW_TOKENS), SchedulerStats())

    return Point(row, run, warm), runs


def lengths_label(settings: BenchSettings) -> str:
    if settings.lengths == "long-tail":
        return (
            f"long-tail per-row caps (max {settings.max_new_tokens}, seed {settings.seed}), EOS and stop "
            f"strings ignored"
        )
    return f"fixed: {settings.max_new_tokens} tokens per row, EOS and stop strings ignored"


def measure_draft_tokens(
    model,
    prompts: Sequence[str],
    prompts_t: Sequence[str] | None,
    batch_size: int,
    ks: Sequence[int],
    settings: BenchSettings,
    *,
    cost_repeats: int = COST_REPEATS,
    on_row: Callable[[DraftRow], None] | None = None,
) -> tuple[list[DraftRow], dict]:
    """The plain loop and each k at `batch_size` on the same rows (the same caps, EOS and stop strings
    ignored), warmed up, then timed in `settings.repeats` interleaved rounds; then the forward costs.
    Returns (rows, k = 0 first; forward costs in ms, empty when a point failed: then no ideals).
    A failure of the cost timing itself is recorded on the plain loop's row."""
    made = [_draft_point(model, prompts, prompts_t, batch_size, settings, k) for k in [0, *ks]]
    timings = measure([p for p, _ in made], model_devices(model), settings.repeats)
    rows = []
    for k, (_point, runs), timing in zip([0, *ks], made, timings):
        row = DraftRow(k=k, timing=timing)
        if runs:
            last = runs[-1]
            row.rounds_per_run, row.theta_forwards, row.teacher_forwards = (
                last.steps,
                last.theta_forwards,
                last.teacher_forwards,
            )
            row.drafted, row.accepted = sum(s.drafted for s in runs), sum(s.accepted for s in runs)
        rows.append(row)
    plain = rows[0].timing
    context = len(model._token_ids(prompts[0], "prompts", 0)) + settings.max_new_tokens // 2
    costs: dict[str, float] = {}
    cost_error = None
    if all(r.ok for r in rows):  # a point that ran out of memory would again: no costs, no ideals
        try:
            costs = forward_costs(
                model,
                prompts[0],
                context,
                list(ks),
                batch_size=batch_size,
                temperature=settings.temperature,
                top_k=settings.top_k,
                top_p=settings.top_p,
                repeats=cost_repeats,
            )
        except Exception as exc:  # noqa: BLE001 - recorded on the plain loop's row (below), never raised
            cost_error = f"forward costs: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    for row in rows:
        t = row.timing
        if row.ok and plain.ok and len(t.seconds_all) == len(plain.seconds_all):
            ratios = [(t.new_tokens / s) / (plain.new_tokens / p) for s, p in zip(t.seconds_all, plain.seconds_all)]
            row.speedup = statistics.median(ratios)
            row.speedup_min, row.speedup_max = min(ratios), max(ratios)
            row.speedup_spread = (row.speedup_max - row.speedup_min) / row.speedup
        if row.k == 0:
            row.expected_tokens, row.ideal, row.ideal_plus = 1.0, 1.0, 1.0
        elif row.drafted:
            row.acceptance = row.accepted / row.drafted
            row.expected_tokens = expected_tokens_per_round(row.acceptance, row.k)
            if costs:
                row.ideal = ideal_speedup(row.acceptance, row.k, costs)
                row.ideal_plus = ideal_plus_speedup(row.acceptance, row.k, costs)
    if cost_error is not None:  # after the speed-ups, which do not need the costs
        rows[0].timing.error = cost_error
    if on_row is not None:
        for row in rows:
            on_row(row)
    return rows, costs


def recommend_draft_tokens(rows: Sequence[DraftRow]) -> dict:
    """The k with the best median speed-up among those that beat the plain loop: faster in every round
    (speedup_min > 1) and by more than the spread (speedup - 1 > speedup_spread); else 0.
    Returns {"draft_tokens", "set", "speedup", "reason"}."""
    wins = [
        r
        for r in rows
        if r.k
        and r.ok
        and r.speedup is not None
        and r.speedup_min is not None
        and r.speedup_spread is not None  # set together with speedup
        and r.speedup_min > 1
        and r.speedup - 1 > r.speedup_spread
    ]
    if not wins:
        tried = [r for r in rows if r.k and r.speedup is not None]

        def speedup(r: DraftRow) -> float:
            assert r.speedup is not None  # `tried` keeps the rows with one
            return r.speedup

        best = max(tried, key=speedup, default=None)
        reason = (
            "no k beats the plain loop by more than its spread"
            if best is None
            else f"no k beats the plain loop by more than its spread (best: k={best.k}, {best.speedup:.2f}x, "
            f"{best.speedup_min:.2f}-{best.speedup_max:.2f})"
        )
        return {"draft_tokens": 0, "set": "--set sampling.draft_tokens=0", "speedup": 1.0, "reason": reason}
    best = max(wins, key=lambda r: (r.speedup, -r.k))
    return {
        "draft_tokens": best.k,
        "set": f"--set sampling.draft_tokens={best.k}",
        "speedup": best.speedup,
        "reason": "best measured speed-up that beats the plain loop in every round by more than its spread",
    }


def report(rows: Sequence[DraftRow], costs: dict[str, float], recommendation: dict, batch_size: int) -> dict:
    """The `speculative` section of the bench JSON document (finite numbers or null)."""

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(
        {
            "batch_size": batch_size,
            "ks": [r.k for r in rows if r.k],
            "forward_costs_ms": dict(costs),
            "rows": [r.to_dict() for r in rows],
            "recommendation": dict(recommendation),
        }
    )
