"""inspect's tables: a folder's summary (report.summary) drawn as rich tables, sparklines and text
histograms that fit the terminal's width (fewer statistics per row in narrower ones)."""

from __future__ import annotations

import io
from typing import Any, TypedDict

from os_cli.cli.common import literal
from os_cli.report.summary import summary_groups

SPARK = " ▁▂▃▄▅▆▇█"
DIAG_LABELS = {"alpha": "alpha", "ess_ratio": "ESS ratio", "kl_theta": "KL(q||pi_theta)", "kl_t": "KL(q||pi_t)"}


def _fmt(x: Any, digits: int | None = None) -> str:
    """A number in at most about 9 characters (8 in the compact layout: 3 digits, short exponents)."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    digits = digits or _LAYOUT["digits"]
    if abs(x) >= 1e5 or (x != 0 and abs(x) < 1e-3):
        text = f"{x:.{digits - 1}e}"
        if digits < 4:  # 1.33e-05 -> 1.33e-5
            mantissa, exponent = text.split("e")
            text = f"{mantissa}e{int(exponent)}"
        return text
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.1f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def sparkline(hist: dict | None, width: int = 20) -> str:
    """The histogram as block characters, bins merged down to at most `width` characters."""
    if not hist or not hist.get("counts"):
        return ""
    counts = hist["counts"]
    step = max(1, -(-len(counts) // width))
    counts = [sum(counts[i : i + step]) for i in range(0, len(counts), step)]
    top = max(counts) or 1
    return "".join(SPARK[0 if c == 0 else max(1, round(c / top * (len(SPARK) - 1)))] for c in counts)


def _table(title: str, summary: dict, columns: list[tuple[str, str]]):
    from rich import box
    from rich.table import Table

    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
    )
    # Labels wrap (never vanish) in a narrow terminal; numbers and histograms stay on one line.
    if summary.get("by"):
        table.add_column(summary["by"], style="cyan", overflow="fold", min_width=LABEL_MIN_WIDTH)
    for name, justify in columns:
        if name in LABEL_COLUMNS or name.startswith(ANSWERS_COLUMN):
            table.add_column(name, justify=justify, overflow="fold", min_width=LABEL_MIN_WIDTH)  # type: ignore[arg-type]
        else:
            table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    return table


LABEL_COLUMNS = ("quantity", "over", "finish reasons")
ANSWERS_COLUMN = "answers correct"
LABEL_MIN_WIDTH = 6


def _whole_words(table, width: int):
    """Label columns at least as wide as their longest word (header included), so a narrow terminal wraps
    them between words (`record` / `means`), never inside one (`alpha_metho` / `d`). Where the words cannot
    all fit `width`, the --by column (user data) is narrowed first, to a fixed width (rich's own shrinking
    overshoots), folding its longest words; then ours, down to LABEL_MIN_WIDTH."""
    from rich.console import Console
    from rich.text import Text

    labels = [c for c in table.columns if c.overflow == "fold"]
    for column in labels:
        words = [
            w
            for t in [column.header, *column.cells]
            if isinstance(t, (str, Text))
            for w in (Text.from_markup(t) if isinstance(t, str) else t).plain.split()
        ]
        column.min_width = max(column.min_width or 0, max((len(w) for w in words), default=0))
    console = Console(width=width, file=io.StringIO())
    for column in labels:
        excess = _drawn_width(console, table) - width
        while excess > 0 and (column.width or column.min_width) > LABEL_MIN_WIDTH:
            column.width = max(LABEL_MIN_WIDTH, (column.width or column.min_width) - excess)
            column.min_width = None
            excess = _drawn_width(console, table) - width
        if excess <= 0:
            break
    return table


def _drawn_width(console, table) -> int:
    from rich.cells import cell_len

    with console.capture() as drawn:
        console.print(table, crop=False)  # as out_console (soft_wrap) prints it: nothing cut at the edge
    return max((cell_len(line) for line in drawn.get().splitlines()), default=0)


FULL_STATS = ("n", "mean", "std", "min", "p05", "p50", "p95", "max", "histogram")
MEDIUM_STATS = ("n", "mean", "std", "p05", "p50", "p95", "histogram")
COMPACT_STATS = ("n", "mean", "p05", "p50", "p95")


class _Layout(TypedDict):
    stats: tuple[str, ...]  # which statistics, in order
    spark: int  # histogram width
    digits: int  # significant digits (_fmt)


_LAYOUT: _Layout = {"stats": FULL_STATS, "spark": 20, "digits": 4}


def _choose_layout(width: int, split: bool) -> None:
    """Fewer statistics per row in narrower terminals (--json always has all of them)."""
    extra = 12 if split else 0
    if width >= 150 + extra:
        _LAYOUT.update({"stats": FULL_STATS, "spark": 20, "digits": 4})
    elif width >= 110 + extra:
        _LAYOUT.update({"stats": MEDIUM_STATS, "spark": 10, "digits": 4})
    else:
        _LAYOUT.update({"stats": COMPACT_STATS, "spark": 10, "digits": 3})


def _dist_columns() -> list[tuple[str, str]]:
    return [(c, "left" if c == "histogram" else "right") for c in _LAYOUT["stats"]]


def _dist_cells(dist: dict | None) -> list[str]:
    if not dist or not dist.get("count"):
        empty = {"n": str((dist or {}).get("count", 0)), "histogram": ""}
        return [empty.get(c, "–") for c in _LAYOUT["stats"]]
    q = dist["quantiles"]
    values = {
        "n": _fmt(dist["count"]),
        "mean": _fmt(dist["mean"]),
        "std": _fmt(dist["std"]),
        "min": _fmt(dist["min"]),
        "p05": _fmt(q["p05"]),
        "p50": _fmt(q["p50"]),
        "p95": _fmt(q["p95"]),
        "max": _fmt(dist["max"]),
        "histogram": sparkline(dist["histogram"], _LAYOUT["spark"]),
    }
    return [values[c] for c in _LAYOUT["stats"]]


def _add(table, summary: dict, group: str | None, cells: list[str]) -> None:
    table.add_row(*(([literal(group or "")] if summary.get("by") else []) + cells))  # a record's value: literal


def render(summary: dict, console) -> None:
    from rich.table import Table

    _choose_layout(console.width, bool(summary.get("by")))

    manifest = summary.get("manifest") or {}
    overview = Table.grid(padding=(0, 2))
    overview.add_column(style="bold")
    overview.add_column()
    overview.add_row("folder", literal(summary["dir"]))
    if manifest:
        overview.add_row("status", str(manifest.get("status")))
        models = manifest.get("models") or {}
        if models:
            overview.add_row("models", literal(", ".join(f"{k}: {v}" for k, v in models.items())))
        overview.add_row("alpha method", str(manifest.get("alpha_method")))
        counts = manifest.get("counts") or {}
        if counts:
            overview.add_row("manifest counts", ", ".join(f"{k} {v}" for k, v in counts.items()))
    else:
        overview.add_row("manifest", "none (shards only)")
    overview.add_row(
        "shards",
        f"{len(summary['shards'])} ({', '.join(s['file'] for s in summary['shards'][:4])}"
        f"{', ...' if len(summary['shards']) > 4 else ''})",
    )
    if summary.get("by"):
        overview.add_row("split by", literal(summary["by"]))
    console.print(overview)
    console.print()

    # Records
    has_answers = any(g.get("answers") for _, g in summary_groups(summary))
    cols = [("records", "right"), ("tokens", "right"), ("mean tokens", "right"), ("finish reasons", "left")]
    if has_answers:
        cols.append((f"{ANSWERS_COLUMN} ({summary.get('answer_field')})", "right"))
    table = _table("Records", summary, cols)
    for name, g in summary_groups(summary):
        cells = [
            _fmt(g["records"]),
            _fmt(g["tokens"]["total"]),
            _fmt(g["tokens"]["mean"]),
            ", ".join(f"{k} {v}" for k, v in g["finish_reasons"].items()) or "–",
        ]
        if has_answers:
            a = g.get("answers")
            cells.append(f"{a['correct']}/{a['with_reference']} = {_pct(a['accuracy'])}" if a else "–")
        _add(table, summary, name, cells)
    console.print(_whole_words(table, console.width))
    _render_pass_at_k(summary, console)

    table = _table("Length (generated tokens per record)", summary, _dist_columns())
    for name, g in summary_groups(summary):
        _add(table, summary, name, _dist_cells(g["tokens"]["distribution"]))
    console.print(_whole_words(table, console.width))

    # "over record means": one value per record (its mean over its tokens); "over tokens": every token,
    # the population of generate's end-of-run "mean alpha / mean ESS ratio (over tokens)".
    table = _table("Mixture diagnostics", summary, [("quantity", "left"), ("over", "left")] + _dist_columns())
    for name, g in summary_groups(summary):
        for key, label in DIAG_LABELS.items():
            d = g["diagnostics"][key]
            _add(table, summary, name, [label, "record means"] + _dist_cells(d["per_record"]))
            if d.get("per_token"):
                _add(table, summary, name, [label, "tokens"] + _dist_cells(d["per_token"]))
    console.print(_whole_words(table, console.width))

    table = _table(
        "Log-probabilities and importance weights (log w = log pi_theta - log q*)",
        summary,
        [("quantity", "left")] + _dist_columns(),
    )
    for name, g in summary_groups(summary):
        for key, label in (("theta", "log pi_theta(y)"), ("t", "log pi_t(y)"), ("q", "log q*(y)")):
            _add(table, summary, name, [label] + _dist_cells(g["logprob"][key]))
        lw = g["log_weight"]
        _add(table, summary, name, ["log w per record"] + _dist_cells(lw["per_record"]))
        _add(table, summary, name, ["log w / tokens, per record"] + _dist_cells(lw["per_record_per_token"]))
        if lw.get("per_token"):
            _add(table, summary, name, ["log w per token"] + _dist_cells(lw["per_token"]))
    console.print(_whole_words(table, console.width))
    for name, g in summary_groups(summary):
        lw = g["log_weight"]
        prefix = f"[cyan]{name}[/]: " if name else ""
        console.print(
            f"{prefix}mean log w per token = [bold]{_fmt(lw['mean_per_token'])}[/] over {_fmt(lw['tokens'])} tokens; "
            f"ESS of sequence weights = {_pct(lw['ess_fraction'])} of records",
            soft_wrap=False,  # wrap at the terminal's width like the tables
        )
    console.print()

    _render_histograms(summary, console)
    _render_integrity(summary, console)


def _render_pass_at_k(summary: dict, console) -> None:
    """pass@k per row (several samples per row with reference answers), one quantity per line so the
    table fits 80 columns for any n; see os_cli/passk.py."""
    per_row = [(name, (g.get("answers") or {}).get("per_row")) for name, g in summary_groups(summary)]
    if not any(p for _, p in per_row):
        return
    n = max(p["samples_per_row"]["max"] for _, p in per_row if p)
    table = _table(
        f"Per row over its samples (up to {n} per row; pass@k: unbiased estimate)",
        summary,
        [("quantity", "left"), ("value", "right"), ("rows", "right")],
    )
    for name, p in per_row:
        if not p:
            _add(table, summary, name, ["(one sample per row)", "–", "–"])
            continue
        _add(table, summary, name, ["mean accuracy", _pct(p["mean_accuracy"]), _fmt(p["rows"])])
        for k, v in p["pass_at"].items():
            _add(table, summary, name, [f"pass@{k}", _pct(v["value"]), _fmt(v["rows"])])
        _add(table, summary, name, ["all samples correct", _fmt(p["rows_all_correct"]), _fmt(p["rows"])])
        _add(table, summary, name, ["no sample correct", _fmt(p["rows_none_correct"]), _fmt(p["rows"])])
    console.print(_whole_words(table, console.width))


def _render_histograms(summary: dict, console) -> None:
    g = summary["overall"]
    for title, dist in (
        ("Length histogram (tokens)", g["tokens"]["distribution"]),
        ("alpha histogram (record means)", g["diagnostics"]["alpha"]["per_record"]),
    ):
        if not dist or not dist.get("histogram"):
            continue
        console.print(f"[bold]{title}[/]" + ("  (reservoir sample)" if dist.get("sampled") else ""))
        console.print(text_histogram(dist["histogram"]))
        console.print()


def text_histogram(hist: dict, width: int = 40, max_rows: int = 10) -> str:
    """Horizontal bars, `HIST_BINS` bins merged down to `max_rows` rows; integer histograms (lengths) are
    labelled by the values their rows hold (`17–19`), others by their edges (`[0.5, 0.6)`)."""
    edges, counts = hist["edges"], hist["counts"]
    nonzero = [i for i, c in enumerate(counts) if c]
    if nonzero:  # trim empty bins at both ends
        lo_i, hi_i = nonzero[0], nonzero[-1] + 1
        edges, counts = edges[lo_i : hi_i + 1], counts[lo_i:hi_i]
    step = max(1, -(-len(counts) // max_rows))
    rows = []
    for i in range(0, len(counts), step):
        c = sum(counts[i : i + step])
        rows.append((edges[i], edges[min(i + step, len(edges) - 1)], c))
    top = max(c for _, _, c in rows) or 1
    out = []
    for lo, hi, c in rows:
        bar = "█" * round(c / top * width)
        if hist.get("integer"):  # integer edges (lengths): label the values a bin holds, not its edges
            a, b = int(lo), int(hi) - 1
            label = f"{a:>9,}" if a == b else f"{f'{a:,}–{b:,}':>9}"
            out.append(f"  {label.strip():>12}  {bar} {c}")
        else:
            out.append(f"  [{_fmt(lo):>9}, {_fmt(hi):>9})  {bar} {c}")
    return "\n".join(out)


def _render_integrity(summary: dict, console) -> None:
    from rich import box
    from rich.table import Table

    it = summary["integrity"]
    table = Table(title="Integrity", title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("check")
    table.add_column("count", justify="right")
    table.add_column("details")

    def mark(n: int) -> str:
        return f"[green]{n}[/]" if n == 0 else f"[red]{n}[/]"

    table.add_row("planned ids (ids.txt)", _fmt(it["planned"]), f"status {it['status']}" if it["status"] else "")
    several = (it.get("num_samples") or 1) > 1
    if several:  # exactly once per (id, sample): counts and lists are of pairs, written id#sample
        table.add_row(
            "records / unique (id, sample) / ids",
            f"{it['records']:,} / {it['unique_records']:,} / {it['unique_ids']:,}",
            f"{it['num_samples']} samples per row",
        )
    else:
        table.add_row("records / unique ids", f"{it['records']:,} / {it['unique_ids']:,}", "")
    unit = "(id, sample)" if several else "ids"

    def keys(view: dict) -> list[str]:
        return [f"{rid}#{k}" for rid, k in view["samples"]] if several else view["ids"]

    table.add_row(f"missing {unit}", mark(it["missing"]["count"]), _list(keys(it["missing"]), it["missing"]["count"]))
    dups = it["duplicates"]
    table.add_row(
        f"duplicated {unit}",
        mark(dups["count"]),
        _list(
            [
                f"{d['id']}{'#' + str(d['sample']) if several else ''} ×{d['count']} ({', '.join(d['locations'][:3])})"
                for d in dups["ids"]
            ],
            dups["count"],
        ),
    )
    table.add_row(
        f"{unit} not planned" if several else "ids not in ids.txt",
        mark(it["unexpected"]["count"]),
        _list(keys(it["unexpected"]), it["unexpected"]["count"]),
    )
    bad = it["invalid_lines"]
    table.add_row(
        "torn / invalid lines",
        mark(bad["count"]),
        _list([f"{p['file']}:{p['line']} {p['kind']}: {p['error']}" for p in bad["lines"]], bad["count"], sep="\n"),
    )
    errs = it["errors"]
    reasons = "; ".join(f"{k}: {v}" for k, v in errs["reasons"].items())
    ids = _list([r["id"] for r in errs["rows"]], errs["count"], limit=5)
    table.add_row("error rows (errors.jsonl)", str(errs["count"]), f"{reasons} (ids {ids})" if errs["count"] else "")
    console.print(table)
    for note in it["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    console.print("[green]integrity: clean[/]" if it["clean"] else "[red]integrity: problems found (see above)[/]")


def _list(items: list[str], total: int, limit: int = 8, sep: str = ", ") -> str:
    shown = [str(x) for x in items[:limit]]
    more = total - len(shown)
    return sep.join(shown) + (f"{sep if sep != ', ' else ', '}... {more} more" if more > 0 else "")
