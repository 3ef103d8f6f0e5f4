"""Writing an export (`os-sample export`, os_cli/report/export.py): the records' rows as one table, the
`--to` target checked, the file or saved dataset written beside it and moved over it.

- `to_dataset(rows)`: a `datasets.Dataset` with the union of the rows' columns (a column of mixed types
  or a too-large integer is a `UserError` naming the column).
- `check_target(to, fmt, overwrite) -> Path`: the real path `--to` may be written at
  (os_cli/store/targets.py, plus: an existing folder for hf must be a saved dataset, not a run).
- `write_dataset(dataset, fmt, to)`: write to a temporary sibling, then replace `to` (a crash leaves
  the old export whole); stale copies of killed exports are removed.
"""

from __future__ import annotations

import json
import os
import shutil
from glob import escape as glob_escape
from pathlib import Path
from typing import Sequence

from os_cli.errors import UserError


def to_dataset(rows: Sequence[dict]):
    """A `datasets.Dataset` with the union of the rows' columns (first-seen order; absent = null)."""
    import datasets
    import pyarrow as pa

    columns: dict[str, None] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, None)
    data = {name: [row.get(name) for row in rows] for name in columns}
    try:
        return datasets.Dataset.from_dict(data)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
        big = _huge_int_column(data)
        bad = _mixed_column(data)
        if big:
            where = f" (column {big[0]!r} holds {big[1]}, too large for a 64-bit integer column; --format trl keeps it)"
        else:
            where = f" (column {bad!r} holds values of different types)" if bad else ""
        raise UserError(f"the records cannot form one table{where}: {exc}", exit_code=1) from None


def _mixed_column(data: dict) -> str | None:
    for name, values in data.items():
        kinds = {type(v).__name__ for v in values if v is not None}
        if kinds - {"int", "float"} and len(kinds) > 1:
            return name
    return None


def _huge_int_column(data: dict) -> tuple[str, int] | None:
    for name, values in data.items():
        for v in values:
            if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
                return name, v
    return None


# --------------------------------------------------------------------------------------------------
# Writing


def check_target(to: Path, fmt: str, overwrite: bool) -> Path:
    """The real path to write `--to` at (os_cli/store/targets.py: no run's files, no device, the format's
    kind, --overwrite for an existing one); an existing folder for hf must be a saved dataset."""
    from os_cli.store.targets import check_target as check_path
    from os_cli.store.targets import is_run_folder

    writes = (
        "--format hf writes a folder (datasets' save_to_disk)" if fmt == "hf" else f"--format {fmt} writes one file"
    )
    real = check_path(to, "--to", overwrite=overwrite, folder=fmt == "hf", writes=writes)
    if fmt == "hf" and real.is_dir():
        if not (real / "dataset_info.json").exists():
            raise UserError(f"--to {to} is a folder that is not a saved dataset; refusing to replace it")
        run = next((Path(d) for d, _, _ in os.walk(real) if is_run_folder(Path(d))), None)
        if run is not None:
            raise UserError(f"--to {to} holds the output folder of a run ({run}); refusing to replace it")
    return real


def _remove_stale_tmps(to: Path) -> None:
    """Remove `.NAME.tmp-PID` copies that a killed export of `to` left beside it (its process is gone);
    a live export's copy is left alone."""
    prefix = f".{to.name}.tmp-"
    for path in to.parent.glob(f"{glob_escape(prefix)}*"):
        pid = path.name[len(prefix) :]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        try:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except OSError:
            pass


def write_dataset(dataset, fmt: str, to: Path) -> None:
    """Write to a temporary sibling, then move it over `to` (a crash leaves the old export whole): a
    file by os.replace, a saved dataset's folder by `outfolder.exchange_folders`, the old one removed
    only once the new one is in place. Missing parent folders are created."""
    from os_cli.store.folder import exchange_folders
    from os_cli.store.targets import make_parents

    to = Path(to)
    make_parents(to, "--to")
    tmp = to.parent / f".{to.name}.tmp-{os.getpid()}"
    _remove_stale_tmps(to)
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    old = None
    try:
        if fmt == "trl":
            # Our own lines, not Dataset.to_json: pandas would round floats to 10 digits.
            with open(tmp, "w", encoding="utf-8") as handle:
                for row in dataset:
                    handle.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        elif fmt == "parquet":
            dataset.to_parquet(str(tmp))
        else:
            dataset.save_to_disk(str(tmp))
        if to.is_dir():
            old = exchange_folders(tmp, to)  # the previous export now sits at `old` (tmp, where it can)
        else:
            os.replace(tmp, to)
    except OSError as exc:
        kept = "the previous export there is unchanged" if to.exists() else "nothing was written there"
        raise UserError(f"--to {to}: cannot write the export ({exc.strerror or exc}); {kept}", exit_code=1) from None
    finally:  # no hidden copy is left behind: a failed write's, or the previous export swapped out
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    if old is not None and old.exists():
        shutil.rmtree(old)
