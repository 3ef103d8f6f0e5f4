"""Measuring one benchmark point: an untimed warm-up, then timed runs in interleaved rounds, each under
`PeakMemory`, reduced to a `BenchRow` (median seconds, tokens/s, spread). Out of memory and any other
failure is recorded on the row, never raised. No printing; `benchmark` builds the points.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from os_cli.memory import PeakMemory, sync

NOISY_SPREAD = 0.10  # spread (slowest - fastest) / median above which a row is flagged noisy


@dataclass
class BenchRow:
    """One measured run. `mode`: sweep | hf_generate | floor | method."""

    mode: str
    label: str
    batch_size: int
    prompts: int = 0  # distinct prompts the point runs (engine points: each num_samples times)
    num_samples: int = 1
    rows: int = 0  # prompts x num_samples
    alpha_method: str | None = None
    sample_from: str | None = None
    new_tokens: int = 0
    steps: int = 0
    seconds: float = 0.0
    tokens_per_s: float | None = None
    s_per_step: float | None = None
    peak_memory: int | None = None  # bytes, max over devices (CUDA: max_memory_allocated; CPU: peak RSS)
    peak_reserved: int | None = None  # bytes, CUDA only: max_memory_reserved
    memory_by_device: dict[str, int] = field(default_factory=dict)
    memory_metric: str | None = None
    oom: bool = False
    error: str | None = None
    ratio_to_floor: float | None = None  # median over rounds of tokens/s over the same round's floor
    ratio_min: float | None = None
    ratio_max: float | None = None
    repeats: int = 0  # timed runs (after the warm-up); seconds is their median
    seconds_all: list[float] = field(default_factory=list)
    spread: float | None = None  # (slowest - fastest) / median over the timed runs
    noisy: bool = False  # spread > NOISY_SPREAD: do not trust small differences
    lengths: str | None = None  # how completion lengths were set (see BenchSettings)
    slot_occupancy: float | None = None  # mean rows in flight / batch size, where the engine reports it
    time_split: dict | None = None  # share of the last timed run per phase (engine/phase_clock.py), long-tail
    # Engine points: prompt tokens each model's prefills ran in the last timed run (SchedulerStats), the tokens
    # the point's distinct prompts hold (the teacher's None: one stream serves both), and their ratio, prompt
    # tokens run per distinct prompt token (1.0: each prompt prefilled once, its samples sharing it)
    prompt_tokens_theta: int | None = None
    prompt_tokens_t: int | None = None
    distinct_prompt_tokens_theta: int | None = None
    distinct_prompt_tokens_t: int | None = None
    prefill_ratio_theta: float | None = None
    prefill_ratio_t: float | None = None  # None also when one stream serves both (prompt_tokens_t is 0)
    # One model with teacher prompts of its own (one stacked stream): distinct_prompt_tokens_theta and
    # prefill_ratio_theta cover both sides' prompts together, the teacher's distinct tokens are 0 and its ratio None
    prefill_stacked: bool = False

    @property
    def ok(self) -> bool:
        return not self.oom and self.error is None and bool(self.tokens_per_s)

    def to_dict(self) -> dict:
        return asdict(self)


def rate_range(row: BenchRow) -> tuple[float, float]:
    """(slowest, fastest) tokens/s over the row's timed runs; (tokens/s, tokens/s) where it has no run times."""
    if row.new_tokens and row.seconds_all and min(row.seconds_all) > 0:
        return row.new_tokens / max(row.seconds_all), row.new_tokens / min(row.seconds_all)
    return row.tokens_per_s or 0.0, row.tokens_per_s or 0.0


def overlaps(a: BenchRow, b: BenchRow) -> bool:
    """No measurable difference between two rows: their tokens/s ranges over the timed runs,
    [slowest, fastest], overlap (the one definition bench's recommendation uses)."""
    (a_lo, a_hi), (b_lo, b_hi) = rate_range(a), rate_range(b)
    return a_lo <= b_hi and b_lo <= a_hi


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _failed(row: BenchRow, exc: BaseException) -> BenchRow:
    row.oom = is_oom(exc)
    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    row.error = f"out of memory: {first}" if row.oom else f"{type(exc).__name__}: {first}"
    _free_memory()
    return row


class Point:
    """One row to measure: `warmup()` (untimed) then, per round,
    `run() -> (new tokens, steps[, occupancy[, time split[, prompt tokens run (theta, teacher)]]])`."""

    def __init__(self, row: BenchRow, run: Callable[[], tuple], warmup: Callable[[], Any] | None = None):
        self.row, self.run, self.warmup = row, run, warmup
        self.tokens: list[int] = []
        self.steps = 0
        self.occupancy: float | None = None
        self.prompt_tokens: tuple[int, int] | None = None


def _warm(point: Point, devices) -> bool:
    try:
        if point.warmup is not None:
            point.warmup()
            sync(devices)
        return True
    except Exception as exc:  # noqa: BLE001 - recorded on the row like a measured failure
        _failed(point.row, exc)
        return False


def _time_once(point: Point, devices) -> None:
    """One timed run of `point` under memory tracking; a failure is recorded on its row."""
    row = point.row
    try:
        with PeakMemory(devices) as mem:
            sync(devices)
            start = time.perf_counter()
            result = point.run()
            sync(devices)
            seconds = time.perf_counter() - start
        peak, reserved, by_device = mem.read()
    except Exception as exc:  # noqa: BLE001 - OOM is a result; anything else is recorded, not raised
        _failed(row, exc)
        return
    row.seconds_all.append(seconds)
    point.tokens.append(int(result[0]))
    point.steps = int(result[1])
    if len(result) > 2 and result[2] is not None:
        point.occupancy = float(result[2])
    if len(result) > 3 and result[3] is not None:
        row.time_split = dict(result[3])
    if len(result) > 4 and result[4] is not None:
        point.prompt_tokens = (int(result[4][0]), int(result[4][1]))
    row.peak_memory = max(row.peak_memory or 0, peak) if peak is not None else row.peak_memory
    if reserved is not None:
        row.peak_reserved = max(row.peak_reserved or 0, reserved)
    for key, value in by_device.items():
        row.memory_by_device[key] = max(row.memory_by_device.get(key, 0), value)
    row.memory_metric = mem.metric


def _finish(point: Point) -> BenchRow:
    """Median seconds, tokens/s and the spread of the timed runs onto the row."""
    row = point.row
    if row.error is not None or not row.seconds_all:
        return row
    times = row.seconds_all
    median = statistics.median(times)
    row.repeats, row.seconds = len(times), median
    row.new_tokens, row.steps = point.tokens[-1], point.steps
    row.tokens_per_s = row.new_tokens / median if median > 0 else None
    row.s_per_step = median / row.steps if row.steps else None
    row.spread = (max(times) - min(times)) / median if median > 0 else None
    row.noisy = bool(row.spread is not None and row.spread > NOISY_SPREAD)
    row.slot_occupancy = point.occupancy
    if point.prompt_tokens is not None:
        row.prompt_tokens_theta, row.prompt_tokens_t = point.prompt_tokens
        ran_theta = row.prompt_tokens_theta + (row.prompt_tokens_t if row.prefill_stacked else 0)
        row.prefill_ratio_theta = _ratio(ran_theta, row.distinct_prompt_tokens_theta)
        row.prefill_ratio_t = _ratio(row.prompt_tokens_t, row.distinct_prompt_tokens_t)
    return row


def _ratio(ran: int, distinct: int | None) -> float | None:
    """Prompt tokens run per distinct prompt token; None where the side has no stream of its own."""
    return ran / distinct if distinct else None


def measure(points: Sequence[Point], devices, repeats: int, *, warmup: bool = True) -> list[BenchRow]:
    """Warm every point up, then time them in `repeats` interleaved rounds (drift hits all alike)."""
    live = [p for p in points if (_warm(p, devices) if warmup else True)]
    for _ in range(max(1, repeats)):
        for p in live:
            if p.row.error is None:
                _time_once(p, devices)
    return [_finish(p) for p in points]
