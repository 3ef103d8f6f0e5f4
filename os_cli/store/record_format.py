"""The on-disk formats of an output folder, defined once: file names, record keys, ids.txt.

Imported by the writer (which writes them), the resume scan (which validates every line) and
`summary` (inspect). No heavy imports: this module is pure data plus JSON.

- A record is one JSON object per line with at least `REQUIRED_KEYS` (`tokens` is added with
  `output.per_token: true` or `output.topk_logprobs: K`, which adds its TOPK_* lists to it).
  `record_problem` says why a parsed line is not a complete record; given the run's `TokenSpec`
  (`token_spec(recipe)`), also why its `tokens` are not the ones the run's settings call for: every
  key present, each a list of num_tokens entries (each top-K entry a list of K). It is the one check of
  a record: the writer (before writing), the resume scan, inspect and export all call it.
- A record's identity is `(id, sample)` (`record_key`): `sample` is 0..num_samples-1, and a record
  without the key (written before several samples per row existed) is sample 0. Exactly once means
  once per key; `messages` (chat runs) is theta's conversation prefix, a list of {role, content}.
- `ids.txt` holds the planned ids, one JSON string per line (`encode_ids` / `read_ids`), so ids with
  edge whitespace, form feeds or U+2028 round-trip exactly. Folders of format 1 wrote bare lines.
- `json_safe` makes anything a record, errors.jsonl or a summary holds strict JSON (NaN -> null).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from os_cli.errors import UserError
from os_cli.mix.distributions import DISTRIBUTIONS, TOPK_OF_DEFAULT
from os_cli.recipe.typed import Recipe

FORMAT = 2  # 2: ids.txt holds JSON strings, plan.jsonl and the dataset fingerprint exist
MANIFEST = "manifest.json"
IDS_FILE = "ids.txt"
ERRORS_FILE = "errors.jsonl"
PLAN_FILE = "plan.jsonl"

REQUIRED_KEYS = (
    "id",
    "alpha_method",
    "prompt",
    "prompt_t",
    "completion",
    "num_tokens",
    "finish_reason",
    "alpha",
    "ess_ratio",
    "kl_theta",
    "kl_t",
    "logprob",
    "row",
)
STAT_KEYS = ("mean", "min", "max")  # of alpha, ess_ratio, kl_theta, kl_t
LOGPROB_KEYS = DISTRIBUTIONS  # of logprob: theta, t, q
# output.topk_logprobs: K adds to `tokens` the teacher's top-K ids per token and, per distribution
# named in output.topk_of (LOGPROB_KEYS), their log-probabilities (os_cli/topk.py)
TOPK_IDS = "topk_ids"
TOPK_LOGPROB = "topk_logprob_"  # + theta | t | q
STAT_FIELDS = ("alpha", "ess_ratio", "kl_theta", "kl_t")
TOKEN_KEYS = ("ids", *STAT_FIELDS, *(f"logprob_{side}" for side in LOGPROB_KEYS))  # `tokens`: per-token lists
SAMPLE_KEY = "sample"  # optional: absent = 0
MESSAGES_KEY = "messages"  # optional: chat runs only

# Characters that some readers treat as line breaks although JSON leaves them unescaped.
_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def encode_record(record: Mapping) -> bytes:
    """One JSON line; `id` first, strict JSON (no NaN)."""
    ordered = {"id": record["id"], **{k: v for k, v in record.items() if k != "id"}}
    return (json.dumps(ordered, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def sample_of(record: Mapping) -> int:
    """The record's sample index (0 when the record has none: folders written before num_samples)."""
    return record.get(SAMPLE_KEY, 0)


def record_key(record: Mapping) -> tuple[str, int]:
    """What exactly-once counts: (id, sample)."""
    return record["id"], sample_of(record)


def num_samples_of(recipe: Any) -> int:
    """sampling.num_samples of a loaded `Recipe` or a stored (plain dict) one; 1 for one written before the key
    existed."""
    recipe = _plain_recipe(recipe)
    sampling = recipe.get("sampling") if isinstance(recipe, Mapping) else None
    value = sampling.get("num_samples", 1) if isinstance(sampling, Mapping) else 1
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


def outside_plan(key: tuple[str, int], planned: set[str] | None, num_samples: int) -> str | None:
    """Why the record key (id, sample) is not one the run plans, or None: its id is not among the
    `planned` ids (IDS_FILE; None: unknown, not checked) or its sample is >= `num_samples`."""
    if planned is not None and key[0] not in planned:
        return f"id {key[0]!r} is not in {IDS_FILE}"
    if key[1] >= num_samples:
        return f"sample {key[1]} is beyond sampling.num_samples = {num_samples}"
    return None


def _plain_recipe(recipe: Any) -> Any:
    """A loaded `Recipe` as its plain dict (what a manifest stores); anything else as it is."""
    return recipe.to_dict() if isinstance(recipe, Recipe) else recipe


def describe_key(key: tuple[str, int]) -> str:
    return f"id {key[0]!r}" + (f" sample {key[1]}" if key[1] else "")


def topk_keys(of: Sequence[str] = LOGPROB_KEYS) -> tuple[str, ...]:
    """The `tokens` keys output.topk_logprobs adds for the distributions `of` (in LOGPROB_KEYS order)."""
    return (TOPK_IDS, *(TOPK_LOGPROB + side for side in LOGPROB_KEYS if side in of))


@dataclass(frozen=True)
class TokenSpec:
    """What a run's output settings put in every record's `tokens`: `keys`, each a list of num_tokens
    entries (none: the run writes no `tokens`), and `k`, the length of each top-K entry (0: no top-K)."""

    keys: tuple[str, ...] = ()
    k: int = 0


def token_spec(recipe: Any) -> TokenSpec | None:
    """The TokenSpec of the `output` settings of a loaded `Recipe` or a stored (plain dict) one; None when it
    has no `output` section."""
    recipe = _plain_recipe(recipe)
    output = recipe.get("output") if isinstance(recipe, Mapping) else None
    if not isinstance(output, Mapping):
        return None
    k = output.get("topk_logprobs") or 0
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        return TokenSpec(TOKEN_KEYS if output.get("per_token") is True else ())
    of = output.get("topk_of") or TOPK_OF_DEFAULT
    return TokenSpec(TOKEN_KEYS + topk_keys(of if isinstance(of, (list, tuple)) else TOPK_OF_DEFAULT), k)


def _tokens_problem(obj: dict, spec: TokenSpec | None) -> str | None:
    """What is wrong with the record's `tokens` (present, or called for by `spec`); None when nothing is.
    Without a spec (no recipe to read it from) the lists present are checked for alignment only."""
    required = spec.keys if spec is not None else ()
    if "tokens" not in obj and not required:
        return None
    n = obj["num_tokens"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return f"num_tokens is not a non-negative integer ({json.dumps(n)[:40]})"
    tokens = obj.get("tokens")
    if not isinstance(tokens, dict):
        return "incomplete record: missing tokens" if "tokens" not in obj else "tokens is not a JSON object"
    missing = [key for key in required if key not in tokens]
    if missing:
        return f"incomplete record: tokens lacks {', '.join(missing)}"
    k = spec.k if spec is not None and spec.k else None
    topk = topk_keys()
    for key in (*TOKEN_KEYS, *topk):
        values = tokens.get(key)
        if key not in tokens:
            continue
        if not isinstance(values, list) or len(values) != n:
            got = f"{len(values)} entries" if isinstance(values, list) else json.dumps(values)[:40]
            return f"tokens.{key} is not a list of num_tokens = {n} entries ({got})"
        if key in topk:
            for i, entry in enumerate(values):
                k = len(entry) if k is None and isinstance(entry, list) else k
                if not isinstance(entry, list) or len(entry) != k:
                    got = f"{len(entry)} entries" if isinstance(entry, list) else json.dumps(entry)[:40]
                    return f"tokens.{key}[{i}] is not a list of K = {k} entries ({got})"
    return None


def record_problem(obj: Any, spec: TokenSpec | None = None) -> str | None:
    """None for a complete record of the current format, else what is wrong with it. `spec`
    (`token_spec` of the run's recipe): the `tokens` the run's settings call for."""
    if not isinstance(obj, dict):
        return f"not a JSON object ({type(obj).__name__})"
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        return f"incomplete record: missing {', '.join(missing)}"
    if not isinstance(obj["id"], str) or not obj["id"]:
        return "the id is not a non-empty string"
    for key in STAT_FIELDS:
        if not isinstance(obj[key], dict) or any(k not in obj[key] for k in STAT_KEYS):
            return f"incomplete record: {key} lacks {'/'.join(STAT_KEYS)}"
    if not isinstance(obj["logprob"], dict) or any(k not in obj["logprob"] for k in LOGPROB_KEYS):
        return f"incomplete record: logprob lacks {'/'.join(LOGPROB_KEYS)}"
    sample = obj.get(SAMPLE_KEY, 0)
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
        return f"the sample is not a non-negative integer ({json.dumps(sample)[:40]})"
    messages = obj.get(MESSAGES_KEY)
    if MESSAGES_KEY in obj and not (isinstance(messages, list) and all(isinstance(m, dict) for m in messages)):
        return "messages is not a list of {role, content} objects"
    return _tokens_problem(obj, spec)


def parse_record_line(raw: bytes, spec: TokenSpec | None = None) -> tuple[dict | None, str | None]:
    """(record, None) for a complete record line (`record_problem` with `spec`), else (None, reason)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 (byte {exc.start})"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    problem = record_problem(obj, spec)
    return (None, problem) if problem else (obj, None)


def encode_id(row_id: str) -> str:
    text = json.dumps(row_id, ensure_ascii=False)
    for char, escaped in _LINE_BREAKS.items():
        text = text.replace(char, escaped)
    return text


def encode_ids(ids: Sequence[str]) -> bytes:
    """ids.txt contents: one JSON string per line."""
    return "".join(encode_id(i) + "\n" for i in ids).encode("utf-8")


class IdsFileError(UserError):
    """An ids.txt line that is not an id (`line` 1-based)."""

    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


def read_ids(path: Path, fmt: Any = FORMAT) -> list[str]:
    """The planned ids of an ids.txt, exactly as written. `fmt` 1: the bare lines of format 1.

    Raises UserError (exit 2) naming the file and 1-based line for anything that is not an id.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not a file (the manifest's ids_file must name the ids file in the folder)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({exc.strerror or exc})") from None
    try:
        data = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = raw[: exc.start].count(b"\n") + 1
        raise IdsFileError(f"{path}:{lineno}: not UTF-8 (byte {exc.start})", lineno) from None
    lines = data.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if fmt == 1:
        return [ln.strip() for ln in lines if ln.strip()]
    ids = []
    for number, line in enumerate(lines, start=1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, str):
            raise IdsFileError(f"{path}:{number}: not an id (each line of {IDS_FILE} is one JSON string)", number)
        ids.append(value)
    return ids


def json_safe(value: Any) -> Any:
    """A copy that `json.dumps` writes as valid JSON (non-finite floats -> null, odd types -> str)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        try:
            return json_safe(value.item())
        except (TypeError, ValueError):
            pass
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# ----------------------------------------------------------------------------------------------
# Building a record from a finished row (the writer checks it with record_problem)
# ----------------------------------------------------------------------------------------------


def short_float(value: float | None) -> float | None:
    """float32 precision in JSON: 7 significant digits; non-finite -> null."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.7g}")


def stat_summary(values: Sequence[float]) -> dict:
    """mean / min / max over the finite values (all null when there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": None, "min": None, "max": None}
    return {
        "mean": short_float(sum(finite) / len(finite)),
        "min": short_float(min(finite)),
        "max": short_float(max(finite)),
    }


def _seq_sum(values: Sequence[float]) -> float | None:
    if not values or not all(math.isfinite(v) for v in values):
        return None if values else 0.0
    return short_float(sum(values))


@dataclass(frozen=True)
class RecordSettings:
    """What every record of a run shares, built once per run (run/loop.py): `alpha_method` (alpha.method,
    written in each record), `per_token` (output.per_token: per-token lists in `tokens`) and
    `topk_logprobs` (output.topk_logprobs, K; 0: off), whose top-K lists go into `tokens` too."""

    alpha_method: str
    per_token: bool = False
    topk_logprobs: int = 0


def build_record(
    settings: RecordSettings, output, *, row_id: str, sample: int, prompt: str, prompt_t: str, messages, row: Mapping
) -> dict:
    """The record of one (row, sample) from the row's `output` (`RowOutput`, api/rows.py: text, token_ids,
    finish_reason, traces, topk_ids, topk_logprobs). `traces` are the engine's per-token values of the
    row's real tokens (alpha, ess_ratio, kl_theta, kl_t, logprob_theta/t/q), tensors or lists. With
    `settings.topk_logprobs`, `topk_ids` [n, K] and `topk_logprobs` {name: [n, K]} go into `tokens` as
    TOPK_IDS and TOPK_LOGPROB + name; they imply `tokens` (aligned with its ids)."""
    traces, topk_ids = output.traces, output.topk_ids
    if settings.topk_logprobs and topk_ids is None:
        raise ValueError(
            f"row {row_id!r}: the run records top-{settings.topk_logprobs} log-probs but the row's output has none"
        )
    token_ids = output.token_ids.tolist() if hasattr(output.token_ids, "tolist") else list(output.token_ids)
    values = {
        k: [float(v) for v in (traces[k].double().tolist() if hasattr(traces[k], "double") else traces[k])]
        for k in TOKEN_KEYS
        if k != "ids"
    }
    record = {
        "id": row_id,
        SAMPLE_KEY: sample,
        "alpha_method": settings.alpha_method,
        "prompt": prompt,
        "prompt_t": prompt_t,
        "completion": output.text,
        "num_tokens": len(token_ids),
        "finish_reason": output.finish_reason,
        **{name: stat_summary(values[name]) for name in STAT_FIELDS},
        "logprob": {side: _seq_sum(values[f"logprob_{side}"]) for side in LOGPROB_KEYS},
        "row": row,
    }
    if messages is not None:
        record[MESSAGES_KEY] = messages
    if settings.per_token or settings.topk_logprobs:
        record["tokens"] = {
            key: [int(t) for t in token_ids] if key == "ids" else [short_float(v) for v in values[key]]
            for key in TOKEN_KEYS
        }
    if settings.topk_logprobs:
        as_list = lambda x: x.tolist() if hasattr(x, "tolist") else list(x)  # noqa: E731
        record["tokens"][TOPK_IDS] = [[int(i) for i in ids] for ids in as_list(topk_ids)]
        for name, per_token_values in (output.topk_logprobs or {}).items():
            record["tokens"][TOPK_LOGPROB + name] = [[short_float(v) for v in vs] for vs in as_list(per_token_values)]
    return record
