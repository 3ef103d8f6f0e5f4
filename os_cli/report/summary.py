"""Summaries of `os-sample generate` output folders: statistics, integrity checks, answer accuracy.

The statistic is stats.py, answer matching answers.py, the integrity report integrity.py; the folder layout (file names, record keys,
ids.txt, the manifest reader) is the writer's (record_format.py, writer.read_manifest, list_shards).

Pure in the sense that matters here: it reads files and returns plain dicts (JSON-ready, no NaN or
infinity), it never prints. `os_cli.cli.inspect` renders the dict as tables (inspect_tables), JSON or a plot.

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
from typing import Any

from os_cli.errors import UserError
from os_cli.report.answers import answers_match, extract_answer, reference_answer
from os_cli.report.integrity import check_manifest_types, integrity_report, iter_jsonl
from os_cli.report.passk import PerRow
from os_cli.report.stats import (
    RESERVOIR_PER_RECORD,
    RESERVOIR_PER_TOKEN,
    PositionMeans,
    Stat,
    ess_fraction,
    finite,
    to_float_array,
)
from os_cli.store.record_format import LOGPROB_KEYS, MANIFEST, json_safe, record_key, record_problem, token_spec
from os_cli.store.record_format import STAT_FIELDS as DIAGNOSTICS
from os_cli.store.scan import list_shards
from os_cli.store.writer import read_manifest

SUMMARY_FORMAT = 1
MISSING_GROUP = "(missing)"


# --------------------------------------------------------------------------------------------------
# Grouping


def record_fields(record: dict) -> list[str]:
    """The names `--by` accepts for this record: its top-level keys, and its row's fields."""
    row = _object(record, "row")
    return [k for k in record if k != "row"] + [k if k not in record else f"row.{k}" for k in row]


def group_value(record: dict, field: str) -> str:
    """`field` as a top-level record key, else `row.field`; `row.NAME` looks only in the row."""
    row = _object(record, "row")
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


def _object(obj: dict, key: str) -> dict[str, Any]:
    """obj[key] when it is a JSON object (a dict), else {}."""
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


class GroupStats:
    """Everything `inspect` reports about one set of records."""

    def __init__(self, answer_field: str | None):
        self.answer_field = answer_field
        self.records = 0
        self.tokens_total = 0
        self.tokens = Stat(RESERVOIR_PER_RECORD)
        self.finish = Counter[str]()
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
        n: Any = rec.get("num_tokens")  # a JSON value, used where finite
        if finite(n):
            self.tokens_total += int(n)
            self.tokens.add(n)
        else:
            self.tokens.add(None)
        self.finish[str(rec.get("finish_reason"))] += 1
        for key in DIAGNOSTICS:
            value = rec.get(key)
            self.diag_record[key].add(value.get("mean") if isinstance(value, dict) else value)
        lp = _object(rec, "logprob")
        for key in LOGPROB_KEYS:
            self.logprob[key].add(lp.get(key))
        lt: Any = lp.get("theta")  # JSON values, used where finite
        lq: Any = lp.get("q")
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
            row = _object(rec, "row")
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
    explicit_answer_field = bool(answer_field)
    if answer_field is None:
        answer_field = default_answer_field(manifest)
    answer_field = answer_field or None

    overall = GroupStats(answer_field)
    groups: dict[str, GroupStats] = {}
    locations: dict[tuple[str, int], list[str]] = {}  # (id, sample) -> file:line
    problems: list[dict] = []
    shards = []
    by_found, by_fields = False, set()
    row_fields: set = set()
    spec = token_spec((manifest or {}).get("recipe"))  # the tokens the run's settings call for
    for shard in list_shards(root):
        good = bad = 0
        for line, obj, error, torn in iter_jsonl(shard):
            if obj is not None and "id" not in obj:
                obj, error = None, "record has no `id`"
            elif obj is not None and record_problem(obj, spec):
                obj, error = None, record_problem(obj, spec)
            if obj is None:
                bad += 1
                problems.append(
                    {"file": shard.name, "line": line, "kind": "torn" if torn else "invalid", "error": error}
                )
                continue
            good += 1
            locations.setdefault(record_key(obj), []).append(f"{shard.name}:{line}")
            overall.add(obj)
            if isinstance(obj.get("row"), dict) and len(row_fields) < 200:
                row_fields.update(obj["row"])
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
        raise UserError(f"--by {by}: no record has this field; fields the records have: {', '.join(sorted(by_fields))}")
    if explicit_answer_field and locations and answer_field not in row_fields:
        raise UserError(
            f"--answer-field {answer_field}: no record's row has this field; row fields: "
            f"{', '.join(sorted(map(str, row_fields))) or '(none kept)'}"
        )
    integrity = integrity_report(root, manifest, manifest_error, locations, problems)
    return json_safe(
        {
            "format": SUMMARY_FORMAT,
            "dir": str(root),
            "manifest": _manifest_view(manifest),
            "shards": shards,
            "by": by,
            "answer_field": answer_field,
            "overall": overall.to_dict(),
            "groups": {k: groups[k].to_dict() for k in sorted(groups)} if by else None,
            "integrity": integrity,
        }
    )


def _manifest_view(manifest: dict | None) -> dict | None:
    if manifest is None:
        return None
    recipe = _object(manifest, "recipe")
    alpha = _object(recipe, "alpha")
    keys = (
        "format",
        "status",
        "recipe_hash",
        "dataset_fingerprint",
        "models",
        "seed",
        "device",
        "world_size",
        "started_at",
        "updated_at",
        "finished_at",
        "counts",
        "ids_file",
    )
    view = {k: manifest.get(k) for k in keys if k in manifest}
    view["run_name"] = recipe.get("run_name")
    view["alpha_method"] = alpha.get("method")
    return view


def summary_groups(summary: dict) -> list[tuple[str | None, dict]]:
    """(name, group summary) rows: the whole folder first ("all" when grouped, else None), then each group."""
    rows: list[tuple[str | None, dict]] = [("all" if summary.get("groups") else None, summary["overall"])]
    for name, group in (summary.get("groups") or {}).items():
        rows.append((name, group))
    return rows
