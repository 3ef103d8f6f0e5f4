"""Summaries of `os-sample generate` output folders: statistics, integrity checks, answer matching.

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
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .errors import UserError
from .passk import PerRow
from .record_format import IDS_FILE, MANIFEST, IdsFileError, num_samples_of, read_ids, record_key, record_problem

SUMMARY_FORMAT = 1
DIAGNOSTICS = ("alpha", "ess_ratio", "kl_theta", "kl_t")
LOGPROB_KEYS = ("theta", "t", "q")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
HIST_BINS = 20
MAX_LISTED = 50  # ids / lines listed in the integrity report (counts are always complete)
RESERVOIR_PER_TOKEN = 200_000
RESERVOIR_PER_RECORD = 2_000_000
MISSING_GROUP = "(missing)"
SHARD_GLOB = "shard-*.jsonl"


# --------------------------------------------------------------------------------------------------
# Streaming statistics


class Stat:
    """Exact count / mean / std / min / max plus a uniform reservoir for quantiles and histograms."""

    def __init__(self, cap: int = RESERVOIR_PER_TOKEN, seed: int = 0):
        self.cap = cap
        self._n = 0
        self.nonfinite = 0
        self._sum = 0.0
        self._mean = 0.0
        self._m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self._buf = np.empty(0, dtype=np.float64)
        self._chunks: list[np.ndarray] = []
        self._kept = 0
        self._rng = np.random.default_rng(seed)
        self._pending: list[float] = []

    def add(self, value: Any) -> None:
        """One value (None or a non-number counts as non-finite); buffered, flushed in chunks."""
        self._pending.append(value)
        if len(self._pending) >= 8192:
            self._flush()

    def add_many(self, values: Iterable[Any]) -> None:
        if isinstance(values, np.ndarray):
            self._flush()  # keep stream order for the reservoir
            self._add_array(values.astype(np.float64, copy=False).ravel())
            return
        self._pending.extend(values)
        if len(self._pending) >= 8192:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self._add_array(_to_float_array(pending))

    def _add_array(self, arr: np.ndarray) -> None:
        if arr.size == 0:
            return
        finite = np.isfinite(arr)
        self.nonfinite += int(arr.size - finite.sum())
        arr = arr[finite]
        n = int(arr.size)
        if n == 0:
            return
        # Chan et al. parallel update of mean and M2.
        mean_b = float(arr.mean())
        m2_b = float(((arr - mean_b) ** 2).sum())
        total = self._n + n
        delta = mean_b - self._mean
        self._mean += delta * n / total
        self._m2 += m2_b + delta * delta * self._n * n / total
        self._sum += float(arr.sum())
        self.min = min(self.min, float(arr.min()))
        self.max = max(self.max, float(arr.max()))
        self._reservoir_add(arr, self._n)
        self._n = total

    def _reservoir_add(self, arr: np.ndarray, seen_before: int) -> None:
        room = self.cap - self._kept
        if room > 0:
            take = arr[:room]
            self._chunks.append(take.copy())
            self._kept += take.size
            arr = arr[room:]
            seen_before += take.size
        if arr.size == 0:
            return
        if self._chunks:
            self._buf = np.concatenate([self._buf, *self._chunks]) if self._buf.size else np.concatenate(self._chunks)
            self._chunks = []
        # Algorithm R, vectorised: item i (0-based over the stream) replaces a random slot w.p. cap/(i+1).
        idx = np.arange(seen_before, seen_before + arr.size)
        slots = (self._rng.random(arr.size) * (idx + 1)).astype(np.int64)
        keep = slots < self.cap
        self._buf[slots[keep]] = arr[keep]

    def values(self) -> np.ndarray:
        self._flush()
        if self._chunks:
            self._buf = np.concatenate([self._buf, *self._chunks]) if self._buf.size else np.concatenate(self._chunks)
            self._chunks = []
        return self._buf

    @property
    def count(self) -> int:
        self._flush()
        return self._n

    def to_dict(self) -> dict:
        self._flush()
        out: dict[str, Any] = {"count": self._n, "nonfinite": self.nonfinite}
        if not self._n:
            out.update(mean=None, std=None, min=None, max=None, quantiles=None, histogram=None, sampled=False)
            return out
        vals = self.values()
        qs = np.quantile(vals, QUANTILES)
        if self.max - self.min < HIST_BINS and np.all(vals == np.round(vals)):
            bins: Any = np.arange(self.min - 0.5, self.max + 1.0)  # integers (lengths): one bin per value
            counts, edges = np.histogram(vals, bins=bins)
        else:
            counts, edges = np.histogram(vals, bins=HIST_BINS, range=_hist_range(self.min, self.max))
        out.update(
            mean=self._mean,
            std=math.sqrt(self._m2 / self._n) if self._n > 1 else 0.0,
            min=self.min,
            max=self.max,
            quantiles={_qname(q): float(v) for q, v in zip(QUANTILES, qs)},
            histogram={"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
            sampled=self._n > self.cap,
        )
        return out


def _qname(q: float) -> str:
    return f"p{round(q * 100):02d}"


def _hist_range(lo: float, hi: float) -> tuple[float, float]:
    if hi > lo:
        return lo, hi
    pad = max(abs(lo) * 1e-3, 0.5)
    return lo - pad, hi + pad


def _to_float_array(values: Iterable[Any]) -> np.ndarray:
    """Floats; None and anything that is not a number become NaN (counted as non-finite)."""
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False).ravel()
    values = list(values)
    if all(v is None or type(v) in (int, float) for v in values):
        return np.asarray(values, dtype=np.float64)  # None -> NaN
    return np.asarray([v if _is_number(v) else math.nan for v in values], dtype=np.float64)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


class PositionMeans:
    """Mean of a per-token value at each token position (0 = first generated token)."""

    def __init__(self):
        self.sums = np.zeros(0, dtype=np.float64)
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, values: Iterable[Any]) -> None:
        arr = _to_float_array(values)
        if arr.size > self.sums.size:
            grow = arr.size - self.sums.size
            self.sums = np.concatenate([self.sums, np.zeros(grow)])
            self.counts = np.concatenate([self.counts, np.zeros(grow, dtype=np.int64)])
        ok = np.isfinite(arr)
        self.sums[: arr.size][ok] += arr[ok]
        self.counts[: arr.size][ok] += 1

    def to_dict(self) -> dict | None:
        if not self.counts.any():
            return None
        means = [float(s / c) if c else None for s, c in zip(self.sums, self.counts)]
        return {"mean": means, "count": [int(c) for c in self.counts]}


# --------------------------------------------------------------------------------------------------
# Answer extraction and matching

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")
_COMMA_NUMBER = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_DECIMAL = re.compile(r"^[-+]?\d*\.\d+$")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` whose braces balance (nested braces allowed), else None."""
    if not isinstance(text, str):
        return None
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    return None


def last_number(text: str) -> str | None:
    if not isinstance(text, str):
        return None
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def extract_answer(completion: str) -> str | None:
    """The completion's final answer: the last balanced `\\boxed{...}`, else the last number."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    return last_number(completion)


def reference_answer(value: Any) -> str | None:
    """A reference answer as a string: numbers as written, `... #### 42` (GSM8K) -> `42`,
    a solution containing `\\boxed{...}` -> its content, else the text itself."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return reference_answer(value[0]) if len(value) == 1 else None
    if not isinstance(value, str):
        return None
    if "####" in value:
        return value.rsplit("####", 1)[1]
    boxed = last_boxed(value)
    return boxed if boxed is not None else value


def normalize_answer(text: str) -> str:
    """Whitespace collapsed, `$`/trailing period stripped, thousands commas and trailing zeros
    of decimals removed: ` 1,234.50 ` -> `1234.5`, `12.0` -> `12`."""
    s = " ".join(str(text).split())
    s = s.strip().strip("$").strip()
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1].rstrip()
    if s.startswith("\\text{") and s.endswith("}"):
        s = s[len("\\text{"):-1].strip()
    if _COMMA_NUMBER.match(s):
        s = s.replace(",", "")
    if _DECIMAL.match(s):
        s = s.rstrip("0").rstrip(".") or "0"
        if s in ("-", "+"):
            s = "0"
    if s.startswith("+") and len(s) > 1 and s[1].isdigit():
        s = s[1:]
    if s == "-0":
        s = "0"
    return s


def answers_match(predicted: str | None, reference: str | None) -> bool:
    if predicted is None or reference is None:
        return False
    a, b = normalize_answer(predicted), normalize_answer(reference)
    if a == b:
        return True
    try:
        fa, fb = float(a), float(b)
    except ValueError:
        return False
    return math.isfinite(fa) and math.isfinite(fb) and math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-12)


def completion_matches(completion: str, reference: Any) -> bool | None:
    """True/False, or None when there is no usable reference."""
    ref = reference_answer(reference)
    if ref is None or not ref.strip():
        return None
    return answers_match(extract_answer(completion), ref)


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
        if _finite(n):
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
        if _finite(lt) and _finite(lq) and _finite(n):
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
                self.lw_token.add_many(_to_float_array(t_theta) - _to_float_array(t_q))
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
                "ess_fraction": _ess_fraction(self._lw_all),
            },
            "by_position": by_position or None,
            "answers": answers,
        }


def _ess_fraction(log_weights: list[float]) -> float | None:
    """Kish effective sample size of the sequence importance weights, divided by their number."""
    if not log_weights:
        return None
    lw = np.asarray(log_weights, dtype=np.float64)
    lw = lw - lw.max()
    w = np.exp(lw)
    return float(w.sum() ** 2 / (w * w).sum() / lw.size)


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
    path = root / MANIFEST
    if not path.exists():
        return None, None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"manifest.json unreadable: {exc}"
    if not isinstance(manifest, dict):
        return None, "manifest.json is not a JSON object"
    return manifest, None


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
    if not (root / MANIFEST).exists() and not any(root.glob(SHARD_GLOB)):
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
    for shard in sorted(root.glob(SHARD_GLOB)):
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
    return _json_safe({
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
    errors_path = root / "errors.jsonl"
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
    if counts and _is_number(counts.get("records")) and counts["records"] != n_records:
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


def _json_safe(obj: Any) -> Any:
    """Replace NaN / infinity by None so the summary is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj
