"""`os-sample generate`, `os-sample validate`, `os-sample recipes`: recipes in, JSONL shards out.

generate: load and validate the recipe, load the rows, render both prompts of every row, check and
lock the output folder (resume / refuse / overwrite; see os_cli/outfolder.py: --overwrite writes into a
hidden sibling folder swapped in on completion), load the models, then sample batch after batch; each
finished batch is appended atomically to the current shard (see os_cli/writer.py) and shown on the
dashboard. Every row's draws are seeded from (sampling.seed, the row's dataset index), so a row's
record does not depend on its batch, on OOM back-off, or on where a killed run is resumed.

An out-of-memory error halves the batch size and retries the same rows (down to 1). Ctrl-C or
SIGTERM stops after the batch being written (a batch still sampling is dropped and redone on
resume), marks the manifest `interrupted` and exits 130.

Launched by `accelerate launch` / `torchrun` (WORLD_SIZE > 1), rank r samples the rows whose
position in the plan is r modulo the world size and writes `shard-rRR-NNNNN.jsonl`; rank 0 writes
the manifest, ids.txt and errors.jsonl.

Testing-only hooks (environment variables, not a user interface):
- `OS_SAMPLE_INJECT_OOM=8[,4...]` raises `torch.OutOfMemoryError` whenever a batch of one of these
  sizes is about to be sampled (to exercise the back-off without a GPU);
- `OS_SAMPLE_INJECT_DELAY=SECONDS` sleeps after each batch is written (lets tests kill a run at a
  known point);
- `OS_SAMPLE_INJECT_BUSY=PATH` creates PATH, then blocks in a native call that signals do not interrupt
  before the first batch is sampled (stands in for a long prefill or CUDA sync, to test that a stop
  signal still ends the run).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import List, Optional, Sequence

import typer

from ..errors import UserError
from ..hub import load_tokenizers as _load_tokenizers
from .common import (
    DebugOption, SetOption, cli_errors, err_console, out_console,
)
from .preview import model_contexts, nothing_planned, validate_rows
from .signals import StopSignals as _StopSignals

from ..rng import row_seed, sample_seed  # row seed = seed * stride + dataset index; sample k: see rng.sample_seed


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------


def generate(
    config: str = typer.Option(..., "--config", "-c", help="Recipe file (.yaml) or the name of a bundled recipe."),
    set_: Optional[List[str]] = SetOption,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default: output.dir, else outputs/<run_name>)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="Use at most N rows (same as --set dataset.limit=N)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the output folder (the default when its recipe matches)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over: the new run replaces the folder's run only once it completes."),
    repair: bool = typer.Option(False, "--repair", help="On resume, drop invalid record lines anywhere in the shards and generate their rows again."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate, load the rows, render the first prompts; load no model."),
    debug: bool = DebugOption,
) -> None:
    """Sample a dataset from the mixture q* described by a recipe, into JSONL shards."""
    with cli_errors(debug):
        if resume and overwrite:
            raise UserError("--resume and --overwrite exclude each other: choose one")
        overrides = list(set_ or [])
        if limit is not None:
            overrides.append(("dataset.limit", limit))
        run_generate(config, overrides, output=output, overwrite=overwrite, dry_run=dry_run, resume=resume,
                     repair=repair)


def validate(
    recipe: str = typer.Argument(..., help="Recipe file (.yaml) or the name of a bundled recipe."),
    set_: Optional[List[str]] = SetOption,
    debug: bool = DebugOption,
) -> None:
    """Check a recipe (schema, fragments, overrides, local files) without loading data or models."""
    with cli_errors(debug):
        from ..recipe import load_recipe, output_dir, recipe_hash, template_fields

        resolved = load_recipe(recipe, set_ or [])
        meta = resolved["_meta"]
        console = out_console()
        console.print(f"[green]ok[/green]: {meta['path']} is a valid recipe", highlight=False)
        models = resolved["models"]
        ds = resolved["dataset"]
        prompts = resolved["prompts"]
        fields = template_fields(prompts["theta"]["template"] or "")
        if prompts["teacher"]:
            fields += [f for f in template_fields(prompts["teacher"]["template"] or "") if f not in fields]
        fields += [p["messages_field"] for p in (prompts["theta"], prompts["teacher"] or {})
                   if p.get("messages_field") and p["messages_field"] not in fields]
        rows = f"{len(ds['inline'])} inline rows" if ds["inline"] is not None else ds["source"]
        lines = [
            ("models", f"theta={models['theta']}  teacher={models['teacher'] or '(same as theta)'}"),
            ("alpha", f"{resolved['alpha']['method']} in [{resolved['alpha']['min']:g}, {resolved['alpha']['max']:g}]"),
            ("dataset", f"{rows} (split {ds['split']}, skip {ds['skip']}, limit {ds['limit']})"),
            ("fields", ", ".join(fields) or "(none)"),
            ("teacher prompt", "own template" if prompts["teacher"] else "same as theta"),
            ("output", str(output_dir(resolved))),
            ("fragments", ", ".join(_fragment_label(f) for f in meta["fragments"]) or "(none)"),
            ("hash", recipe_hash(resolved)),
        ]
        for key, value in lines:
            console.print(f"  {key:<15} {value}", markup=False, highlight=False)
        for warning in meta["warnings"]:
            console.print(f"  warning: {warning}", markup=False, highlight=False)
        validate_rows(resolved, console)


def _fragment_label(path: str) -> str:
    from ..recipe import CONFIGS_DIR

    p = Path(path)
    try:
        return str(p.relative_to(CONFIGS_DIR.resolve()).with_suffix(""))
    except ValueError:
        return str(p)


def recipes(debug: bool = DebugOption) -> None:
    """List the bundled recipes (use one with --config NAME) and the fragments recipes can build on."""
    with cli_errors(debug):
        from rich.table import Table

        from ..recipe import BUNDLED_DIR, list_bundled, list_fragments

        bundled = list_bundled()
        console = out_console()
        if not bundled:
            console.print(f"no bundled recipes in {BUNDLED_DIR}", markup=False)
            return
        table = Table(title="Bundled recipes (os-sample generate --config NAME)")
        table.add_column("name", style="bold cyan", no_wrap=True)
        table.add_column("description")
        for name, description, _ in bundled:
            table.add_row(name, description)
        console.print(table)
        fragments = list_fragments()
        if fragments:
            console.print("fragments for `defaults:` (configs/): " + ", ".join(fragments), markup=False, highlight=False)


def register(app) -> None:
    app.command("generate")(generate)
    app.command("validate")(validate)
    app.command("recipes")(recipes)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


class _Distributed:
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
                raise UserError(f"WORLD_SIZE is {launched} but accelerate formed a group of {self.world_size} "
                                f"processes; launch with `accelerate launch` or `torchrun`", exit_code=1)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _inject_oom(batch_size: int) -> None:
    spec = os.environ.get("OS_SAMPLE_INJECT_OOM", "").strip()
    if not spec:
        return
    sizes = {int(s) for s in spec.replace(" ", "").split(",") if s}
    if batch_size in sizes:
        import torch

        raise torch.OutOfMemoryError(f"CUDA out of memory (injected by OS_SAMPLE_INJECT_OOM at batch size {batch_size})")


def _inject_busy() -> None:
    path = os.environ.get("OS_SAMPLE_INJECT_BUSY", "").strip()
    if path and not os.path.exists(path):
        import ctypes

        Path(path).write_text(str(os.getpid()))
        libc, mutex = ctypes.CDLL(None), ctypes.create_string_buffer(64)  # zeroed: an unlocked default mutex
        libc.pthread_mutex_lock(mutex)
        libc.pthread_mutex_lock(mutex)  # native, GIL released, never returns, not interrupted by signals


def _inject_delay() -> None:
    delay = os.environ.get("OS_SAMPLE_INJECT_DELAY", "").strip()
    if delay:
        time.sleep(float(delay))


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _short(value: float) -> float | None:
    """float32 precision in JSON: 7 significant digits; non-finite -> null."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.7g}")


def _stats(values) -> dict:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": None, "min": None, "max": None}
    return {"mean": _short(sum(finite) / len(finite)), "min": _short(min(finite)), "max": _short(max(finite))}


def _seq_sum(values) -> float | None:
    if not values or not all(math.isfinite(v) for v in values):
        return None if values else 0.0
    return _short(sum(values))


def unit_seed(recipe, item, sample: int) -> int:
    """The seed of sample `sample` of a planned row: sample 0 is the row's own seed (rng.py)."""
    return sample_seed(row_seed(recipe["sampling"]["seed"], item.index), sample)


def build_records(recipe, units, out) -> tuple[list[dict], int, list[float], list[float]]:
    """Records of one batch of (row, sample) units (ARCHITECTURE.md format) plus token count and the
    real tokens' alpha / ESS."""
    from ..data import kept_row

    per_token = recipe["output"]["per_token"]
    method = recipe["alpha"]["method"]
    diag = out.diagnostics or {}
    alpha_all = diag.get("alpha", out.alpha_values)
    ess_all = diag.get("ess_ratio", out.ess_ratios)
    records, tokens, alphas, esses = [], 0, [], []
    for j, (item, sample) in enumerate(units):
        n = int(out.lengths[j])
        tokens += n
        alpha = alpha_all[j, :n].double().tolist()
        ess = ess_all[j, :n].double().tolist()
        kl_theta = diag["kl_theta"][j, :n].double().tolist() if "kl_theta" in diag else []
        kl_t = diag["kl_t"][j, :n].double().tolist() if "kl_t" in diag else []
        lp = {k: out.logprobs[k][j, :n].double().tolist() for k in ("theta", "t", "q")}
        alphas += [a for a in alpha if math.isfinite(a)]
        esses += [e for e in ess if math.isfinite(e)]
        record = {
            "id": item.id,
            "sample": sample,
            "alpha_method": method,
            "prompt": item.prompt,
            "prompt_t": item.prompt_t,
            "completion": out.generated_texts[j],
            "num_tokens": n,
            "finish_reason": out.finish_reasons[j],
            "alpha": _stats(alpha),
            "ess_ratio": _stats(ess),
            "kl_theta": _stats(kl_theta),
            "kl_t": _stats(kl_t),
            "logprob": {"theta": _seq_sum(lp["theta"]), "t": _seq_sum(lp["t"]), "q": _seq_sum(lp["q"])},
            "row": kept_row(recipe, item.row),
        }
        if item.messages is not None:
            record["messages"] = item.messages
        if per_token:
            record["tokens"] = {
                "ids": [int(t) for t in out.generated_ids[j, :n].tolist()],
                "alpha": [_short(a) for a in alpha],
                "ess_ratio": [_short(v) for v in ess],
                "kl_theta": [_short(v) for v in kl_theta],
                "kl_t": [_short(v) for v in kl_t],
                "logprob_theta": [_short(v) for v in lp["theta"]],
                "logprob_t": [_short(v) for v in lp["t"]],
                "logprob_q": [_short(v) for v in lp["q"]],
            }
        records.append(record)
    return records, tokens, alphas, esses


def _print_dry_run(recipe, out_dir, rows, rendered, mode_text) -> None:
    from rich.rule import Rule

    from ..recipe import dump_recipe, recipe_hash

    console = out_console()
    console.print(Rule("resolved recipe"))
    console.print(dump_recipe(recipe), markup=False, highlight=False, end="")
    console.print(Rule("plan"))
    console.print(f"recipe hash: {recipe_hash(recipe)}", markup=False, highlight=False)
    console.print(f"rows: {len(rows)} planned, {len(rendered.items)} renderable, {len(rendered.errors)} bad "
                  f"(on_bad_row: {recipe['prompts']['on_bad_row']})", markup=False, highlight=False)
    for err in rendered.errors[:3]:
        console.print(f"  bad row {err['id']!r}: {err['reason']}", markup=False, highlight=False)
    console.print(f"output: {out_dir} ({mode_text})", markup=False, highlight=False)
    for item in rendered.items[:2]:
        console.print(Rule(f"row {item.id!r}: theta prompt"))
        console.print(item.prompt, markup=False, highlight=False)
        console.print(Rule(f"row {item.id!r}: teacher prompt" + (" (same as theta)" if recipe["prompts"]["teacher"] is None else "")))
        console.print(item.prompt_t, markup=False, highlight=False)
    console.print(Rule("dry run: no model loaded, nothing written"))


def run_generate(config, overrides: Sequence, *, output=None, overwrite: bool = False, dry_run: bool = False,
                 resume: bool = False, repair: bool = False) -> None:
    """The whole command (also callable from Python); raises `UserError` / KeyboardInterrupt."""
    from ..data import load_rows, render_prompts
    from ..outfolder import FolderLock, check_writable, finish_swap, make_folder
    from ..preflight import hub_offline_note, screen_prompts
    from ..quiet import quiet_progress_bars
    from ..build import check_models_reachable, check_placement
    from ..recipe import load_recipe, output_dir
    from ..writer import check_output, plan_entries

    quiet_progress_bars()
    recipe = load_recipe(config, overrides)
    out_dir = output_dir(recipe, output)
    dist = _Distributed(recipe["models"]["device"])
    log = err_console()
    offline = hub_offline_note(recipe)
    if dist.is_main:
        for text in recipe["_meta"]["warnings"] + ([offline] if offline else []):
            log.print(f"warning: {text}", markup=False, highlight=False)

    rows = load_rows(recipe)
    if not rows:
        raise UserError(nothing_planned(recipe))
    check_placement(recipe)
    check_models_reachable(recipe)
    tokenizer, tokenizer_t = _load_tokenizers(recipe)
    rendered = render_prompts(recipe, tokenizer, rows, tokenizer_t=tokenizer_t)
    screen_prompts(recipe, rendered, tokenizer, tokenizer_t, model_contexts(recipe, tokenizer, tokenizer_t))
    planned_ids = [row_id for row_id, _ in rows]
    plan = plan_entries(planned_ids, rendered.items, rendered.errors)

    if dry_run:
        try:
            mode = check_output(out_dir, recipe, overwrite=overwrite, plan=plan)
            mode_text = {"new": "a new run", "resume": "would resume", "overwrite": "would be overwritten"}[mode]
        except UserError as exc:
            mode_text = f"would be refused: {exc}"
        _print_dry_run(recipe, out_dir, rows, rendered, mode_text)
        return

    # The output folder, before the (slow) model load: refuse a foreign folder, a changed recipe or
    # dataset, a path that cannot be written; then lock it (exit 1 if another run holds it).
    if dist.is_main:
        for note in finish_swap(out_dir):
            err_console().print(note, markup=False, highlight=False)
    check_output(out_dir, recipe, overwrite=overwrite, plan=plan)
    check_writable(out_dir)
    make_folder(out_dir)
    locks = [FolderLock(out_dir, dist.rank).acquire()]
    try:
        _run_locked(recipe, out_dir, dist, rows, rendered, plan, locks, overwrite=overwrite, resume=resume,
                    repair=repair)
    finally:
        for lock in locks:
            lock.release()


def _run_locked(recipe, out_dir, dist, rows, rendered, plan, locks, *, overwrite, resume, repair) -> None:
    from ..outfolder import FolderLock, prepare_staging, staging_dir, swap_in
    from ..build import build_model
    from ..places import model_location
    from ..recipe import model_settings
    from ..writer import RunWriter, check_output, check_plan, num_samples_of, read_manifest, scan_records

    log = err_console()
    mode = check_output(out_dir, recipe, overwrite=overwrite, plan=plan)  # again, now that we hold the lock
    if resume and mode == "new" and dist.is_main:
        log.print(f"--resume: nothing to resume in {out_dir}; starting a new run", markup=False, highlight=False)
    if mode != "overwrite" and dist.is_main and staging_dir(out_dir).exists():
        log.print(f"note: {staging_dir(out_dir)} holds an --overwrite run of this folder that did not complete; "
                  f"rerun that command to start it again, or delete the folder", markup=False, highlight=False)
    planned_ids = [row_id for row_id, _ in rows]
    position = {row_id: i for i, row_id in enumerate(planned_ids)}
    mine = [it for it in rendered.items if position[it.id] % dist.world_size == dist.rank]
    n_samples = num_samples_of(recipe)
    units = [(it, k) for it in mine for k in range(n_samples)]  # exactly once per (row, sample)

    # Read-only look at what is already written, before the (slow) model load: refuse early, and
    # skip loading models at all when this rank has nothing left to do.
    done_before = scan_records(out_dir, repair=repair) if mode == "resume" else {}
    check_plan(out_dir, done_before, planned_ids, n_samples)
    target = out_dir
    if mode == "overwrite":  # the new run goes beside the folder, swapped in when complete
        target = staging_dir(out_dir)
        if dist.is_main:
            prepare_staging(out_dir)
            locks.append(FolderLock(target, dist.rank).acquire())
    model, device = None, None
    if any((it.id, k) not in done_before for it, k in units):
        if dist.is_main:
            log.print(f"loading models: theta={recipe['models']['theta']} "
                      f"teacher={recipe['models']['teacher'] or '(same as theta)'}", markup=False, highlight=False)
        extra = {}
        if dist.device is not None and model_settings(recipe, "theta")["device"][0] == "auto":
            extra["device"] = str(dist.device)  # theta's; a teacher without its own device follows
        model = build_model(recipe, **extra)
        device = str(model.device)
        if dist.is_main:
            log.print(f"device {device}, dtype {str(model.dtype).replace('torch.', '')}, "
                      f"attention {model.attn_implementation}", markup=False, highlight=False)
    else:
        device = (read_manifest(out_dir) or {}).get("device")

    dist.barrier()
    if mode == "overwrite" and not dist.is_main:
        locks.append(FolderLock(target, dist.rank).acquire())
    writer = RunWriter(target, recipe, rank=dist.rank, world_size=dist.world_size)
    models = {"theta": model_location(recipe, "theta"), "teacher": model_location(recipe, "teacher")}
    done = writer.start(planned_ids, rendered.errors, models=models, device=device, plan=plan, repair=repair)
    for note in writer.notes:
        log.print(note, markup=False, highlight=False)
    dist.barrier()
    if dist.is_main and mode == "resume":
        total = len(planned_ids) * n_samples
        what = "rows" if n_samples == 1 else f"records ({n_samples} samples per row)"
        log.print(f"resuming {out_dir}: {len(done)} of {total} {what} already written", markup=False, highlight=False)
    pending = [(it, k) for it, k in units if (it.id, k) not in done]
    if pending and model is None:  # another process wrote less than the read-only look saw: impossible
        raise UserError(f"{out_dir} changed while this run started; rerun the command", exit_code=1)
    _sample(recipe, model, writer, dist, pending, len(units), out_dir, len(rendered.errors))
    if mode == "overwrite" and dist.is_main:  # complete: all ranks passed the final barrier in _sample
        for note in swap_in(out_dir, target):
            log.print(note, markup=False, highlight=False)


def _sample(recipe, model, writer, dist, pending, total_mine, out_dir, n_errors) -> None:
    from ..dashboard import Dashboard

    sampling = recipe["sampling"]
    teacher_prompts = recipe["prompts"]["teacher"] is not None
    batch_size = sampling["batch_size"]
    title = "os-sample generate" + (f" [rank {dist.rank}/{dist.world_size}]" if dist.world_size > 1 else "")
    dash = Dashboard(total=total_mine, done=total_mine - len(pending), title=title, console=err_console())
    signals = _StopSignals()
    signals.install()
    status, message = "failed", None
    dash.start()
    try:
        if not pending:
            dash.note(f"nothing to do: all {total_mine} records are already written")
        start = 0
        while start < len(pending):
            batch = pending[start:start + batch_size]
            dash.batch_started(len(batch), writer.current_shard)
            try:
                _inject_oom(len(batch))
                _inject_busy()
                out = model.generate(
                    prompts=[it.prompt for it, _ in batch],
                    prompts_t=[it.prompt_t for it, _ in batch] if teacher_prompts else None,
                    max_new_tokens=sampling["max_new_tokens"], temperature=sampling["temperature"],
                    top_p=sampling["top_p"], top_k=sampling["top_k"], return_diagnostics=True,
                    seed=[unit_seed(recipe, it, k) for it, k in batch],
                    stop=sampling["stop"] or None,
                )
            except Exception as exc:  # noqa: BLE001 - only OOM is handled here
                if not _is_oom(exc):
                    raise
                out = None
            if out is None:  # out of memory; outside the except block, so the failed batch's tensors are freed
                _free_memory()
                if len(batch) == 1:
                    raise UserError(
                        "out of memory with batch size 1; lower sampling.max_new_tokens, use a smaller dtype or "
                        "models.quantization: 4bit, or a larger device", exit_code=1,
                    )
                batch_size = max(1, len(batch) // 2)
                dash.note(f"out of memory at batch size {len(batch)}: retrying with batch size {batch_size}")
                continue
            records, tokens, alphas, esses = build_records(recipe, batch, out)
            out = None  # let the batch's tensors go before the next one is sampled
            with signals.deferred():
                writer.append(records)
            dash.batch_done(len(records), tokens, alphas, esses, shard=writer.current_shard)
            start += len(batch)
            _inject_delay()
        status = "complete"
    except KeyboardInterrupt:
        status, message = "interrupted", "stopped by a signal; rerun the same command to resume"
        raise
    except UserError as exc:
        message = str(exc)
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        signals.restore()
        dash.stop()
        if status == "complete":
            dist.barrier()
        manifest = writer.finish(status, message=message, rescan=dist.world_size > 1 and status == "complete")
        if dist.is_main or dist.world_size > 1:
            err_console().print(dash.summary_table(status, str(out_dir), errors=n_errors if dist.is_main else 0))
        if status == "interrupted":
            err_console().print(f"interrupted: {writer.written} records written this run; rerun the same command "
                                f"to resume", markup=False, highlight=False)
    if status == "complete" and dist.is_main:
        counts = manifest.get("counts", {})
        out_console().print(
            f"wrote {out_dir}: {counts.get('records')} records, {counts.get('errors')} skipped rows, "
            f"{counts.get('planned')} planned", markup=False, highlight=False,
        )
