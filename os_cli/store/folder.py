"""The output folder as a whole: lock, write checks, foreign folders, and the --overwrite swap.

Lock. Every process of a run holds an exclusive `fcntl.flock` on its own lock file in the folder
(`.os-sample-lock-r00` for a single process or rank 0, `.os-sample-lock-rRR` for rank RR), taken
before anything is written and held until the process exits. The OS drops it when the process
dies, `kill -9` included, so no stale lock survives. Rank 0's lock guards the manifest, ids.txt,
errors.jsonl and the single-process shards; rank RR's lock guards `shard-rRR-*`. A second run's
rank 0 therefore always collides with the first run's rank 0 and exits 1 naming the holder's pid
and host before it writes anything. Lock files are never deleted (deleting would let two runs lock
two different files). With `--backend ray` the driver holds rank 0's lock and each actor the first
free `.os-sample-lock-rWW` (W >= 1); `.os-sample-lock-append` serializes their appends (run/ray_backend.py).

Overwrite. `--overwrite` writes the new run into a hidden sibling folder `.NAME.overwrite` and
swaps it in only when it is complete (one `renameat2(RENAME_EXCHANGE)` where the OS has it, else
two renames, a crash between them finished by `finish_swap` on the next run), so the previous run
stays whole in NAME until then. The run holds the locks of both folders, so a run that locks
NAME right after the swap is refused until the old run is cleared. Files of the old folder that
os-sample did not write are moved into the new one.

Checks before the models load: an output path under a file, a folder that is not writable, or a
file system with less than `MIN_FREE_BYTES` free is refused (exit 2).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import shutil
import socket
from pathlib import Path

from os_cli.errors import UserError
from os_cli.store.record_format import ERRORS_FILE, IDS_FILE, MANIFEST, PLAN_FILE

MIN_FREE_BYTES = 16 * 2**20
APPEND_LOCK = ".os-sample-lock-append"  # --backend ray: held by an actor while it checks for and appends records
LOCK_RE = re.compile(r"^\.os-sample-lock-(?:r\d{2,}|append)$")
SHARD_RE = re.compile(r"^shard-(?:r(\d{2,})-)?(\d{5,})\.jsonl$")
TMP_RE = re.compile(r"^\.(?:shard-.*\.jsonl|manifest\.json|ids\.txt|errors\.jsonl|plan\.jsonl)\.tmp-\d+$")
OWN_FILES = (MANIFEST, IDS_FILE, ERRORS_FILE, PLAN_FILE)
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def lock_name(rank: int = 0) -> str:
    return f".os-sample-lock-r{rank:02d}"


def is_own_file(name: str) -> bool:
    """A file this tool writes in an output folder (records, manifest, ids, errors, plan, lock, temporaries)."""
    return bool(SHARD_RE.match(name) or TMP_RE.match(name) or LOCK_RE.match(name) or name in OWN_FILES)


def staging_dir(out_dir: Path) -> Path:
    """Where `--overwrite` writes the new run until it is complete: a hidden sibling."""
    real = Path(os.path.realpath(out_dir))
    return real.parent / f".{real.name}.overwrite"


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
    fsync_dir(path.parent)


# ------------------------------------------------------------------------------------------------ lock


class FolderLock:
    """An exclusive flock on this rank's lock file in `folder`; `release()` or process exit frees it."""

    def __init__(self, folder: Path, rank: int = 0):
        self.path = Path(folder) / lock_name(rank)
        self.fd: int | None = None

    def acquire(self) -> FolderLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip() or "pid unknown"
            os.close(fd)
            folder = self.path.parent
            raise UserError(
                f"{folder} is being written by another os-sample run ({holder}); wait for it to finish, "
                f"stop it, or choose another --output",
                exit_code=1,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = None


# ------------------------------------------------------------------------------------------------ checks


def check_writable(out_dir: Path, *, min_free: int = MIN_FREE_BYTES) -> None:
    """Refuse (exit 2) an output path under a file, a folder that cannot be written, a full disk."""
    out_dir = Path(out_dir)
    probe_dir = out_dir
    while not probe_dir.exists():
        if probe_dir.is_symlink():
            raise UserError(f"--output {out_dir}: {probe_dir} is a broken symbolic link")
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        what = "is a file" if probe_dir == out_dir else f"is under {probe_dir}, which is a file"
        raise UserError(f"--output {out_dir} {what}, not a folder; choose another --output")
    if probe_dir != out_dir:  # not created yet: nothing is written outside it, ask the OS instead
        if not os.access(probe_dir, os.W_OK | os.X_OK):
            raise UserError(f"--output {out_dir}: cannot write in {probe_dir} (not writable); choose another --output")
        _check_free(out_dir, probe_dir, min_free)
        return
    probe = probe_dir / f".os-sample-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"--output {out_dir}: cannot write in {probe_dir} ({exc.strerror or exc}); choose another --output"
        ) from None
    _check_free(out_dir, probe_dir, min_free)


def make_folder(out_dir: Path) -> None:
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"--output {out_dir}: cannot create the folder ({exc.strerror or exc}); choose another --output"
        ) from None


def _check_free(out_dir: Path, probe_dir: Path, min_free: int) -> None:
    free = free_bytes(probe_dir)
    if free < min_free:
        raise UserError(
            f"--output {out_dir}: the file system of {probe_dir} has {free // 2**20} MiB free, "
            f"less than the {min_free // 2**20} MiB this run needs to start; free space or "
            f"choose another --output"
        )


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def foreign_entries(out_dir: Path) -> list[str]:
    """Names in `out_dir` that this tool did not write (sorted)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    return sorted(p.name for p in out_dir.iterdir() if not is_own_file(p.name))


# ------------------------------------------------------------------------------------------------ overwrite


def prepare_staging(out_dir: Path) -> Path:
    """An empty staging folder for `--overwrite` (a stale one from a killed run is cleared).

    The caller holds `out_dir`'s lock, which every run using the staging folder holds too, so a
    staging folder found here belongs to no live run.
    """
    stage = staging_dir(out_dir)
    if previous_dir(out_dir).exists() or previous_dir(out_dir).is_symlink():
        raise UserError(
            f"{previous_dir(out_dir)} (left by an earlier --overwrite) is in the way of the swap; "
            f"move its files away and remove it"
        )
    if stage.exists() or stage.is_symlink():
        if stage.is_symlink() or not stage.is_dir():
            raise UserError(f"--overwrite needs {stage} for the new run, and it is not a folder; remove it")
        foreign = foreign_entries(stage)
        if foreign:
            raise UserError(
                f"--overwrite needs {stage} for the new run, and it holds files os-sample did not "
                f"write ({', '.join(foreign[:5])}); move them away"
            )
        for path in stage.iterdir():
            if not LOCK_RE.match(path.name):
                path.unlink()
    else:
        try:
            stage.mkdir()
        except OSError as exc:
            raise UserError(
                f"--overwrite writes the new run in {stage} beside {out_dir} and swaps it in when "
                f"it completes; cannot create it ({exc.strerror or exc})"
            ) from None
    fsync_dir(stage.parent)
    if os.stat(stage).st_dev != os.stat(out_dir).st_dev:
        raise UserError(
            f"--overwrite writes the new run in {stage} and swaps it in by renaming, but {out_dir} is on "
            f"another file system (a mount point?); empty it yourself or choose another --output"
        )
    return stage


def swap_in(out_dir: Path, stage: Path) -> list[str]:
    """Make the complete run in `stage` the content of `out_dir`; remove the previous run. Returns notes."""
    real = Path(os.path.realpath(out_dir))
    old = exchange_folders(stage, real)
    return _clear_old(old, real)


def exchange_folders(new: Path, target: Path) -> Path:
    """Put the folder `new` at the existing folder `target`; returns where the previous `target` now is.
    One RENAME_EXCHANGE where the OS has it (the old folder then sits at `new`), else two renames (it
    sits at `previous_dir(target)`; a crash between them leaves it there, whole). Nothing is deleted."""
    target = Path(target)
    if _exchange(new, target):
        old = Path(new)
    else:
        old = previous_dir(target)
        os.rename(target, old)
        os.rename(new, target)
    fsync_dir(target.parent)
    return old


def previous_dir(out_dir: Path) -> Path:
    real = Path(os.path.realpath(out_dir))
    return real.parent / f".{real.name}.previous"


def finish_swap(out_dir: Path) -> list[str]:
    """Complete a two-rename swap cut between its renames (the folder missing, the new run staged)."""
    old, stage = previous_dir(out_dir), staging_dir(out_dir)
    if Path(out_dir).exists() or not old.is_dir() or not (stage / MANIFEST).is_file():
        return []
    real = Path(os.path.realpath(out_dir))
    os.rename(stage, real)
    fsync_dir(real.parent)
    return [f"finished the --overwrite swap of {real} that was cut short"] + _clear_old(old, real)


def _clear_old(old: Path, real: Path) -> list[str]:
    """Move the user's files of the previous run's folder `old` into `real`; remove the rest."""
    notes: list[str] = []
    for path in sorted(old.iterdir()):
        if is_own_file(path.name):
            continue
        target = real / path.name
        if target.exists() or target.is_symlink():
            notes.append(f"kept {path} (the new run has a file of that name)")
            continue
        os.rename(path, target)
    for path in old.iterdir():
        if is_own_file(path.name):
            path.unlink()
    try:
        old.rmdir()
    except OSError:
        pass
    fsync_dir(real)
    fsync_dir(real.parent)
    return notes


def _exchange(a: Path, b: Path) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def fsync_dir(folder: Path) -> None:
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
