"""`os-sample generate --backend ray`: the rows flow through Ray Data to a pool of sampling actors.

The driver (this process) checks and locks the output folder exactly as a single process does
(rank 0's lock, the manifest, ids.txt, errors.jsonl, plan.jsonl, the --overwrite swap), decides
what is left to do from the records on disk, and hands the pending (row, sample) units out through
`Dataset.map_batches` to an actor pool (`ActorPoolStrategy`, one task in flight per actor, so a fast
actor takes more tasks). Each actor (`SampleActor`) loads both models once, on the GPUs Ray gives it
(`actor_resources`: from the recipe's placement), and streams each task's units through the same
refill loop as a single process (`loop.stream_units`), appending records as rows end.

Writers (store/shared_writers.py). The driver holds rank 0's lock, so a second run of the folder,
with any backend, is refused. Each actor takes the first free writer slot w >= 1 and writes
`shard-rWW-*`; an actor Ray restarts after a crash takes a free slot (often its predecessor's).
Ray re-runs a task whose actor died, so a row may reach two actors, and actors of a killed driver
may still be finishing while a rerun starts: every append is checked against all shards under one
folder-wide lock (`DedupWriter`), so a row is computed twice at worst, never written twice. Records
do not depend on the actor (per-row seeds), so a dropped duplicate is the same record.

Ray's own output stays out of the console (no progress bars, logs at ERROR, worker output not
forwarded); the driver reports through `RunEvents`, plus `actors(alive, total)`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from os_cli.errors import UserError
from os_cli.recipe.typed import Recipe
from os_cli.run.loop import RunEvents, StreamSettings, ended_by, stream_units
from os_cli.run.signals import StopSignals
from os_cli.store.shared_writers import (
    WRITER_SLOTS,
    DedupWriter,
    ShardIndex,
    alive_writers,
    append_lock,
    take_writer_slot,
)

INSTALL_HINT = "pip install 'os-sample[ray]'"
TASK_ROWS_FACTOR = 4  # units per Ray task: this many times sampling.batch_size (the refill loop stays full)
DRIVER_CPUS = 1  # the driver's Ray Data read/bookkeeping tasks need a CPU beside the actors'


@dataclass(frozen=True)
class RayLaunch:
    """Where and how wide (`--ray-address`, `--actors`): launch settings, not part of the recipe or its hash."""

    address: str | None = None  # None: a local Ray on this machine; "auto" or the head's HOST:PORT
    actors: int | None = None  # None: one per placement's GPUs in the cluster (1 on CPU)


def require_ray():
    """The `ray` module, or exit 2 with the install line."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError(
            f"--backend ray needs Ray Data, which is not installed; install it with: {INSTALL_HINT}"
        ) from None
    return ray


# ------------------------------------------------------------------------------------------------ resources


def _gpu_indices(device: Any, device_map: Any, max_memory: Any, has_gpus: bool) -> set[int]:
    """The CUDA indices one model's placement uses (inside an actor Ray numbers its GPUs from 0)."""
    found: set[int] = set()
    if device_map is not None:
        if isinstance(max_memory, dict):
            found |= {int(k) for k in max_memory if isinstance(k, int) or str(k).isdigit()}
        if isinstance(device_map, dict):
            for value in device_map.values():
                text = str(value)
                if text.isdigit():
                    found.add(int(text))
                elif text.startswith("cuda"):
                    found.add(int(text.split(":")[1]) if ":" in text else 0)
        return found or ({0} if has_gpus else set())
    text = str(device)
    if text == "auto":
        return {0} if has_gpus else set()
    if text.startswith("cuda"):
        return {int(text.split(":")[1]) if ":" in text else 0}
    return set()


def actor_resources(recipe: Recipe, cluster: dict, actors: int) -> tuple[float, float]:
    """(num_cpus, num_gpus) per actor from the recipe's placement and the cluster's resources: as many
    GPUs as the highest CUDA index either model is placed on, plus one (0 on CPU); CPUs: one per GPU
    actor, and for CPU actors an equal share of the cluster's CPUs beside the driver's."""
    from os_cli.recipe import model_settings

    has_gpus = cluster.get("GPU", 0) > 0
    used: set[int] = set()
    for role in ("theta", "teacher"):
        if role == "teacher" and recipe.models.teacher is None:
            continue
        s = model_settings(recipe.models, role)
        used |= _gpu_indices(s["device"][0], s["device_map"][0], s["max_memory"][0], has_gpus)
    gpus = float(max(used) + 1) if used else 0.0
    if gpus:
        return 1.0, gpus
    share = (cluster.get("CPU", 1) - DRIVER_CPUS) // max(actors, 1)
    return float(max(1, share)), 0.0


def check_fits(cluster: dict, actors: int, cpus: float, gpus: float, where: str) -> None:
    """Refuse (exit 2) a pool the cluster cannot hold: Ray would wait for it forever."""
    need_cpu, need_gpu = actors * cpus + DRIVER_CPUS, actors * gpus
    have_cpu, have_gpu = cluster.get("CPU", 0), cluster.get("GPU", 0)
    if need_cpu > have_cpu or need_gpu > have_gpu:
        raise UserError(
            f"--actors {actors}: each actor needs {cpus:g} CPU and {gpus:g} GPU (from the recipe's placement), "
            f"{need_cpu:g} CPUs (one more for Ray Data's own tasks) and {need_gpu:g} GPUs in all, but the Ray "
            f"cluster at {where} has {have_cpu:g} CPUs and {have_gpu:g} GPUs; use fewer --actors or add nodes"
        )


def default_actors(cluster: dict, gpus: float) -> int:
    """One actor per `gpus` GPUs of the cluster; on CPU one actor."""
    if gpus:
        return max(1, int(cluster.get("GPU", 0) // gpus))
    return 1


# ------------------------------------------------------------------------------------------------ actors


class SampleActor:
    """A Ray Data callable class: both models, one writer slot, the refill loop per task."""

    def __init__(self, recipe: Recipe, folder: str):
        from os_cli.api.build import build_model
        from os_cli.run import testing_hooks
        from os_cli.store.record_format import token_spec
        from os_cli.store.writer import RunWriter

        self.folder = Path(folder)
        self.error: UserError | None = None  # a user error here is reported by the first task (`__call__`)
        self.slot, self.device = 0, "-"
        try:
            self.slot, self.lock = take_writer_slot(self.folder)
            self.index = ShardIndex(self.folder, token_spec(recipe))
            writer = RunWriter(self.folder, recipe, rank=self.slot, world_size=WRITER_SLOTS)
            with append_lock(self.folder):  # nobody appends while this slot's shards are checked and opened
                written_ids = sorted({row_id for row_id, _ in self.index.refresh()})
                writer.start(written_ids, [])  # drops a torn tail of this slot's shards
            self.writer = DedupWriter(writer, self.index)
            self.settings = StreamSettings.of(recipe)
            self.model = build_model(recipe)
            testing_hooks.install_model_hooks(self.model)
            self.device = str(self.model.device)
        except UserError as exc:
            self.error = exc

    def __call__(self, batch: dict) -> dict:
        """Sample a task's units; one result row per record (and one more with a user error's message: a
        UserError does not survive Ray's exception wrapping, so it travels as data and the driver raises it)."""
        import pickle

        if self.error is not None:
            return self._result([], self.error)
        with append_lock(self.folder):
            known = set(self.index.refresh())
        wanted = [pickle.loads(payload) for payload in batch["unit"]]
        todo = [(item, k) for item, k in wanted if (item.id, k) not in known]
        events = _TaskEvents(self.writer)
        self.writer.fates.clear()
        try:
            if todo:
                stream_units(self.settings, self.model, self.writer, todo, len(todo), events, StopSignals())
        except UserError as exc:
            return self._result(events.rows, exc)
        return self._result(events.rows)

    def _result(self, rows: list, error: UserError | None = None) -> dict:
        import numpy as np

        rows = list(rows) + ([(0, 0, 0.0, 0.0, 0)] if error is not None else [])
        n = len(rows)
        return {
            "written": np.array([r[0] for r in rows], dtype=np.int64).reshape(n),
            "tokens": np.array([r[1] for r in rows], dtype=np.int64).reshape(n),
            "alpha_sum": np.array([r[2] for r in rows], dtype=np.float64).reshape(n),
            "ess_sum": np.array([r[3] for r in rows], dtype=np.float64).reshape(n),
            "count": np.array([r[4] for r in rows], dtype=np.int64).reshape(n),
            "slot": np.full(n, self.slot, dtype=np.int64),
            "device": np.array([self.device] * n, dtype=object),
            "error": np.array([""] * (n - 1) + [str(error)] if error is not None else [""] * n, dtype=object),
            "exit_code": np.full(n, error.exit_code if error is not None else 0, dtype=np.int64),
        }


class _TaskEvents(RunEvents):
    """One task's per-record results for the driver, each paired with its fate in the append (written or a duplicate)."""

    def __init__(self, writer: DedupWriter):
        self.writer = writer
        self.rows: list[tuple[int, int, float, float, int]] = []

    def written(self, tokens: int, alpha: list[float], ess: list[float], shard: str) -> None:
        self.rows.append((int(self.writer.next_fate()), tokens, float(sum(alpha)), float(sum(ess)), len(alpha)))


# ------------------------------------------------------------------------------------------------ driver


def _quiet(ray) -> None:
    import logging

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray", "ray.data", "ray.util"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _connect(ray, address: str | None, actors: int | None) -> str:
    """Start a local Ray (no address) or join a cluster; returns where."""
    import logging

    if ray.is_initialized():  # a caller (a notebook, a test) joined a cluster already: use it
        return "the Ray cluster this process joined"
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # Ray's C++ log lines would go to our console
    common = dict(
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=True,
        ignore_reinit_error=True,
    )
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(
                f"--ray-address {address}: cannot connect to a Ray cluster ({exc}); start one with "
                f"`ray start --head` or give the head's HOST:PORT"
            ) from None
        return address
    cpus = max(os.cpu_count() or 1, (actors or 1) + DRIVER_CPUS)  # logical CPUs may exceed the cores
    ray.init(num_cpus=cpus, **common)
    return "a local Ray (this machine)"


def run_ray(
    recipe: Recipe,
    out_dir: Path,
    planned,
    events: RunEvents,
    launch: RayLaunch = RayLaunch(),
    *,
    overwrite: bool = False,
    resume: bool = False,
    repair: bool = False,
) -> None:
    """The Ray backend of `generate`: the folder checked and locked by this driver, rows sampled by actors."""
    ray = require_ray()
    from os_cli.store.folder import FolderLock, check_writable, finish_swap, make_folder

    for text in finish_swap(out_dir):
        events.note(text)
    from os_cli.store.writer import check_output

    check_output(out_dir, recipe, overwrite=overwrite, plan=planned.entries)
    check_writable(out_dir)
    make_folder(out_dir)
    locks = [FolderLock(out_dir, 0).acquire()]
    joined = ray.is_initialized()
    try:
        _run_locked(
            ray,
            recipe,
            Path(out_dir),
            planned,
            events,
            locks,
            launch,
            overwrite=overwrite,
            resume=resume,
            repair=repair,
        )
    finally:
        for lock in locks:
            lock.release()
        if ray.is_initialized() and not joined:
            ray.shutdown()


def _run_locked(
    ray,
    recipe: Recipe,
    out_dir: Path,
    planned,
    events: RunEvents,
    locks,
    launch: RayLaunch,
    *,
    overwrite: bool,
    resume: bool,
    repair: bool,
) -> None:
    from os_cli.store.folder import FolderLock, prepare_staging, staging_dir, swap_in
    from os_cli.store.writer import RunWriter, check_output, num_samples_of, scan_records, token_spec

    rows, rendered, plan = planned.rows, planned.rendered, planned.entries
    mode = check_output(out_dir, recipe, overwrite=overwrite, plan=plan)
    if resume and mode == "new":
        events.note(f"--resume: nothing to resume in {out_dir}; starting a new run")
    target = out_dir
    if mode == "overwrite":
        target = staging_dir(out_dir)
        prepare_staging(out_dir)
        locks.append(FolderLock(target, 0).acquire())
    planned_ids = [row_id for row_id, _ in rows]
    n_samples = num_samples_of(recipe)
    units = [(it, k) for it in rendered.items for k in range(n_samples)]
    writer = RunWriter(target, recipe, rank=0, world_size=1)
    places = recipe.places
    done = writer.start(
        planned_ids,
        rendered.errors,
        models={"theta": places.theta, "teacher": places.teacher},
        device="ray",
        plan=plan,
        repair=repair,
    )
    for text in writer.notes:
        events.note(text)
    if mode == "resume":
        events.note(f"resuming {out_dir}: {len(done)} of {len(planned_ids) * n_samples} records already written")
    pending = [(it, k) for it, k in units if (it.id, k) not in done]
    status, message, devices = "failed", None, set()
    signals = StopSignals()
    total = len(units)
    try:
        if not pending:
            events.started(total, total, 0, "-")
            events.note(f"nothing to do: all {total} records are already written")
        else:
            actors = launch.actors
            where = _connect(ray, launch.address, actors)
            _quiet(ray)
            cluster = ray.cluster_resources()
            cpus, gpus = actor_resources(recipe, cluster, actors or 1)
            n_actors = actors or default_actors(cluster, gpus)
            if actors is None and not gpus:
                cpus, gpus = actor_resources(recipe, cluster, n_actors)
            check_fits(cluster, n_actors, cpus, gpus, where)
            events.note(
                f"Ray: {n_actors} actor(s) on {where}, each {cpus:g} CPU, {gpus:g} GPU; "
                f"{len(pending)} records to sample"
            )
            signals.install()
            writer.manifest["ray"] = {"actors": n_actors, "cpus_per_actor": cpus, "gpus_per_actor": gpus}
            devices = _dispatch(ray, recipe, target, pending, events, total, n_actors, cpus, gpus)
        left = [
            key for key in ((it.id, k) for it, k in units) if key not in scan_records(target, spec=token_spec(recipe))
        ]
        if left:
            raise UserError(
                f"{len(left)} record(s) were not written (e.g. id {left[0][0]!r}); rerun the same "
                f"command to sample them",
                exit_code=1,
            )
        status = "complete"
    except (KeyboardInterrupt, Exception) as exc:
        status, message = ended_by(exc)
        if not isinstance(exc, ray.exceptions.RayError):
            raise
        lines = [line for line in str(exc).splitlines() if line.strip()]
        message = f"the Ray job failed: {type(exc).__name__}: {lines[-1] if lines else ''}"
        raise UserError(message + " (run again with --debug for Ray's traceback)", exit_code=1) from exc
    finally:
        signals.restore()
        if devices:
            writer.manifest["device"] = ", ".join(sorted(devices))
        manifest = writer.finish(status, message=message, rescan=True)
        events.finished(status, manifest, manifest.get("counts", {}).get("records", 0) - len(done))
    if mode == "overwrite":
        for text in swap_in(out_dir, target):
            events.note(text)


def _dispatch(
    ray, recipe: Recipe, target: Path, pending, events: RunEvents, total: int, n_actors: int, cpus: float, gpus: float
) -> set[str]:
    """Hand `pending` out to `n_actors` actors and report their results as tasks finish."""
    import pickle

    task_rows = max(1, recipe.sampling.batch_size * TASK_ROWS_FACTOR)
    task_rows = min(task_rows, math.ceil(len(pending) / n_actors))
    blocks = math.ceil(len(pending) / task_rows)
    # Each unit travels in its row (not in the actors' constructor arguments): a re-run task carries its own data.
    payloads = [{"unit": pickle.dumps(unit, protocol=pickle.HIGHEST_PROTOCOL)} for unit in pending]
    ds = ray.data.from_items(payloads, override_num_blocks=blocks)
    ds = ds.map_batches(
        SampleActor,
        batch_size=task_rows,
        batch_format="numpy",
        fn_constructor_kwargs={"recipe": recipe, "folder": str(target)},
        compute=ray.data.ActorPoolStrategy(size=n_actors, max_tasks_in_flight_per_actor=1),
        num_cpus=cpus,
        num_gpus=gpus or None,
    )
    events.started(total, total - len(pending), task_rows * n_actors, "ray")  # at most one task per actor in flight
    events.actors(alive_writers(target), n_actors)
    devices: set[str] = set()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        events.actors(alive_writers(target), n_actors)
        for i in range(len(batch["written"])):
            if batch["error"][i]:
                raise UserError(str(batch["error"][i]), exit_code=int(batch["exit_code"][i]))
            if not batch["written"][i]:
                continue
            count = int(batch["count"][i])
            alpha = [float(batch["alpha_sum"][i]) / count] * count if count else []
            ess = [float(batch["ess_sum"][i]) / count] * count if count else []
            events.written(int(batch["tokens"][i]), alpha, ess, f"r{int(batch['slot'][i]):02d}")
            devices.add(str(batch["device"][i]))
    return devices
