"""Integrity of an output folder: exactly once per (id, sample) against the plan (ids.txt), invalid and
torn lines, errors.jsonl, and manifest keys of types os-sample never writes. Reads files, returns
plain dicts, never prints; `summary.summarize_dir` puts the report under `integrity`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterator, TypedDict

from os_cli.errors import UserError
from os_cli.report.stats import is_number
from os_cli.store.record_format import (
    ERRORS_FILE,
    IDS_FILE,
    MANIFEST,
    IdsFileError,
    num_samples_of,
    outside_plan,
    read_ids,
)

MAX_LISTED = 50  # ids / lines listed in the integrity report (counts are always complete)


class _Duplicate(TypedDict):
    """An (id, sample) key held by more than one record: how many, and the first 10 locations."""

    id: str
    sample: int
    count: int
    locations: list[str]


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict | None, str | None, bool]]:
    """Yield (line number, object or None, error or None, torn) for each non-blank line.

    `torn` marks a last line with no newline that fails to parse: a write cut short.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    ends_with_newline = data.endswith(b"\n")
    if ends_with_newline:
        lines = lines[:-1]
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = i == len(lines)
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            torn = last and not ends_with_newline
            yield i, None, ("torn line (no newline, cut short)" if torn else f"invalid JSON: {exc}"), torn
            continue
        if not isinstance(obj, dict):
            yield i, None, f"not a JSON object ({type(obj).__name__})", False
            continue
        yield i, obj, None, False


_MANIFEST_TYPES = {
    "format": int,
    "status": str,
    "recipe_hash": str,
    "recipe": dict,
    "models": dict,
    "world_size": int,
    "counts": dict,
    "ids_file": str,
    "attempts": int,
}


def check_manifest_types(root: Path, manifest: dict | None) -> None:
    """UserError (exit 2) for a manifest whose keys have types os-sample never writes."""
    if manifest is None:
        return
    where = root / MANIFEST
    for key, kind in _MANIFEST_TYPES.items():
        value = manifest.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise UserError(
                f"{where}: {key!r} must be {'an object' if kind is dict else 'a ' + kind.__name__}, "
                f"not {json.dumps(value)[:60]}; the manifest was edited or is not os-sample's"
            )
    for key, value in (manifest.get("counts") or {}).items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise UserError(f"{where}: counts.{key} must be an integer, not {json.dumps(value)[:60]}")
    ids_file = manifest.get("ids_file") or IDS_FILE
    if ids_file in (".", "..") or "/" in ids_file or "\\" in ids_file:
        raise UserError(f"{where}: ids_file {ids_file!r} must name a file in the output folder")
    if (root / ids_file).exists() and not (root / ids_file).is_file():
        raise UserError(f"{where}: ids_file {ids_file!r} is not a file ({root / ids_file} is a folder)")


def integrity_report(
    root: Path,
    manifest: dict | None,
    manifest_error: str | None,
    locations: dict[tuple[str, int], list[str]],
    problems: list[dict],
) -> dict:
    """Exactly-once per (id, sample): missing, duplicated and unexpected keys. `ids` lists row ids (each
    once), `samples` the [id, sample] pairs; counts are of (id, sample) pairs (of ids when n is 1)."""
    notes: list[str] = []
    if manifest_error:
        notes.append(manifest_error)
    elif manifest is None:
        notes.append("no manifest.json: ids cannot be checked against the plan")

    planned: list[str] | None = None
    ids_name = (manifest or {}).get("ids_file") or IDS_FILE
    ids_path = root / str(ids_name)
    if ids_path.exists():
        try:
            planned = read_ids(ids_path, (manifest or {}).get("format", 1))
        except IdsFileError as exc:
            problems.append(
                {
                    "file": ids_path.name,
                    "line": exc.line,
                    "kind": "invalid",
                    "error": str(exc).split(": ", 1)[-1] + "; missing ids cannot be checked",
                }
            )
        except UserError as exc:
            notes.append(f"{exc}; missing ids cannot be checked")
    elif manifest is not None:
        notes.append(f"{ids_name} not found: missing ids cannot be checked")

    error_rows, error_ids, error_reasons = [], set(), Counter[str]()
    errors_path = root / ERRORS_FILE
    if errors_path.exists():
        for line, obj, error, torn in iter_jsonl(errors_path):
            if obj is None:
                problems.append(
                    {"file": errors_path.name, "line": line, "kind": "torn" if torn else "invalid", "error": error}
                )
                continue
            rid = str(obj.get("id"))
            reason = str(obj.get("reason"))
            error_ids.add(rid)
            error_reasons[reason] += 1
            error_rows.append({"id": rid, "reason": reason, "line": line})

    n_samples = num_samples_of((manifest or {}).get("recipe"))
    duplicates: list[_Duplicate] = [
        {"id": rid, "sample": k, "count": len(locs), "locations": locs[:10]}
        for (rid, k), locs in locations.items()
        if len(locs) > 1
    ]
    missing: list[tuple[str, int]] = []
    unexpected: list[tuple[str, int]] = []
    if planned is not None:
        planned_set = set(planned)
        missing = [
            (rid, k) for rid in planned if rid not in error_ids for k in range(n_samples) if (rid, k) not in locations
        ]
        unexpected = [key for key in locations if outside_plan(key, planned_set, n_samples)]
        dup_planned = [rid for rid, c in Counter(planned).items() if c > 1]
        if dup_planned:
            notes.append(f"{ids_name} lists {len(dup_planned)} id(s) more than once, e.g. {dup_planned[0]!r}")

    status = (manifest or {}).get("status")
    counts = (manifest or {}).get("counts") if isinstance((manifest or {}).get("counts"), dict) else None
    n_records = sum(len(v) for v in locations.values())
    if counts and is_number(counts.get("records")) and counts["records"] != n_records:
        notes.append(f"manifest counts {counts['records']} record(s), the shards hold {n_records}")
    if missing and status in ("running", "interrupted", "failed"):
        notes.append(f"run status is {status!r}: missing ids are expected until it completes (resume it)")
    if any(p["file"].startswith("shard-") for p in problems):
        notes.append(
            "rerunning the generate command drops an invalid last line of a shard and generates its row "
            "again; add --repair to drop invalid lines elsewhere too"
        )

    return {
        "status": status,
        "planned": len(planned) if planned is not None else None,
        "records": n_records,
        "num_samples": n_samples,
        "unique_ids": len({rid for rid, _ in locations}),
        "unique_records": len(locations),
        "missing": _keys_view(missing),
        "duplicates": {
            "count": len(duplicates),
            "extra_records": sum(d["count"] - 1 for d in duplicates),
            "ids": duplicates[:MAX_LISTED],
        },
        "unexpected": _keys_view(unexpected),
        "invalid_lines": {
            "count": len(problems),
            "torn": sum(p["kind"] == "torn" for p in problems),
            "lines": problems[:MAX_LISTED],
        },
        "errors": {"count": len(error_rows), "reasons": dict(error_reasons), "rows": error_rows[:MAX_LISTED]},
        "clean": not (missing or duplicates or unexpected or problems or manifest_error),
        "notes": notes,
    }


def _keys_view(keys: list[tuple[str, int]]) -> dict:
    """{"count": (id, sample) pairs, "ids": the row ids among them (each once), "samples": the pairs}."""
    ids = list(dict.fromkeys(rid for rid, _ in keys))
    return {
        "count": len(keys),
        "rows": len(ids),
        "ids": ids[:MAX_LISTED],
        "samples": [[rid, k] for rid, k in keys[:MAX_LISTED]],
    }
