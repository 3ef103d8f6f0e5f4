"""The one table of scripts/gpu_check.sh: read the four benchmarks' logs ($WORK/1.log .. 4.log) and print
section, measurement, value (median (min-max) over rounds) and the issue's target.

    python scripts/gpu_table.py WORK_DIR

Sections 1-2 are read from bench_stacked.py's and bench_prefix.py's own lines; 3-4 from the `SUMMARY`
lines (tab-separated: section, measurement, value, target) that bench_refill.py and bench_draft_auto.py
print last. A log that is missing, or has none of the expected lines, gives one row saying so.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SECTIONS = {"1": "one model, stacked", "2": "prefill once", "3": "busy slots", "4": "draft_tokens auto"}


def rows_of(section: str, text: str) -> list[tuple[str, str, str, str]]:
    rows = []
    if section == "1":
        for m in re.finditer(r"batch\s+(\d+): .*?ratio (\S+ \([^)]*\)).*?same tokens: (\w+)", text):
            rows.append((section, f"stacked / two models, batch {m[1]} (same tokens: {m[3]})", m[2],
                         "<= 0.75 at batch 16"))
    elif section == "2":
        for m in re.finditer(r"(prefill per (?:sample|prompt))\s*: (\S+ \([^)]*\)) records/s; prompt tokens per "
                             r"prompt: theta (\S+), teacher (\S+)", text):
            rows.append((section, f"{m[1]}: records/s (prompt tokens per prompt theta {m[3]}, teacher {m[4]})",
                         m[2], "1.00x each" if m[1].endswith("prompt") else "(today's path)"))
        for m in re.finditer(r"speed-up \(shared / per sample\): (\S+ \([^)]*\)).*?same tokens: (\w+)", text):
            rows.append((section, f"records/s, shared / per sample (same tokens: {m[2]})", m[1], ">= 1.5"))
    for line in text.splitlines():
        if line.startswith("SUMMARY\t"):
            fields = line.split("\t")[1:]
            if len(fields) == 4 and fields[0] == section:
                rows.append(tuple(fields))
    return rows


def main() -> int:
    work = Path(sys.argv[1])
    table = []
    for section, name in SECTIONS.items():
        log = work / f"{section}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        found = rows_of(section, text)
        if not found:
            what = ("not in this tree" if text.startswith("MISSING") else
                    "no result (see " + str(log) + ")" if text else "not run")
            found = [(section, name, what, "")]
        table.extend(found)
    widths = [max(len(r[i]) for r in table + [("section", "measurement", "value", "target")]) for i in range(4)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(("section", "measurement", "value", "target")))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table:
        print(line(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
