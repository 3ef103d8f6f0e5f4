"""Dataset fingerprint: what each planned row was, so a resume over a changed dataset is refused.

`plan_entries` gives one `[id, dataset index, digest of theta's prompt, digest of the teacher's]`
per planned row (16 hex digits of SHA-256 each); the writer stores them in `plan.jsonl` and their
hash in the manifest (`dataset_fingerprint`). `check_dataset` compares a new plan with the stored
one on every id both plan: a different index or prompt is a changed dataset (exit 2, the ids and
what changed are named). Rows only added or left out (a changed limit) are not a change here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping, Sequence

from os_cli.errors import UserError
from os_cli.store.record_format import PLAN_FILE


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]


def plan_entries(planned_ids: Sequence[str], items: Sequence, errors: Sequence[Mapping]) -> list[list]:
    """One `[id, dataset index, digest of theta's prompt, digest of the teacher's]` per planned row, in plan
    order (a row that could not be rendered: `[id, None, "bad:" + digest of the reason, None]`)."""
    by_id: dict[str, list] = {it.id: [it.id, it.index, _digest(it.prompt), _digest(it.prompt_t)] for it in items}
    for e in errors:
        by_id.setdefault(e["id"], [e["id"], None, "bad:" + _digest(str(e.get("reason"))), None])
    return [by_id[i] for i in planned_ids if i in by_id]


def encode_plan(plan: Sequence[list]) -> bytes:
    return b"".join(json.dumps(e, ensure_ascii=True).encode() + b"\n" for e in plan)


def plan_fingerprint(plan: Sequence[list]) -> str:
    return "sha256:" + hashlib.sha256(encode_plan(plan)).hexdigest()


def _what_differs(old: list, new: list) -> str:
    if (old[1] is None) != (new[1] is None):
        return "it could not be rendered before" if old[1] is None else "it can no longer be rendered"
    parts = []
    if old[1] != new[1]:
        parts.append(f"dataset index {old[1]} -> {new[1]}")
    if old[2] != new[2]:
        parts.append("theta's prompt differs" if new[1] is not None else "the render error differs")
    if old[3] != new[3]:
        parts.append("the teacher's prompt differs")
    return ", ".join(parts) or "differs"


def check_dataset(out_dir: Path, manifest: Mapping, plan: Sequence[list]) -> None:
    """Refuse (exit 2) rows planned by both runs whose id, index or rendered prompts changed."""
    old_fp = manifest.get("dataset_fingerprint")
    if old_fp is None or old_fp == plan_fingerprint(plan):
        return
    advice = "restore the dataset the folder was written from, or use --output NEW_DIR (or --overwrite to start over)"
    path = Path(out_dir) / str(manifest.get("plan_file") or PLAN_FILE)
    try:
        old_plan = {e[0]: e for e in (json.loads(x) for x in path.read_bytes().splitlines() if x.strip())}
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise UserError(
            f"the dataset changed since {out_dir} was written (its fingerprint differs; {path} "
            f"is unreadable: {exc}); {advice}"
        ) from None
    changed = [(old_plan[e[0]], e) for e in plan if e[0] in old_plan and old_plan[e[0]] != e]
    if not changed:
        return  # only rows added or left out (a changed limit); check_plan judges written rows
    shown = "; ".join(f"id {new[0]!r}: {_what_differs(old, new)}" for old, new in changed[:3])
    raise UserError(
        f"the dataset changed since {out_dir} was written: {len(changed)} of the rows both runs plan differ "
        f"(first: {shown}), so its records would mix old and new rows; {advice}"
    )
