"""Speed comparisons at one batch size: HF `generate` of the teacher alone (the single-model reference),
the two-model floor and the engine with each alpha method, timed in interleaved rounds. No printing.

The engine's points and the workload (BenchSettings, prompts cycled and repeated per sample, per-row caps)
come from sweep.py.
"""

from __future__ import annotations

import statistics
from typing import Callable, Sequence

import torch

from os_cli.api.samples import repeat_samples
from os_cli.bench.measure import BenchRow, Point, measure
from os_cli.bench.sweep import WARMUP_MAX_NEW_TOKENS, engine_point
from os_cli.bench.workload import BenchSettings, cycle_order, lengths_label, point_prompt_count
from os_cli.memory import model_devices
from os_cli.mix.alpha import ALPHA_METHODS


def hf_point(model, prompts_t: Sequence[str], batch_size: int, settings: BenchSettings) -> Point:
    """Plain `transformers` sampling from the teacher alone (`do_sample=True`), the same prompts and
    settings: the single-model reference. Stop strings are not applied (HF counts up to EOS); with
    `fixed_length` EOS is ignored too (min_new_tokens = max_new_tokens). The rows are the engine's: each
    prompt num_samples times, prompt-major (HF prefills every row)."""
    n, samples = point_prompt_count(settings, batch_size), max(1, settings.num_samples)
    texts = repeat_samples(cycle_order(list(prompts_t), n), samples)
    rows = len(texts)
    teacher = model.model_t
    tokenizer = model.tokenizer_t
    eos = list(model.eos_token_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    gen = dict(
        do_sample=True,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k if settings.top_k > 0 else 0,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    if settings.fixed_length:
        gen["min_new_tokens"] = settings.max_new_tokens
    row = BenchRow(
        mode="hf_generate",
        label="HF generate (teacher)",
        batch_size=batch_size,
        prompts=n,
        num_samples=samples,
        rows=rows,
        lengths=lengths_label(settings) if settings.lengths != "long-tail" else "natural (HF: EOS only)",
    )
    eos_t = torch.tensor(eos)

    def one_pass(limit: int | None = None) -> tuple[int, int]:
        torch.manual_seed(settings.seed)
        tokens = steps = 0
        chunks = range(0, rows, batch_size) if limit is None else range(0, min(rows, batch_size), batch_size)
        for start in chunks:
            ids, mask = model.encode(texts[start : start + batch_size], teacher=True)  # the engine's ids
            kwargs = dict(gen, max_new_tokens=limit, min_new_tokens=0) if limit else gen
            with torch.inference_mode():
                out = teacher.generate(input_ids=ids, attention_mask=mask, **kwargs)
            new = out[:, ids.shape[1] :].cpu()
            steps += new.shape[1]
            is_eos = torch.isin(new, eos_t)
            has = is_eos.any(dim=1)
            full = torch.full_like(has, new.shape[1], dtype=torch.long)
            first = torch.where(has, is_eos.int().argmax(dim=1) + 1, full)  # tokens up to the first EOS
            tokens += int(first.sum())
        return tokens, steps

    return Point(row, one_pass, lambda: one_pass(limit=min(settings.max_new_tokens, WARMUP_MAX_NEW_TOKENS)))


def run_hf_generate(
    model, prompts_t: Sequence[str], batch_size: int, settings: BenchSettings, *, warmup: bool = True
) -> BenchRow:
    return measure(
        [hf_point(model, prompts_t, batch_size, settings)], model_devices(model), settings.repeats, warmup=warmup
    )[0]


def compare(
    model,
    prompts: Sequence[str],
    prompts_t: Sequence[str] | None,
    batch_size: int,
    settings: BenchSettings,
    *,
    methods: Sequence[str] | None = None,
    on_row: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    """Same prompts, settings, batch size and lengths: HF `generate` of the teacher alone, the
    two-model floor (`sample_from="teacher"`: both forwards, no alpha solve or mixing), then the engine
    with each alpha method. All are warmed up, then timed in `settings.repeats` interleaved rounds.
    Each row's `ratio_to_floor` is the median over rounds of its tokens/s over that round's floor's
    (ratio_min / ratio_max: the range). Unless `settings.lengths` is long-tail, the caller should set
    `settings.fixed_length` so every run does the same work (q* and the teacher end rows at other times)."""
    devices = model_devices(model)
    points = [
        hf_point(model, prompts_t if prompts_t is not None else prompts, batch_size, settings),
        engine_point(
            model,
            prompts,
            prompts_t,
            batch_size,
            settings,
            mode="floor",
            sample_from="teacher",
            label="floor (teacher draws)",
            alpha_method=None,
        ),
    ]
    for method in methods or ALPHA_METHODS:
        points.append(
            engine_point(
                model,
                prompts,
                prompts_t,
                batch_size,
                settings,
                mode="method",
                alpha_method=method,
                label=method,
                sample_from="mixture",
            )
        )
    rows = measure(points, devices, settings.repeats)
    floor = rows[1]
    for r in rows:
        if r.ok and floor.ok and len(r.seconds_all) == len(floor.seconds_all):
            ratios = [(r.new_tokens / t) / (floor.new_tokens / f) for t, f in zip(r.seconds_all, floor.seconds_all)]
            r.ratio_to_floor, r.ratio_min, r.ratio_max = statistics.median(ratios), min(ratios), max(ratios)
        if on_row is not None:
            on_row(r)
    return rows
