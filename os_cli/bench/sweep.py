"""Throughput and memory of the sampler across batch sizes, and against baselines. No printing.

`os-sample bench` drives this module; it is usable from Python as well:

    rows = sweep(model, prompts, prompts_t, [1, 2, 4], settings=BenchSettings(max_new_tokens=64))
    pick = recommend(rows, headroom=0.1, total_memory=device_memory(model))

Definitions (also in the CLI help and README):
- a point runs max(num_prompts, ceil(batch size / num_samples)) prompts (cycled from those given),
  each `num_samples` times: prompts x num_samples rows, prompt-major, sample k of a prompt seeded
  `rng.sample_seed(seed of the prompt, k)`, exactly the rows `generate(num_samples=n)` runs;
- tokens/s counts generated tokens only (EOS included, prompts excluded), over the wall time of
  `model.generate` for the point's prompts (prefill included), with the device synchronised;
- a step is one decode iteration of one micro-batch (both models' forwards, the alpha solve and a
  draw); steps = sum over micro-batches of their longest completion, s/step = seconds / steps;
- peak memory on CUDA is `torch.cuda.max_memory_allocated` (and `max_memory_reserved`, which the
  headroom check uses) per device, reset before each point; on CPU it is the process's peak
  resident set size during the point (Linux: VmHWM after resetting it through
  /proc/self/clear_refs; where that is refused, the highest VmRSS sampled every few ms; elsewhere
  ru_maxrss, which never goes down: it is the process's high-water mark so far, not the point's);
  it includes the loaded models and everything else in the process;
- out of memory (`torch.OutOfMemoryError`, or a RuntimeError saying "out of memory") is recorded on
  the point, ends a sweep, and never propagates.

Memory readings (PeakMemory, device totals) live in memory.py, the machine description in machine.py,
the measurement of one point (warm-up, timed rounds, BenchRow) in measure.py, the comparison against
HF generate, the two-model floor and each alpha method (compare) in compare.py.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Callable, Sequence

import torch

from os_cli.bench.measure import BenchRow, Point, measure, overlaps
from os_cli.bench.workload import (  # noqa: F401 - re-exported: cli/bench, compare and draft_costs use them as B.*
    LENGTHS,
    BenchSettings,
    cycle_order,
    distinct_prompt_tokens,
    lengths_label,
    long_tail_caps,
    point_prompt_count,
    point_rows,
)
from os_cli.machine import machine_info
from os_cli.memory import device_memory, model_devices  # noqa: F401 - device_memory: cli/bench

AUTO_MAX_BATCH = 1024
DEFAULT_BATCH_SIZES = (1, 2, 4, 8)  # the sweep without --batch-sizes, plus the recipe's own batch size
AUTO_MIN_GAIN = 0.05  # a point "improves" when its throughput beats the best so far by more than this
AUTO_PATIENCE = 2  # `auto` stops after this many points in a row that do not improve by AUTO_MIN_GAIN
WARMUP_MAX_NEW_TOKENS = 16
BENCH_FORMAT = 2


def _steps(lengths: torch.Tensor, batch_size: int) -> int:
    counts = lengths.tolist()
    return int(sum(max(counts[i : i + batch_size]) for i in range(0, len(counts), batch_size)))


def engine_point(
    model,
    prompts,
    prompts_t,
    batch_size: int,
    settings: BenchSettings,
    *,
    mode: str,
    label: str | None,
    sample_from: str,
    alpha_method: str | None,
) -> Point:
    n, samples = point_prompt_count(settings, batch_size), max(1, settings.num_samples)
    batch = cycle_order(prompts, n)
    batch_t = cycle_order(prompts_t, n) if prompts_t is not None else None
    method = alpha_method or getattr(model, "alpha_method", None)
    name = label or (method if sample_from == "mixture" else f"sample_from={sample_from}")
    assert name is not None  # the sampler's alpha_method is always set (one of ALPHA_METHODS)
    distinct_theta, distinct_t, stacked = distinct_prompt_tokens(model, batch, batch_t)
    row = BenchRow(
        mode=mode,
        label=name,
        batch_size=batch_size,
        prompts=n,
        num_samples=samples,
        rows=n * samples,
        alpha_method=method if sample_from == "mixture" else None,
        sample_from=sample_from,
        lengths=lengths_label(settings),
        distinct_prompt_tokens_theta=distinct_theta,
        distinct_prompt_tokens_t=distinct_t,
        prefill_stacked=stacked,
    )
    kwargs = settings.generate_kwargs()
    if settings.lengths == "long-tail":  # one cap per row (each sample its own length)
        kwargs["max_new_tokens"] = long_tail_caps(n * samples, settings.max_new_tokens, settings.seed)

    def generate(prompts_, prompts_t_, **kw):
        # Per-call settings, the model untouched: fixed_length runs every row to its cap (the same work
        # for every compared run).
        return model.generate(
            prompts_,
            prompts_t_,
            batch_size=batch_size,
            num_samples=samples,  # prompt-major rows, each sample its own seed (api/samples.py)
            sample_from=sample_from,
            alpha=None if alpha_method is None else {"method": alpha_method},
            ignore_eos=settings.fixed_length,
            **kw,
        )

    def run() -> tuple:
        if settings.lengths == "long-tail":  # through the row stream, to see where the time goes
            return _long_tail_run(model, batch, batch_t, batch_size, settings, kwargs, sample_from, alpha_method)
        out = generate(batch, batch_t, **kwargs)
        ran = getattr(out, "prompt_tokens", None) or {}
        return (
            int(out.lengths.sum()),
            _steps(out.lengths, batch_size),
            getattr(out, "slot_occupancy", None),
            None,
            (ran.get("theta", 0), ran.get("t", 0)),
        )

    def warm() -> None:  # about one batch of rows: its prompts' first samples
        warm_kwargs = dict(kwargs, max_new_tokens=min(settings.max_new_tokens, WARMUP_MAX_NEW_TOKENS))
        first = -(-batch_size // samples)
        generate(batch[:first], batch_t[:first] if batch_t else None, **warm_kwargs)

    return Point(row, run, warm)


def _long_tail_run(
    model,
    batch,
    batch_t,
    batch_size: int,
    settings: BenchSettings,
    kwargs: dict,
    sample_from: str,
    alpha_method: str | None,
) -> tuple:
    """What `generate` runs for the long-tail point (the same rows, seeds and caps: each prompt `num_samples`
    times, prompt-major, sample k seeded `rng.sample_seed(prompt seed, k)` as `generate(num_samples=n)`
    seeds it), through `generate_stream` with a PhaseClock: (tokens, steps, slot occupancy, each phase's
    share of the time, the prompt tokens each model ran)."""
    from os_cli.api import arguments
    from os_cli.api.rows import StreamRow
    from os_cli.api.samples import repeat_samples, sample_seeds
    from os_cli.engine.phase_clock import PhaseClock
    from os_cli.engine.requests import SchedulerStats

    samples = max(1, settings.num_samples)
    seeds = sample_seeds(arguments.row_seeds(kwargs["seed"], len(batch)).tolist(), samples)
    teacher = batch_t or [None] * len(batch)
    rows = [
        StreamRow(p, t, seed=s, max_new_tokens=c)
        for p, t, s, c in zip(
            repeat_samples(list(batch), samples),
            repeat_samples(list(teacher), samples),
            seeds,
            kwargs["max_new_tokens"],
        )
    ]
    separate = model.same_model and any(t is not None and t != p for p, t in zip(batch, teacher))
    stats = SchedulerStats(clock=PhaseClock(model_devices(model)))
    tokens = sum(
        len(out.token_ids)
        for out in model.generate_stream(
            rows,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            stop=kwargs["stop"],
            sample_from=sample_from,
            limit=batch_size,
            skip_decode=True,
            stats=stats,
            separate_teacher_prompts=separate,
            ignore_eos=settings.fixed_length,
            alpha=None if alpha_method is None else {"method": alpha_method},
        )
    )
    assert stats.clock is not None  # set above
    prompt_tokens = (stats.prompt_tokens_theta, stats.prompt_tokens_t)
    return tokens, stats.steps, stats.occupancy(batch_size), stats.clock.shares(), prompt_tokens


def run_engine(
    model,
    prompts: Sequence[str],
    prompts_t: Sequence[str] | None,
    batch_size: int,
    settings: BenchSettings,
    *,
    mode: str = "sweep",
    label: str | None = None,
    sample_from: str = "mixture",
    alpha_method: str | None = None,
    warmup: bool = False,
) -> BenchRow:
    """Time `model.generate` on the point's rows (max(num_prompts, ceil(batch_size / num_samples)) prompts,
    each num_samples times) with `batch_size` in flight, `settings.repeats` times. `alpha_method` is passed per
    call (the model's own setting is untouched). `warmup` first runs about one untimed batch of rows (at most
    WARMUP_MAX_NEW_TOKENS tokens)."""
    point = engine_point(
        model,
        prompts,
        prompts_t,
        batch_size,
        settings,
        mode=mode,
        label=label,
        sample_from=sample_from,
        alpha_method=alpha_method,
    )
    return measure([point], model_devices(model), settings.repeats, warmup=warmup)[0]


# --------------------------------------------------------------------------------------------------
# Sweeps, recommendation


def default_batch_sizes(recipe_batch_size: int) -> list[int]:
    """DEFAULT_BATCH_SIZES and the batch size the recipe runs with, ascending."""
    return sorted({*DEFAULT_BATCH_SIZES, int(recipe_batch_size)})


def auto_batch_sizes(limit: int = AUTO_MAX_BATCH) -> list[int]:
    sizes, b = [], 1
    while b <= limit:
        sizes.append(b)
        b *= 2
    return sizes


def sweep(
    model,
    prompts: Sequence[str],
    prompts_t: Sequence[str] | None,
    batch_sizes: Sequence[int] | str,
    settings: BenchSettings,
    *,
    on_row: Callable[[BenchRow], None] | None = None,
    auto_limit: int = AUTO_MAX_BATCH,
    memory_limit: float | None = None,
) -> list[BenchRow]:
    """Measure the engine (the model's alpha method) at each batch size; one warm-up before the first.

    `batch_sizes="auto"` doubles from 1 and stops at out of memory, at `auto_limit`, at a point whose
    peak memory exceeds `memory_limit` bytes, or after AUTO_PATIENCE points in a row whose throughput
    does not beat the best so far by more than AUTO_MIN_GAIN (one noisy point does not end it). An
    out-of-memory point is recorded and ends the sweep; so does a point that fails otherwise.
    """
    auto = isinstance(batch_sizes, str)
    if auto and batch_sizes != "auto":
        raise ValueError(f"batch_sizes must be a list of integers or 'auto', got {batch_sizes!r}")
    sizes = auto_batch_sizes(auto_limit) if isinstance(batch_sizes, str) else list(batch_sizes)
    rows: list[BenchRow] = []
    best, flat = 0.0, 0
    for i, b in enumerate(sizes):
        row = run_engine(model, prompts, prompts_t, b, settings, mode="sweep", warmup=(i == 0))
        rows.append(row)
        if on_row is not None:
            on_row(row)
        if not row.ok:  # out of memory ends the sweep; so does any other failure (recorded in `error`)
            break
        if auto:
            peak = row.peak_reserved if row.peak_reserved is not None else row.peak_memory
            if memory_limit is not None and peak is not None and peak > memory_limit:
                break
            assert row.tokens_per_s is not None  # row.ok: tokens/s was measured
            flat = flat + 1 if best and row.tokens_per_s <= best * (1 + AUTO_MIN_GAIN) else 0
            best = max(best, row.tokens_per_s)
            if flat >= AUTO_PATIENCE:
                break
    return rows


def recommend(rows: Sequence[BenchRow], headroom: float, total_memory: dict[str, int] | None) -> dict:
    """The batch size with the best median throughput whose peak memory leaves `headroom` (a fraction of
    each device's total) free; CUDA uses the reserved peak (what the allocator holds). On CPU: the best
    throughput. It is recommended only when measurably faster than every other point that fits: where its
    tokens/s range over the timed runs overlaps another's (measure.overlaps), there is no measurable
    difference and no recommendation. Returns {"batch_size", "set", "tokens_per_s", "reason", "fastest"
    (best median among those that fit, recommended or not), "tied" (batch sizes not measurably different
    from it, itself included; empty when recommended)}; batch_size None when nothing is recommended."""
    none: dict[str, Any] = {"batch_size": None, "set": None, "tokens_per_s": None, "fastest": None, "tied": []}
    ok = [r for r in rows if r.ok]
    if not ok:
        return {**none, "reason": "no batch size ran to completion (see the rows' oom/error fields)"}
    fits = ok
    if total_memory:

        def within(r: BenchRow) -> bool:
            peak = r.peak_reserved if r.peak_reserved is not None else r.peak_memory
            return peak is not None and all(peak <= (1 - headroom) * total for total in total_memory.values())

        fits = [r for r in ok if within(r)]
        if not fits:
            smallest = min(ok, key=lambda r: r.batch_size)
            return {
                **none,
                "reason": f"no batch size leaves {headroom:.0%} of device memory free "
                f"(batch size {smallest.batch_size} peaked at {_gib(smallest.peak_reserved)})",
            }
    best = max(fits, key=lambda r: (r.tokens_per_s, -r.batch_size))
    tied = sorted({best.batch_size} | {r.batch_size for r in fits if r is not best and overlaps(r, best)})
    if len(tied) > 1:
        sizes = ", ".join(map(str, tied[:-1])) + f" and {tied[-1]}"
        return {
            **none,
            "fastest": best.batch_size,
            "tied": tied,
            "reason": f"no measurable difference between batch sizes {sizes}: their tokens/s ranges over "
            f"the timed runs (slowest to fastest) overlap",
        }
    if total_memory:
        reason = f"best throughput with at least {headroom:.0%} of device memory left free"
    else:
        reason = "best throughput (CPU: no memory headroom check)"
    if len(fits) > 1:
        reason += "; its slowest timed run beats every other batch size's fastest"
    return {
        "batch_size": best.batch_size,
        "set": f"--set sampling.batch_size={best.batch_size}",
        "tokens_per_s": best.tokens_per_s,
        "reason": reason,
        "fastest": best.batch_size,
        "tied": [],
    }


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.2f} GiB"


def report(
    model,
    settings: BenchSettings,
    rows: Sequence[BenchRow],
    compare_rows: Sequence[BenchRow] | None,
    recommendation: dict,
    extra_settings: dict[str, Any] | None = None,
    speculative: dict | None = None,
) -> dict:
    """The JSON document `os-sample bench --json FILE` writes (`speculative`: draft_bench.report's section)."""
    info = machine_info(model)
    return {
        "format": BENCH_FORMAT,
        "kind": "os-sample-bench",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **info,
        "settings": {**asdict(settings), **(extra_settings or {})},
        "rows": [r.to_dict() for r in rows],
        "compare": [r.to_dict() for r in compare_rows] if compare_rows is not None else None,
        "recommendation": recommendation,
        "speculative": speculative,
    }
