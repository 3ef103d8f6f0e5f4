"""Several writers in one output folder that may be handed the same row (`generate --backend ray`).

Writer slots. A writer takes the first free slot w >= 1 (`.os-sample-lock-rWW`, an exclusive flock
held for the writer's life and dropped by the OS when it dies) and writes `shard-rWW-*` through an
ordinary `RunWriter(rank=w)`; slot 0 is rank 0's lock, held by the process that owns the manifest.
Two live writers never share a slot; a writer started after one died may take its slot and continue
its shards (dropping a torn tail, as any rank does).

Appends. A row can reach two writers (a task re-run after its writer died, or writers of a killed
run still finishing while a rerun starts), so every append happens under one folder-wide lock
(`APPEND_LOCK`, a blocking flock): `DedupWriter` reads what the other writers appended since its
last look (`ShardIndex`: the new bytes of every shard), drops the records whose (id, sample) any
shard holds, and appends the rest. A row is computed twice at worst, never written twice.
"""

from __future__ import annotations

import fcntl
import os
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from os_cli.errors import UserError
from os_cli.store.folder import APPEND_LOCK, FolderLock, lock_name
from os_cli.store.record_format import parse_record_line, record_key
from os_cli.store.scan import list_shards

WRITER_SLOTS = 1000  # slots 1..999 for writers (shard-rWW-*); 0 is the manifest owner's (rank 0's lock)


def take_writer_slot(folder: Path):
    """The first free writer slot >= 1 of `folder`: (slot, its held FolderLock)."""
    for slot in range(1, WRITER_SLOTS):
        try:
            return slot, FolderLock(folder, slot).acquire()
        except UserError:
            continue
    raise UserError(f"{folder}: all {WRITER_SLOTS - 1} writer slots are held", exit_code=1)


def alive_writers(folder: Path) -> int:
    """How many writer slots >= 1 are held now (a live actor holds its slot's lock)."""
    alive = 0
    held = {lock_name(0)}
    for path in Path(folder).glob(".os-sample-lock-r*"):
        if path.name in held:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            alive += 1
        finally:
            os.close(fd)  # drops the shared lock if it was taken
    return alive


@contextmanager
def append_lock(folder: Path) -> Iterator[None]:
    """The folder-wide lock every actor holds while it checks for and appends records (blocking)."""
    fd = os.open(Path(folder) / APPEND_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class ShardIndex:
    """The (id, sample) keys of the complete records in every shard of a folder, kept current by
    reading only what was appended since the last look (a shard is only ever replaced by itself with
    lines added; one that shrank or does not continue at a line boundary is read again whole)."""

    def __init__(self, folder: Path, spec):
        self.folder, self.spec = Path(folder), spec
        self.keys: set[tuple[str, int]] = set()
        self._offsets: dict[str, int] = {}

    def refresh(self) -> set[tuple[str, int]]:
        for path in list_shards(self.folder):
            try:
                handle = open(path, "rb")  # a shard is replaced whole: this is one version of it
            except FileNotFoundError:
                continue
            with handle:
                start = self._offsets.get(path.name, 0)
                size = os.fstat(handle.fileno()).st_size
                if start:
                    handle.seek(start - 1)
                    if start > size or handle.read(1) != b"\n":  # not a continuation: read it again whole
                        start = 0
                        handle.seek(0)
                data = handle.read()
            end = data.rfind(b"\n") + 1  # complete lines only
            for raw in data[:end].split(b"\n"):
                if raw.strip():
                    record, _ = parse_record_line(raw, self.spec)
                    if record is not None:
                        self.keys.add(record_key(record))
            self._offsets[path.name] = start + end
        return self.keys


class DedupWriter:
    """A `RunWriter` whose appends skip the records already in any shard (under `append_lock`)."""

    def __init__(self, writer, index: ShardIndex):
        self.writer, self.index = writer, index
        self.fates: deque[bool] = deque()  # per record appended, in order: written (True) or a duplicate
        self.duplicates = 0

    @property
    def current_shard(self) -> str:
        return self.writer.current_shard

    def append(self, records) -> None:
        with append_lock(self.writer.out_dir):
            known = self.index.refresh()
            kept = [record_key(r) not in known for r in records]
            fresh = [r for r, keep in zip(records, kept) if keep]
            if fresh:
                self.writer.append(fresh)
                known.update(record_key(r) for r in fresh)
        self.fates.extend(kept)
        self.duplicates += len(records) - len(fresh)

    def next_fate(self) -> bool:
        """Whether the oldest record not asked about yet was written (False: a duplicate, dropped)."""
        return self.fates.popleft() if self.fates else True
