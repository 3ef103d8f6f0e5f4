"""Dataset loading: the planned rows of a recipe's `dataset` section, with their ids.

Public functions:

- `load_rows(dataset, base_dir=None) -> list[(id, row)]`: the planned rows of a recipe's `dataset`
  section, in dataset order, after `skip` and `limit`; a relative `source` is looked up in the working
  directory, then in `base_dir` (the recipe's folder, `recipe.places.base_dir`). `source` may be a
  hub name (`split`, `config`), a local `.jsonl/.json/.parquet/.csv` file, a folder of such files (all files with the most common suffix,
  sorted by name), `builtin:NAME` (`os_cli/builtin/NAME.jsonl`); or `dataset.inline` lists the rows.
  Everything except inline rows goes through `datasets.load_dataset`. Ids are `str(row[id_field])`,
  or the row's index in the dataset (before `skip`) when `id_field` is null; ids must be unique.
- `id_text(value) -> str`: a row id as the dataset wrote it (JSON numbers and CSV cells as their text).

Rendering the rows' prompts is os_cli/prompts/data.py.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from os_cli.errors import UserError, kind_of
from os_cli.recipe.places import BUILTIN_DIR, BUILTIN_PREFIX, DATA_SUFFIXES, local_path
from os_cli.recipe.typed import Dataset
from os_cli.textfile import read_text

__all__ = ["load_rows", "id_text"]


_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _local_files(path: Path) -> tuple[str, list[str]]:
    if path.is_file():
        if path.suffix not in _BUILDERS:
            raise UserError(f"dataset file {path} has an unsupported suffix; use {', '.join(DATA_SUFFIXES)}")
        return _BUILDERS[path.suffix], [str(path)]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _BUILDERS)
    if not files:
        raise UserError(f"dataset folder {path} holds no {', '.join(DATA_SUFFIXES)} files")
    builders = Counter(_BUILDERS[p.suffix] for p in files)
    builder = builders.most_common(1)[0][0]
    return builder, [str(p) for p in files if _BUILDERS[p.suffix] == builder]


class _RawInt(int):
    """A JSON integer that remembers how the file wrote it (ids are kept as written)."""

    def __new__(cls, text):
        obj = super().__new__(cls, text)
        obj.raw = str(text)
        return obj


class _RawFloat(float):
    """A JSON number with a fraction or exponent that remembers how the file wrote it (`3.50`, `1e5`)."""

    def __new__(cls, text):
        obj = super().__new__(cls, text)
        obj.raw = str(text)
        return obj


def _parse_json(text: str):
    return json.loads(text, parse_int=_RawInt, parse_float=_RawFloat)


def _json_lines(path: str, text: str) -> list[dict]:
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = _parse_json(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"dataset {path}, line {lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(row, dict):
            raise UserError(f"dataset {path}, line {lineno}: a row must be a JSON object {{...}}, got {kind_of(row)}")
        rows.append(row)
    return rows


def _read_json_file(path: str) -> list[dict]:
    """Rows of a .jsonl file (one object per line) or a .json file (a list of objects, or JSON lines)."""
    text = read_text(path).lstrip("\ufeff")
    if path.endswith(".json") and text.lstrip().startswith("["):
        try:
            rows = _parse_json(text)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"dataset {path}, line {exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})"
            ) from None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise UserError(f"dataset {path}: item {i} of the list is not a JSON object {{...}}")
        return rows
    return _json_lines(path, text)


def _csv_ids(files: list[str], id_field: str) -> list[str] | None:
    """The id column of CSV files exactly as written (pandas would turn `07` into 7, `1` into 1.0)."""
    import csv
    import io

    ids: list[str] = []
    for f in files:
        reader = csv.DictReader(io.StringIO(read_text(f).lstrip("\ufeff"), newline=""))
        if reader.fieldnames is None or id_field not in reader.fieldnames:
            return None
        ids += [row[id_field] for row in reader]
    return ids


def _load_local(builder: str, files: list[str], label: str, id_field: str | None = None):
    if builder == "json":
        return [row for f in files for row in _read_json_file(f)]
    from datasets import load_dataset

    if builder == "csv":
        for f in files:
            if not read_text(f).strip():
                raise UserError(f"dataset {f} has no rows (the file is empty)")
    try:
        return load_dataset(builder, data_files=files, split="train")
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a malformed file
        if builder == "csv" and id_field:  # a 30-digit integer id overflows pyarrow's int64: read it as text
            try:  # (the ids themselves come as written from _csv_ids)
                return load_dataset(builder, data_files=files, split="train", converters={id_field: str})
            except Exception:  # noqa: BLE001 - report the first failure
                pass
        cause: BaseException = exc  # datasets wraps the real reason in DatasetGenerationError: name it too
        for _ in range(20):  # the innermost exception of the chain (bounded: a chain can loop)
            cause = cause.__cause__ or cause.__context__ or cause
        inner = f" ({type(cause).__name__}: {_first_line(cause)})" if cause is not exc else ""
        raise UserError(f"could not read dataset {label}: {type(exc).__name__}: {_first_line(exc)}{inner}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_hub(name: str, config: str | None, split: str):
    from datasets import load_dataset

    try:
        return load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001
        text = f"{type(exc).__name__}: {_first_line(exc)}"
        lowered = text.lower()
        if "split" in lowered and ("unknown" in lowered or "should be one of" in lowered):
            raise UserError(f"dataset {name!r} has no split {split!r} ({text}); set dataset.split") from exc
        if "config" in lowered and ("missing" in lowered or "available" in lowered or "not found" in lowered):
            raise UserError(
                f"dataset {name!r}: config {config!r} is not available ({text}); set dataset.config"
            ) from exc
        raise UserError(
            f"could not load dataset {name!r} from the Hugging Face Hub: the hub is unreachable from here or the "
            f"name is wrong ({text}). Use a local file instead: dataset.source: path/to/data.jsonl "
            f"(or .json, .parquet, .csv), or --set dataset.source=PATH",
            exit_code=1,
        ) from exc


def _open_dataset(ds_cfg: Dataset, base_dir: Path | None):
    """(rows: a list of dicts or a `datasets.Dataset`, raw CSV ids or None, label)."""
    source = ds_cfg.source
    assert source is not None  # load_rows reads inline rows itself; a recipe has one of the two
    if source.startswith(BUILTIN_PREFIX):
        path = BUILTIN_DIR / f"{source[len(BUILTIN_PREFIX) :]}.jsonl"
        if not path.is_file():
            raise UserError(f"dataset.source: unknown builtin dataset {source!r} (no {path})")
        return _load_local("json", [str(path)], source), None, source
    local = local_path(source, base_dir)
    if local is not None:
        builder, files = _local_files(local)
        data = _load_local(builder, files, str(source), ds_cfg.id_field)
        raw_ids = _csv_ids(files, ds_cfg.id_field) if builder == "csv" and ds_cfg.id_field else None
        if raw_ids is not None and len(raw_ids) != len(data):
            raw_ids = None
        return data, raw_ids, str(source)
    return _load_hub(source, ds_cfg.config, ds_cfg.split), None, source


def id_text(value: Any) -> str:
    """A row id as the dataset wrote it: strings as they are, numbers as their JSON/CSV text."""
    raw = getattr(value, "raw", None)
    if isinstance(raw, str):
        return raw
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "item") and not isinstance(value, (int, float)):  # numpy / arrow scalars
        value = value.item()
    return str(value)


def load_rows(dataset: Dataset, base_dir: Path | None = None) -> list[tuple[str, dict]]:
    """The planned rows `(id, row)` of a `dataset` section after skip and limit, in dataset order.
    Raises `UserError`."""
    ds_cfg = dataset
    skip, limit = ds_cfg.skip, ds_cfg.limit
    raw_ids = None
    if ds_cfg.inline is not None:
        total = len(ds_cfg.inline)
        stop = total if limit is None else min(total, skip + limit)
        rows = [dict(r) for r in ds_cfg.inline[skip:stop]]
    else:
        data, raw_ids, label = _open_dataset(ds_cfg, base_dir)
        total = len(data)
        if total == 0:
            raise UserError(f"dataset {label} has no rows")
        stop = total if limit is None else min(total, skip + limit)
        if isinstance(data, list):
            rows = data[skip:stop]
        else:
            rows = data.select(range(skip, stop)).to_list() if stop > skip else []
    id_field = ds_cfg.id_field
    out: list[tuple[str, dict]] = []
    seen: dict[str, int] = {}
    for offset, row in enumerate(rows):
        index = skip + offset
        if id_field is None:
            row_id = str(index)
        else:
            if id_field not in row:
                fields = ", ".join(row)
                raise UserError(f"dataset row {index} has no {id_field!r} (dataset.id_field); its fields: {fields}")
            if row[id_field] is None:  # null in JSON, an empty cell in CSV
                raise UserError(
                    f"dataset row {index}: its id ({id_field!r}, dataset.id_field) is empty or null; "
                    f"every row needs an id"
                )
            value = row[id_field]
            if isinstance(value, (dict, list)):
                raise UserError(
                    f"dataset row {index}: id {_short_repr(value)} (dataset.id_field {id_field!r}) "
                    f"must be a string or a number"
                )
            row_id = raw_ids[index] if raw_ids is not None else id_text(value)
        if not row_id or "\n" in row_id or "\r" in row_id:
            raise UserError(f"dataset row {index}: id {row_id!r} (dataset.id_field) must be non-empty and on one line")
        if row_id in seen:
            raise UserError(
                f"dataset rows {seen[row_id]} and {index} share the id {row_id!r} (dataset.id_field={id_field!r}); "
                f"ids must be unique for exactly-once output (set dataset.id_field: null to use row indices)"
            )
        seen[row_id] = index
        out.append((row_id, row))
    return out


def _short_repr(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
