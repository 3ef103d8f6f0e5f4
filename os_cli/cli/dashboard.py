"""Progress of `os-sample generate`: a rich live view on a terminal, plain log lines otherwise.

Both show the same figures: records done / total, ETA, tokens per second, rows in flight in the
engine's continuous batch and its in-flight limit (the batch size, lowered by OOM back-off),
mean alpha and ESS ratio over the most recent tokens, memory (allocated / reserved per CUDA device,
else the process's resident set size) and the shard being written. `note()` adds an event line
(an OOM back-off, say); `summary_table()` is the table printed at the end. Everything goes to the
console the CLI gives (cli/common.make_console, on stderr), so stdout stays clean for machine-readable output.
Text that is not ours (the output path, shard names, the title) is shown literally, never as markup.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

RECENT_TOKENS = 4096  # window of the "recent" alpha / ESS means
SUMMARY_MEAN_SCOPE = "(over tokens, this run)"
LOG_INTERVAL_S = 10.0  # plain mode: at most one progress line per interval (and one per batch at first)
# The ETA's rate: records this process finished over about the last minute, counted from a record's end (not
# from the start, when the first rows are all still in flight: a rate from there underestimates a continuous
# batch by its size), over at least ETA_MIN_SPAN_S (a burst of rows ending together is not a rate).
ETA_WINDOW_S = 60.0
ETA_MIN_SPAN_S = 2.0


def memory_usage() -> str:
    """`cuda:0 1.2/2.0 GiB` per CUDA device (allocated/reserved), else `RSS 512 MiB`."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            parts = []
            for index in range(torch.cuda.device_count()):
                allocated = torch.cuda.memory_allocated(index) / 2**30
                reserved = torch.cuda.memory_reserved(index) / 2**30
                parts.append(f"cuda:{index} {allocated:.1f}/{reserved:.1f} GiB")
            return ", ".join(parts)
    except Exception:  # noqa: BLE001 - a memory read must never break a run
        pass
    from os_cli.memory import rss_bytes  # torch is loaded by now (the models are)

    rss = rss_bytes()
    return f"RSS {rss / 2**20:.0f} MiB" if rss else "RSS ?"


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


class Dashboard:
    """Call `start()`, `batch_started(limit, shard)`, then `batch_done()` per write of records (rows finish
    one by one under continuous batching), `rows_in_flight()` as rows come and go and `note()` for
    events, then `stop()`."""

    def __init__(
        self,
        total: int,
        done: int = 0,
        *,
        title: str = "os-sample generate",
        console: Console,
        live: bool | None = None,
        log_interval: float = LOG_INTERVAL_S,
        label: str = "",
    ):
        self.console = console
        self.label = label  # starts every plain log line (the rank under torchrun)
        self.live_mode = self.console.is_terminal if live is None else live
        self.total = total
        self.done_at_start = done
        self.done = done
        self.title = title
        self.log_interval = log_interval
        self.batch_size = 0  # the in-flight limit
        self.in_flight = 0
        self.shard = "-"
        self.actors: str | None = None  # --backend ray: "alive/pool size"
        self.tokens = 0
        self.batches = 0
        self.errors = 0
        self.started = time.monotonic()
        self.events: deque[str] = deque(maxlen=5)
        self._recent: deque[tuple[float, float, int]] = deque()  # (sum alpha, sum ess, count) per batch
        self._recent_count = 0
        self._alpha_sum = self._ess_sum = 0.0
        self._alpha_all = self._ess_all = 0.0
        self._count_all = 0
        self._last_log = 0.0
        self._live: Live | None = None
        self._ends: deque = deque()  # (time, records done) after each write of this process, for the ETA

    # ------------------------------------------------------------------ events

    def start(self) -> Dashboard:
        self.started = time.monotonic()
        if self.live_mode:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self._live.start()
        else:
            self._log(f"starting: {self.done}/{self.total} records already done")
        return self

    def batch_started(self, batch_size: int, shard: str) -> None:
        self.batch_size, self.in_flight, self.shard = batch_size, batch_size, shard
        self._refresh()

    def rows_in_flight(self, rows: int, limit: int) -> None:
        self.in_flight, self.batch_size = rows, limit

    def actors_alive(self, alive: int, total: int) -> None:
        """--backend ray: sampling actors alive now, of the pool's size."""
        self.actors = f"{alive}/{total}"
        self._refresh()

    def batch_done(
        self,
        records: int,
        tokens: int,
        alpha: Sequence[float] = (),
        ess: Sequence[float] = (),
        shard: str | None = None,
    ) -> None:
        """`alpha`/`ess`: per-token values of the batch's real tokens (NaN-free)."""
        self.done += records
        self.tokens += tokens
        self.batches += 1
        now = time.monotonic()
        self._ends.append((now, self.done))
        while len(self._ends) > 2 and self._ends[1][0] <= now - ETA_WINDOW_S:
            self._ends.popleft()
        if shard:
            self.shard = shard
        a_sum, e_sum, count = float(sum(alpha)), float(sum(ess)), len(alpha)
        self._alpha_all += a_sum
        self._ess_all += e_sum
        self._count_all += count
        self._recent.append((a_sum, e_sum, count))
        self._alpha_sum += a_sum
        self._ess_sum += e_sum
        self._recent_count += count
        while len(self._recent) > 1 and self._recent_count - self._recent[0][2] >= RECENT_TOKENS:
            old = self._recent.popleft()
            self._alpha_sum -= old[0]
            self._ess_sum -= old[1]
            self._recent_count -= old[2]
        if self.live_mode:
            self._refresh()
        else:
            now = time.monotonic()
            if self.batches <= 3 or now - self._last_log >= self.log_interval or self.done >= self.total:
                self._log(self._progress_line())

    def note(self, message: str) -> None:
        """An event worth telling (OOM back-off, a resume): kept in the live view, logged in plain mode."""
        stamp = time.strftime("%H:%M:%S")
        self.events.append(f"{stamp} {message}")
        if self.live_mode and self._live is not None:
            self._refresh()
        else:
            self._log(message)

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------------ figures

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the recent rate (ETA_WINDOW_S); None until there is one. Records resumed from an
        earlier run and the time before this process's first record ended count for nothing."""
        if self.done >= self.total:
            return 0.0
        if len(self._ends) < 2:
            return None
        since, done_then = self._ends[0]
        span = time.monotonic() - since
        if span < ETA_MIN_SPAN_S or self.done <= done_then:
            return None
        return (self.total - self.done) * span / (self.done - done_then)

    @property
    def recent_alpha(self) -> float | None:
        return self._alpha_sum / self._recent_count if self._recent_count else None

    @property
    def recent_ess(self) -> float | None:
        return self._ess_sum / self._recent_count if self._recent_count else None

    def figures(self) -> dict:
        return {
            "records": f"{self.done}/{self.total}",
            "eta": _duration(self.eta_s) if self.done < self.total else "done",
            "tokens/s": f"{self.tokens_per_s:.1f}",
            "batch": str(self.batch_size),
            "in flight": str(self.in_flight),
            "alpha": _fmt(self.recent_alpha),
            "ess": _fmt(self.recent_ess),
            "memory": memory_usage(),
            "shard": self.shard,
            **({"actors": self.actors} if self.actors is not None else {}),
        }

    def _progress_line(self) -> str:
        f = self.figures()
        return (
            f"records {f['records']} | eta {f['eta']} | {f['tokens/s']} tok/s | batch {f['batch']} ({f['in flight']} in flight) | "
            f"alpha {f['alpha']} | ess {f['ess']} | {f['memory']} | {f['shard']}"
            + (f" | actors {f['actors']} alive" if "actors" in f else "")
        )

    def _log(self, message: str) -> None:
        self._last_log = time.monotonic()
        label = f"{self.label} | " if self.label else ""
        self.console.print(
            f"[{time.strftime('%H:%M:%S')}] {label}{message}", markup=False, highlight=False, soft_wrap=True
        )

    def _render(self):
        f = self.figures()
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        fraction = self.done / self.total if self.total else 1.0
        width = 30
        filled = int(round(fraction * width))
        grid.add_row("records", f"{'█' * filled}{'░' * (width - filled)} {f['records']} ({fraction:.0%})")
        grid.add_row("eta", f"{f['eta']}  (elapsed {_duration(self.elapsed)})")
        grid.add_row("tokens/s", f["tokens/s"])
        grid.add_row("rows in flight", f"{f['in flight']} (limit {f['batch']})")
        grid.add_row("alpha (recent)", f["alpha"])
        grid.add_row("ESS ratio (recent)", f["ess"])
        grid.add_row("memory", f["memory"])
        grid.add_row("shard", Text(f["shard"]))
        if "actors" in f:
            grid.add_row("actors alive", Text(str(f["actors"])))
        parts = [grid]
        if self.events:
            parts.append(Text("\n".join(self.events), style="yellow"))
        return Panel(Group(*parts), title=Text(self.title), expand=False)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def summary_table(self, status: str, out_dir: str, errors: int = 0) -> Table:
        table = Table(title=Text(f"{self.title}: {status}", style="table.title"), show_header=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("output", Text(str(out_dir)))  # a path: shown as written, brackets included
        table.add_row("records", f"{self.done}/{self.total} ({self.done - self.done_at_start} this run)")
        if errors:
            table.add_row("skipped rows", f"{errors} (see errors.jsonl)")
        table.add_row("tokens", f"{self.tokens} ({self.tokens_per_s:.1f}/s)")
        table.add_row("time", _duration(self.elapsed))
        mean_alpha = self._alpha_all / self._count_all if self._count_all else None
        mean_ess = self._ess_all / self._count_all if self._count_all else None
        # Over this run's tokens: `inspect` shows the same population as "over tokens" (per-token
        # records) next to the mean of the per-record means ("over record means").
        table.add_row(f"mean alpha {SUMMARY_MEAN_SCOPE}", _fmt(mean_alpha))
        table.add_row(f"mean ESS ratio {SUMMARY_MEAN_SCOPE}", _fmt(mean_ess))
        table.add_row("memory", memory_usage())
        return table
