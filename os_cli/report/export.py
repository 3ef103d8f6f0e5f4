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
`token_tis_weights` = min(exp(token_log_weights), 2) (truncated importance weights, os_cli.report.tis).

Filters: `where="correct"` keeps records whose final answer matches the row's reference answer
(os_cli.report.answers' matching, the one `inspect` reports; rows without a reference are dropped),
`min_ess` keeps records whose mean ESS ratio is at least the value, `finish_reasons` keeps records
that ended for one of those reasons. Nothing is printed here; the CLI reports the `ExportResult`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from os_cli.errors import UserError
from os_cli.report.tis import TIS_COLUMN, truncated_token_weights
from os_cli.store.record_format import MESSAGES_KEY, describe_key, sample_of

FORMATS = ("trl", "parquet", "hf")
WHERE = ("correct",)
FINISH_REASONS = ("eos", "length", "stop")
WEIGHT_COLUMNS = ("log_weight", "weight")
TOKEN_WEIGHT_COLUMN = "token_log_weights"
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
    (`record_format.parse_record_line` with the run's `tokens`), a line that is not a record refused."""
    from os_cli.store.record_format import parse_record_line, token_spec
    from os_cli.store.writer import list_shards, read_manifest

    spec = token_spec((read_manifest(out_dir) or {}).get("recipe"))
    for shard in list_shards(out_dir):
        for number, raw in enumerate(shard.read_bytes().split(b"\n"), start=1):
            if not raw.strip():
                continue
            record, problem = parse_record_line(raw, spec)
            if record is None:
                raise UserError(f"{shard}:{number}: not a valid record ({problem}); `os-sample inspect {out_dir}` "
                                f"lists every such line, and the generate command with --repair drops them and "
                                f"generates their rows again", exit_code=1)
            yield record


def run_status(out_dir: Path) -> str | None:
    from os_cli.store.writer import read_manifest

    manifest = read_manifest(out_dir)
    return manifest.get("status") if manifest else None


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
        raise UserError(f"--min-ess {filters.min_ess}: give a non-negative number (records keep their mean "
                        f"ESS ratio ess_theta/ess_t; 1 means balanced)")
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
        raise UserError("--where correct needs a reference answer: the recipe has no dataset.answer_field; "
                        "name the row field with --answer-field")
    kept: list[dict] = []
    read = 0
    dropped = {"where": 0, "min_ess": 0, "finish_reason": 0}
    seen: dict[tuple, int] = {}
    for record in records:
        read += 1
        key = (str(record.get("id")), sample_of(record))
        if key in seen:
            raise UserError(f"{describe_key(key)} appears more than once in the shards; exporting would weight it "
                            f"twice (`os-sample inspect` shows where)", exit_code=1)
        seen[key] = read
        if filters.finish_reasons and record.get("finish_reason") not in filters.finish_reasons:
            dropped["finish_reason"] += 1
            continue
        if filters.min_ess is not None:
            ess = _mean_of(record.get("ess_ratio"))
            if ess is None or ess < filters.min_ess:
                dropped["min_ess"] += 1
                continue
        if filters.where == "correct":
            row = record.get("row") if isinstance(record.get("row"), dict) else {}
            if completion_matches(record.get("completion") or "", row.get(answer_field)) is not True:
                dropped["where"] += 1
                continue
        kept.append(record)
    return kept, read, {k: v for k, v in dropped.items() if v}


def log_weight(record: dict) -> float:
    """log pi_theta(y) - log q*(y) of the record's completion."""
    lp = record.get("logprob") if isinstance(record.get("logprob"), dict) else {}
    theta, q = lp.get("theta"), lp.get("q")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (theta, q)):
        raise UserError(f"record {record.get('id')!r} has no logprob.theta / logprob.q, so it has no importance "
                        f"weight; was it written by os-sample generate?", exit_code=1)
    return float(theta) - float(q)


def normalized_weights(log_weights: Sequence[float]) -> list[float]:
    """exp(lw_i) / sum_j exp(lw_j), computed stably (max subtracted)."""
    if not log_weights:
        return []
    top = max(log_weights)
    w = [math.exp(x - top) for x in log_weights]
    total = math.fsum(w)
    return [x / total for x in w]


def ess_fraction(weights: Sequence[float]) -> float | None:
    """Kish effective sample size of normalised weights, divided by their number."""
    if not weights:
        return None
    return 1.0 / (math.fsum(w * w for w in weights) * len(weights))


def token_log_weights(record: dict) -> list[float] | None:
    toks = record.get("tokens")
    if not isinstance(toks, dict):
        return None
    theta, q = toks.get("logprob_theta"), toks.get("logprob_q")
    if not (isinstance(theta, list) and isinstance(q, list) and len(theta) == len(q)):
        return None
    return [None if a is None or b is None else float(a) - float(b) for a, b in zip(theta, q)]


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
    row = {"id": str(record["id"]), "sample": sample_of(record), "prompt": prompt, "completion": completion,
           "num_tokens": record.get("num_tokens"), "finish_reason": record.get("finish_reason"),
           "log_weight": lw, "weight": w}
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


def flat_row(record: dict, lw: float, w: float) -> dict:
    row = flatten(record)
    row["id"] = str(record["id"])
    row["sample"] = sample_of(record)
    for name, value in (("log_weight", lw), ("weight", w)):
        if name in row:
            raise UserError(f"record {record.get('id')!r} already has a field {name!r}; it would clash with "
                            f"the weight column")
        row[name] = value
    per_token = token_log_weights(record)
    if per_token is not None:
        row[TOKEN_WEIGHT_COLUMN] = per_token
        row[TIS_COLUMN] = truncated_token_weights(per_token)
    return row


def build_rows(records: Sequence[dict], fmt: str) -> list[dict]:
    lws = [log_weight(r) for r in records]
    ws = normalized_weights(lws)
    make = trl_row if fmt == "trl" else flat_row
    return [make(r, lw, w) for r, lw, w in zip(records, lws, ws)]


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
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        bad = _mixed_column(data)
        where = f" (column {bad!r} holds values of different types)" if bad else ""
        raise UserError(f"the records cannot form one table{where}: {exc}", exit_code=1) from None


def _mixed_column(data: dict) -> str | None:
    for name, values in data.items():
        kinds = {type(v).__name__ for v in values if v is not None}
        if kinds - {"int", "float"} and len(kinds) > 1:
            return name
    return None


# --------------------------------------------------------------------------------------------------
# Writing


def check_target(to: Path, fmt: str, overwrite: bool) -> None:
    to = Path(to)
    if to.exists():
        if not overwrite:
            raise UserError(f"--to {to} exists; pass --overwrite to replace it, or choose another path")
        if fmt == "hf" and to.is_dir() and not (to / "dataset_info.json").exists():
            raise UserError(f"--to {to} is a folder that is not a saved dataset; refusing to replace it")
        if fmt != "hf" and to.is_dir():
            raise UserError(f"--to {to} is a folder; --format {fmt} writes one file")
        if fmt == "hf" and not to.is_dir():
            raise UserError(f"--to {to} is a file; --format hf writes a folder (datasets' save_to_disk)")
    if not to.parent.exists():
        raise UserError(f"--to {to}: the folder {to.parent} does not exist")


def _not_a_run_file(root: Path, to: Path) -> None:
    """An export must not land where generate, resume or inspect would read it as part of the run."""
    from os_cli.store.writer import ERRORS_FILE, IDS_FILE, MANIFEST, SHARD_RE

    run_file = SHARD_RE.match(to.name) or to.name in (MANIFEST, IDS_FILE, ERRORS_FILE)
    if run_file and to.resolve().parent == root.resolve():
        raise UserError(f"--to {to}: that name belongs to the run in {root}; choose another file name")
    if to.resolve() == root.resolve():
        raise UserError(f"--to {to}: that is the output folder itself; choose another path")


def write_dataset(dataset, fmt: str, to: Path) -> None:
    """Write to a temporary sibling, then move it over `to` (a crash leaves the old export whole)."""
    to = Path(to)
    tmp = to.parent / f".{to.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
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
            shutil.rmtree(to)
        os.replace(tmp, to)
    finally:  # a failed write leaves no hidden copy of the data behind
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def export(out_dir: str | Path, fmt: str, to: str | Path | None = None, *, filters: Filters = Filters(),
           push_to_hub: str | None = None, private: bool | None = None, overwrite: bool = False) -> ExportResult:
    """Read `out_dir`, filter, weight and write the records to `to` and/or push them to a hub repo."""
    from os_cli.report.summary import check_output_dir

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: allowed: {', '.join(FORMATS)}")
    if to is None and not push_to_hub:
        raise UserError("give --to PATH, --push-to-hub REPO, or both")
    check_filters(filters)
    root = check_output_dir(out_dir)
    if to is not None:
        check_target(Path(to), fmt, overwrite)
        _not_a_run_file(root, Path(to))
    answer_field = answer_field_of(root, filters.answer_field)
    kept, read, dropped = select(read_records(root), filters, answer_field)
    if not kept:
        if not read:
            raise UserError(f"{root}: no record to export (the shards hold no records yet)")
        why = ", ".join(f"{n} by {k}" for k, n in dropped.items())
        raise UserError(f"{root}: no record to export ({read} read; dropped: {why})")
    rows = build_rows(kept, fmt)
    dataset = to_dataset(rows)
    result = ExportResult(format=fmt, path=str(to) if to is not None else None, read=read, kept=len(kept),
                          dropped=dropped, columns=list(dataset.column_names), status=run_status(root),
                          ess_fraction=ess_fraction([r["weight"] for r in rows]))
    if to is not None:
        write_dataset(dataset, fmt, Path(to))
    if push_to_hub:
        # datasets' own upload (needs network and a token, e.g. `hf auth login` or HF_TOKEN).
        dataset.push_to_hub(push_to_hub, private=private)
        result.pushed_to = push_to_hub
    return result
