"""Summaries of `os-sample generate` output folders: statistics, integrity checks, answer accuracy.

The statistic is stats.py, answer matching answers.py; the folder layout (file names, record keys,
ids.txt, the manifest reader) is the writer's (record_format.py, writer.read_manifest, list_shards).

Pure in the sense that matters here: it reads files and returns plain dicts (JSON-ready, no NaN or
infinity), it never prints. `os_cli.cli.inspect` renders the dict as tables, JSON or a plot.

Conventions (also stated in the CLI's help and the README):
- every valid record line counts, duplicates included (what a trainer reading the shards sees);
  duplicates, missing ids and torn lines are reported separately under `integrity`;
- `alpha`, `ess_ratio`, `kl_theta`, `kl_t` are summarised over the records' per-record means and,
  when records carry `tokens`, over the per-token values;
- the mean log importance weight per token is sum over records of (logprob.theta - logprob.q)
  divided by the tokens of those records; per record it is the sequence log weight
  log pi_theta(y) - log q*(y);
- quantiles and histograms of very large populations come from a uniform reservoir sample
  (`"sampled": true`); counts, means, std, min and max are always exact.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterator

from .answers import answers_match, extract_answer, reference_answer
from .errors import UserError
from .passk import PerRow
from .record_format import (
    ERRORS_FILE, IDS_FILE, LOGPROB_KEYS, MANIFEST, IdsFileError, json_safe, num_samples_of, read_ids, record_key,
    record_problem,
)
from .record_format import STAT_FIELDS as DIAGNOSTICS
from .shard_scan import list_shards
from .stats import (
    RESERVOIR_PER_RECORD, RESERVOIR_PER_TOKEN, PositionMeans, Stat, ess_fraction, finite, is_number, to_float_array,
)
from .writer import read_manifest

SUMMARY_FORMAT = 1
MAX_LISTED = 50  # ids / lines listed in the integrity report (counts are always complete)
MISSING_GROUP = "(missing)"


# --------------------------------------------------------------------------------------------------
# Grouping


def record_fields(record: dict) -> list[str]:
    """The names `--by` accepts for this record: its top-level keys, and its row's fields."""
    row = record.get("row") if isinstance(record.get("row"), dict) else {}
    return [k for k in record if k != "row"] + [k if k not in record else f"row.{k}" for k in row]


def group_value(record: dict, field: str) -> str:
    """`field` as a top-level record key, else `row.field`; `row.NAME` looks only in the row."""
    row = record.get("row") if isinstance(record.get("row"), dict) else {}
    if field.startswith("row."):
        key = field[4:]
        value = row.get(key, _ABSENT)
    elif field in record and field != "row":
        value = record[field]
    else:
        value = row.get(field, _ABSENT)
    if value is _ABSENT:
        return MISSING_GROUP
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_ABSENT = object()


class GroupStats:
    """Everything `inspect` reports about one set of records."""

    def __init__(self, answer_field: str | None):
        self.answer_field = answer_field
        self.records = 0
        self.tokens_total = 0
        self.tokens = Stat(RESERVOIR_PER_RECORD)
        self.finish = Counter()
        self.diag_record = {k: Stat(RESERVOIR_PER_RECORD) for k in DIAGNOSTICS}
        self.diag_token = {k: Stat(RESERVOIR_PER_TOKEN) for k in DIAGNOSTICS}
        self.by_position = {k: PositionMeans() for k in DIAGNOSTICS}
        self.logprob = {k: Stat(RESERVOIR_PER_RECORD) for k in LOGPROB_KEYS}
        self.lw_sum = 0.0
        self.lw_tokens = 0
        self.lw_record = Stat(RESERVOIR_PER_RECORD)
        self.lw_record_per_token = Stat(RESERVOIR_PER_RECORD)
        self.lw_token = Stat(RESERVOIR_PER_TOKEN)
        self._lw_all: list[float] = []
        self.with_reference = 0
        self.extracted = 0
        self.correct = 0
        self.per_row = PerRow()  # pass@k over the samples of each row

    def add(self, rec: dict) -> None:
        self.records += 1
        n = rec.get("num_tokens")
        if finite(n):
            self.tokens_total += int(n)
            self.tokens.add(n)
        else:
            self.tokens.add(None)
        self.finish[str(rec.get("finish_reason"))] += 1
        for key in DIAGNOSTICS:
            value = rec.get(key)
            self.diag_record[key].add(value.get("mean") if isinstance(value, dict) else value)
        lp = rec.get("logprob") if isinstance(rec.get("logprob"), dict) else {}
        for key in LOGPROB_KEYS:
            self.logprob[key].add(lp.get(key))
        lt, lq = lp.get("theta"), lp.get("q")
        if finite(lt) and finite(lq) and finite(n):
            w = float(lt) - float(lq)
            self.lw_sum += w
            self.lw_tokens += int(n)
            self.lw_record.add(w)
            self._lw_all.append(w)
            if n > 0:
                self.lw_record_per_token.add(w / n)
        toks = rec.get("tokens")
        if isinstance(toks, dict):
            for key in DIAGNOSTICS:
                vals = toks.get(key)
                if isinstance(vals, list) and vals:
                    self.diag_token[key].add_many(vals)
                    self.by_position[key].add(vals)
            t_theta, t_q = toks.get("logprob_theta"), toks.get("logprob_q")
            if isinstance(t_theta, list) and isinstance(t_q, list) and len(t_theta) == len(t_q) and t_theta:
                self.lw_token.add_many(to_float_array(t_theta) - to_float_array(t_q))
        if self.answer_field:
            row = rec.get("row") if isinstance(rec.get("row"), dict) else {}
            ref = reference_answer(row.get(self.answer_field))
            if ref is not None and ref.strip():
                self.with_reference += 1
                pred = extract_answer(rec.get("completion") or "")
                if pred is not None:
                    self.extracted += 1
                matched = answers_match(pred, ref)
                self.correct += matched
                self.per_row.add(*record_key(rec), matched)

    def to_dict(self) -> dict:
        diagnostics = {}
        for key in DIAGNOSTICS:
            per_token = self.diag_token[key]
            diagnostics[key] = {
                "per_record": self.diag_record[key].to_dict(),
                "per_token": per_token.to_dict() if per_token.count or per_token.nonfinite else None,
            }
        by_position = {k: v.to_dict() for k, v in self.by_position.items() if v.to_dict() is not None}
        answers = None
        if self.answer_field and self.with_reference:
            answers = {
                "field": self.answer_field,
                "with_reference": self.with_reference,
                "extracted": self.extracted,
                "correct": self.correct,
                "accuracy": self.correct / self.with_reference,
                "per_row": self.per_row.to_dict(),  # pass@k, with several samples per row
            }
        return {
            "records": self.records,
            "tokens": {
                "total": self.tokens_total,
                "mean": self.tokens_total / self.tokens.count if self.tokens.count else None,
                "distribution": self.tokens.to_dict(),
            },
            "finish_reasons": dict(sorted(self.finish.items(), key=lambda kv: (-kv[1], kv[0]))),
            "diagnostics": diagnostics,
            "logprob": {k: v.to_dict() for k, v in self.logprob.items()},
            "log_weight": {
                "mean_per_token": self.lw_sum / self.lw_tokens if self.lw_tokens else None,
                "tokens": self.lw_tokens,
                "per_record": self.lw_record.to_dict(),
                "per_record_per_token": self.lw_record_per_token.to_dict(),
                "per_token": self.lw_token.to_dict() if self.lw_token.count else None,
                "ess_fraction": ess_fraction(self._lw_all),
            },
            "by_position": by_position or None,
            "answers": answers,
        }


# --------------------------------------------------------------------------------------------------
# Reading an output folder


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict | None, str | None, bool]]:
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


def _read_manifest(root: Path) -> tuple[dict | None, str | None]:
    """(manifest, None), (None, None) without one, or (None, why) for one the writer's reader refuses."""
    if (root / MANIFEST).exists() and not (root / MANIFEST).is_file():
        return None, f"{root / MANIFEST}: not a file"
    try:
        return read_manifest(root), None
    except UserError as exc:
        return None, str(exc)


def default_answer_field(manifest: dict | None) -> str | None:
    try:
        field = manifest["recipe"]["dataset"]["answer_field"]  # type: ignore[index]
    except (KeyError, TypeError):
        return "answer"
    return field if isinstance(field, str) and field else None


def check_output_dir(path: str | Path) -> Path:
    """The folder as a Path, or a UserError (exit 2) for a missing, empty or foreign folder."""
    root = Path(path)
    if not root.exists():
        raise UserError(f"{root}: no such folder (give the output folder of `os-sample generate`, e.g. outputs/<run>)")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (give the output folder of `os-sample generate`, not a file in it)")
    if not (root / MANIFEST).exists() and not list_shards(root):
        if not any(root.iterdir()):
            raise UserError(f"{root}: the folder is empty; no manifest.json and no shard-*.jsonl files to inspect")
        raise UserError(
            f"{root}: not an os-sample output folder (no manifest.json and no shard-*.jsonl files); "
            "give the folder `os-sample generate` wrote, e.g. outputs/<run>"
        )
    return root


def summarize_dir(path: str | Path, *, by: str | None = None, answer_field: str | None = None) -> dict:
    """Read every shard, manifest.json, ids.txt and errors.jsonl under `path` and summarise them.

    `answer_field=None` uses the manifest recipe's `dataset.answer_field` (default `answer`);
    pass "" to switch answer matching off.
    """
    root = check_output_dir(path)
    manifest, manifest_error = _read_manifest(root)
    check_manifest_types(root, manifest)
    if answer_field is None:
        answer_field = default_answer_field(manifest)
    answer_field = answer_field or None

    overall = GroupStats(answer_field)
    groups: dict[str, GroupStats] = {}
    locations: dict[tuple[str, int], list[str]] = {}  # (id, sample) -> file:line
    problems: list[dict] = []
    shards = []
    by_found, by_fields = False, set()
    for shard in list_shards(root):
        good = bad = 0
        for line, obj, error, torn in _iter_jsonl(shard):
            if obj is not None and "id" not in obj:
                obj, error = None, "record has no `id`"
            elif obj is not None and record_problem(obj):
                obj, error = None, record_problem(obj)
            if obj is None:
                bad += 1
                problems.append({"file": shard.name, "line": line, "kind": "torn" if torn else "invalid",
                                 "error": error})
                continue
            good += 1
            locations.setdefault(record_key(obj), []).append(f"{shard.name}:{line}")
            overall.add(obj)
            if by:
                key = group_value(obj, by)
                by_found = by_found or key != MISSING_GROUP
                if not by_found:
                    by_fields.update(record_fields(obj))
                if key not in groups:
                    groups[key] = GroupStats(answer_field)
                groups[key].add(obj)
        shards.append({"file": shard.name, "records": good, "invalid_lines": bad, "bytes": shard.stat().st_size})

    if by and groups and not by_found:
        raise UserError(f"--by {by}: no record has this field; fields the records have: "
                        f"{', '.join(sorted(by_fields))}")
    integrity = _integrity(root, manifest, manifest_error, locations, problems)
    return json_safe({
        "format": SUMMARY_FORMAT,
        "dir": str(root),
        "manifest": _manifest_view(manifest),
        "shards": shards,
        "by": by,
        "answer_field": answer_field,
        "overall": overall.to_dict(),
        "groups": {k: groups[k].to_dict() for k in sorted(groups)} if by else None,
        "integrity": integrity,
    })


_MANIFEST_TYPES = {"format": int, "status": str, "recipe_hash": str, "recipe": dict, "models": dict,
                   "world_size": int, "counts": dict, "ids_file": str, "attempts": int}


def check_manifest_types(root: Path, manifest: dict | None) -> None:
    """UserError (exit 2) for a manifest whose keys have types os-sample never writes."""
    if manifest is None:
        return
    where = root / MANIFEST
    for key, kind in _MANIFEST_TYPES.items():
        value = manifest.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise UserError(f"{where}: {key!r} must be {'an object' if kind is dict else 'a ' + kind.__name__}, "
                            f"not {json.dumps(value)[:60]}; the manifest was edited or is not os-sample's")
    for key, value in (manifest.get("counts") or {}).items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise UserError(f"{where}: counts.{key} must be an integer, not {json.dumps(value)[:60]}")
    ids_file = manifest.get("ids_file") or IDS_FILE
    if ids_file in (".", "..") or "/" in ids_file or "\\" in ids_file:
        raise UserError(f"{where}: ids_file {ids_file!r} must name a file in the output folder")
    if (root / ids_file).exists() and not (root / ids_file).is_file():
        raise UserError(f"{where}: ids_file {ids_file!r} is not a file ({root / ids_file} is a folder)")


def _manifest_view(manifest: dict | None) -> dict | None:
    if manifest is None:
        return None
    recipe = manifest.get("recipe") if isinstance(manifest.get("recipe"), dict) else {}
    alpha = recipe.get("alpha") if isinstance(recipe.get("alpha"), dict) else {}
    keys = ("format", "status", "recipe_hash", "dataset_fingerprint", "models", "seed", "device", "world_size",
            "started_at", "updated_at", "finished_at", "counts", "ids_file")
    view = {k: manifest.get(k) for k in keys if k in manifest}
    view["run_name"] = recipe.get("run_name")
    view["alpha_method"] = alpha.get("method")
    return view


def _integrity(root: Path, manifest: dict | None, manifest_error: str | None,
               locations: dict[tuple[str, int], list[str]], problems: list[dict]) -> dict:
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
            problems.append({"file": ids_path.name, "line": exc.line, "kind": "invalid",
                             "error": str(exc).split(": ", 1)[-1] + "; missing ids cannot be checked"})
        except UserError as exc:
            notes.append(f"{exc}; missing ids cannot be checked")
    elif manifest is not None:
        notes.append(f"{ids_name} not found: missing ids cannot be checked")

    error_rows, error_ids, error_reasons = [], set(), Counter()
    errors_path = root / ERRORS_FILE
    if errors_path.exists():
        for line, obj, error, torn in _iter_jsonl(errors_path):
            if obj is None:
                problems.append({"file": errors_path.name, "line": line, "kind": "torn" if torn else "invalid",
                                 "error": error})
                continue
            rid = str(obj.get("id"))
            reason = str(obj.get("reason"))
            error_ids.add(rid)
            error_reasons[reason] += 1
            error_rows.append({"id": rid, "reason": reason, "line": line})

    n_samples = num_samples_of((manifest or {}).get("recipe"))
    duplicates = [
        {"id": rid, "sample": k, "count": len(locs), "locations": locs[:10]}
        for (rid, k), locs in locations.items() if len(locs) > 1
    ]
    missing: list[tuple[str, int]] = []
    unexpected: list[tuple[str, int]] = []
    if planned is not None:
        planned_set = set(planned)
        missing = [(rid, k) for rid in planned if rid not in error_ids for k in range(n_samples)
                   if (rid, k) not in locations]
        unexpected = [key for key in locations if key[0] not in planned_set or key[1] >= n_samples]
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
        notes.append("rerunning the generate command drops an invalid last line of a shard and generates its row "
                     "again; add --repair to drop invalid lines elsewhere too")

    return {
        "status": status,
        "planned": len(planned) if planned is not None else None,
        "records": n_records,
        "num_samples": n_samples,
        "unique_ids": len({rid for rid, _ in locations}),
        "unique_records": len(locations),
        "missing": _keys_view(missing),
        "duplicates": {"count": len(duplicates), "extra_records": sum(d["count"] - 1 for d in duplicates),
                       "ids": duplicates[:MAX_LISTED]},
        "unexpected": _keys_view(unexpected),
        "invalid_lines": {"count": len(problems), "torn": sum(p["kind"] == "torn" for p in problems),
                          "lines": problems[:MAX_LISTED]},
        "errors": {"count": len(error_rows), "reasons": dict(error_reasons), "rows": error_rows[:MAX_LISTED]},
        "clean": not (missing or duplicates or unexpected or problems or manifest_error),
        "notes": notes,
    }


def _keys_view(keys: list[tuple[str, int]]) -> dict:
    """{"count": (id, sample) pairs, "ids": the row ids among them (each once), "samples": the pairs}."""
    ids = list(dict.fromkeys(rid for rid, _ in keys))
    return {"count": len(keys), "rows": len(ids), "ids": ids[:MAX_LISTED],
            "samples": [[rid, k] for rid, k in keys[:MAX_LISTED]]}
