"""Resume scan of the shards: every line must be a complete record of the current format.

`scan_shards` (read-only) returns the (id, sample) keys of complete records and the invalid lines with file and
1-based line; a record is complete by `record_format.record_problem`, given the run's `TokenSpec` (the
`tokens` its output settings call for). A last line of a shard that is not even JSON (or not UTF-8) is a write cut short
(`torn`): the shard's owner drops it (`drop_lines`, an atomic rewrite) and its row is generated
again. Any other invalid line (elsewhere, or JSON that is not a complete record, such as a record
cut down to `{"id": ...}`: no crash makes those) is refused by `check_shards` (exit 2) unless
`repair`, which drops those lines too.
Ownership with several ranks: rank RR repairs `shard-rRR-*`; rank 0 everything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from os_cli.errors import UserError
from os_cli.store.folder import SHARD_RE, atomic_write
from os_cli.store.record_format import TokenSpec, describe_key, parse_record_line, record_key

MAX_NAMED = 5  # problem lines named in one message


def list_shards(out_dir: Path) -> list[Path]:
    """Every shard of every rank, sorted by name."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir() if SHARD_RE.match(p.name) and p.is_file())


def shard_owner(path: Path, world_size: int) -> int:
    """The rank that repairs and appends to a shard in a run of `world_size` processes."""
    match = SHARD_RE.match(Path(path).name)
    assert match is not None  # a shard's name (from list_shards)
    rank = match.group(1)
    if world_size <= 1 or rank is None or int(rank) >= world_size:
        return 0
    return int(rank)


@dataclass
class BadLine:
    path: Path
    line: int  # 1-based
    reason: str
    torn: bool  # the shard's last line, and not JSON: a write cut short

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class Scan:
    """What the shards hold: `done` {(id, sample): shard name} of complete records, and the invalid lines."""

    done: dict[tuple[str, int], str] = field(default_factory=dict)
    bad: list[BadLine] = field(default_factory=list)

    @property
    def torn_tails(self) -> list[BadLine]:
        return [b for b in self.bad if b.torn]

    @property
    def interior(self) -> list[BadLine]:
        return [b for b in self.bad if not b.torn]


def scan_shards(out_dir: Path, spec: TokenSpec | None = None) -> Scan:
    """Read-only: every shard line validated (`spec`: the run's tokens, `record_format.token_spec`).
    Duplicate complete records raise `UserError` (exit 1)."""
    scan = Scan()
    for shard in list_shards(out_dir):
        lines = shard.read_bytes().split(b"\n")
        numbered = [(n, raw) for n, raw in enumerate(lines, start=1) if raw.strip()]
        for k, (number, raw) in enumerate(numbered):
            record, problem = parse_record_line(raw, spec)
            if record is None:
                assert problem is not None  # parse_record_line gives one of the two
                torn = k == len(numbered) - 1 and not _is_json(raw)
                scan.bad.append(BadLine(shard, number, problem, torn=torn))
                continue
            key = record_key(record)
            if key in scan.done:
                raise UserError(
                    f"{shard}:{number}: {describe_key(key)} was already written to {scan.done[key]}; "
                    f"the output folder is inconsistent (use --overwrite)",
                    exit_code=1,
                )
            scan.done[key] = shard.name
    return scan


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return True


def check_shards(scan: Scan, *, repair: bool) -> None:
    """Refuse (exit 2) invalid lines other than a torn last line, unless `repair`."""
    if repair or not scan.interior:
        return
    named = "; ".join(str(b) for b in scan.interior[:MAX_NAMED])
    more = f" (and {len(scan.interior) - MAX_NAMED} more)" if len(scan.interior) > MAX_NAMED else ""
    raise UserError(
        f"{len(scan.interior)} invalid line(s) in the shards that a write cut short cannot explain (not the "
        f"last line of a shard, or JSON that is not a complete record): {named}{more}. Something other than "
        f"os-sample changed the folder; rerun with --repair to drop such lines and generate their rows again"
    )


def scan_records(out_dir: Path, *, repair: bool = True, spec: TokenSpec | None = None) -> dict[tuple[str, int], str]:
    """`{(id, sample): shard file name}` of every complete record in every shard (invalid lines do not count)."""
    scan = scan_shards(out_dir, spec)
    check_shards(scan, repair=repair)
    return scan.done


def drop_lines(bad: Sequence[BadLine]) -> None:
    """Rewrite each named shard atomically without the named lines."""
    by_file: dict[Path, set[int]] = {}
    for b in bad:
        by_file.setdefault(b.path, set()).add(b.line)
    for path, numbers in by_file.items():
        lines = path.read_bytes().split(b"\n")
        kept = [raw + b"\n" for n, raw in enumerate(lines, start=1) if raw.strip() and n not in numbers]
        atomic_write(path, b"".join(kept))


def describe_drop(b: BadLine) -> str:
    if b.torn:
        return (
            f"{b.path} line {b.line} is not a complete record ({b.reason}): a write cut short; dropped, "
            f"its row is generated again"
        )
    return (
        f"{b.path} line {b.line} is not a complete record ({b.reason}): dropped (--repair), its row is generated again"
    )
