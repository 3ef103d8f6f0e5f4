"""Where a file os-sample writes outside a run may go (`export --to`, `bench --json`): one check.

`check_target(path, option, overwrite=...)` returns the real path to write (symbolic links followed, so
a link is judged, and written through, as what it points to) or refuses with exit 2, before anything
is written:

- a run folder itself, or a path inside one, unless it names a new file (or folder) of the user's:
  nothing that exists there is replaced, `--overwrite` or not, and no name os-sample owns in a run
  folder (`outfolder.is_own_file`: shards, manifest, ids, plan, errors, locks, temporaries) is taken,
  at any depth. A run folder holds os-sample's manifest or a run's lock file (a run takes its lock
  before it writes anything). The hidden folders `--overwrite` keeps beside a run (`.NAME.overwrite`,
  `.NAME.previous`) are the run's too;
- anything that is not a regular file or a folder (a device, a FIFO, a socket), a broken symbolic
  link, a path under a file;
- an existing file or folder without `overwrite`.

Missing parent folders are not refused: the caller creates them (`make_parents`) when it writes.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from os_cli.errors import UserError
from os_cli.store.folder import is_own_file, lock_name, previous_dir, staging_dir
from os_cli.store.record_format import MANIFEST

_KINDS = (
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISSOCK, "socket"),
)


def is_run_folder(folder: Path) -> bool:
    """A folder holding os-sample's manifest (a damaged one counts) or a run's lock file."""
    from os_cli.store.writer import is_our_manifest

    folder = Path(folder)
    if not folder.is_dir():
        return False
    if (folder / lock_name(0)).exists():
        return True
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return is_our_manifest(json.loads(manifest.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError):
        return True


def _run_of_hidden_sibling(real: Path) -> Path | None:
    """The run folder whose `--overwrite` staging or previous folder `real` is named as, if any."""
    if not real.name.startswith(".") or "." not in real.name[1:]:
        return None
    run = real.parent / real.name[1:].rsplit(".", 1)[0]
    if real in (staging_dir(run), previous_dir(run)) and is_run_folder(run):
        return run
    return None


def _refuse_run_paths(real: Path, shown: str) -> None:
    for folder in (real, *real.parents):
        if not is_run_folder(folder):
            continue
        if folder == real:
            raise UserError(f"{shown} is the output folder of a run; choose a path outside it")
        inside = real.relative_to(folder).parts
        owned = next((part for part in inside if is_own_file(part)), None)
        if owned is not None:
            raise UserError(
                f"{shown}: {owned!r} is a name os-sample uses for the run in {folder}; choose "
                f"another name or a path outside the run folder"
            )
        if os.path.lexists(real):
            raise UserError(
                f"{shown} exists inside the run folder {folder}; nothing there is replaced, "
                f"--overwrite included: choose a new name or a path outside the run folder"
            )
    for part in (real, *real.parents):
        run = _run_of_hidden_sibling(part)
        if run is not None:
            raise UserError(
                f"{shown}: {part.name!r} is kept for the --overwrite of the run in {run}; choose another path"
            )


def check_target(
    path: str | Path, option: str, *, overwrite: bool, folder: bool = False, writes: str | None = None
) -> Path:
    """The real path to write for `path` (given as `option`, e.g. "--to"), or a UserError (exit 2).
    `folder`: the caller writes a folder, else a file; `writes` says so in a refusal of the other kind."""
    given = Path.cwd() / path  # not os.path.abspath: `link/..` is the link target's parent, as open() sees it
    shown = f"{option} {path}"
    for part in (given, *given.parents):
        if part.is_symlink() and not part.exists():
            raise UserError(
                f"{shown}: {part} is a broken symbolic link (to {os.readlink(part)}); remove it or choose another path"
            )
    try:
        mode = os.stat(given).st_mode  # what a link points to (/proc/self/fd/N included)
    except OSError:
        mode = None  # missing, under a file (named below), or not even stat-able (the write says why)
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = next((name for test, name in _KINDS if test(mode)), "special file")
        raise UserError(
            f"{shown} is a {kind}, not a regular file or folder; {option} writes "
            f"{'a folder' if folder else 'a regular file'}: choose a path for one"
        )
    real = Path(os.path.realpath(given))
    if real != given:
        shown += f" (that is {real})"
    probe = real.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{shown}: {probe} is a file, not a folder; choose another path")
    _refuse_run_paths(real, shown)
    if mode is not None:
        if stat.S_ISDIR(mode) != folder:
            what = writes or f"{option} names a {'folder' if folder else 'file'}"
            raise UserError(f"{shown} is a {'folder' if stat.S_ISDIR(mode) else 'file'}; {what}")
        if not overwrite:
            raise UserError(f"{shown} exists; pass --overwrite to replace it, or choose another path")
    return real


def make_parents(real: Path, option: str) -> None:
    """Create the missing folders above `real` (a path `check_target` returned)."""
    try:
        Path(real).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"{option} {real}: cannot create the folder {Path(real).parent} ({exc.strerror or exc})"
        ) from None
