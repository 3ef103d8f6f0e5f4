"""The run loop of `os-sample generate`, as a library (no printing: events go to a `RunEvents`).

`run_in_folder(recipe, out_dir, dist, planned, events, ...)` takes a checked plan (os_cli/planning.py),
checks and locks the output folder and hands over to `run_locked`, which decides what is left to do
(exactly once per (row, sample), from the records on disk), loads the models only if something is,
starts the writer and streams the pending rows through the engine's one batching loop
(`OptimalSamplingModel.generate_stream`, continuous refill): each row's record is appended as soon
as the row ends, so records land in finishing order, not dataset order (readers key by id). Every
row's draws are seeded from (sampling.seed, the row's dataset index, the sample index), so a
record does not depend on which rows it decoded beside, on OOM back-off, or on where a killed run
resumes.

An out-of-memory error lowers the engine's in-flight limit (halved; the rows beyond it restart with
the same output) instead of failing; with one row in flight it ends the run (exit 1). A stop signal
(os_cli/signals.py) ends the run between writes: a write in progress finishes first, rows still
decoding are redone on resume; the manifest says `interrupted`.

Launched with WORLD_SIZE > 1 (`accelerate launch`, `torchrun`), rank r samples the rows whose
position in the plan is r modulo the world size (`Distributed`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from os_cli.errors import UserError
from os_cli.mix.rng import row_seed, sample_seed
from os_cli.recipe.typed import Output, Prompts, Recipe, Sampling
from os_cli.run import testing_hooks
from os_cli.run.signals import StopSignals
from os_cli.store.record_format import TOPK_OF_DEFAULT, RecordSettings, build_record

# Finished rows are appended at most every WRITE_INTERVAL_S, and never more often than keeps writing
# under 1/WRITE_COST_FACTOR of the run: each append rewrites and fsyncs the current shard, which grows
# to output.shard_size records, so on a fast GPU a fixed short interval could stall decoding on I/O.
WRITE_INTERVAL_S = 0.25
WRITE_COST_FACTOR = 20


@dataclass(frozen=True)
class StreamSettings:
    """What the sampling loop reads of a recipe: these sections and keys, not the recipe."""

    sampling: Sampling  # the `sampling` section
    alpha_method: str  # alpha.method, written in every record
    per_token: bool  # output.per_token
    keep_fields: Any  # dataset.keep_fields: all | none | [field, ...]
    teacher_prompts: bool  # prompts.teacher is set: the teacher reads its own prompts
    topk_logprobs: int = 0  # output.topk_logprobs (0: off)
    topk_of: tuple = TOPK_OF_DEFAULT  # output.topk_of

    @classmethod
    def of(cls, recipe: Recipe) -> StreamSettings:
        return cls(
            sampling=recipe.sampling,
            alpha_method=recipe.alpha.method,
            per_token=recipe.output.per_token,
            keep_fields=recipe.dataset.keep_fields,
            teacher_prompts=recipe.prompts.teacher is not None,
            topk_logprobs=recipe.output.topk_logprobs,
            topk_of=recipe.output.topk_of,
        )


class RunEvents:
    """What a run reports; the CLI's dashboard implements these. Every method is optional."""

    def note(self, message: str) -> None:
        """A line worth telling (loading models, resuming, an OOM back-off, a folder note)."""

    def started(self, total: int, done: int, limit: int, shard: str) -> None:
        """Sampling starts: `total` records for this rank, `done` already written, in-flight limit."""

    def in_flight(self, rows: int, limit: int) -> None:
        """Rows decoding now and the current in-flight limit."""

    def written(self, tokens: int, alpha: list[float], ess: list[float], shard: str) -> None:
        """One record appended: its token count and its real tokens' alpha / ESS ratio (finite)."""

    def actors(self, alive: int, total: int) -> None:
        """--backend ray: sampling actors alive now, of the pool's size."""

    def finished(self, status: str, manifest: dict, written: int) -> None:
        """The run ended (complete | interrupted | failed); `written` records this run."""


class Distributed:
    """Rank and world size; `accelerate.PartialState` only when launched with WORLD_SIZE > 1."""

    def __init__(self, device: str = "auto"):
        self.state = None
        self.rank, self.world_size, self.device = 0, 1, None
        launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if launched > 1:
            import torch
            from accelerate import PartialState

            # accelerate only forms a CPU process group (gloo) when asked to
            self.state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
            self.rank, self.world_size = self.state.process_index, self.state.num_processes
            self.device = self.state.device
            if self.world_size != launched:
                raise UserError(
                    f"WORLD_SIZE is {launched} but accelerate formed a group of {self.world_size} "
                    f"processes; launch with `accelerate launch` or `torchrun`",
                    exit_code=1,
                )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def unit_seed(seed: int, item, sample: int) -> int:
    """The seed of sample `sample` of a planned row (`seed`: sampling.seed): sample 0 is the row's own (rng.py)."""
    return sample_seed(row_seed(seed, item.index), sample)


def check_draft_tokens(sampling: Sampling, prompts: Prompts, places) -> None:
    """sampling.draft_tokens needs a teacher distribution that differs from theta's (before models load);
    `sampling`, `prompts`: the recipe's sections, `places`: `recipe.places`."""
    k = sampling.draft_tokens
    if not k:
        return
    if places.teacher in (None, places.theta) and prompts.teacher is None:
        raise UserError(
            f"sampling.draft_tokens: {k} needs a teacher that differs from theta (models.teacher, or "
            f"prompts.teacher for a hint); with one model on the same prompts q* is pi_theta and there "
            f"is nothing to draft. Set sampling.draft_tokens: 0"
        )


def check_topk_logprobs(output: Output, theta_name: str, vocab_size: int) -> None:
    """output.topk_logprobs is at most the vocabulary (theta's tokenizer), checked before models load."""
    k = output.topk_logprobs
    if k > vocab_size:
        raise UserError(
            f"output.topk_logprobs: {k} is more than the vocabulary ({vocab_size} tokens in "
            f"{theta_name}'s tokenizer); allowed: 0 (off) or 1..{vocab_size}"
        )


def run_in_folder(
    recipe: Recipe,
    out_dir: Path,
    dist: Distributed,
    planned,
    events: RunEvents,
    *,
    overwrite: bool,
    resume: bool,
    repair: bool,
) -> None:
    """The output folder, before the (slow) model load: refuse a foreign folder, a changed recipe or dataset,
    a path that cannot be written; then lock it (exit 1 if another run holds it) and run (`run_locked`)."""
    from os_cli.store.folder import FolderLock, check_writable, finish_swap, make_folder
    from os_cli.store.writer import check_output

    if dist.is_main:
        for text in finish_swap(out_dir):
            events.note(text)
    check_output(out_dir, recipe, overwrite=overwrite, plan=planned.entries)
    check_writable(out_dir)
    make_folder(out_dir)
    locks = [FolderLock(out_dir, dist.rank).acquire()]
    try:
        run_locked(recipe, out_dir, dist, planned, locks, events, overwrite=overwrite, resume=resume, repair=repair)
    finally:
        for lock in locks:
            lock.release()


def run_locked(
    recipe: Recipe,
    out_dir: Path,
    dist: Distributed,
    planned,
    locks,
    events: RunEvents,
    *,
    overwrite: bool,
    resume: bool,
    repair: bool,
) -> None:
    """Everything after the folder lock: resume scan, model load, sampling, the --overwrite swap.
    `planned`: the checked plan (run/plan.Planned: its rows, rendered prompts and plan entries)."""
    from os_cli.api.build import build_model
    from os_cli.recipe import model_settings
    from os_cli.store.folder import FolderLock, prepare_staging, staging_dir, swap_in
    from os_cli.store.writer import (
        RunWriter,
        check_output,
        check_plan,
        num_samples_of,
        read_manifest,
        scan_records,
        token_spec,
    )

    rows, rendered, plan = planned.rows, planned.rendered, planned.entries
    note = events.note if dist.is_main else (lambda message: None)
    mode = check_output(out_dir, recipe, overwrite=overwrite, plan=plan)  # again, now that we hold the lock
    if resume and mode == "new":
        note(f"--resume: nothing to resume in {out_dir}; starting a new run")
    if mode != "overwrite" and staging_dir(out_dir).exists():
        note(
            f"note: {staging_dir(out_dir)} holds an --overwrite run of this folder that did not complete; "
            f"rerun that command to start it again, or delete the folder"
        )
    planned_ids = [row_id for row_id, _ in rows]
    position = {row_id: i for i, row_id in enumerate(planned_ids)}
    mine = [it for it in rendered.items if position[it.id] % dist.world_size == dist.rank]
    n_samples = num_samples_of(recipe)
    units = [(it, k) for it in mine for k in range(n_samples)]  # exactly once per (row, sample)

    # Read-only look at what is already written, before the (slow) model load: refuse early, and
    # skip loading models at all when this rank has nothing left to do.
    done_before = scan_records(out_dir, repair=repair, spec=token_spec(recipe)) if mode == "resume" else {}
    check_plan(out_dir, done_before, planned_ids, n_samples)
    target = out_dir
    if mode == "overwrite":  # the new run goes beside the folder, swapped in when complete
        target = staging_dir(out_dir)
        if dist.is_main:
            prepare_staging(out_dir)
            locks.append(FolderLock(target, dist.rank).acquire())
    model, device = None, None
    if any((it.id, k) not in done_before for it, k in units):
        note(f"loading models: theta={recipe.models.theta} teacher={recipe.models.teacher or '(same as theta)'}")
        extra = {}
        if dist.device is not None and model_settings(recipe.models, "theta")["device"][0] == "auto":
            extra["device"] = str(dist.device)  # theta's; a teacher without its own device follows
        model = build_model(recipe, **extra)
        testing_hooks.install_model_hooks(model)
        device = str(model.device)
        note(f"device {device}, dtype {str(model.dtype).replace('torch.', '')}, attention {model.attn_implementation}")
    else:
        device = (read_manifest(out_dir) or {}).get("device")

    dist.barrier()
    if mode == "overwrite" and not dist.is_main:
        locks.append(FolderLock(target, dist.rank).acquire())
    writer = RunWriter(target, recipe, rank=dist.rank, world_size=dist.world_size)
    places = recipe.places
    models = {"theta": places.theta, "teacher": places.teacher}
    done = writer.start(planned_ids, rendered.errors, models=models, device=device, plan=plan, repair=repair)
    for text in writer.notes:
        events.note(text)
    dist.barrier()
    if mode == "resume":
        total = len(planned_ids) * n_samples
        what = "rows" if n_samples == 1 else f"records ({n_samples} samples per row)"
        note(f"resuming {out_dir}: {len(done)} of {total} {what} already written")
    pending = [(it, k) for it, k in units if (it.id, k) not in done]
    if pending and model is None:  # another process wrote less than the read-only look saw: impossible
        raise UserError(f"{out_dir} changed while this run started; rerun the command", exit_code=1)
    status = sample(StreamSettings.of(recipe), model, writer, dist, pending, len(units), events)
    if status == "complete" and mode == "overwrite" and dist.is_main:  # all ranks passed the final barrier
        for text in swap_in(out_dir, target):
            events.note(text)


def sample(
    settings: StreamSettings, model, writer, dist: Distributed, pending, total_mine: int, events: RunEvents
) -> str:
    """Stream `pending` (row, sample) units through the engine, appending records as rows end."""
    signals = StopSignals()
    signals.install()
    status, message = "failed", None
    try:
        _stream(settings, model, writer, pending, total_mine, events, signals)
        status = "complete"
    except (KeyboardInterrupt, Exception) as exc:
        status, message = ended_by(exc)
        raise
    finally:
        signals.restore()
        if status == "complete":
            dist.barrier()
        manifest = writer.finish(status, message=message, rescan=dist.world_size > 1 and status == "complete")
        events.finished(status, manifest, writer.written)
    return status


def ended_by(exc: BaseException) -> tuple[str, str]:
    """The manifest's (status, message) for a run that ended with `exc` (one process or a Ray driver)."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "stopped by a signal; rerun the same command to resume"
    return "failed", str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"


def stream_units(
    settings: StreamSettings, model, writer, pending, total_mine: int, events: RunEvents, signals: StopSignals
) -> None:
    """Stream `pending` (row, sample) units through `model`'s refill loop, `writer.append`ing records as rows
    end (the loop of one process; also each Ray actor's, run/ray_backend.py)."""
    _stream(settings, model, writer, pending, total_mine, events, signals)


def _stream(
    settings: StreamSettings, model, writer, pending, total_mine: int, events: RunEvents, signals: StopSignals
) -> None:
    from os_cli.api.rows import StreamRow
    from os_cli.bench.measure import is_oom
    from os_cli.engine.scheduler import InFlightLimit, SchedulerStats
    from os_cli.prompts.data import kept_row

    sampling = settings.sampling
    teacher_prompts = settings.teacher_prompts
    # No more slots than rows to do: cache and output buffers (models.compile's fixed slots too) are sized by it.
    limit = InFlightLimit(max(1, min(sampling.batch_size, len(pending))))
    events.started(total_mine, total_mine - len(pending), limit.value, writer.current_shard)
    if not pending:
        events.note(f"nothing to do: all {total_mine} records are already written")
        return
    pulled = finished = 0
    record_settings = RecordSettings(settings.alpha_method, settings.per_token, settings.topk_logprobs)

    def rows():
        nonlocal pulled
        for index, (item, k) in enumerate(pending):
            pulled += 1
            yield StreamRow(
                item.prompt,
                item.prompt_t if teacher_prompts else None,
                seed=unit_seed(sampling.seed, item, k),
                id=index,
            )

    buffer: list[tuple[dict, int, list[float], list[float]]] = []
    last_write, interval = 0.0, WRITE_INTERVAL_S

    def flush() -> None:
        nonlocal last_write, interval
        batch, buffer[:] = list(buffer), []
        start = time.monotonic()
        with signals.deferred():  # a record is never half written; a pending stop is raised after
            writer.append([record for record, *_ in batch])
            for _, tokens, alpha, ess in batch:
                events.written(tokens, alpha, ess, writer.current_shard)
        last_write = time.monotonic()
        interval = max(WRITE_INTERVAL_S, WRITE_COST_FACTOR * (last_write - start))
        testing_hooks.after_write()

    backoffs = 0
    fixed_slots = bool(getattr(model, "compile", False))
    testing_hooks.before_sampling()
    outputs = model.generate_stream(
        rows(),
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        stop=list(sampling.stop) or None,
        draft_tokens=sampling.draft_tokens,
        limit=limit,
        stats=SchedulerStats(),
        oom_backoff=not fixed_slots,  # models.compile: batch_size slots fix the step's memory, nothing to back off
        separate_teacher_prompts=teacher_prompts,
        topk_logprobs=settings.topk_logprobs,
        topk_of=settings.topk_of,
    )
    try:
        for out in outputs:
            finished += 1
            for rows_then, new_limit, _ in limit.backoffs[backoffs:]:
                events.note(
                    f"out of memory at batch size {rows_then}: retrying with batch size {new_limit} "
                    f"(rows in flight; the rows beyond it restart, their records unchanged)"
                )
            backoffs = len(limit.backoffs)
            item, k = pending[out.id]
            alpha = [a for a in out.traces["alpha"].tolist() if a == a]
            ess = [e for e in out.traces["ess_ratio"].tolist() if e == e]
            record = build_record(
                record_settings,
                out,
                row_id=item.id,
                sample=k,
                prompt=item.prompt,
                prompt_t=item.prompt_t,
                messages=item.messages,
                row=kept_row(settings.keep_fields, item.row),
            )
            buffer.append((record, len(out.token_ids), alpha, ess))
            events.in_flight(min(pulled - finished, limit.value), limit.value)
            if time.monotonic() - last_write >= interval or finished == len(pending):
                flush()
    except KeyboardInterrupt:
        if buffer:  # finished rows are complete records: keep them
            try:
                flush()
            except KeyboardInterrupt:
                pass
        raise
    except Exception as exc:  # noqa: BLE001 - only OOM is translated here
        if not is_oom(exc):
            raise
        if buffer:
            flush()
        fixed = "lower sampling.batch_size (models.compile keeps that many slots: no back-off), " if fixed_slots else ""
        raise UserError(
            f"out of memory with batch size {limit.value}; {fixed}lower sampling.max_new_tokens, use a smaller dtype "
            f"or models.quantization: 4bit, or a larger device",
            exit_code=1,
        ) from None
    finally:
        outputs.close()
