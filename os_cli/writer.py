"""Sharded JSONL output with atomic appends and exactly-once resume.

The output folder (format in docs/ARCHITECTURE.md): `manifest.json`, `ids.txt`, `errors.jsonl` and
`shard-NNNNN.jsonl` (one process) or `shard-rRR-NNNNN.jsonl` (rank RR of several).

Exactly once, whatever moment the process dies at (`kill -9` included): every file is replaced
whole, never appended to in place. `atomic_write` writes a hidden temporary file next to the
target, fsyncs it, `os.replace`s it over the target and fsyncs the folder, so a reader (or a
resumed run) sees either the old file or the new one, never a torn line. A batch is appended by
rewriting the current shard with the new lines added (shards are bounded by `shard_size`, so this
stays cheap); a batch that crosses a shard boundary fills the current shard, then starts the next.
The record lines on disk are therefore the only truth: a resumed run scans every shard (of every
rank) for the ids already written and skips those rows. The manifest's counts are informational.

Resume or refuse: a folder whose manifest has the same `recipe_hash` resumes; a different hash is
refused with the list of keys that changed, unless the caller overwrites (`clear_outputs` removes
only the files this module writes).

Public: `RunWriter`, `check_output`, `check_plan`, `clear_outputs`, `read_manifest`, `scan_records`,
`atomic_write`, `shard_name`, `list_shards`, `MANIFEST`, `IDS_FILE`, `ERRORS_FILE`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import UserError
from .recipe import recipe_diff, recipe_hash

FORMAT = 1
MANIFEST = "manifest.json"
IDS_FILE = "ids.txt"
ERRORS_FILE = "errors.jsonl"
SHARD_RE = re.compile(r"^shard-(?:r(\d{2,})-)?(\d{5,})\.jsonl$")
_TMP_RE = re.compile(r"^\.(?:shard-.*\.jsonl|manifest\.json|ids\.txt|errors\.jsonl)\.tmp-\d+$")
_ID_RE = re.compile(r'^\{"id": ("(?:[^"\\]|\\.)*")')


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace `path` by `data` atomically and durably (temp file + fsync + os.replace + dir fsync)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def shard_name(index: int, rank: int = 0, world_size: int = 1) -> str:
    return f"shard-{index:05d}.jsonl" if world_size <= 1 else f"shard-r{rank:02d}-{index:05d}.jsonl"


def list_shards(out_dir: Path) -> list[Path]:
    """Every shard of every rank, sorted by name."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir() if SHARD_RE.match(p.name) and p.is_file())


def encode_record(record: Mapping) -> bytes:
    """One JSON line; `id` first (resume scans read just that), strict JSON (no NaN)."""
    ordered = {"id": record["id"], **{k: v for k, v in record.items() if k != "id"}}
    return (json.dumps(ordered, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _line_id(line: bytes, where: str) -> str:
    match = _ID_RE.match(line.decode("utf-8", errors="replace"))
    if match is not None and line.rstrip().endswith(b"}"):
        return json.loads(match.group(1))
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not a valid JSON record ({exc.msg}); the output folder was modified by hand? "
                        f"use --overwrite or another --output", exit_code=1) from exc
    if not isinstance(record, dict) or "id" not in record:
        raise UserError(f"{where}: a record without an id; use --overwrite or another --output", exit_code=1)
    return str(record["id"])


def scan_records(out_dir: Path) -> dict[str, str]:
    """`{id: shard file name}` of every record in every shard. Duplicates raise `UserError`."""
    found: dict[str, str] = {}
    for shard in list_shards(out_dir):
        for number, line in enumerate(shard.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            row_id = _line_id(line, f"{shard}:{number}")
            if row_id in found:
                raise UserError(f"{shard}:{number}: id {row_id!r} was already written to {found[row_id]}; "
                                f"the output folder is inconsistent (use --overwrite)", exit_code=1)
            found[row_id] = shard.name
    return found


def read_manifest(out_dir: Path) -> dict | None:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable manifest ({exc}); use --overwrite or another --output", exit_code=1) from exc
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: not a manifest object; use --overwrite or another --output", exit_code=1)
    return manifest


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def check_output(out_dir: Path, recipe: Mapping, *, overwrite: bool = False) -> str:
    """What a run may do with `out_dir`: "new", "resume" or "overwrite". Refuses a different recipe.

    Read-only: nothing is removed here (the caller clears after the models have loaded).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--output {out_dir} is a file, not a folder")
    manifest = read_manifest(out_dir) if not overwrite else None
    shards = list_shards(out_dir)
    if overwrite:
        return "overwrite" if (shards or (out_dir / MANIFEST).exists()) else "new"
    if manifest is None:
        if shards:
            raise UserError(
                f"{out_dir} holds {len(shards)} shard file(s) but no {MANIFEST}, so it cannot be resumed safely; "
                f"pass --overwrite to replace them, or choose another --output"
            )
        return "new"
    if manifest.get("format") != FORMAT:
        raise UserError(f"{out_dir}/{MANIFEST} has format {manifest.get('format')!r}, this version writes "
                        f"{FORMAT}; use --overwrite or another --output")
    new_hash = recipe_hash(recipe)
    if manifest.get("recipe_hash") == new_hash:
        return "resume"
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


def check_plan(out_dir: Path, done: Iterable[str], planned_ids: Sequence[str]) -> None:
    """Refuse to continue a folder holding records for rows this run does not plan (a shrunk limit)."""
    planned = set(planned_ids)
    extra = [i for i in done if i not in planned]
    if extra:
        raise UserError(
            f"{out_dir} holds {len(extra)} record(s) for rows outside this run's plan (e.g. id {extra[0]!r}); "
            f"did dataset.limit/--limit shrink or the dataset change? Use a larger --limit, --overwrite, or "
            f"another --output"
        )


def clear_outputs(out_dir: Path) -> None:
    """Remove what `RunWriter` writes (shards, manifest, ids, errors, temporaries); nothing else."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    for path in out_dir.iterdir():
        if (SHARD_RE.match(path.name) or _TMP_RE.match(path.name)
                or path.name in (MANIFEST, IDS_FILE, ERRORS_FILE)) and path.is_file():
            path.unlink()
    _fsync_dir(out_dir)


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist, key in (("os-sample", "os_sample"), ("torch", "torch"), ("transformers", "transformers"),
                      ("datasets", "datasets"), ("accelerate", "accelerate")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    if out["os_sample"] is None:
        from . import __version__

        out["os_sample"] = __version__
    return out


class RunWriter:
    """Writes one rank's shards; rank 0 also owns the manifest, ids.txt and errors.jsonl.

    Use: `done = writer.start(planned_ids, errors, ...)`, then `writer.append(records)` per batch
    (each call is atomic per shard file), then `writer.finish(status)`.
    """

    def __init__(self, out_dir: Path, recipe: Mapping, *, rank: int = 0, world_size: int = 1):
        self.out_dir = Path(out_dir)
        self.recipe = recipe
        self.rank = rank
        self.world_size = world_size
        self.shard_size = int(recipe["output"]["shard_size"])
        self.is_main = rank == 0
        self.manifest: dict = {}
        self.done: dict[str, str] = {}
        self.written = 0          # records appended by this process
        self.records_known = 0    # records on disk (all ranks) as this process knows them
        self.planned = 0
        self.errors = 0
        self._shard_index = 0
        self._shard_lines: list[bytes] = []

    # ------------------------------------------------------------------ setup

    def start(self, planned_ids: Sequence[str], errors: Sequence[Mapping], *, models: Mapping | None = None,
              device: str | None = None, clear: bool = False) -> set[str]:
        """Prepare the folder and return the ids already written (by any rank, in any earlier attempt)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if clear and self.is_main:
            clear_outputs(self.out_dir)
        self._remove_own_temporaries()
        self.done = scan_records(self.out_dir)
        check_plan(self.out_dir, self.done, planned_ids)
        self.planned = len(planned_ids)
        self.records_known = len(self.done)
        self._open_current_shard()
        if self.is_main:
            pending_errors = [e for e in errors if e["id"] not in self.done]
            self.errors = len(pending_errors)
            atomic_write(self.out_dir / IDS_FILE, "".join(f"{i}\n" for i in planned_ids))
            atomic_write(self.out_dir / ERRORS_FILE, b"".join(encode_record(e) for e in pending_errors))
            previous = read_manifest(self.out_dir) or {}
            recipe = {k: v for k, v in self.recipe.items() if k != "_meta"}
            self.manifest = {
                "format": FORMAT,
                "recipe": recipe,
                "recipe_hash": recipe_hash(self.recipe),
                "recipe_source": self.recipe.get("_meta"),
                "versions": versions(),
                "models": dict(models or {}),
                "seed": self.recipe["sampling"]["seed"],
                "device": device,
                "world_size": self.world_size,
                "started_at": previous.get("started_at") or now_iso(),
                "updated_at": now_iso(),
                "finished_at": None,
                "status": "running",
                "attempts": int(previous.get("attempts", 0)) + 1,
                "counts": {"planned": self.planned, "records": self.records_known, "errors": self.errors},
                "ids_file": IDS_FILE,
            }
            self._save_manifest()
        return set(self.done)

    def _remove_own_temporaries(self) -> None:
        """Temporaries left by a killed run: this rank's shard temporaries (rank 0: all of its files)."""
        prefix = "shard-" if self.world_size <= 1 else f"shard-r{self.rank:02d}-"
        for path in self.out_dir.iterdir():
            if not _TMP_RE.match(path.name):
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
            rank = match.group(1)
            if (self.world_size <= 1 and rank is None) or (self.world_size > 1 and rank is not None
                                                            and int(rank) == self.rank):
                out.append((int(match.group(2)), path))
        return sorted(out)

    def _open_current_shard(self) -> None:
        own = self._own_shards()
        if not own:
            self._shard_index, self._shard_lines = 0, []
            return
        index, path = own[-1]
        lines = [line + b"\n" for line in path.read_bytes().splitlines() if line.strip()]
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
            self.done[str(r["id"])] = self.current_shard
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
            self.records_known = len(scan_records(self.out_dir))
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
        for line in shard.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield json.loads(line)
