"""Trainer-ready exports of an `os-sample generate` output folder (`os-sample export`).

Formats (columns in docs/ARCHITECTURE.md, "Exports"):
- `trl`: a JSON Lines file of standard prompt-completion records (`prompt` is theta's rendered
  prompt, chat template already applied, so TRL's SFT trainers use it as is), with the importance
  weights of each record as columns; for chat runs (`prompts.theta.messages_field`) TRL's
  conversational prompt-completion records instead (`prompt` = theta's conversation prefix,
  `completion` = one assistant turn; the trainer applies the chat template, as generate did);
- `parquet`: one Parquet file, every record field flattened (`alpha.mean` -> `alpha_mean`,
  `row.question` -> `row_question`, `tokens.ids` -> `tokens_ids`), plus the weights;
- `hf`: the same columns as `parquet`, written with `datasets.Dataset.save_to_disk`.

Importance weights (q* sampled, pi_theta the model being trained): `log_weight` = log pi_theta(y) -
log q*(y) of the whole completion, `weight` = the self-normalised weight exp(log_weight) / sum of
exp(log_weight) over the exported records (the records left after the filters; they sum to 1), and
with per-token records `token_log_weights` = log pi_theta - log q* of each token and
`token_tis_weights` = min(exp(token_log_weights), 2) (truncated importance weights, os_cli.report.tis). Log weights are the
exact decimal differences of the numbers the record holds (float32 precision), without binary noise.
Ids are text in every format (`id`, and the row's dataset.id_field column), as in the records.

Only the run's records are exported: a line that is not a record, a record outside the plan (an id
not in ids.txt, a sample beyond sampling.num_samples) or a duplicate is refused (exit 1, file and
line), never weighted. `--to` is checked by os_cli/store/targets.py before anything is read or written
(no run's files, no device or FIFO, --overwrite for an existing one); missing parent folders are
created; an existing export is replaced only once the new one is complete.

Filters: `where="correct"` keeps records whose final answer matches the row's reference answer
(os_cli.report.answers' matching, the one `inspect` reports; rows without a reference are dropped),
`min_ess` keeps records whose mean ESS ratio is at least the value, `finish_reasons` keeps records
that ended for one of those reasons. Nothing is printed here; the CLI reports the `ExportResult`.
The table and the file or folder written (to_dataset, check_target, write_dataset) are
os_cli/report/export_write.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from os_cli.errors import UserError
from os_cli.report.export_write import check_target, to_dataset, write_dataset
from os_cli.report.tis import TIS_COLUMN, truncated_token_weights
from os_cli.report.weights import (
    TOKEN_WEIGHT_COLUMN,
    WEIGHT_COLUMNS,
    ess_fraction,
    log_weight,
    normalized_weights,
    token_log_weights,
)
from os_cli.store.record_format import IDS_FILE, MESSAGES_KEY, describe_key, sample_of

FORMATS = ("trl", "parquet", "hf")
WHERE = ("correct",)
FINISH_REASONS = ("eos", "length", "stop")
TRL_COLUMNS = ("id", "sample", "prompt", "completion", "num_tokens", "finish_reason") + WEIGHT_COLUMNS
FLAT_SEP = "_"


@dataclass(frozen=True)
class Filters:
    where: str | None = None
    min_ess: float | None = None
    finish_reasons: tuple[str, ...] = ()
    answer_field: str | None = None  # None: the recipe's dataset.answer_field


@dataclass
class ExportResult:
    format: str
    path: str | None
    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    status: str | None = None
    ess_fraction: float | None = None  # Kish ESS of the exported weights / records
    pushed_to: str | None = None


# --------------------------------------------------------------------------------------------------
# Reading (the writer's own functions: the file layout is defined once, in os_cli/writer.py)


def read_records(out_dir: Path) -> Iterator[dict]:
    """Every record of the folder, in shard order; each line checked as the resume scan checks it
    (`record_format.parse_record_line` with the run's `tokens`), a line that is not a record refused,
    and so is a record outside the run's plan (`record_format.outside_plan`, as inspect flags it)."""
    from os_cli.store.record_format import num_samples_of, outside_plan, parse_record_line, record_key, token_spec
    from os_cli.store.writer import list_shards, read_manifest

    manifest = read_manifest(out_dir)
    spec = token_spec((manifest or {}).get("recipe"))
    planned = planned_ids(out_dir, manifest)
    num_samples = num_samples_of(manifest.get("recipe")) if manifest else None
    for shard in list_shards(out_dir):
        for number, raw in enumerate(shard.read_bytes().split(b"\n"), start=1):
            if not raw.strip():
                continue
            record, problem = parse_record_line(raw, spec)
            if record is None:
                raise UserError(
                    f"{shard}:{number}: not a valid record ({problem}); `os-sample inspect {out_dir}` "
                    f"lists every such line, and the generate command with --repair drops them and "
                    f"generates their rows again",
                    exit_code=1,
                )
            why = None if num_samples is None else outside_plan(record_key(record), planned, num_samples)
            if why:
                raise UserError(
                    f"{shard}:{number}: a record outside the run's plan ({why}); the run never sampled "
                    f"it, so it has no place among the weighted records. `os-sample inspect {out_dir}` "
                    f"lists every such record (unexpected); remove those lines to export",
                    exit_code=1,
                )
            yield record


def planned_ids(out_dir: Path, manifest: dict | None) -> set[str] | None:
    """The ids the run planned (its ids file), or None when the folder has no manifest or ids file."""
    from os_cli.store.record_format import read_ids

    if not manifest:
        return None
    path = Path(out_dir) / str(manifest.get("ids_file") or IDS_FILE)
    if not path.exists():
        return None
    return set(read_ids(path, manifest.get("format", 1)))


def run_status(out_dir: Path) -> str | None:
    from os_cli.store.writer import read_manifest

    manifest = read_manifest(out_dir)
    return manifest.get("status") if manifest else None


def id_field_of(out_dir: Path) -> str | None:
    """The run's dataset.id_field (None: ids are row indices, or no recipe to read it from)."""
    from os_cli.store.writer import read_manifest

    dataset = ((read_manifest(out_dir) or {}).get("recipe") or {}).get("dataset")
    value = dataset.get("id_field") if isinstance(dataset, dict) else None
    return value if isinstance(value, str) else None


def answer_field_of(out_dir: Path, answer_field: str | None) -> str | None:
    from os_cli.report.summary import default_answer_field
    from os_cli.store.writer import read_manifest

    if answer_field is not None:
        return answer_field or None
    return default_answer_field(read_manifest(out_dir))


# --------------------------------------------------------------------------------------------------
# Filters and weights


def check_filters(filters: Filters) -> None:
    if filters.where is not None and filters.where not in WHERE:
        raise UserError(f"--where {filters.where!r}: allowed: {', '.join(WHERE)}")
    if filters.min_ess is not None and not (math.isfinite(filters.min_ess) and filters.min_ess >= 0):
        raise UserError(
            f"--min-ess {filters.min_ess}: give a non-negative number (records keep their mean "
            f"ESS ratio ess_theta/ess_t; 1 means balanced)"
        )
    for reason in filters.finish_reasons:
        if reason not in FINISH_REASONS:
            raise UserError(f"--finish-reason {reason!r}: allowed: {', '.join(FINISH_REASONS)}")


def _mean_of(value: Any) -> float | None:
    value = value.get("mean") if isinstance(value, dict) else value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def select(records: Iterable[dict], filters: Filters, answer_field: str | None) -> tuple[list[dict], int, dict]:
    """(kept records, records read, {filter: records it dropped}); each record counts at its first failed filter."""
    from os_cli.report.answers import completion_matches

    if filters.where == "correct" and not answer_field:
        if filters.answer_field == "":
            raise UserError(
                "--where correct needs a reference answer, but --answer-field '' turns answers off; name "
                "the row field with --answer-field FIELD, or leave the option out for the recipe's "
                "dataset.answer_field"
            )
        raise UserError(
            "--where correct needs a reference answer: the recipe has no dataset.answer_field; "
            "name the row field with --answer-field"
        )
    kept: list[dict] = []
    read = 0
    row_fields: set = set()  # over every record read: is the answer field anywhere?
    dropped = {"where": 0, "min_ess": 0, "finish_reason": 0}
    seen: dict[tuple, int] = {}
    for record in records:
        read += 1
        key = (str(record.get("id")), sample_of(record))
        if key in seen:
            raise UserError(
                f"{describe_key(key)} appears more than once in the shards; exporting would weight it "
                f"twice (`os-sample inspect` shows where)",
                exit_code=1,
            )
        seen[key] = read
        if filters.where == "correct" and isinstance(record.get("row"), dict):
            row_fields.update(record["row"])
        if filters.finish_reasons and record.get("finish_reason") not in filters.finish_reasons:
            dropped["finish_reason"] += 1
            continue
        if filters.min_ess is not None:
            ess = _mean_of(record.get("ess_ratio"))
            if ess is None or ess < filters.min_ess:
                dropped["min_ess"] += 1
                continue
        if filters.where == "correct":
            row = value if isinstance(value := record.get("row"), dict) else {}
            if completion_matches(record.get("completion") or "", row.get(answer_field)) is not True:
                dropped["where"] += 1
                continue
        kept.append(record)
    if filters.where == "correct" and read and answer_field not in row_fields:
        named = (
            f"--answer-field {answer_field}"
            if filters.answer_field
            else f"dataset.answer_field {answer_field} (the recipe's)"
        )
        have = ", ".join(sorted(map(str, row_fields))[:12]) or "none (records kept no row fields: dataset.keep_fields)"
        raise UserError(
            f"--where correct: {named}: no record's row has this field, so no answer can be scored; "
            f"row fields: {have}; name the reference answer's field with --answer-field"
        )
    return kept, read, {k: v for k, v in dropped.items() if v}


# --------------------------------------------------------------------------------------------------
# Rows per format


def trl_row(record: dict, lw: float, w: float) -> dict:
    """A prompt-completion record (TRL) with its weights. Standard (text) rows, or for a chat run (the
    record has `messages`, theta's conversation prefix) TRL's conversational prompt-completion rows:
    `prompt` = the conversation, `completion` = [the completion as an assistant turn]. Not a `messages`
    column beside them: TRL tells a row's type by its keys, and prompt + completion + messages is none."""
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(record.get(MESSAGES_KEY), list):
        prompt = [{"role": t.get("role"), "content": t.get("content")} for t in record[MESSAGES_KEY]]
        completion = [{"role": "assistant", "content": completion}]
    row = {
        "id": str(record["id"]),
        "sample": sample_of(record),
        "prompt": prompt,
        "completion": completion,
        "num_tokens": record.get("num_tokens"),
        "finish_reason": record.get("finish_reason"),
        "log_weight": lw,
        "weight": w,
    }
    per_token = token_log_weights(record)
    if per_token is not None:
        row[TOKEN_WEIGHT_COLUMN] = per_token
        row[TIS_COLUMN] = truncated_token_weights(per_token)
    return row


def flatten(record: dict, prefix: str = "") -> dict:
    """Nested dicts become columns joined by `_`: {"alpha": {"mean": m}} -> {"alpha_mean": m}."""
    out: dict = {}
    for key, value in record.items():
        name = f"{prefix}{FLAT_SEP}{key}" if prefix else str(key)
        if isinstance(value, dict):
            if not value:
                out[name] = None  # an empty object has no columns to give
                continue
            for sub, sub_value in flatten(value, name).items():
                if sub in out:
                    raise UserError(f"record {record.get('id')!r}: two fields flatten to the column {sub!r}")
                out[sub] = sub_value
        else:
            if name in out:
                raise UserError(f"record {record.get('id')!r}: two fields flatten to the column {name!r}")
            out[name] = value
    return out


def flat_row(record: dict, lw: float, w: float, id_field: str | None = None) -> dict:
    """`flatten(record)` with the weights; the row's id field (`id_field`, dataset.id_field) is the
    record's id, as text (a 30-digit number stays exact; numbers and strings share one column)."""
    row = flatten(record)
    row["id"] = str(record["id"])
    if id_field and isinstance(record.get("row"), dict) and id_field in record["row"]:
        row[f"row{FLAT_SEP}{id_field}"] = str(record["id"])
    row["sample"] = sample_of(record)
    for name, value in (("log_weight", lw), ("weight", w)):
        if name in row:
            raise UserError(
                f"record {record.get('id')!r} already has a field {name!r}; it would clash with the weight column"
            )
        row[name] = value
    per_token = token_log_weights(record)
    if per_token is not None:
        row[TOKEN_WEIGHT_COLUMN] = per_token
        row[TIS_COLUMN] = truncated_token_weights(per_token)
    return row


def build_rows(records: Sequence[dict], fmt: str, id_field: str | None = None) -> list[dict]:
    lws = [log_weight(r) for r in records]
    ws = normalized_weights(lws)
    if fmt == "trl":
        return [trl_row(r, lw, w) for r, lw, w in zip(records, lws, ws)]
    return [flat_row(r, lw, w, id_field) for r, lw, w in zip(records, lws, ws)]


def export(
    out_dir: str | Path,
    fmt: str,
    to: str | Path | None = None,
    *,
    filters: Filters = Filters(),
    push_to_hub: str | None = None,
    private: bool | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Read `out_dir`, filter, weight and write the records to `to` and/or push them to a hub repo."""
    from os_cli.report.summary import check_output_dir

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: allowed: {', '.join(FORMATS)}")
    if to is None and not push_to_hub:
        raise UserError("give --to PATH, --push-to-hub REPO, or both")
    check_filters(filters)
    root = check_output_dir(out_dir)
    real = check_target(Path(to), fmt, overwrite) if to is not None else None
    answer_field = answer_field_of(root, filters.answer_field)
    kept, read, dropped = select(read_records(root), filters, answer_field)
    if not kept:
        if not read:
            raise UserError(f"{root}: no record to export (the shards hold no records yet)")
        why = ", ".join(f"{n} by {k}" for k, n in dropped.items())
        raise UserError(f"{root}: no record to export ({read} read; dropped: {why})")
    rows = build_rows(kept, fmt, id_field_of(root))
    dataset = to_dataset(rows)
    result = ExportResult(
        format=fmt,
        path=str(to) if to is not None else None,
        read=read,
        kept=len(kept),
        dropped=dropped,
        columns=list(dataset.column_names),
        status=run_status(root),
        ess_fraction=ess_fraction([r["weight"] for r in rows]),
    )
    if real is not None:
        write_dataset(dataset, fmt, real)
    if push_to_hub:
        # datasets' own upload (needs network and a token, e.g. `hf auth login` or HF_TOKEN).
        try:
            dataset.push_to_hub(push_to_hub, private=private)
        except Exception as exc:  # noqa: BLE001 - network, auth, hub errors: say what was written
            written = f"; --to {to} was written ({len(kept)} records) and is complete" if real is not None else ""
            raise UserError(
                f"--push-to-hub {push_to_hub}: the upload failed ({type(exc).__name__}: "
                f"{str(exc).strip()[:300]}){written}",
                exit_code=1,
            ) from None
        result.pushed_to = push_to_hub
    return result
