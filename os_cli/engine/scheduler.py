"""Continuous batching: rows stream in, up to `limit` decode at once, each result comes out when its row ends.

`decode_rows(requests, ..., settings, limit=...)` is a generator (the call's settings: engine/settings.py).
It keeps up to `limit.value` rows in flight; when rows end (EOS, their token cap, a stop string) they
are yielded at once and waiting requests
are prefilled and join the running batch (`ModelStream.join`). Pad columns no row needs any more
are trimmed after rows leave or join. The caller may lower `limit` while iterating (between two
yielded results): rows beyond it go back to the waiting rows and restart from scratch,
which changes nothing in their output, since a row's draws depend only on its key and step
(rng.py). With `settings.oom_backoff` an out-of-memory error in a forward does that by itself: the
streams are restored, the limit is halved (recorded in `limit.backoffs`) and the step retried.

Invariant between iterations: each stream's cache holds every row's prompt and emitted tokens
except the last emitted one (`pending`), which the next iteration feeds. A new row is prefilled
and draws its first token from q* directly (stream 0, step 0, as the plain loop does); after
that a plain iteration feeds the pending tokens and draws one token per row, and a speculative
one (`settings.draft_tokens=k`, os_cli/speculative.py) emits 1..k+1 tokens per row.

Admission (`settings.admission`, os_cli/admission.py): by default the loop reads a bounded window of
requests ahead and admits the largest token cap first, so a long-tailed workload does not end with
a few long rows decoding alone; "input_order" admits rows as they come. Each row carries its last
solved alpha (`RowGroup.alphas`) into the next plain step as the solver's warm start (`alpha_init`).

Rows with the same prompt ids share one prefill (engine/prefix.py: num_samples' repeated prompts); one
model with teacher prompts of its own decodes as stacked pairs, one forward of 2B rows (engine/stacked.py).

One host sync per iteration (the end check) when nothing ends; a few more when rows end or
join, and per speculative round (accepted counts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Iterator, cast

import torch

from os_cli.engine import admission as admission_policy
from os_cli.engine import auto_draft, phase_clock, prefix, speculative
from os_cli.engine.admission import ADMISSIONS, LOOKAHEAD_PER_SLOT  # noqa: F401  (re-exported)
from os_cli.engine.draft_policy import AUTO, AutoDraft
from os_cli.engine.group import InFlightRow, RowGroup
from os_cli.engine.recording import RowRecorder
from os_cli.engine.requests import InFlightLimit, RowRequest, RowResult, SchedulerStats  # noqa: F401  (re-exported)
from os_cli.engine.settings import DecodeSettings
from os_cli.engine.slot_buffers import SlotBuffers
from os_cli.engine.stacked import StackedPair
from os_cli.engine.streams import TRACE_FIELDS, ModelStream, trace_columns
from os_cli.mix.sampler import StepOutput
from os_cli.models.loading import input_device
from os_cli.prompts.lengths import draft_overrun

if TYPE_CHECKING:
    from os_cli.engine.fixed_slots import FixedSlots

# step_fn(logits_theta [n, V], logits_t [n, V], row_keys [n], steps [n], alpha_init=None) -> StepOutput: the
# q* step. `alpha_init` [n] float (NaN: none) is each row's previous `alpha_solved`, the solver's warm start:
# plain steps pass it, prefills and speculative rounds leave it out.
RowStepFn = Callable[..., StepOutput]


def decode_rows(
    requests: Iterable[RowRequest],
    model_theta,
    model_t,
    vocab_size: int,
    step_fn: RowStepFn,
    settings: DecodeSettings,
    *,
    limit: int | InFlightLimit,
    stats: SchedulerStats | None = None,
    fixed_slots: FixedSlots | None = None,
) -> Iterator[RowResult]:
    """Decode `requests` (any iterable, read lazily) with continuous refill; yield each row as it ends.

    `model_t=None` runs one stream whose logits play both parts (identical prompts, one model).
    `settings` (engine/settings.py) are the call's: `draft_tokens=k > 0` decodes by exact speculative
    rounds (needs `model_t`), and `settings.config.temperature` must be the one `step_fn` uses, since
    drafts come from the temperature-scaled pi_theta. `topk`: also record the teacher's top-K per token
    (os_cli/topk.py; one top-k per step, on the device). `admit_min`: waiting rows are prefilled once
    that many slots are free (default a quarter of the limit, at least 1), since a prefill's cost hardly
    depends on how many rows it takes. `admission` (admission.ADMISSIONS): which waiting row goes next.
    "longest_first" reads up to `lookahead` requests ahead of the rows in flight (default
    LOOKAHEAD_PER_SLOT x the initial limit; never the whole iterator) and admits the largest token cap
    first; "input_order" reads one at a time. A row's output depends on neither (its draws are keyed
    by its key and step).
    Results come in finishing order; `RowResult.index` says which request each one is.
    `fixed_slots` (os_cli/static_stream.FixedSlots, `compile=True`): rows decode in its fixed cache
    slots, one per in-flight row, instead of in growing caches; new rows still prefill eagerly and join.
    """
    if settings.draft_tokens and model_t is None:
        raise ValueError("draft_tokens needs a teacher stream (two models, or two prompts)")
    if settings.draft_tokens and fixed_slots is not None:
        raise ValueError("fixed slots (compile) decode one token per step: draft_tokens must be 0")
    admission_policy.check(settings.admission, settings.lookahead)
    loop = _Loop(
        model_theta,
        model_t,
        vocab_size,
        step_fn,
        settings,
        limit if isinstance(limit, InFlightLimit) else InFlightLimit(limit),
        stats if stats is not None else SchedulerStats(),
    )
    loop.fixed = fixed_slots
    lookahead = settings.lookahead if settings.lookahead is not None else LOOKAHEAD_PER_SLOT * loop.limit.value
    waiting = admission_policy.Waiting(
        iter(requests),
        settings.admission,
        lookahead,
        cap=lambda r: r.max_new_tokens or settings.max_new_tokens,
        accept=loop._check,
        # A hash, not the ids: an int per waiting row, compared in O(1); a collision only reorders admissions.
        prompt=lambda r: hash((tuple(r.ids_theta), None if r.ids_t is None else tuple(r.ids_t))),
    )
    with phase_clock.attached(loop.clock, [model_theta, model_t]):  # where the time goes (benchmarks)
        yield from loop.run(waiting)


class _Loop:
    def __init__(
        self,
        model_theta,
        model_t,
        vocab_size,
        step_fn,
        settings: DecodeSettings,
        limit: InFlightLimit,
        stats: SchedulerStats,
    ):
        self.model_theta, self.model_t, self.vocab_size, self.step_fn = model_theta, model_t, vocab_size, step_fn
        self.settings, self.limit, self.stats = settings, limit, stats
        self.clock = stats.clock
        self.step_fn = step_fn if self.clock is None else self.clock.wrap_step(step_fn)
        self.admit_min = settings.admit_min if settings.admit_min is not None else max(1, limit.value // 4)
        self.device = input_device(model_theta)  # where mixing runs; the teacher's logits come here
        # draft_tokens="auto": k chosen per iteration (draft_policy.py, auto_draft.py); `draft_policy.choices`.
        self.draft_policy = AutoDraft() if settings.draft_tokens == AUTO else None
        # One slot per row the initial limit lets in (the limit only ever goes down), each with room for
        # max_new_tokens plus a speculative round's overshoot (k + 1 columns from a row's step; k never
        # exceeds the tokens left, _round).
        width = settings.max_new_tokens + draft_overrun(settings.draft_tokens, settings.max_new_tokens) + 1
        self.free = list(range(limit.value - 1, -1, -1))
        eos = torch.tensor(sorted(set(settings.eos_ids)), dtype=torch.long, device=self.device)
        buffers = SlotBuffers(limit.value, width, settings.pad_id, self.device, settings.topk)
        self.record = RowRecorder(settings, buffers, eos, stats, self.free, self.device)  # steps' outputs, row ends
        self.main: RowGroup | None = None
        # One model with teacher prompts of its own: one stream of interleaved pairs (stacked.py).
        self.stacked = model_t is model_theta and settings.stack_one_model
        # Prefilled prompts kept for the next rows with the same prompt (num_samples; engine/prefix.py).
        share = settings.share_prompts
        self.stores = [
            prefix.PromptStore() if share and m is not None and prefix.shareable(m) else None
            for m in (model_theta, model_t)
        ]
        self.waiting: admission_policy.Waiting[RowRequest] | None = None  # rows read, not in flight (admission.py)
        self.fixed: FixedSlots | None = None  # set by decode_rows

    # ------------------------------------------------------------------ driver

    def run(self, waiting: admission_policy.Waiting[RowRequest]) -> Iterator[RowResult]:
        self.waiting = waiting
        while True:
            self._enforce_limit()
            in_flight = len(self.main) if self.main else 0
            room = self.limit.value - in_flight
            if in_flight and room < min(self.admit_min, self.limit.value):
                room = 0  # wait for a few free slots: one prefill for several rows costs about one for one
            batch: list[tuple[int, RowRequest]] = []
            while len(batch) < room:
                row = waiting.take()
                if row is None:
                    break
                batch.append(row)
            if batch:
                with phase_clock.timed(self.clock, "prefill/join"):  # the admission's work, not the caller's
                    admitted = list(self._admit(batch))
                yield from admitted
            if not self.main:
                if waiting.done:
                    return
                continue
            yield from self._guarded(self._iteration)
            if self.main is not None and not len(self.main):
                self.main = None

    def _check(self, request: RowRequest) -> RowRequest:
        if not request.ids_theta or (self.model_t is not None and not request.ids_t):
            raise ValueError(f"row {request.index!r}: a prompt with no tokens")
        cap = request.max_new_tokens
        if cap is not None and not (isinstance(cap, int) and 1 <= cap <= self.settings.max_new_tokens):
            raise ValueError(
                f"row {request.index!r}: max_new_tokens must be in 1..{self.settings.max_new_tokens}, got {cap!r}"
            )
        return request

    def _enforce_limit(self) -> None:
        """Rows beyond the limit (the most recently admitted) wait again, at their input position."""
        if not self.main or len(self.main) <= self.limit.value:
            return
        evicted = self.main.rows[self.limit.value :]
        assert self.waiting is not None  # set by run()
        self.waiting.send_back([(row.position, row.request) for row in evicted])  # same input position
        self.free.extend(row.slot for row in evicted)
        self.main.keep(list(range(self.limit.value)))

    def _guarded(self, advance: Callable[[], Iterator[RowResult]]) -> Iterator[RowResult]:
        """Run one iteration; on OOM (with oom_backoff) restore the streams, halve the limit, retry later."""
        assert self.main is not None  # run() advances only with rows in flight
        saved = [s.checkpoint() for s in self.main.streams()] if self.settings.oom_backoff else None
        try:
            results = advance()
        except torch.OutOfMemoryError as exc:
            if not self.settings.oom_backoff or len(self.main) <= 1:
                raise
            assert saved is not None  # taken with oom_backoff
            for stream, state in zip(self.main.streams(), saved):
                stream.restore(state)
            self._back_off(len(self.main), exc)
            return
        yield from results

    def _back_off(self, rows: int, exc: BaseException) -> None:
        new = max(1, rows // 2)
        self.limit.lower(new)
        self.limit.backoffs.append(
            (rows, self.limit.value, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        )
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ admission

    def _admit(self, batch: list[tuple[int, RowRequest]]) -> Iterator[RowResult]:
        try:
            group = self._prefill(batch)
        except torch.OutOfMemoryError as exc:
            in_flight = len(self.main) if self.main else 0
            if not self.settings.oom_backoff or in_flight + len(batch) <= 1:
                raise
            assert self.waiting is not None  # set by run()
            self.waiting.send_back(batch)
            self._back_off(in_flight + len(batch), exc)
            return
        if len(group):
            if self.main is None:
                if self.fixed is not None and self.stacked:  # compile: 2 slots per pair (fixed_slots.py)
                    assert isinstance(group.theta, StackedPair)
                    group.theta = StackedPair(self.fixed.adopt(group.theta.inner, None)[0])
                elif self.fixed is not None:  # compile: the rows move into the fixed slots (fixed_slots.py)
                    theta, teacher = group.prefilled()
                    assert isinstance(theta, ModelStream)
                    group.theta, group.teacher = self.fixed.adopt(theta, teacher)
                self.main = group
            else:
                self.main.join(group)
        yield from self.finished

    def _prefill(self, waiting: list[tuple[int, RowRequest]]) -> RowGroup:
        device, batch = self.device, [r for _, r in waiting]
        if self.stacked:  # one stream, theta's and the teacher's prompt of each row interleaved (stacked.py)
            theta, logits = self._prefill_side(
                self.model_theta, [ids for r in batch for ids in (r.ids_theta, r.teacher_ids())]
            )
            theta, teacher, logits_theta, logits_t = StackedPair(theta), None, logits[0::2], logits[1::2]
        else:
            theta, logits_theta = self._prefill_side(self.model_theta, [r.ids_theta for r in batch])
            teacher, logits_t = None, logits_theta
            if self.model_t is not None:
                teacher, logits_t = self._prefill_side(self.model_t, [r.teacher_ids() for r in batch], 1)
        self.stats.prefills += 1
        slots = [self.free.pop() for _ in batch]
        group = RowGroup(
            [InFlightRow(r, s, p) for (p, r), s in zip(waiting, slots)],
            theta,
            teacher,
            torch.tensor([r.key for r in batch], dtype=torch.int64, device=device),
            torch.zeros(len(batch), dtype=torch.long, device=device),
            torch.tensor(
                [r.max_new_tokens or self.settings.max_new_tokens for r in batch], dtype=torch.long, device=device
            ),
            torch.tensor(slots, dtype=torch.long, device=device),
            torch.full((len(batch),), float("nan"), device=device),
        )
        out = self.step_fn(logits_theta, logits_t, group.keys, group.steps)  # first tokens: cold starts
        self.record.carry_alpha(group, out)
        self.record.keep_distributions(group, logits_theta[:, None], logits_t[:, None], out.logq[:, None])
        self.record.keep_topk(group, logits_theta[:, None], logits_t[:, None], out.logq[:, None], out.fallback[:, None])
        self.finished = list(
            self.record.emit(group, out.tokens[:, None], torch.ones_like(group.steps), trace_columns(out)[:, :, None])
        )
        return group

    def _prefill_side(self, model, rows: list, side: int = 0):
        """One model's stream over `rows`, each distinct prompt run once (engine/prefix.py); the last row's
        prompts are kept for the next admission (the next sample of that prompt may come then). Stacked
        rows alternate theta's prompt and the teacher's: the prompt tokens are counted per side."""
        last = {tuple(rows[-1])} | ({tuple(rows[-2])} if self.stacked else set())
        stream, logits, ran = prefix.prefill_rows(
            model,
            self.vocab_size,
            rows,
            self.settings.pad_id,
            self.device,
            self.stores[side],
            keep=last,
            output_device=self.device,
        )
        store = self.stores[side]
        if store is not None:
            store.retain(last)
        theta_rows = {tuple(r) for r in rows[::2]} if self.stacked else None
        for key in ran:
            if side == 1 or (theta_rows is not None and key not in theta_rows):
                self.stats.prompt_tokens_t += len(key)
            else:
                self.stats.prompt_tokens_theta += len(key)
        return stream, logits

    # ------------------------------------------------------------------ one iteration

    @property
    def group(self) -> RowGroup:
        """The rows in flight (`_step` and `_round` run only while there are some)."""
        assert self.main is not None
        return self.main

    def _iteration(self) -> Iterator[RowResult]:
        """A plain step or a speculative round at the fixed or chosen (auto) draft length."""
        g, stats = self.group, self.stats
        if self.draft_policy is not None and self.stacked:
            k = 0  # no teacher stream to time, and a stacked round costs about k + 1 plain steps
        elif self.draft_policy is not None:
            theta, teacher = g.prefilled()  # speculative rounds run on ModelStreams (no fixed slots)
            assert isinstance(theta, ModelStream) and teacher is not None and g.pending is not None
            k = auto_draft.choose(
                self.draft_policy,
                theta,
                teacher,
                g.pending,
                g.keys,
                g.steps,
                self.step_fn,
                stats,
                temperature=self.settings.config.temperature,
            )
        else:
            fixed = self.settings.draft_tokens
            assert isinstance(fixed, int)  # "auto" has a draft policy
            k = fixed
        stats.draft_lengths[k] = stats.draft_lengths.get(k, 0) + 1
        accepted, drafted = stats.accepted, stats.drafted
        results = self._round(k) if k else self._step()
        if self.draft_policy is not None:
            self.draft_policy.record(stats.accepted - accepted, stats.drafted - drafted)
        return results

    def _step(self) -> Iterator[RowResult]:
        g = self.group
        logits_theta, logits_t = g.step()
        self.stats.theta_forwards += 1
        self.stats.teacher_forwards += g.teacher is not None
        self.stats.steps += 1
        self.stats.row_steps += len(g)
        out = self.step_fn(logits_theta, logits_t, g.keys, g.steps, alpha_init=g.alphas)
        self.record.carry_alpha(g, out)
        self.record.keep_distributions(g, logits_theta[:, None], logits_t[:, None], out.logq[:, None])
        self.record.keep_topk(g, logits_theta[:, None], logits_t[:, None], out.logq[:, None], out.fallback[:, None])
        return self.record.emit(g, out.tokens[:, None], torch.ones_like(g.steps), trace_columns(out)[:, :, None])

    def _round(self, k: int) -> Iterator[RowResult]:
        """One exact speculative round (os_cli/speculative.py) at draft length k for every row in flight."""
        g = self.group
        # Drafts: ModelStreams, or a stacked pair (decode_rows rules out fixed slots); pending as in _step.
        assert g.pending is not None
        self.stats.steps += 1
        self.stats.row_steps += len(g)
        # No row emits more than it has left, so drafting past the most any row has left is waste (and feeds
        # positions beyond the context). Exact and output-preserving: a row's first n tokens are the same for
        # every k >= n (draws are keyed by position), so capping k at max(left) >= n changes no row's tokens.
        k = min(k, int((g.caps - g.steps).max()))
        # A stacked pair's views drive run_round with the ModelStream methods it calls (stacked.py).
        theta, teacher = g.theta.round_views() if isinstance(g.theta, StackedPair) else (g.theta, g.teacher)
        r = speculative.run_round(
            cast(ModelStream, theta),
            cast(ModelStream, teacher),
            g.pending,
            g.keys,
            g.steps,
            k,
            self.settings.config.temperature,
            self.step_fn,
            self.stats,
        )
        self.stats.teacher_forwards -= self.stacked  # the teacher rows rode along theta's k + 1 forwards
        if self.settings.keep_logits or self.settings.keep_q_star:
            self.record.keep_distributions(g, r.logits_theta, r.logits_t, r.logq, counts=r.counts)
        self.record.keep_topk(g, r.logits_theta, r.logits_t, r.logq, r.traces[TRACE_FIELDS.index("fallback")])
        results = list(self.record.emit(g, r.emitted, r.counts, r.traces))
        for stream in g.model_streams():  # holes left by rejected drafts: repack once they are worth a copy
            stream.compact(min_waste=max(8, stream.attention_mask.shape[1] // 8))
        return iter(results)
