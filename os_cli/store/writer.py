"""Sharded JSONL output with atomic appends and exactly-once resume.

The output folder (format in docs/ARCHITECTURE.md; names and record keys in record_format.py):
`manifest.json`, `ids.txt`, `plan.jsonl`, `errors.jsonl` and `shard-NNNNN.jsonl` (one process) or
`shard-rRR-NNNNN.jsonl` (rank RR of several). The lock and the --overwrite swap: outfolder.py.

Exactly once, whatever moment the process dies at (`kill -9` included): every file is replaced
whole, never appended to in place. `atomic_write` writes a hidden temporary file next to the
target, fsyncs it, `os.replace`s it over the target and fsyncs the folder, so a reader (or a
resumed run) sees either the old file or the new one, never a torn line. A batch is appended by
rewriting the current shard with the new lines added (shards are bounded by `shard_size`, so this
stays cheap); a batch that crosses a shard boundary fills the current shard, then starts the next.
The record lines on disk are therefore the only truth: a resumed run scans every shard (of every
rank) for the (id, sample) keys already written and skips those samples of those rows. The manifest's counts are informational.

Every line must parse as a complete record (`record_format.record_problem`, with the `tokens` the
recipe's output settings call for: `token_spec`). A torn last line of
a shard (not JSON: a write cut short by something other than this writer) is dropped when the
shard's owner starts, its row is generated again; any other invalid line (elsewhere, or JSON that is
not a complete record) is refused (exit 2, file and line) unless `repair=True`, which drops those too
(shard_scan.py).

Resume or refuse: a folder whose manifest has the same `recipe_hash` and whose planned rows (ids,
dataset index and both rendered prompts, `plan.jsonl`) agree with this run's for every id both
plan, resumes; otherwise the keys or rows that changed are named. A non-empty folder without a
manifest of ours is refused, with or without overwrite.

Public: `RunWriter`, `check_output`, `check_plan`, `check_shards`, `clear_outputs`, `read_manifest`,
`scan_records`, `scan_shards`, `plan_entries`, `atomic_write`, `shard_name`, `list_shards`, and the
names re-exported from record_format.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from os_cli.errors import UserError
from os_cli.machine import versions
from os_cli.models.fingerprint import check_models, model_fingerprints
from os_cli.recipe import recipe_diff, recipe_hash
from os_cli.recipe.typed import Recipe
from os_cli.store.folder import LOCK_RE, SHARD_RE, TMP_RE, atomic_write, fsync_dir, is_own_file  # noqa: F401
from os_cli.store.plan_digest import check_dataset, encode_plan, plan_entries, plan_fingerprint  # noqa: F401
from os_cli.store.record_format import (  # noqa: F401 - re-exported
    ERRORS_FILE,
    FORMAT,
    IDS_FILE,
    MANIFEST,
    PLAN_FILE,
    REQUIRED_KEYS,
    encode_ids,
    encode_record,
    num_samples_of,
    parse_record_line,
    read_ids,
    record_key,
    record_problem,
    token_spec,
)
from os_cli.store.scan import (  # noqa: F401 - re-exported
    BadLine,
    Scan,
    check_shards,
    describe_drop,
    drop_lines,
    list_shards,
    scan_records,
    scan_shards,
    shard_owner,
)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def shard_name(index: int, rank: int = 0, world_size: int = 1) -> str:
    return f"shard-{index:05d}.jsonl" if world_size <= 1 else f"shard-r{rank:02d}-{index:05d}.jsonl"


def read_manifest(out_dir: Path) -> dict | None:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable manifest ({exc})", exit_code=2) from exc
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: not a manifest object", exit_code=2)
    return manifest


def is_our_manifest(manifest: Any) -> bool:
    return (
        isinstance(manifest, dict)
        and isinstance(manifest.get("format"), int)
        and isinstance(manifest.get("recipe"), dict)
        and str(manifest.get("recipe_hash", "")).startswith("sha256:")
    )


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def check_output(out_dir: Path, recipe: Recipe, *, overwrite: bool = False, plan: Sequence[list] | None = None) -> str:
    """What a run may do with `out_dir`: "new", "resume" or "overwrite". Read-only; refuses (exit 2):

    a file; a non-empty folder without a manifest os-sample wrote (with or without overwrite); a
    different recipe or format (unless overwrite); rows that changed since (`plan`, unless overwrite).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--output {out_dir} is a file, not a folder")
    if not out_dir.is_dir():
        return "new"
    manifest, why = None, None
    if (out_dir / MANIFEST).exists() or (out_dir / MANIFEST).is_symlink():
        try:
            manifest = read_manifest(out_dir)
            if not is_our_manifest(manifest):
                why = f"its {MANIFEST} is not one os-sample writes"
        except UserError as exc:
            why = str(exc)
    if manifest is None or why:
        others = [p.name for p in out_dir.iterdir() if not (LOCK_RE.match(p.name) or TMP_RE.match(p.name))]
        if not others:
            return "new"  # empty, or only what a run killed before its first write leaves
        listed = ", ".join(sorted(others)[:5]) + (", ..." if len(others) > 5 else "")
        raise UserError(
            f"{out_dir} is not empty ({listed}) and {why or f'has no {MANIFEST} written by os-sample'}, so it "
            f"may hold someone else's files; os-sample writes nothing there, --overwrite included: choose "
            f"another --output (a new or empty folder)"
        )
    if overwrite:
        return "overwrite"
    if manifest.get("format") != FORMAT:
        raise UserError(
            f"{out_dir}/{MANIFEST} has format {manifest.get('format')!r}, this version writes "
            f"{FORMAT}; use --overwrite or another --output"
        )
    new_hash = recipe_hash(recipe)
    if manifest.get("recipe_hash") != new_hash:
        changes = recipe_diff(manifest.get("recipe") or {}, recipe)
        listed = "; ".join(f"{key}: {_short(old)} -> {_short(new)}" for key, old, new in changes[:8])
        if len(changes) > 8:
            listed += f"; and {len(changes) - 8} more"
        raise UserError(
            f"{out_dir} was written by a different recipe, so its records cannot be continued "
            f"(changed: {listed or 'recipe_hash only'}). Pass --overwrite to start over in this folder, "
            f"or --output NEW_DIR to keep both",
            exit_code=2,
        )
    if plan is not None:
        check_dataset(out_dir, manifest, plan)
    places = recipe.places
    check_models(out_dir, manifest, {"theta": places.theta, "teacher": places.teacher})
    return "resume"


def check_plan(
    out_dir: Path, done: Iterable[tuple[str, int]], planned_ids: Sequence[str], num_samples: int = 1
) -> None:
    """Refuse to continue a folder holding records this run does not plan: rows outside the plan (a
    shrunk limit) or samples >= num_samples (a shrunk sampling.num_samples). `done` holds (id, sample)."""
    planned = set(planned_ids)
    done = list(done)
    extra = [key for key in done if key[0] not in planned]
    if extra:
        raise UserError(
            f"{out_dir} holds {len(extra)} record(s) for rows outside this run's plan (e.g. id {extra[0][0]!r}); "
            f"did dataset.limit/--limit shrink or the dataset change? Use a larger --limit, --overwrite, or "
            f"another --output"
        )
    beyond = sorted((key for key in done if key[1] >= num_samples), key=lambda k: k[1])
    if beyond:
        raise UserError(
            f"{out_dir} holds {len(beyond)} record(s) with a sample index >= sampling.num_samples = {num_samples} "
            f"(e.g. id {beyond[-1][0]!r} sample {beyond[-1][1]}); did sampling.num_samples shrink? Use "
            f"sampling.num_samples >= {beyond[-1][1] + 1}, --overwrite, or another --output"
        )


def clear_outputs(out_dir: Path) -> None:
    """Remove what `RunWriter` writes (shards, manifest, ids, plan, errors, temporaries); nothing else."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    for path in out_dir.iterdir():
        if is_own_file(path.name) and not LOCK_RE.match(path.name) and path.is_file():
            path.unlink()
    fsync_dir(out_dir)


class RunWriter:
    """Writes one rank's shards; rank 0 also owns the manifest, ids.txt and errors.jsonl.

    Use: `done = writer.start(planned_ids, errors, ...)`, then `writer.append(records)` per batch
    (each call is atomic per shard file), then `writer.finish(status)`.
    """

    def __init__(self, out_dir: Path, recipe: Recipe, *, rank: int = 0, world_size: int = 1):
        self.out_dir = Path(out_dir)
        self.recipe = recipe
        self.rank = rank
        self.world_size = world_size
        self.shard_size = int(recipe.output.shard_size)
        self.is_main = rank == 0
        self.tokens = token_spec(recipe)  # what every record's `tokens` must hold
        self.manifest: dict = {}
        self.done: dict[tuple[str, int], str] = {}  # (id, sample) -> shard name
        self.written = 0  # records appended by this process
        self.records_known = 0  # records on disk (all ranks) as this process knows them
        self.planned = 0
        self.errors = 0
        self._shard_index = 0
        self._shard_lines: list[bytes] = []
        self.notes: list[str] = []

    # ------------------------------------------------------------------ setup

    def start(
        self,
        planned_ids: Sequence[str],
        errors: Sequence[Mapping],
        *,
        models: Mapping | None = None,
        device: str | None = None,
        plan: Sequence[list] | None = None,
        repair: bool = False,
    ) -> set[tuple[str, int]]:
        """Prepare the folder and return the (id, sample) keys already written (by any rank, any earlier attempt).

        Torn last lines of this rank's shards are dropped (with `repair`, every invalid line of
        them); `self.notes` says which. Other invalid lines raise `UserError` unless `repair`.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._remove_own_temporaries()
        scan = scan_shards(self.out_dir, self.tokens)
        check_shards(scan, repair=repair)
        mine = [b for b in scan.bad if (b.torn or repair) and shard_owner(b.path, self.world_size) == self.rank]
        drop_lines(mine)
        self.notes = [describe_drop(b) for b in mine]
        self.done = scan.done
        check_plan(self.out_dir, self.done, planned_ids, num_samples_of(self.recipe))
        self.planned = len(planned_ids)
        self.records_known = len(self.done)
        self._open_current_shard()
        if self.is_main:
            done_ids = {row_id for row_id, _ in self.done}
            pending_errors = [e for e in errors if e["id"] not in done_ids]
            self.errors = len(pending_errors)
            previous = read_manifest(self.out_dir) or {}
            self.manifest = {
                "format": FORMAT,
                "recipe": self.recipe.to_dict(),
                "recipe_hash": recipe_hash(self.recipe),
                "recipe_source": self.recipe.source.to_dict(),
                "dataset_fingerprint": plan_fingerprint(plan) if plan is not None else None,
                "versions": versions(),
                "models": dict(models or {}),
                "model_fingerprints": model_fingerprints(models or {}),
                "seed": self.recipe.sampling.seed,
                "device": device,
                "world_size": self.world_size,
                "started_at": previous.get("started_at") or now_iso(),
                "updated_at": now_iso(),
                "finished_at": None,
                "status": "running",
                "attempts": int(previous.get("attempts", 0)) + 1,
                "counts": {"planned": self.planned, "records": self.records_known, "errors": self.errors},
                "ids_file": IDS_FILE,
                "plan_file": PLAN_FILE if plan is not None else None,
            }
            # the manifest first: a folder holding any file of ours also holds our manifest
            self._save_manifest()
            atomic_write(self.out_dir / IDS_FILE, encode_ids(planned_ids))
            atomic_write(self.out_dir / ERRORS_FILE, b"".join(encode_record(e) for e in pending_errors))
            if plan is not None:
                atomic_write(self.out_dir / PLAN_FILE, encode_plan(plan))
        return set(self.done)

    def _remove_own_temporaries(self) -> None:
        """Temporaries left by a killed run: this rank's shard temporaries (rank 0: all of its files)."""
        prefix = "shard-" if self.world_size <= 1 else f"shard-r{self.rank:02d}-"
        for path in self.out_dir.iterdir():
            if not TMP_RE.match(path.name):
                continue
            name = path.name[1:]
            mine = name.startswith(prefix) and (self.world_size > 1 or SHARD_RE.match(name.split(".tmp-")[0]))
            if mine or (self.is_main and not name.startswith("shard-")):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass

    def _own_shards(self) -> list[tuple[int, Path]]:
        out = []
        for path in list_shards(self.out_dir):
            match = SHARD_RE.match(path.name)
            assert match is not None  # list_shards lists only names SHARD_RE matches
            rank = match.group(1)
            if (self.world_size <= 1 and rank is None) or (
                self.world_size > 1 and rank is not None and int(rank) == self.rank
            ):
                out.append((int(match.group(2)), path))
        return sorted(out)

    def _open_current_shard(self) -> None:
        own = self._own_shards()
        if not own:
            self._shard_index, self._shard_lines = 0, []
            return
        index, path = own[-1]
        lines = [line + b"\n" for line in path.read_bytes().split(b"\n") if line.strip()]
        if len(lines) < self.shard_size:
            self._shard_index, self._shard_lines = index, lines
        else:
            self._shard_index, self._shard_lines = index + 1, []

    # ------------------------------------------------------------------ writing

    @property
    def current_shard(self) -> str:
        return shard_name(self._shard_index, self.rank, self.world_size)

    def append(self, records: Sequence[Mapping]) -> None:
        """Add a batch of records: the current shard is rewritten atomically with the lines added."""
        for r in records:
            problem = record_problem(dict(r), self.tokens)
            if problem:
                raise ValueError(f"record {r.get('id')!r} is not of the current format: {problem}")
        lines = [encode_record(r) for r in records]
        while lines:
            room = self.shard_size - len(self._shard_lines)
            if room <= 0:
                self._shard_index, self._shard_lines = self._shard_index + 1, []
                continue
            take, lines = lines[:room], lines[room:]
            new_lines = self._shard_lines + take
            atomic_write(self.out_dir / self.current_shard, b"".join(new_lines))
            self._shard_lines = new_lines
        for r in records:
            self.done[record_key(r)] = self.current_shard
        self.written += len(records)
        self.records_known += len(records)
        if self.is_main:
            self.manifest["counts"]["records"] = self.records_known
            self.manifest["updated_at"] = now_iso()
            self._save_manifest()

    def finish(self, status: str, *, message: str | None = None, rescan: bool = False) -> dict:
        """Rank 0: record the final status (complete | interrupted | failed) and counts."""
        if not self.is_main:
            return {}
        if rescan:
            self.records_known = len(scan_records(self.out_dir, spec=self.tokens))
        self.manifest["counts"]["records"] = self.records_known
        self.manifest["status"] = status
        self.manifest["updated_at"] = now_iso()
        self.manifest["finished_at"] = now_iso() if status == "complete" else None
        if message:
            self.manifest["message"] = message
        else:
            self.manifest.pop("message", None)
        self._save_manifest()
        return self.manifest

    def _save_manifest(self) -> None:
        text = json.dumps(self.manifest, indent=2, ensure_ascii=False, default=str) + "\n"
        atomic_write(self.out_dir / MANIFEST, text)


def iter_records(out_dir: Path) -> Iterable[dict]:
    """Every record of every shard, in shard order (a convenience for tests and tools)."""
    for shard in list_shards(out_dir):
        for line in shard.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                yield json.loads(line)
